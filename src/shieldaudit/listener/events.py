"""Podman event -> trail entry: a pure mapping, or the reason the event is skipped.

Podman's ``/libpod/events`` stream yields one JSON object per line, in the
Docker-compatible shape::

    {"status": "died", "id": "<64 hex>", "from": "<image>", "Type": "container",
     "Action": "died", "Actor": {"ID": "<64 hex>", "Attributes": {"name": "web",
     "image": "<image>", "containerExitCode": "3", "podId": "", ...labels}},
     "scope": "local", "time": 1795458373, "timeNano": 1795458373910091721,
     "HealthStatus": "healthy"}

Nothing here does I/O, so every decision about an event (keep or skip, which
fields) is tested without Podman.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from shieldaudit.core.ids import is_container_id
from shieldaudit.core.timefmt import format_ns

SOURCE: Final = "events"
#: Extra entry key holding the event's own time in ns: half of the dedup key.
EVENT_TIME_KEY: Final = "event_time_ns"
HEALTH_KEY: Final = "health_status"
#: Statuses whose ``containerExitCode`` is meaningful; Podman sends "0" on every other one.
EXIT_STATUSES: Final = frozenset({"died", "exec_died"})
#: ``detail`` is cut here so a container with huge labels cannot make an entry
#: exceed the writer's size limit (which would block the event forever).
MAX_DETAIL_CHARS: Final = 4096
MAX_TEXT_CHARS: Final = 1024
_NS_PER_S: Final = 1_000_000_000
_KNOWN_TOP: Final = frozenset(
    {"status", "id", "from", "Type", "Action", "Actor", "scope", "time", "timeNano", "HealthStatus"}
)
_FOLDED_ATTRIBUTES: Final = frozenset({"name", "image", "containerExitCode"})
_PLAIN_VALUE: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:/@+,"
)


@dataclass(frozen=True, slots=True, order=True)
class EventKey:
    """What identifies one event across replays: container ID, status and time in ns."""

    container_id: str
    status: str
    time_ns: int


@dataclass(frozen=True, slots=True)
class Mapped:
    """An event to record: its key and the entry fields for :class:`TrailWriter`."""

    key: EventKey
    fields: dict[str, object]


@dataclass(frozen=True, slots=True)
class Skipped:
    """An event that is not recorded, with a short reason (a metrics-friendly word)."""

    reason: str
    detail: str = ""


#: Skip reasons, so counters have a fixed vocabulary.
SKIP_MALFORMED: Final = "malformed"
SKIP_NOT_CONTAINER: Final = "not_container"
SKIP_BAD_ID: Final = "bad_id"


def decode_line(line: bytes | str) -> dict[str, object] | Skipped:
    """Parse one line of the stream; anything but a JSON object is ``malformed``."""
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        return Skipped(SKIP_MALFORMED, f"not JSON: {exc}")
    if not isinstance(value, dict):
        return Skipped(SKIP_MALFORMED, f"not a JSON object: {type(value).__name__}")
    return value


def map_event(event: dict[str, object]) -> Mapped | Skipped:
    """Turn a decoded Podman event into entry fields, or say why it is skipped.

    ``ts`` is the event's own time (not the write time): the entry then says
    when the thing happened, and a replayed event gets the same ``ts`` it would
    have had live. The exact time is kept in ``event_time_ns`` for dedup.
    """
    kind = event.get("Type", "container")
    if kind != "container":
        return Skipped(SKIP_NOT_CONTAINER, f"event type {str(kind)[:40]!r}")
    status = event.get("status", event.get("Action"))
    if not isinstance(status, str) or not status or len(status) > 64:
        return Skipped(SKIP_MALFORMED, "no status")
    actor = event.get("Actor")
    attributes: dict[str, object] = {}
    container_id: object = event.get("id")
    if isinstance(actor, dict):
        container_id = actor.get("ID", container_id)
        raw_attributes = actor.get("Attributes")
        if isinstance(raw_attributes, dict):
            attributes = raw_attributes
    if not isinstance(container_id, str) or not is_container_id(container_id):
        return Skipped(SKIP_BAD_ID, f"container ID {str(container_id)[:80]!r}")
    time_ns = _event_time_ns(event)
    if time_ns is None:
        return Skipped(SKIP_MALFORMED, "no time")
    image = attributes.get("image", event.get("from", ""))
    fields: dict[str, object] = {
        "ts": format_ns(time_ns),
        "source": SOURCE,
        "action": status,
        "container": _text(attributes.get("name", "")),
        "image": _text(image),
        "pid": None,
        "exit_code": _exit_code(status, attributes.get("containerExitCode")),
        "detail": _detail(event, attributes),
        EVENT_TIME_KEY: time_ns,
    }
    health = event.get("HealthStatus") or attributes.get("health_status")
    if isinstance(health, str) and health:
        fields[HEALTH_KEY] = _text(health)
    return Mapped(EventKey(container_id, status, time_ns), fields)


def _event_time_ns(event: dict[str, object]) -> int | None:
    """Prefer ``timeNano``; fall back to whole seconds in ``time``."""
    nano = event.get("timeNano")
    if isinstance(nano, int) and not isinstance(nano, bool) and nano > 0:
        return nano
    seconds = event.get("time")
    if isinstance(seconds, int) and not isinstance(seconds, bool) and seconds > 0:
        return seconds * _NS_PER_S
    return None


def _text(value: object) -> str:
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    return text[:MAX_TEXT_CHARS]


def _exit_code(status: str, value: object) -> int | None:
    if status not in EXIT_STATUSES:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _detail(event: dict[str, object], attributes: dict[str, object]) -> str:
    """Render what has no column of its own as ``key=value`` pairs, sorted, bounded.

    That is the remaining attributes (labels, ``podId``…, empty ones dropped) and
    any top-level key this version does not know; values are JSON-quoted when
    they are not plain words, so the pairs can always be split back apart.
    """
    pairs: dict[str, object] = {
        name: value
        for name, value in attributes.items()
        if name not in _FOLDED_ATTRIBUTES and value not in ("", None)
    }
    for name, value in event.items():
        if name not in _KNOWN_TOP and value not in ("", None):
            pairs.setdefault(name, value)
    text = " ".join(f"{_word(name)}={_word(pairs[name])}" for name in sorted(pairs))
    if len(text) > MAX_DETAIL_CHARS:
        text = text[: MAX_DETAIL_CHARS - 1] + "…"
    return text


def _word(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    if text and _PLAIN_VALUE.issuperset(text):
        return text
    return json.dumps(text)
