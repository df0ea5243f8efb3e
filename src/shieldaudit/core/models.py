"""Pydantic models of what crosses a boundary: trail entries and WatchEvent lines.

The hook writes entries without these (it must not import pydantic); readers,
the CLI and tests validate with them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from shieldaudit.core.ids import is_container_id
from shieldaudit.core.timefmt import parse_ts

Source = Literal["hook", "events", "cli"]


def _check_ts(value: str) -> str:
    if not value.endswith("Z"):
        raise ValueError("timestamp must be RFC 3339 UTC ending in Z")
    parse_ts(value)
    return value


def _check_id(value: str) -> str:
    if not is_container_id(value):
        raise ValueError("container_id must be 64 lower-case hex characters")
    return value


Timestamp = Annotated[str, AfterValidator(_check_ts)]
ContainerId = Annotated[str, AfterValidator(_check_id)]
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


class WatchEvent(BaseModel):
    """The line the sidecar's ``--emit`` writes for each entry (docs/sidecar.md)."""

    model_config = ConfigDict(frozen=True)

    ts: str
    source: str
    action: str
    container: str
    container_id: str
    seq: int
    dest: str = ""
    detail: str = ""

    @classmethod
    def from_entry(cls, entry: dict[str, object]) -> WatchEvent:
        """Project an entry onto the WatchEvent fields."""
        return cls.model_validate(
            {k: entry.get(k) or "" for k in cls.model_fields} | {"seq": entry.get("seq")}
        )
