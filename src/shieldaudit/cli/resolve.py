"""Turning what a person types (a name or an ID prefix) into one container ID."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shieldaudit.errors import AmbiguousContainerError, ContainerNotFoundError, UsageError
from shieldaudit.store.reader import TrailDir, list_container_ids

if TYPE_CHECKING:
    from pathlib import Path

_HEX = frozenset("0123456789abcdef")


def _names(root: Path, container_id: str) -> tuple[str, str]:
    """Return (latest name, latest ts) recorded in a trail, reading only its tail."""
    try:
        with TrailDir(root, container_id) as trail:
            for entry in reversed(trail.last_entries(16)):
                name = entry.get("container")
                if isinstance(name, str) and name:
                    return name, str(entry.get("ts") or "")
    except ContainerNotFoundError:
        pass
    return "", ""


def candidates(root: Path, query: str) -> list[str]:
    """Return the IDs whose full ID starts with ``query`` or whose latest name is ``query``."""
    ids = list_container_ids(root)
    if query in ids:
        return [query]
    lowered = query.lower()
    matches = []
    if lowered and _HEX.issuperset(lowered):
        matches = [i for i in ids if i.startswith(lowered)]
    if matches:
        return matches
    named = [(ts, i) for i in ids for name, ts in [_names(root, i)] if name == query]
    named.sort(reverse=True)
    return [i for _, i in named]


def resolve_container(root: Path, query: str, *, newest_by_name: bool = False) -> str:
    """Return the one container ID ``query`` names.

    Raises:
        ContainerNotFoundError: nothing matches (exit 2).
        AmbiguousContainerError: an ID prefix matches several trails (exit 2),
            or a name matches several and ``newest_by_name`` is False.
    """
    if not query:
        raise UsageError("empty container name or ID")
    found = candidates(root, query)
    if not found:
        raise ContainerNotFoundError(
            f"no trail matches {query!r}: give a container name or ID prefix "
            "('shieldaudit ls' lists them)",
        )
    if len(found) > 1:
        is_prefix = found[0].startswith(query.lower())
        if newest_by_name and not is_prefix:
            return found[0]
        listed = ", ".join(i[:12] for i in found[:10]) + (" …" if len(found) > 10 else "")
        raise AmbiguousContainerError(
            f"{query!r} matches {len(found)} containers: {listed}; give more of the ID",
        )
    return found[0]
