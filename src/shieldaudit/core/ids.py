"""Container IDs: what a runtime's full ID looks like, and the check every input goes through."""

from __future__ import annotations

from typing import Final

from shieldaudit.core.errors import InvalidContainerIdError

HEX_DIGITS: Final = frozenset("0123456789abcdef")
ID_LEN: Final = 64


def is_container_id(value: str) -> bool:
    """Return whether ``value`` is a runtime's full container ID (64 lower-case hex)."""
    return len(value) == ID_LEN and HEX_DIGITS.issuperset(value)


def check_container_id(value: str) -> str:
    """Return ``value`` if it is a full container ID, else raise InvalidContainerIdError."""
    if not isinstance(value, str) or not is_container_id(value):
        raise InvalidContainerIdError(str(value))
    return value
