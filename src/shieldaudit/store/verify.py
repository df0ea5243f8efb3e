"""Verifying a trail's chain across segments (docs/format.md, "What verify checks").

The checks, per entry in file order: the line parses; it belongs to this
container; its ``mac`` matches its content (keyed or not, per ``chain``); its
``seq`` is one more than the previous entry's; its ``prev`` is the previous
entry's ``mac``. Across segments: sealed segment numbers are contiguous and the
chain continues. After a problem, checking resynchronises on the entry found,
so one edit produces one or two lines, not a cascade.

Memory stays bounded whatever the files hold: lines are streamed (an
over-limit line is reported from its first bytes, never loaded), a report
keeps only its first :data:`MAX_PROBLEMS` problems and counts the rest, and
text taken from a hostile line is cut before it goes into a message.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from shieldaudit.core.errors import LockTimeoutError
from shieldaudit.store import chain, layout
from shieldaudit.store.reader import Record, Segment, TrailDir

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from shieldaudit.core.models import Entry, Fields

    #: A further check of each entry (against the seals): a problem message, or None.
    EntryCheck = Callable[[int, Fields], str | None]

#: Problems kept (and printed) per container; the rest are only counted.
MAX_PROBLEMS: Final = 20
#: Longest problem message kept; longer ones (quoting a hostile value) are cut.
MAX_MESSAGE_CHARS: Final = 300
#: Distinct report-once messages remembered; past that, repeats are counted again.
_MAX_ONCE: Final = 256


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason a chain does not hold."""

    container_id: str
    segment: str
    seq: int | None
    message: str

    def render(self) -> str:
        """Return the problem as one line: container, segment, seq, what is wrong."""
        if self.seq is None and self.segment == "seals":
            return f"{self.container_id[:12]} seals: {self.message}"
        where = f"seq {self.seq}" if self.seq is not None else "seq ?"
        return f"{self.container_id[:12]} {self.segment} {where}: {self.message}"


@dataclass(slots=True)
class Report:
    """The outcome of verifying one container's trail."""

    container_id: str
    entries: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    segments: int = 0
    keyed: bool = False
    problems: list[Problem] = field(default_factory=list)  # the first MAX_PROBLEMS
    problem_count: int = 0  # every problem found, kept or not
    notes: list[str] = field(default_factory=list)
    #: Entries signed in an earlier epoch of an evolving key (need the verification key).
    unchecked: int = 0

    @property
    def ok(self) -> bool:
        """Return whether every check passed."""
        return self.problem_count == 0

    @property
    def more_problems(self) -> int:
        """Return how many problems were counted beyond those kept."""
        return self.problem_count - len(self.problems)

    def add(self, segment: str, seq: int | None, message: str) -> None:
        """Count a problem; keep it only while fewer than :data:`MAX_PROBLEMS` are kept."""
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(self.container_id, segment, seq, _cut(message)))


def _cut(message: str) -> str:
    """Return ``message`` cut to :data:`MAX_MESSAGE_CHARS` characters."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - 1] + "…"


@dataclass(slots=True)
class _State:
    report: Report
    keys: chain.KeyRing
    expected_seq: int | None = None
    expected_prev: str | None = None
    last_keyed_seq: int | None = None
    first_unkeyed_after_key: int | None = None
    reported: set[str] = field(default_factory=set)
    entry_check: EntryCheck | None = None

    def problem(
        self, segment: Segment, seq: int | None, message: str, *, once: bool = False
    ) -> None:
        message = _cut(message)
        if once:
            if message in self.reported:
                return
            if len(self.reported) < _MAX_ONCE:
                self.reported.add(message)
        self.report.add(segment.name, seq, message)


def verify_container(
    root: Path,
    container_id: str,
    keys: chain.KeyRing = chain.NO_KEYS,
    *,
    keep_segments: int = 0,
    lock_timeout: float = layout.LOCK_TIMEOUT_S,
    entry_check: EntryCheck | None = None,
) -> Report:
    """Verify one container's trail; never raises for what it finds in the files.

    ``entry_check`` (the seals' view of this trail) is asked about each entry too.
    """
    report = Report(container_id)
    with TrailDir(root, container_id) as trail:
        segments = trail.segments()
        report.segments = len(segments)
        state = _State(report, keys, entry_check=entry_check)
        _check_segment_numbers(state, segments, keep_segments)
        for segment in segments:
            for record in trail.records([segment]):
                if not record.line.complete and not record.line.oversized:
                    _torn(state, trail, record, lock_timeout, is_last=segment is segments[-1])
                    continue
                _check(state, record)
    if keys.keys and report.entries and state.last_keyed_seq != report.last_seq:
        start = state.first_unkeyed_after_key or report.first_seq
        state.problem(
            Segment(layout.ACTIVE_FILE, None),
            report.last_seq,
            f"entries from seq {start} on are not keyed although a key is configured: "
            "they are not protected against forgery",
        )
    return report


def _check_segment_numbers(state: _State, segments: list[Segment], keep: int) -> None:
    numbers = [s.number for s in segments if s.number is not None]
    for before, after in itertools.pairwise(numbers):
        if after != before + 1:
            missing = (
                layout.segment_name(before + 1)
                if after == before + 2
                else f"{layout.segment_name(before + 1)} to {layout.segment_name(after - 1)}"
            )
            state.problem(
                Segment(layout.segment_name(after), after),
                None,
                f"sealed segment {missing} missing from the middle of the trail",
            )
    if numbers and numbers[0] > 1:
        if keep and len(numbers) >= keep:
            state.report.notes.append(
                f"history starts at {layout.segment_name(numbers[0])}: "
                f"earlier segments were removed by retention (keep {keep})",
            )
        else:
            kept = f"retention keeps {keep}" if keep else "retention keeps all segments"
            state.problem(
                Segment(layout.segment_name(numbers[0]), numbers[0]),
                None,
                f"segments before {layout.segment_name(numbers[0])} are missing but "
                f"only {len(numbers)} sealed segment(s) remain and {kept}",
            )


def _torn(state: _State, trail: TrailDir, record: Record, timeout: float, *, is_last: bool) -> None:
    """Classify a line without a newline: a write in progress, or a crash's torn tail."""
    line = record.line
    if not is_last:
        state.problem(
            record.segment, None, f"incomplete line {line.lineno} inside a sealed segment"
        )
        return
    try:
        with layout.Lock(
            trail.root_fd, trail.container_id, trail.root, shared=True, timeout=timeout
        ):
            fd = trail.open_segment(record.segment)
            try:
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
    except (LockTimeoutError, FileNotFoundError):
        return  # a writer is busy: its line is simply not part of this snapshot
    if size == line.offset + len(line.data):
        state.report.notes.append(
            f"{record.segment.name}: torn final line ({len(line.data)} bytes, after seq "
            f"{state.report.last_seq}) left by an interrupted write; not an entry, "
            "the next append sets it aside",
        )


def _check(state: _State, record: Record) -> None:
    report = state.report
    segment = record.segment
    entry = record.entry
    if entry is None:
        after = f" (after seq {report.last_seq})" if report.last_seq is not None else ""
        state.problem(segment, None, f"line {record.line.lineno}{after}: {record.error}")
        return
    seq = entry.seq
    if entry.container_id != report.container_id:
        state.problem(segment, seq, "entry belongs to another container (container_id differs)")
    _check_mac(state, record, entry, seq)
    _check_link(state, segment, entry, seq)
    if state.entry_check is not None:
        problem = state.entry_check(seq, entry)
        if problem is not None:
            state.problem(segment, seq, problem)
    report.entries += 1
    if report.first_seq is None:
        report.first_seq = seq
    if state.expected_seq is not None and seq < state.expected_seq:
        return  # an out-of-place entry: keep following the chain it interrupted
    report.last_seq = seq
    state.expected_seq = seq + 1
    state.expected_prev = entry.mac


def _check_mac(state: _State, record: Record, entry: Entry, seq: int) -> None:
    alg = entry.chain
    keyed = alg.startswith((chain.ALG_KEYED_PREFIX, chain.ALG_EVOLVING_PREFIX))
    if keyed:
        state.report.keyed = True
        state.last_keyed_seq = seq
        state.first_unkeyed_after_key = None
    elif (
        state.keys.keys
        and state.last_keyed_seq is not None
        and state.first_unkeyed_after_key is None
    ):
        state.first_unkeyed_after_key = seq
        state.problem(record.segment, seq, "unkeyed entry after keyed entries (chain downgraded)")
    want, why = chain.expected_mac(record.line.data, alg, state.keys, entry.get("epoch"))
    if why == chain.EARLIER_EPOCH:
        state.report.unchecked += 1
        return
    if want is None:
        state.problem(record.segment, seq, f"cannot check: {why}", once=keyed)
        return
    if entry.mac != want or chain.line_mac(record.line.data) != want:
        state.problem(record.segment, seq, "entry modified: its mac does not match its content")


def _check_link(state: _State, segment: Segment, entry: Entry, seq: int) -> None:
    expected = state.expected_seq
    prev = entry.prev
    if expected is None:
        if seq == 1 and prev != chain.GENESIS:
            state.problem(segment, seq, "first entry does not link to the genesis value")
        elif seq > 1 and not segment.sealed:
            state.problem(
                segment, seq, f"trail starts at seq {seq}: entries 1 to {seq - 1} missing"
            )
        elif seq > 1:
            state.report.notes.append(f"history starts at seq {seq} ({segment.name})")
        return
    if seq > expected:
        missing = f"seq {expected}" if seq == expected + 1 else f"seq {expected} to {seq - 1}"
        state.problem(segment, seq, f"gap: {missing} missing (deleted entries)")
    elif seq < expected:
        state.problem(
            segment,
            seq,
            f"out of order: expected seq {expected} (inserted, duplicated or reordered entry)",
        )
    elif prev != state.expected_prev:
        state.problem(
            segment,
            seq,
            f"chain broken: prev does not match the mac of seq {seq - 1} "
            "(an entry was replaced, inserted or reordered)",
        )
