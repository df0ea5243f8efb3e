"""Reconciling Podman's events with the hook's entries: which starts ran unaudited (pure).

A container's trail holds two independent records of its lifecycle: the OCI
hook's entries (``source=hook``), written by the runtime on the start path, and
Podman's events (``source=events``), written by the listener. A container that
Podman started while the hooks were bypassed (``podman --hooks-dir /elsewhere``,
a hooks.d file deleted, the runtime called with another spec) has the events
and not the hook entries. This module decides that, from the entries alone.

The rule, per container. Order the Podman ``start`` events by their time
``t1 < t2 < …`` (``ts`` of an events entry is Podman's own event time). Start
*k* is **audited** when the trail holds a ``createRuntime`` and a ``poststart``
hook entry with a time in ``(t(k-1), t(k)]``: the hooks of a run are written
during ``runc create`` (and, with runc before 1.2, ``poststart`` too; with
crun and newer runc during ``runc start``), always before Podman stamps that
run's ``start`` event and after the previous run's ``start`` event. Otherwise
the start is **unaudited** — but only once it is ``grace`` seconds old, so
entries still on their way are waited for. Restarts are starts (each has its
own ``start`` event and its own hook pair); ``exec``, ``pause``/``unpause``
and a failed start (``createRuntime`` and no ``start`` event) are not.

Every decision is made once: a start event whose time is not after the last
judged start (a duplicate, or one replayed out of order) is ignored, and hook
entries at or before it are dropped. The state (:class:`Ledger`) is a few
numbers per container, checkpointed by the sidecar with its position, so a
restarted sidecar neither judges a start twice nor skips one.

Hook entries are kept until a start consumes them, at most :data:`MAX_HOOKS`
per container (a listener down while a container restarts again and again);
the time of the newest one dropped becomes the ledger's *floor*. A
start whose interval reaches below the floor and lacks hook entries is
``unknown`` (not counted): the missing entries may be among those dropped, or
in history this ledger never saw (``--from-end``, an upgrade).
"""

from __future__ import annotations

import bisect
import calendar
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

    from shieldaudit.core.models import Fields

CREATE_RUNTIME: Final = 1
POSTSTART: Final = 2
REQUIRED: Final = CREATE_RUNTIME | POSTSTART
#: ``(source, action)`` of the entries reconciliation looks at.
HOOK_KINDS: Final[dict[tuple[object, object], int]] = {
    ("hook", "createRuntime"): CREATE_RUNTIME,
    ("hook", "poststart"): POSTSTART,
}
START: Final = ("events", "start")
WATCHED: Final = frozenset({*HOOK_KINDS, START})
#: Hook entries kept per container while no start event consumes them (four runs):
#: the checkpoint carries them, for every trail, on a host without a listener.
MAX_HOOKS: Final = 8
#: Start events waiting for their grace period, per container (a flood is judged early).
MAX_PENDING: Final = 256
#: Default grace period, seconds: Podman's event delay (file logger: ~0.25 s) with margin.
DEFAULT_GRACE_S: Final = 5.0
VERDICT_ACTION: Final = "unaudited_start"
_US: Final = 1_000_000
_NAMES: Final = {CREATE_RUNTIME: "createRuntime", POSTSTART: "poststart"}
_TS_LEN: Final = 27  # 2026-11-22T10:42:12.211996Z


def ts_us(value: object) -> int | None:
    """Return an entry timestamp as microseconds since the epoch; None when it is not one.

    Entries use one fixed format (RFC 3339, UTC, microseconds, ``Z``); anything
    else is not reconciled (a hostile line cannot make a start look audited
    or not by a malformed time).

    >>> ts_us("1970-01-01T00:00:01.000002Z")
    1000002
    """
    if not isinstance(value, str) or len(value) != _TS_LEN or value[-1] != "Z":
        return None
    global _last_second  # noqa: PLW0603 -- a one-entry cache: entries come many per second
    prefix = value[:19]
    cached = _last_second
    if cached[0] != prefix:
        try:
            year, month, day = int(prefix[0:4]), int(prefix[5:7]), int(prefix[8:10])
            hour, minute, second = int(prefix[11:13]), int(prefix[14:16]), int(prefix[17:19])
        except ValueError:
            return None
        if prefix[4] != "-" or prefix[7] != "-" or prefix[10] != "T" or value[19] != ".":
            return None
        if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
            return None
        cached = (prefix, calendar.timegm((year, month, day, hour, minute, second)))
        _last_second = cached
    fraction = value[20:26]
    if not fraction.isdigit() or not fraction.isascii():
        return None
    return cached[1] * _US + int(fraction)


_last_second: tuple[str, int] = ("", 0)


def format_us(us: int) -> str:
    """Format microseconds since the epoch as an entry timestamp (inverse of :func:`ts_us`).

    >>> format_us(1000002)
    '1970-01-01T00:00:01.000002Z'
    """
    seconds, rest = divmod(us, _US)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest:06d}Z"


def missing_names(kinds: int) -> tuple[str, ...]:
    """Return the names of the hook stages absent from a bit set of kinds."""
    return tuple(name for bit, name in _NAMES.items() if not kinds & bit)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The judgement of one start event.

    ``missing`` names the hook stages without an entry for this start (empty:
    audited). ``unknown`` is set when they are missing but may lie in history
    this ledger never saw; such a start is not counted. ``hook_runs`` is how
    many ``poststart`` entries fell in the start's interval (more than one:
    the events of the other runs are missing).
    """

    seq: int
    ts_us: int
    container: str
    missing: tuple[str, ...]
    unknown: bool = False
    hook_runs: int = 1

    @property
    def unaudited(self) -> bool:
        """Return whether this start counts as unaudited."""
        return bool(self.missing) and not self.unknown

    def watch_event(self, container_id: str) -> dict[str, object]:
        """Return the ``unaudited_start`` WatchEvent fields (for ``sidecar --emit``)."""
        return {
            "ts": format_us(self.ts_us),
            "source": "sidecar",
            "action": VERDICT_ACTION,
            "container": self.container,
            "container_id": container_id,
            "seq": self.seq,
            "dest": "",
            "detail": "no hook entry for this start: " + ", ".join(self.missing),
        }


@dataclass(slots=True)
class Ledger:
    """One container's reconciliation state (see the module docstring).

    Attributes:
        last_start: time (µs) of the newest start event judged; 0 before the first.
        floor: hook entries at or before this time (µs) may be unknown to the ledger.
        hooks: ``(time µs, kind)`` of hook entries not yet consumed, sorted.
        pending: ``(time µs, seq, name)`` of start events not yet judged, sorted.
    """

    last_start: int = 0
    floor: int = 0
    hooks: list[tuple[int, int]] = field(default_factory=list)
    pending: list[tuple[int, int, str]] = field(default_factory=list)

    def observe(self, key: tuple[object, object], ts: object, seq: int, name: object) -> None:
        """Take one entry whose ``(source, action)`` is in :data:`WATCHED` (any order)."""
        us = ts_us(ts)
        if us is None or us <= self.last_start:
            return  # malformed, or part of an interval already judged (a replay, a late entry)
        if key == START:
            pending = self.pending
            at = bisect.bisect_left(pending, (us, seq))
            if at < len(pending) and pending[at][:2] == (us, seq):
                return  # the same entry read again (a resync)
            pending.insert(at, (us, seq, name if isinstance(name, str) else ""))
            return
        kind = HOOK_KINDS.get(key)
        if kind is None:
            return
        bisect.insort(self.hooks, (us, kind))
        if len(self.hooks) > MAX_HOOKS:
            dropped, _ = self.hooks.pop(0)
            self.floor = max(self.floor, dropped)

    def next_due(self, grace_us: int) -> int | None:
        """Return when (µs) the oldest pending start is due for judgement; None if none."""
        return self.pending[0][0] + grace_us if self.pending else None

    def judge(self, now_us: int, grace_us: int) -> list[Verdict]:
        """Judge every pending start that is at least ``grace_us`` old, oldest first."""
        verdicts: list[Verdict] = []
        pending = self.pending
        while pending and (pending[0][0] + grace_us <= now_us or len(pending) > MAX_PENDING):
            us, seq, name = pending.pop(0)
            if us <= self.last_start:
                continue
            kinds = 0
            runs = 0
            keep = 0
            for hook_us, kind in self.hooks:
                if hook_us > us:
                    break
                keep += 1
                kinds |= kind
                runs += kind == POSTSTART
            del self.hooks[:keep]
            missing = missing_names(kinds & REQUIRED)
            unknown = bool(missing) and self.last_start < self.floor
            verdicts.append(Verdict(seq, us, name, missing, unknown, runs))
            self.last_start = us
        return verdicts

    # -- checkpoint form ----------------------------------------------------------

    def to_json(self) -> list[object]:
        """Return the ledger as a compact JSON value."""
        flat: list[int] = [v for hook in self.hooks for v in hook]
        return [self.last_start, self.floor, flat, [list(p) for p in self.pending]]

    @classmethod
    def from_json(cls, value: object) -> Ledger | None:
        """Rebuild a ledger from :meth:`to_json`'s form; None when it is not one."""
        if not isinstance(value, list) or len(value) != 4:
            return None
        last_start, floor, flat, pending = value
        if not (_uint(last_start) and _uint(floor)) or not isinstance(flat, list):
            return None
        if len(flat) % 2 or not all(_uint(v) for v in flat) or not isinstance(pending, list):
            return None
        hooks = sorted(zip(flat[::2], flat[1::2], strict=True))
        items: list[tuple[int, int, str]] = []
        for item in pending:
            if not (isinstance(item, list) and len(item) == 3):
                return None
            us, seq, name = item
            if not (_uint(us) and _uint(seq) and isinstance(name, str)):
                return None
            items.append((us, seq, name))
        return cls(last_start, floor, hooks, sorted(items))


def _uint(value: object) -> bool:
    return type(value) is int and value >= 0


@dataclass(frozen=True, slots=True)
class Audit:
    """What a trail (or the part of it read) says about its starts, at one moment.

    ``unaudited`` lists the unaudited starts; ``pending`` counts starts still
    within the grace period without their hook entries; ``unknown`` counts
    starts that could not be judged (see :class:`Verdict`); ``events_missing``
    counts hook runs with no ``start`` event (the listener was not running, or
    Podman's event log lost them): not an alarm.
    """

    starts: int = 0
    unaudited: tuple[Verdict, ...] = ()
    pending: int = 0
    unknown: int = 0
    events_missing: int = 0

    def as_dict(self) -> dict[str, object]:
        """Return the JSON form used by ``ls --json``."""
        return {
            "unaudited": bool(self.unaudited),
            "unaudited_starts": [v.seq for v in self.unaudited],
            "events_missing": self.events_missing,
        }


def audit_entries(
    entries: Iterable[Fields],
    *,
    now_us: int,
    grace_us: int,
    floor_us: int = 0,
) -> Audit:
    """Reconcile a trail's entries (any order) as the sidecar would at ``now_us``.

    ``floor_us`` is for a partial read: entries at or before it may be missing
    (``ls`` reads a trail's first and last entries only).
    """
    auditor = Auditor(floor_us=floor_us)
    for entry in entries:
        auditor.add(entry)
    return auditor.audit(now_us=now_us, grace_us=grace_us)


class Auditor:
    """:func:`audit_entries` one entry at a time, keeping no entries.

    ``show`` feeds it while it streams a trail, so its memory does not grow
    with the number of entries (the ledger keeps at most :data:`MAX_HOOKS`
    hook entries, and one tuple per start event not yet judged).
    """

    def __init__(self, *, floor_us: int = 0) -> None:
        """Start with an empty ledger; hook entries up to ``floor_us`` may be missing."""
        self._ledger = Ledger(floor=floor_us)
        self._last_init = 0

    def add(self, entry: Fields) -> None:
        """Take one entry (any order); those reconciliation does not look at are ignored."""
        key = (entry.get("source"), entry.get("action"))
        seq = entry.get("seq")
        if key in WATCHED and type(seq) is int:
            self._ledger.observe(key, entry.get("ts"), seq, entry.get("container"))
        elif key == ("events", "init"):
            us = ts_us(entry.get("ts"))
            if us is not None:
                self._last_init = max(self._last_init, us)

    def audit(self, *, now_us: int, grace_us: int) -> Audit:
        """Judge what was added as the sidecar would at ``now_us``."""
        ledger = self._ledger
        verdicts = ledger.judge(now_us, grace_us)
        missing_events = sum(max(0, v.hook_runs - 1) for v in verdicts)
        # Hook runs after the last start event: their start event is missing once
        # the grace period is over, unless Podman reported an ``init`` after them
        # (the container was initialised, not started: runc before 1.2 runs
        # poststart on create). Hook runs at or before a start still in its grace
        # period belong to that start.
        after = ledger.pending[-1][0] if ledger.pending else 0
        waiting = [
            us
            for us, kind in ledger.hooks
            if kind == POSTSTART and us > after and us + grace_us <= now_us
        ]
        if waiting and self._last_init >= waiting[-1]:
            waiting.pop()
        missing_events += len(waiting)
        return Audit(
            starts=len(verdicts),
            unaudited=tuple(v for v in verdicts if v.unaudited),
            pending=len(ledger.pending),
            unknown=sum(1 for v in verdicts if v.unknown),
            events_missing=missing_events,
        )
