"""What a trail says about its container, from a few entries (pure functions).

``ls`` and ``prune`` read a trail's first entry and its last few, never the
whole file; everything they show is derived here from those entries:

* the lifecycle state, folded over the head's and tail's actions (hook stages
  and Podman event statuses) — see :data:`ROLES` and :func:`step`;
* the latest name and image recorded;
* a cheap integrity hint: whether the tail entries link to each other
  (``seq`` +1, ``prev`` = previous ``mac``, each ``mac`` matching its line).
  This is not ``verify``: it says nothing about the rest of the trail.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Final

from shieldaudit.core.timefmt import parse_ts
from shieldaudit.store import chain
from shieldaudit.store.reader import try_decode

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from datetime import datetime

    from shieldaudit.core.models import Entry, Fields
    from shieldaudit.store.reconcile import Audit


class State(StrEnum):
    """A container's lifecycle state as its trail tells it."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    EXITED = "exited"
    FAILED = "failed"
    REMOVED = "removed"
    UNKNOWN = "unknown"


class Role(StrEnum):
    """What a lifecycle action says, whichever source wrote it."""

    CREATE = "create"  # a (new) attempt to run begins
    START = "start"  # its process started
    PAUSE = "pause"
    UNPAUSE = "unpause"
    END = "end"  # its process ended, or the attempt was cleaned up
    REMOVE = "remove"


HOOK: Final = "hook"
EVENTS: Final = "events"

#: Action -> (family, role). The family is the source that writes the action:
#: OCI hook stages and Podman event statuses never share a name. Actions not
#: listed (``prestart``, ``exec``, ``kill``, ``health_status``, ``attach`` …)
#: say nothing about the lifecycle. Podman's ``init`` creates the container in
#: the runtime without starting it.
ROLES: Final[dict[str, tuple[str, Role]]] = {
    # OCI hook stages
    "createRuntime": (HOOK, Role.CREATE),
    "createContainer": (HOOK, Role.CREATE),
    "startContainer": (HOOK, Role.START),
    "poststart": (HOOK, Role.START),
    "poststop": (HOOK, Role.END),
    # Podman event statuses
    "create": (EVENTS, Role.CREATE),
    "init": (EVENTS, Role.CREATE),
    "start": (EVENTS, Role.START),
    "restart": (EVENTS, Role.START),
    "pause": (EVENTS, Role.PAUSE),
    "unpause": (EVENTS, Role.UNPAUSE),
    "died": (EVENTS, Role.END),
    "stop": (EVENTS, Role.END),
    "cleanup": (EVENTS, Role.END),
    "exited": (EVENTS, Role.END),
    "remove": (EVENTS, Role.REMOVE),
}

#: States in which nothing runs under this ID (``prune`` may remove such a trail).
ENDED: Final = frozenset({State.EXITED, State.FAILED, State.REMOVED})

#: A runtime create (``createRuntime`` hook) with nothing after it for this long
#: is a create that failed; before that, it is a start under way.
START_GRACE_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """The fold's state: the lifecycle state and what each source saw of the current run.

    ``started`` maps a family (``hook``, ``events``) to whether that source saw
    the process start since it saw the run's create: True, False, or absent
    when unknown (the source saw no create, or entries are missing between the
    trail's head and tail). ``starting``: the last telling action is the hook's
    runtime create, so the container is being started, or its create failed
    without any further word (:func:`settle` tells them apart by time).
    """

    state: State = State.UNKNOWN
    started: tuple[tuple[str, bool], ...] = ()
    starting: bool = False

    def saw_start(self, family: str) -> bool | None:
        """Return what ``family`` saw: started (True), not started (False), unknown (None)."""
        return dict(self.started).get(family)


def step(lifecycle: Lifecycle, action: str | None) -> Lifecycle:
    """Return the lifecycle after ``action``; None stands for entries not read (a gap).

    * create: ``created``; that source has not seen this run start.
    * start: ``running``. pause: ``paused``. unpause: ``running``.
    * end: ``failed`` when that source saw the run's create but not its start
      (the process never ran), else ``exited`` (a run already failed stays
      ``failed`` when a source that saw nothing of it reports the end too).
    * remove: ``removed``, which is final: the listener and the hooks write
      independently, so a ``poststop`` or ``cleanup`` may land after ``remove``.
    """
    state = lifecycle.state
    found = ROLES.get(action) if action is not None else None
    if state is State.REMOVED or (action is not None and found is None):
        return lifecycle
    if found is None:
        return Lifecycle(state)  # a gap: what each source saw of this run is unknown
    family, role = found
    started = dict(lifecycle.started)
    if role is Role.CREATE:
        started[family] = False
        state = State.CREATED
    elif role in {Role.START, Role.UNPAUSE}:
        started[family] = True
        state = State.RUNNING
    elif role is Role.PAUSE:
        state = State.PAUSED
    elif role is Role.END:
        saw = lifecycle.saw_start(family)
        failed = saw is False or (saw is None and state is State.FAILED)
        state = State.FAILED if failed else State.EXITED
    else:
        return Lifecycle(State.REMOVED)
    starting = role is Role.CREATE and family == HOOK
    return Lifecycle(state, tuple(sorted(started.items())), starting=starting)


def fold(actions: Iterable[str | None]) -> Lifecycle:
    """Fold the actions (oldest first; None for a gap) into a lifecycle."""
    lifecycle = Lifecycle()
    for action in actions:
        lifecycle = step(lifecycle, action)
    return lifecycle


def settle(lifecycle: Lifecycle, quiet_s: float | None) -> State:
    """Return the state to show, ``quiet_s`` seconds after the trail's last entry.

    A runtime create with nothing after it is ``created`` (a start under way)
    for :data:`START_GRACE_S`, then ``failed``. Without a time (None) it stays
    ``created``.
    """
    if lifecycle.starting and quiet_s is not None and quiet_s >= START_GRACE_S:
        return State.FAILED
    return lifecycle.state


def lifecycle_state(actions: Iterable[str | None], quiet_s: float | None = None) -> State:
    """Fold the actions (oldest first; None for a gap) into a state; ``unknown`` when none tells.

    ``quiet_s``: seconds since the last entry (see :func:`settle`).
    """
    return settle(fold(actions), quiet_s)


def latest_text(entries: Sequence[Fields], key: str) -> str:
    """Return the newest non-empty string value of ``key`` (entries oldest first)."""
    for entry in reversed(entries):
        value = entry.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def tail_links(lines: Sequence[bytes]) -> bool:
    """Return whether consecutive raw lines (oldest first) form an intact chain piece.

    Checks what needs no key: each unkeyed line's mac matches its content, and
    each entry's ``seq`` and ``prev`` follow the one before. Keyed macs are
    left to ``verify`` (which has the key).
    """
    pairs = [(line, try_decode(line)) for line in lines]
    return _links(pairs)


def _links(pairs: Sequence[tuple[bytes, Entry | None]]) -> bool:
    """Return whether every line is an entry and they link (see :func:`tail_links`)."""
    entries: list[Entry] = []
    for line, entry in pairs:
        if entry is None:
            return False
        if entry.chain == chain.ALG_PLAIN:
            want, _ = chain.expected_mac(line, entry.chain, chain.NO_KEYS)
            if want is None or entry.mac != want:
                return False
        entries.append(entry)
    for before, after in itertools.pairwise(entries):
        if after.seq != before.seq + 1 or after.prev != before.mac:
            return False
    return not (entries and entries[0].seq == 1 and entries[0].prev != chain.GENESIS)


@dataclass(frozen=True, slots=True)
class Summary:
    """One container's row in ``ls``: what its first and last entries say."""

    container_id: str
    name: str
    image: str
    entries: int
    first_seq: int | None
    last_seq: int | None
    first_ts: str
    last_ts: str
    last_action: str
    state: State
    tail_ok: bool | None  # None: no entries to judge
    segments: int
    audit: Audit | None = None  # unaudited starts; None: not reconciled (see store.trails)

    def as_dict(self) -> dict[str, object]:
        """Return the row as a JSON-ready dict."""
        return {
            "container_id": self.container_id,
            "name": self.name,
            "image": self.image,
            "entries": self.entries,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "first_ts": self.first_ts or None,
            "last_ts": self.last_ts or None,
            "last_action": self.last_action,
            "state": str(self.state),
            "tail_ok": self.tail_ok,
            "segments": self.segments,
            **(self.audit.as_dict() if self.audit is not None else {}),
        }


def summarise(
    container_id: str,
    first: Entry | None,
    tail: Sequence[tuple[bytes, Entry | None]],
    segments: int,
    now: datetime | None = None,
    *,
    audit: Audit | None = None,
) -> Summary:
    """Build a container's summary from its first entry and its tail.

    ``tail`` holds the last lines as read, each with its entry (None: the line
    is not one). ``entries`` is ``last seq - first seq + 1``: exact when the
    chain holds (``verify`` checks that), and cheap. ``now`` dates the state (a
    runtime create with nothing after it turns ``failed`` after a while); None
    keeps it ``created``.
    """
    entries = [entry for _, entry in tail if entry is not None]
    last = entries[-1] if entries else None
    if first is None and entries:
        first = entries[0]
    first_seq = first.seq if first is not None else None
    last_seq = last.seq if last is not None else first_seq
    count = last_seq - first_seq + 1 if first_seq is not None and last_seq is not None else 0
    both = ([first] if first is not None else []) + entries
    return Summary(
        container_id=container_id,
        name=latest_text(both, "container"),
        image=latest_text(both, "image"),
        entries=max(count, 0),
        first_seq=first_seq,
        last_seq=last_seq,
        first_ts=first.ts if first is not None else "",
        last_ts=last.ts if last is not None else (first.ts if first is not None else ""),
        last_action=(last.action if last is not None else "")
        or (first.action if first is not None else ""),
        state=settle(fold(_actions(first, entries)), _quiet_s(last or first, now)),
        tail_ok=_links(tail) if tail else None,
        segments=segments,
        audit=audit,
    )


def _actions(first: Entry | None, tail: Sequence[Entry]) -> list[str | None]:
    """Return the head's and the tail's actions, oldest first; None where entries are missing.

    The head entry is left out when the tail already holds it (a short trail).
    """
    actions: list[str | None] = [e.action for e in tail]
    if first is None or (tail and tail[0].seq <= first.seq):
        return actions
    gap = bool(tail) and tail[0].seq > first.seq + 1
    return [first.action, None, *actions] if gap else [first.action, *actions]


def _quiet_s(entry: Entry | None, now: datetime | None) -> float | None:
    """Return the seconds from the entry's time to ``now`` (None when either is unknown)."""
    if entry is None or now is None:
        return None
    try:
        return (now - parse_ts(entry.ts)).total_seconds()
    except ValueError:
        return None
