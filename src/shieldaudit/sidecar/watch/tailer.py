r"""Rotation-safe tailing of one container's trail, counting each entry exactly once.

The truth of "what was counted" is the last entry's ``seq`` and ``mac`` (the
*anchor*). A position (segment, inode, offset) is only a hint: before reading
from one that this process did not reach itself, the bytes just before the
offset must be the anchor's line end (``"mac":"<anchor>"}\\n``). Whenever that
fails, or an entry does not continue the chain, the anchor is searched for in
every segment, newest first, and reading resumes right after it. So rotations
while the sidecar was down, inode reuse, and truncate-and-regrow all end up at
the right entry, and an entry is never counted twice.

No file stays open between calls: each :meth:`Tail.advance` opens what it
reads relative to the container's directory descriptor and closes it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NotRequired

from pydantic import StrictInt, StrictStr, TypeAdapter
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from shieldaudit.sidecar.watch.anchor import (
    ACTIVE_SEGMENT,
    CHUNK,
    MAX_LINE_BYTES,
    anchor_bytes,
    find_pattern,
    segment_file,
)
from shieldaudit.sidecar.watch.macs import MacChecker
from shieldaudit.store import layout
from shieldaudit.store.chain import NO_KEYS, KeyRing
from shieldaudit.store.reconcile import WATCHED, Ledger

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from shieldaudit.sidecar.watch.checkpoint import Mark
    from shieldaudit.sidecar.watch.tally import Tally

_NL: Final = b"\n"
_DECODER: Final = json.JSONDecoder()


class LineFields(TypedDict):
    """What the hot loop takes from a trail line: validated decoding, other keys dropped.

    ``seq`` and ``mac`` must be an integer and a string (no coercion); the
    rest is whatever JSON value the line holds, as with ``json.loads``. The
    :class:`~shieldaudit.core.models.WatchEvent` fields are all here, so an
    emitted line loses nothing.
    """

    seq: StrictInt
    mac: StrictStr
    prev: Any
    chain: NotRequired[Any]
    source: NotRequired[Any]
    action: NotRequired[Any]
    ts: NotRequired[Any]
    container: NotRequired[Any]
    container_id: NotRequired[Any]
    dest: NotRequired[Any]
    detail: NotRequired[Any]


#: One call per line, in pydantic-core: measured faster than ``json`` plus
#: lookups on this loop (docs/benchmarks.md, "Sidecar").
_VALIDATE: Final = TypeAdapter(LineFields).validate_json


class _Resync(Exception):  # noqa: N818 -- control flow, never escapes this module
    """The position no longer matches the chain: look for the anchor."""


class Tail:
    """One container's reading state and the logic that moves it forward."""

    __slots__ = (
        "_accept_next",
        "_at_boundary",
        "_budget",
        "_emit",
        "_macs",
        "_tally",
        "_trusted",
        "container_id",
        "mark",
    )

    def __init__(
        self,
        container_id: str,
        mark: Mark,
        tally: Tally,
        *,
        emit: Callable[[Mapping[str, object]], None] | None = None,
        keys: KeyRing | None = NO_KEYS,
        trusted: bool = False,
        audit_floor: int = 0,
    ) -> None:
        """Continue from ``mark``; an untrusted mark is validated before use.

        Args:
            container_id: whose trail this is.
            mark: where counting stands.
            tally: where counts go until they are published.
            emit: receives each entry as it is counted.
            keys: recompute each entry's mac with these keys (unkeyed chains need
                none; a keyed entry whose key is missing is not checked); None
                checks links only.
            trusted: the mark was reached by this process, so it needs no check.
            audit_floor: for a mark without a reconciliation ledger, the time (µs)
                up to which the trail's hook entries were not seen.
        """
        self.container_id = container_id
        if mark.audit is None:
            mark.audit = Ledger(floor=audit_floor)
        self.mark = mark
        self._tally = tally
        self._emit = emit
        self._macs = MacChecker(keys) if keys is not None else None
        self._trusted = trusted
        self._accept_next = False
        self._at_boundary = False
        self._budget = 0

    def advance(self, dir_fd: int, budget: int = 1 << 62) -> tuple[bool, bool]:
        """Read what is new in the trail, up to about ``budget`` bytes.

        Args:
            dir_fd: the container's trail directory, opened without following symlinks.
            budget: bytes to read before returning, so one huge backlog cannot keep
                the sidecar from checkpointing and serving other trails.

        Returns:
            ``(moved, more)``: whether the mark moved, and whether the budget ran
            out before the end of the trail.
        """
        before = (self.mark.last_seq, self.mark.segment, self.mark.inode, self.mark.offset)
        before_extra = (self.mark.rotated, self.mark.skipping)
        self._budget = budget
        for _ in range(10_000):  # bounded: each pass makes progress or returns
            if self._budget <= 0:
                break
            try:
                if not self._step(dir_fd):
                    break
            except _Resync:
                self._resync(dir_fd)
        after = (self.mark.last_seq, self.mark.segment, self.mark.inode, self.mark.offset)
        moved = after != before or (self.mark.rotated, self.mark.skipping) != before_extra
        return moved, self._budget <= 0

    # -- moving through segments ------------------------------------------------

    def _step(self, dir_fd: int) -> bool:
        """Read from the current position; return True to go on with the next segment."""
        m = self.mark
        if m.segment != ACTIVE_SEGMENT:
            return self._read_sealed(dir_fd)
        try:
            st = os.stat(layout.ACTIVE_FILE, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if m.inode == 0:
            if self._first_segment(dir_fd):
                return True
            m.inode = st.st_ino
        elif st.st_ino != m.inode:
            # Our file was sealed (or replaced): drain it first, wherever it went.
            number = self._find_sealed_inode(dir_fd, m.inode)
            if number is None:
                raise _Resync
            m.segment = number
            return True
        if st.st_size < m.offset:
            raise _Resync  # truncated: what we counted may be gone or rewritten
        if st.st_size == m.offset:
            return False
        self._read(dir_fd, layout.ACTIVE_FILE, sealed=False)
        return False

    def _first_segment(self, dir_fd: int) -> bool:
        """For a mark without a file identity: return True after moving to a sealed segment."""
        m = self.mark
        if not (m.offset or m.last_seq or m.last_mac):
            # Nothing read yet: history starts at the oldest segment not counted.
            later = [n for n in layout.list_segment_numbers(dir_fd) if n > m.rotated]
            if later:
                m.segment = later[0]
                return True
        elif not (self._accept_next or self._trusted):
            raise _Resync  # a mark without a file identity: validate by the anchor
        return False

    def _read_sealed(self, dir_fd: int) -> bool:
        m = self.mark
        try:
            st = os.stat(segment_file(m.segment), dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise _Resync from None  # removed by retention before we finished it
        if m.inode and st.st_ino != m.inode:
            raise _Resync
        m.inode = st.st_ino
        if st.st_size < m.offset:
            raise _Resync
        if st.st_size > m.offset:
            self._read(dir_fd, segment_file(m.segment), sealed=True)
            if self._budget <= 0 and m.offset < st.st_size:
                return False
        self._finish_sealed(dir_fd)
        return True

    def _finish_sealed(self, dir_fd: int) -> None:
        """Count a sealed segment read to its end (once), and move to the next one."""
        m = self.mark
        if m.segment > m.rotated:
            self._tally.rotations += 1
            m.rotated = m.segment
        later = [n for n in layout.list_segment_numbers(dir_fd) if n > m.segment]
        m.segment = later[0] if later else ACTIVE_SEGMENT
        m.offset = 0
        m.skipping = False
        try:
            m.inode = os.stat(segment_file(m.segment), dir_fd=dir_fd, follow_symlinks=False).st_ino
        except FileNotFoundError:
            m.inode = 0
        self._trusted = True
        self._at_boundary = True

    @staticmethod
    def _find_sealed_inode(dir_fd: int, inode: int) -> int | None:
        for number in reversed(layout.list_segment_numbers(dir_fd)):
            try:
                st = os.stat(layout.segment_name(number), dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if st.st_ino == inode:
                return number
        return None

    # -- reading lines ----------------------------------------------------------

    def _read(self, dir_fd: int, name: str, *, sealed: bool) -> None:
        m = self.mark
        try:
            fd = layout.open_regular(dir_fd, name, os.O_RDONLY, Path(name))
        except FileNotFoundError:
            raise _Resync from None
        try:
            if os.fstat(fd).st_ino != m.inode:
                raise _Resync
            # A mark inside an oversized line cannot sit after the anchor: it is
            # trusted on its inode, like any position within the line being skipped.
            if not (self._trusted or m.skipping) and m.offset and not self._anchored(fd, m.offset):
                raise _Resync
            self._trusted = True
            self._read_fd(fd, sealed=sealed)
        finally:
            os.close(fd)

    def _anchored(self, fd: int, offset: int) -> bool:
        pattern = anchor_bytes(self.mark.last_mac)
        if offset < len(pattern):
            return False
        return os.pread(fd, len(pattern), offset - len(pattern)) == pattern

    def _read_fd(self, fd: int, *, sealed: bool) -> None:
        m = self.mark
        pending = b""
        while self._budget > 0:
            chunk = os.pread(fd, CHUNK, m.offset + len(pending))
            if not chunk:
                break
            self._budget -= len(chunk)
            data = pending + chunk if pending else chunk
            if m.skipping:
                nl = data.find(_NL)
                if nl < 0:
                    m.offset += len(data)
                    pending = b""
                    continue
                m.offset += nl + 1
                m.skipping = False
                data = data[nl + 1 :]
            used = self._lines(fd, data)
            pending = data[used:]
            if len(pending) > MAX_LINE_BYTES:
                self._tally.parse_errors += 1  # counted once; the rest is skipped unread
                m.offset += len(pending)
                m.skipping = True
                pending = b""
        if pending and sealed and self._budget > 0:
            # A sealed segment never grows: an unterminated tail is a torn line.
            self._tally.parse_errors += 1
            m.offset += len(pending)

    def _lines(self, fd: int, data: bytes) -> int:  # noqa: C901, PLR0915 -- the hot loop, whole
        """Count the complete lines of ``data``, which starts at the mark's offset.

        The hot loop of the sidecar: one validated decoding (:class:`LineFields`)
        and a few lookups per line. A line it refuses is decided by ``json``
        (:func:`_slow`), so what counts as an entry is exactly what it always
        was. The mark moves line by line, so a resync raised mid-chunk keeps
        what was counted before it.
        """
        m = self.mark
        tally = self._tally
        events = tally.events
        emit = self._emit
        macs = self._macs
        ledger = m.audit
        assert ledger is not None  # noqa: S101 -- set by __init__
        decode = _DECODER.raw_decode
        validate = _VALIDATE
        find = data.find
        base = m.offset
        pos = 0
        while True:
            nl = find(_NL, pos)
            if nl < 0:
                return pos
            line = data[pos:nl]
            entry: LineFields | None = None
            # pydantic's JSON parser skips whitespace around the object, takes raw
            # UTF-8 and refuses escaped lone surrogates, where the loop always did
            # the opposite (the store writes ASCII lines, "{" to "}"): such a line
            # is left to json, so a refusal here is not final.
            if line[:1] == b"{" and line[-1:] == b"}" and line.isascii():
                try:  # noqa: SIM105 -- cheaper than contextlib.suppress in this loop
                    entry = validate(line)
                except ValueError:  # pydantic's ValidationError too
                    pass
            if entry is None:
                entry = _slow(decode, line)
                if entry is None:
                    tally.parse_errors += 1
                    pos = nl + 1
                    m.offset = base + pos
                    self._at_boundary = False
                    continue
            seq = entry["seq"]
            mac = entry["mac"]
            prev = entry["prev"]
            if seq != m.last_seq + 1 or prev != m.last_mac:
                self._check_break(fd, base + pos)
            if macs is not None and macs.wrong(line, entry.get("chain"), mac):
                tally.integrity_failures += 1  # the entry was modified after it was written
            self._at_boundary = False
            m.last_seq = seq
            m.last_mac = mac
            key = (entry.get("source"), entry.get("action"))
            try:
                events[key] = events.get(key, 0) + 1
            except TypeError:  # a list or object there (a foreign writer): counted as "other"
                key = _hashable(key)
                events[key] = events.get(key, 0) + 1
            if key in WATCHED:
                ledger.observe(key, entry.get("ts"), seq, entry.get("container"))
            if emit is not None:
                emit(entry)
            pos = nl + 1
            m.offset = base + pos

    def _check_break(self, fd: int, line_offset: int) -> None:
        """Decide about an entry that does not continue the chain.

        Accepted (and counted as an integrity failure) when the anchor is proven to
        sit right before it: then the trail itself is broken. Otherwise our
        position is what is wrong, and the anchor is searched for.
        """
        m = self.mark
        if m.last_seq == 0 and not m.last_mac:
            return  # first entry ever seen here (history may start later: retention)
        if self._accept_next:
            self._accept_next = False
            self._tally.integrity_failures += 1
            return
        if (line_offset and self._anchored(fd, line_offset)) or (
            line_offset == 0 and self._at_boundary
        ):
            self._tally.integrity_failures += 1
            return
        raise _Resync

    # -- finding the anchor -----------------------------------------------------

    def _resync(self, dir_fd: int) -> None:
        """Move the mark to just after the anchor, wherever it now is.

        Without an anchor (nothing counted yet) reading starts at the oldest
        segment not yet counted. When the anchor is gone (the trail was truncated
        or rewritten, or retention removed it while we were down), reading
        restarts at the first segment not fully counted, and the first entry that
        does not continue the chain is counted as an integrity failure.
        """
        m = self.mark
        self._trusted = True
        self._at_boundary = False
        m.skipping = False
        numbers = layout.list_segment_numbers(dir_fd)
        if m.last_seq or m.last_mac:
            pattern = anchor_bytes(m.last_mac)
            for number in [ACTIVE_SEGMENT, *reversed(numbers)]:
                found = find_pattern(dir_fd, segment_file(number), pattern)
                if found is None:
                    continue
                inode, end, size = found
                m.segment, m.inode, m.offset = number, inode, end
                if number != ACTIVE_SEGMENT and end == size:
                    self._finish_sealed(dir_fd)
                    self._at_boundary = True
                return
            self._accept_next = True
        later = [n for n in numbers if n > m.rotated]
        m.segment = later[0] if later else ACTIVE_SEGMENT
        m.offset = 0
        try:
            m.inode = os.stat(segment_file(m.segment), dir_fd=dir_fd, follow_symlinks=False).st_ino
        except FileNotFoundError:
            m.inode = 0


def _hashable(key: tuple[object, object]) -> tuple[object, object]:
    """Replace a source or action that is a list or object by None (its series is ``other``)."""
    source, action = key
    return (
        source if isinstance(source, str | int | float | bool) else None,
        action if isinstance(action, str | int | float | bool) else None,
    )


def _slow(decode: Callable[[str], tuple[Any, int]], line: bytes) -> LineFields | None:
    """Decode a line with ``json``, exactly as the loop always did; None: not an entry."""
    try:
        entry, end = decode(line.decode())
        if end != len(line) or type(entry) is not dict:  # characters against bytes: ASCII only
            return None
        seq = entry["seq"]
        mac = entry["mac"]
        entry["prev"]  # required, like seq and mac
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        return None
    if type(seq) is not int or type(mac) is not str:
        return None
    return entry  # type: ignore[return-value]
