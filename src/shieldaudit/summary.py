"""What a trail says about its container, from a few entries (pure functions).

``ls`` and ``prune`` read a trail's first entry and its last few, never the
whole file; everything they show is derived here from those entries:

* the lifecycle state, folded over the tail's actions (hook stages and Podman
  event statuses) — see :data:`TRANSITIONS`;
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

from shieldaudit.store import chain

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from shieldaudit.watch.reconcile import Audit


class State(StrEnum):
    """A container's lifecycle state as its trail tells it."""

    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    REMOVED = "removed"
    UNKNOWN = "unknown"


#: Action -> state it moves the container to. Actions not listed (``prestart``,
#: ``exec``, ``kill``, ``health_status``, ``attach`` …) say nothing about the lifecycle.
#: Podman's ``init`` creates the container in the runtime without starting it.
TRANSITIONS: Final[dict[str, State]] = {
    # OCI hook stages
    "createRuntime": State.CREATED,
    "createContainer": State.CREATED,
    "startContainer": State.RUNNING,
    "poststart": State.RUNNING,
    "poststop": State.EXITED,
    # Podman event statuses
    "create": State.CREATED,
    "init": State.CREATED,
    "start": State.RUNNING,
    "restart": State.RUNNING,
    "pause": State.RUNNING,
    "unpause": State.RUNNING,
    "died": State.EXITED,
    "stop": State.EXITED,
    "cleanup": State.EXITED,
    "exited": State.EXITED,
    "remove": State.REMOVED,
}

#: States after which the container will never run again under this ID.
ENDED: Final = frozenset({State.EXITED, State.REMOVED})


def next_state(state: State, action: str) -> State:
    """Return the state after ``action``.

    ``removed`` is final: a late ``poststop`` hook or ``cleanup`` event that
    lands after ``remove`` (the listener and the hooks write independently)
    does not bring a removed container back to ``exited``.
    """
    if state is State.REMOVED:
        return state
    return TRANSITIONS.get(action, state)


def lifecycle_state(actions: Iterable[str]) -> State:
    """Fold the actions (oldest first) into a state; ``unknown`` when none is telling."""
    state = State.UNKNOWN
    for action in actions:
        state = next_state(state, action)
    return state


def latest_text(entries: Sequence[dict[str, object]], key: str) -> str:
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
    parsed = _parse_all(lines)
    return parsed is not None and _links(parsed)


def _parse_all(lines: Sequence[bytes]) -> list[tuple[bytes, dict[str, object]]] | None:
    pairs = []
    for line in lines:
        try:
            pairs.append((line, chain.parse_line(line)))
        except ValueError:
            return None
    return pairs


def _links(pairs: Sequence[tuple[bytes, dict[str, object]]]) -> bool:
    for line, entry in pairs:
        alg = entry.get("chain")
        if alg == chain.ALG_PLAIN:
            want, _ = chain.expected_mac(line, alg, chain.NO_KEYS)
            if want is None or entry.get("mac") != want:
                return False
    for (_, before), (_, after) in itertools.pairwise(pairs):
        seq = before.get("seq")
        if not isinstance(seq, int) or after.get("seq") != seq + 1:
            return False
        if after.get("prev") != before.get("mac"):
            return False
    if not pairs:
        return True
    first = pairs[0][1]
    return not (first.get("seq") == 1 and first.get("prev") != chain.GENESIS)


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
    audit: Audit | None = None  # unaudited starts; None: not reconciled (see cli.trails)

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
    first: dict[str, object] | None,
    tail_lines: Sequence[bytes],
    segments: int,
) -> Summary:
    """Build a container's summary from its first entry and the raw lines of its tail.

    ``entries`` is ``last seq - first seq + 1``: exact when the chain holds
    (``verify`` checks that), and cheap.
    """
    pairs: list[tuple[bytes, dict[str, object]]] = []
    unparsed = False
    for line in tail_lines:
        try:
            pairs.append((line, chain.parse_line(line)))
        except ValueError:
            unparsed = True
    tail = [entry for _, entry in pairs]
    last = tail[-1] if tail else None
    if first is None and tail:
        first = tail[0]
    first_seq = _seq(first)
    last_seq = _seq(last)
    if last_seq is None:
        last_seq = first_seq
    count = last_seq - first_seq + 1 if first_seq is not None and last_seq is not None else 0
    both = ([first] if first is not None else []) + tail
    return Summary(
        container_id=container_id,
        name=latest_text(both, "container"),
        image=latest_text(both, "image"),
        entries=max(count, 0),
        first_seq=first_seq,
        last_seq=last_seq,
        first_ts=_text(first, "ts"),
        last_ts=_text(last, "ts") or _text(first, "ts"),
        last_action=_text(last, "action") or _text(first, "action"),
        state=lifecycle_state(str(e.get("action", "")) for e in both),
        tail_ok=(not unparsed and _links(pairs)) if tail_lines else None,
        segments=segments,
    )


def _seq(entry: dict[str, object] | None) -> int | None:
    if entry is None:
        return None
    seq = entry.get("seq")
    return seq if isinstance(seq, int) else None


def _text(entry: dict[str, object] | None, key: str) -> str:
    if entry is None:
        return ""
    value = entry.get(key)
    return value if isinstance(value, str) else ""
