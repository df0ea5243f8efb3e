"""Podman event -> trail entry: a pure mapping, or the reason the event is skipped.

Podman's ``/libpod/events`` stream yields one JSON object per line, in the
Docker-compatible shape::

    {"status": "died", "id": "<64 hex>", "from": "<image>", "Type": "container",
     "Action": "died", "Actor": {"ID": "<64 hex>", "Attributes": {"name": "web",
     "image": "<image>", "containerExitCode": "3", "podId": "", ...labels}},
     "scope": "local", "time": 1795458373, "timeNano": 1795458373910091721,
     "HealthStatus": "healthy"}

:class:`PodmanEvent` is the boundary: what the listener takes from an event
is validated there, and an event that cannot be recorded is refused with one
reason. Nothing here does I/O, so every decision about an event (keep or skip,
which fields) is tested without Podman.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from shieldaudit.core.ids import is_container_id
from shieldaudit.core.timefmt import format_ns

if TYPE_CHECKING:
    from collections.abc import Mapping

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


def _check_container_id(value: str) -> str:
    if not is_container_id(value):
        raise ValueError("not 64 lower-case hex characters")
    return value


class PodmanEvent(BaseModel):
    """What the listener needs from one Podman event, validated (built by :meth:`of`).

    Podman's shape is normalised first (``status`` falls back to ``Action``,
    ``Actor.ID`` to ``id``, ``timeNano`` to whole seconds in ``time``; an
    ``Actor`` or ``Attributes`` that is not an object is ignored), then each
    field is checked. The fields are in the order their problems are reported:
    the first failing one is the event's one refusal reason.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["container"]
    status: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=64)]
    container_id: Annotated[str, Field(strict=True), AfterValidator(_check_container_id)]
    time_ns: Annotated[int, Field(strict=True, gt=0)]
    attributes: dict[str, object]
    image: object = ""
    health: object = None

    @classmethod
    def of(cls, event: Mapping[str, object]) -> PodmanEvent:
        """Validate a decoded Podman event.

        Raises:
            ValidationError: the event cannot be recorded (see :func:`refusal`).
        """
        actor = event.get("Actor")
        attributes: Mapping[str, object] = {}
        container_id = event.get("id")
        if isinstance(actor, dict):
            container_id = actor.get("ID", container_id)
            if isinstance(actor.get("Attributes"), dict):
                attributes = actor["Attributes"]
        return cls.model_validate(
            {
                "type": event.get("Type", "container"),
                "status": event.get("status", event.get("Action")),
                "container_id": container_id,
                "time_ns": _event_time_ns(event),
                "attributes": attributes,
                "image": attributes.get("image", event.get("from", "")),
                "health": event.get("HealthStatus") or attributes.get("health_status"),
            }
        )


def refusal(exc: ValidationError) -> Skipped:
    """Turn a :class:`PodmanEvent` validation failure into its one skip reason."""
    first = exc.errors(include_url=False)[0]
    field = first["loc"][0] if first["loc"] else ""
    value = first.get("input")
    if field == "type":
        return Skipped(SKIP_NOT_CONTAINER, f"event type {str(value)[:40]!r}")
    if field == "container_id":
        return Skipped(SKIP_BAD_ID, f"container ID {str(value)[:80]!r}")
    if field == "time_ns":
        return Skipped(SKIP_MALFORMED, "no time")
    return Skipped(SKIP_MALFORMED, "no status")


def map_event(event: dict[str, object]) -> Mapped | Skipped:
    """Turn a decoded Podman event into entry fields, or say why it is skipped.

    ``ts`` is the event's own time (not the write time): the entry then says
    when the thing happened, and a replayed event gets the same ``ts`` it would
    have had live. The exact time is kept in ``event_time_ns`` for dedup.
    """
    try:
        valid = PodmanEvent.of(event)
    except ValidationError as exc:
        return refusal(exc)
    fields: dict[str, object] = {
        "ts": format_ns(valid.time_ns),
        "source": SOURCE,
        "action": valid.status,
        "container": _text(valid.attributes.get("name", "")),
        "image": _text(valid.image),
        "pid": None,
        "exit_code": _exit_code(valid.status, valid.attributes.get("containerExitCode")),
        "detail": _detail(event, valid.attributes),
        EVENT_TIME_KEY: valid.time_ns,
    }
    if isinstance(valid.health, str) and valid.health:
        fields[HEALTH_KEY] = _text(valid.health)
    return Mapped(EventKey(valid.container_id, valid.status, valid.time_ns), fields)


def _event_time_ns(event: Mapping[str, object]) -> int | None:
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
