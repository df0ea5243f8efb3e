"""What reading trails found since the last checkpoint: counts waiting to be published.

Counts are held here until the checkpoint that covers them is on disk, then
added to the Prometheus counters. So a scrape never shows a count that a
restart (even after ``kill -9``) would count again: every entry is counted by
exactly one process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from shieldaudit.core.actions import HOOK_STAGES, SOURCES

HOOK_ACTIONS: Final = HOOK_STAGES
#: Podman container event statuses.
EVENT_ACTIONS: Final = (
    "attach",
    "checkpoint",
    "cleanup",
    "commit",
    "copy",
    "create",
    "died",
    "exec",
    "exec_died",
    "exited",
    "export",
    "health_status",
    "import",
    "init",
    "kill",
    "mount",
    "pause",
    "prune",
    "remove",
    "rename",
    "restart",
    "restore",
    "start",
    "stop",
    "sync",
    "unmount",
    "unpause",
    "update",
)
#: Series exported at 0 from the start: every stage for hooks, every status for events.
KNOWN_SERIES: Final = tuple(
    [("hook", a) for a in HOOK_ACTIONS] + [("events", a) for a in EVENT_ACTIONS]
)
#: Anything else is folded into ``other`` so a hostile trail cannot create unbounded series.
OTHER: Final = "other"
_ACTIONS: Final = frozenset(HOOK_ACTIONS + EVENT_ACTIONS)
_SOURCES: Final = frozenset(SOURCES)


def series_of(source: object, action: object) -> tuple[str, str]:
    """Return the ``(source, action)`` labels an entry is counted under (pure).

    Known sources and actions keep their names; anything else becomes ``other``,
    so the number of series stays bounded whatever a trail contains.
    """
    src = source if isinstance(source, str) and source in _SOURCES else OTHER
    act = action if isinstance(action, str) and action in _ACTIONS else OTHER
    return src, act


@dataclass(slots=True)
class Tally:
    """Counts found since the last publish."""

    events: dict[tuple[object, object], int] = field(default_factory=dict)
    rotations: int = 0
    parse_errors: int = 0
    integrity_failures: int = 0
    hook_errors: int = 0
    unaudited_starts: int = 0

    def empty(self) -> bool:
        """Return whether there is nothing to publish."""
        return not (
            self.events
            or self.rotations
            or self.parse_errors
            or self.integrity_failures
            or self.hook_errors
            or self.unaudited_starts
        )

    def take(self) -> Tally:
        """Return the current counts and start afresh."""
        taken = Tally(
            self.events,
            self.rotations,
            self.parse_errors,
            self.integrity_failures,
            self.hook_errors,
            self.unaudited_starts,
        )
        self.events = {}
        self.rotations = self.parse_errors = self.integrity_failures = self.hook_errors = 0
        self.unaudited_starts = 0
        return taken
