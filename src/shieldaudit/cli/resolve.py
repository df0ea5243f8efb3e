"""Turning what a person types (a name or an ID prefix) into container IDs.

Order, as in ``podman``: the full ID; then a unique ID prefix (queries made
only of hex digits); then a name. A name used by several containers over time
(``podman run --name web`` again after ``rm``) means the most recent of them,
unless every one is asked for. A name made only of hex digits that is also an
ID prefix is taken as the prefix: give the ID instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from shieldaudit.cli.output import warn
from shieldaudit.core.errors import AmbiguousContainerError, ContainerNotFoundError, UsageError
from shieldaudit.core.ids import HEX_DIGITS
from shieldaudit.store.trails import Trails

if TYPE_CHECKING:
    from pathlib import Path

    from shieldaudit.store.summary import Summary

#: Candidates listed in an "ambiguous" message.
LISTED: Final = 10


def _newest_first(summaries: list[Summary]) -> list[Summary]:
    return sorted(summaries, key=lambda s: (s.last_ts, s.container_id), reverse=True)


def _describe(summaries: list[Summary]) -> str:
    shown = [
        f"{s.container_id[:12]}" + (f" ({s.name})" if s.name else "") for s in summaries[:LISTED]
    ]
    more = f" and {len(summaries) - LISTED} more" if len(summaries) > LISTED else ""
    return ", ".join(shown) + more


def matches(trails: Trails, query: str) -> tuple[str, list[Summary]]:
    """Return how ``query`` matched (``id``, ``prefix``, ``name``, ``none``) and what, newest first.

    Reads the tail of every trail only when a name must be looked up.
    """
    ids = trails.ids()
    lowered = query.lower()
    if lowered in ids:
        found = trails.summary(lowered)
        return ("id", [found]) if found is not None else ("none", [])
    if HEX_DIGITS.issuperset(lowered):
        prefixed = [s for i in ids if i.startswith(lowered) for s in [trails.summary(i)] if s]
        if prefixed:
            return "prefix", _newest_first(prefixed)
    named = [s for i in ids for s in [trails.summary(i)] if s is not None and s.name == query]
    return ("name", _newest_first(named)) if named else ("none", [])


def resolve_all(root: Path, query: str, *, every: bool = False) -> list[str]:
    """Return the container IDs ``query`` names, oldest first.

    With ``every`` False: exactly one ID (the newest for a reused name). With
    ``every`` True: each container the name was given to, or each one an ID
    prefix matches.

    Raises:
        UsageError: an empty query (exit 2).
        ContainerNotFoundError: nothing matches (exit 2).
        AmbiguousContainerError: an ID prefix matches several trails (exit 2);
            the message lists them.
    """
    if not query:
        raise UsageError("empty container name or ID: give a name or an ID prefix")
    with Trails(root) as trails:
        kind, found = matches(trails, query)
        warn(trails)
    if not found:
        raise ContainerNotFoundError(
            f"no trail matches {query!r}: give a container name or ID prefix "
            "('shieldaudit ls' lists them)",
        )
    if every:
        return [s.container_id for s in reversed(found)]
    if kind == "prefix" and len(found) > 1:
        raise AmbiguousContainerError(
            f"{query!r} matches {len(found)} containers: {_describe(found)}; "
            "give more of the ID (or --all where offered)",
        )
    return [found[0].container_id]


def resolve_container(root: Path, query: str) -> str:
    """Return the one container ID ``query`` names (the newest for a reused name).

    Raises:
        UsageError: see :func:`resolve_all`.
    """
    return resolve_all(root, query)[0]
