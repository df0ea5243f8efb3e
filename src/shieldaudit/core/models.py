"""Pydantic models of what crosses a boundary: trail entries and WatchEvent lines.

The hook writes entries without these (it must not import pydantic); every
reader decodes stored lines into :class:`Entry` (``store.reader.decode``).
"""

from __future__ import annotations

import json
from typing import Annotated, Final, Literal, Protocol, overload

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from shieldaudit.core.ids import ID_LEN

Source = Literal["hook", "events", "cli"]
_MISSING: Final = object()


class Fields(Protocol):
    """Read access that an :class:`Entry` and a plain dict of entry fields share."""

    @overload
    def get(self, key: str, /) -> object: ...
    @overload
    def get(self, key: str, default: object, /) -> object: ...


#: RFC 3339 in UTC as entries write it (``2026-11-22T10:42:12.211996Z``).
#: Checked by the validator's own regex engine: a check in Python per line
#: would cost more than decoding the line.
TIMESTAMP_PATTERN: Final = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?Z$"
)

Timestamp = Annotated[str, Field(pattern=TIMESTAMP_PATTERN)]
#: A full container ID (:func:`shieldaudit.core.ids.is_container_id`).
ContainerId = Annotated[str, Field(pattern=rf"^[0-9a-f]{{{ID_LEN}}}$")]
Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Entry(BaseModel):
    """One trail entry (docs/format.md, "Entries"); keys beyond the contract are kept as extras."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    seq: int = Field(ge=1)
    ts: Timestamp
    source: Source
    action: str
    container: str = ""
    container_id: ContainerId
    image: str = ""
    pid: int | None = None
    exit_code: int | None = None
    dest: str = ""
    detail: str = ""
    prev: Hex64
    chain: str
    mac: Hex64

    def get(self, key: str, default: object = None, /) -> object:
        """Return the value of a field or extra key, else ``default`` (as ``dict.get``).

        An absent optional field reads as its default (``""`` or None).
        """
        value = self.__dict__.get(key, _MISSING)
        if value is not _MISSING:
            return value
        extra = self.__pydantic_extra__
        return default if extra is None else extra.get(key, default)

    def __getitem__(self, key: str) -> object:
        """Return the value of a field or extra key (as ``dict[key]``); raise KeyError."""
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value


def _event_text(value: object) -> object:
    """A WatchEvent text field: an entry's missing or empty value is ``""``.

    A value that is not a string (only in a trail written by something other
    than the store) becomes its compact JSON text, so the line's text fields
    are always strings.
    """
    if isinstance(value, str):
        return value
    if not value:
        return ""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=str)


EventText = Annotated[str, BeforeValidator(_event_text)]


class WatchEvent(BaseModel):
    """The line the sidecar's ``--emit`` writes for each entry (docs/sidecar.md).

    The field order is the line's key order.
    """

    model_config = ConfigDict(frozen=True)

    ts: EventText = ""
    source: EventText = ""
    action: EventText = ""
    container: EventText = ""
    container_id: EventText = ""
    seq: int = Field(strict=True)
    dest: EventText = ""
    detail: EventText = ""

    @classmethod
    def from_entry(cls, entry: Fields) -> WatchEvent:
        """Project an entry (or an ``unaudited_start`` verdict) onto the WatchEvent fields."""
        return cls.model_validate({k: entry.get(k) for k in cls.model_fields})

    def json_line(self) -> bytes:
        """Return the event as one ASCII JSON line, newline included."""
        # pydantic's own JSON writer has no ensure_ascii: the line stays ASCII
        # whatever a container's name holds, as it always was.
        text = json.dumps(self.model_dump(), ensure_ascii=True, separators=(",", ":"))
        return text.encode() + b"\n"
