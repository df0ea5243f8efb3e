"""The inotify side of watching: which directory each watch is, and what an event means.

Three kinds of directory watch share one inotify instance: ``containers/``
(trail directories appear and go), each ``containers/<id>/`` (something in the
trail changed), and ``state/`` (the hook's error file changed). :meth:`Watches.read`
turns raw events into those three meanings, so the watch loop never sees a
watch descriptor.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from shieldaudit.core import ids
from shieldaudit.sidecar.watch import inotify
from shieldaudit.store import layout

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

log = logging.getLogger("shieldaudit.sidecar")

CONTAINERS_MASK: Final = (
    inotify.IN_CREATE
    | inotify.IN_MOVED_TO
    | inotify.IN_DELETE
    | inotify.IN_MOVED_FROM
    | inotify.IN_ONLYDIR
    | inotify.IN_DONT_FOLLOW
)
TRAIL_MASK: Final = (
    inotify.IN_MODIFY
    | inotify.IN_CREATE
    | inotify.IN_MOVED_FROM
    | inotify.IN_MOVED_TO
    | inotify.IN_CLOSE_WRITE
    | inotify.IN_DELETE
    | inotify.IN_ONLYDIR
    | inotify.IN_DONT_FOLLOW
)
STATE_MASK: Final = inotify.IN_MODIFY | inotify.IN_CREATE | inotify.IN_MOVED_TO | inotify.IN_ONLYDIR

Kind = Literal["added", "removed", "changed", "hook_errors", "overflow"]


@dataclass(frozen=True, slots=True)
class Change:
    """What an inotify event means to the watch loop; ``cid`` is empty when not about a trail."""

    kind: Kind
    cid: str = ""


class Watches:
    """Directory watches on one inotify instance (a context manager)."""

    def __init__(
        self,
        root: Path,
        factory: Callable[[], inotify.Inotify] = inotify.Inotify,
    ) -> None:
        """Watch ``containers/`` and ``state/`` under ``root``.

        Raises:
            OSError: inotify is unavailable or cannot watch those directories.
        """
        self.root = root
        self._inotify = factory()
        try:
            self._containers_wd = self._inotify.add_watch(
                layout.containers_path(root), CONTAINERS_MASK
            )
            self._state_wd = self._inotify.add_watch(layout.state_path(root), STATE_MASK)
        except OSError:
            self._inotify.close()
            raise
        self._wd_to_id: dict[int, str] = {}
        self._id_to_wd: dict[str, int] = {}
        self._limit_logged = False

    def fileno(self) -> int:
        """Return the descriptor to select on."""
        return self._inotify.fileno()

    def add(self, cid: str, poll_interval: float) -> bool:
        """Watch a trail directory; return False when it must be polled instead.

        The kernel's ``fs.inotify.max_user_watches`` is the usual reason; the
        first time it is hit a warning says how to raise it.
        """
        try:
            wd = self._inotify.add_watch(layout.containers_path(self.root) / cid, TRAIL_MASK)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                return True  # removed already: the containers watch reports it
            if not self._limit_logged:
                log.warning(
                    "inotify watch limit reached (fs.inotify.max_user_watches): polling "
                    "unwatched trails every %gs; raise the limit to watch them all",
                    poll_interval,
                )
                self._limit_logged = True
            return False
        self._wd_to_id[wd] = cid
        self._id_to_wd[cid] = wd
        return True

    def remove(self, cid: str) -> None:
        """Stop watching a trail directory (a no-op when the kernel already dropped it)."""
        wd = self._id_to_wd.pop(cid, None)
        if wd is not None:
            self._wd_to_id.pop(wd, None)
            with contextlib.suppress(OSError):
                self._inotify.rm_watch(wd)

    def read(self) -> list[Change]:
        """Return what the queued events mean, in order."""
        changes = []
        for event in self._inotify.read_events():
            change = self._meaning(event)
            if change is not None:
                changes.append(change)
        return changes

    def _meaning(self, event: inotify.Event) -> Change | None:
        if event.mask & inotify.IN_Q_OVERFLOW:
            return Change("overflow")
        if event.wd == self._containers_wd:
            return _containers_meaning(event)
        if event.wd == self._state_wd:
            return Change("hook_errors") if event.name == layout.HOOK_ERRORS_FILE else None
        cid = self._wd_to_id.get(event.wd)
        if cid is None:
            return None
        if event.mask & inotify.IN_IGNORED:  # the directory is gone
            self._wd_to_id.pop(event.wd, None)
            self._id_to_wd.pop(cid, None)
            return None
        return Change("changed", cid)

    def close(self) -> None:
        """Close the instance (the kernel drops every watch)."""
        self._inotify.close()


def _containers_meaning(event: inotify.Event) -> Change | None:
    """A trail directory appeared or went (pure); anything else there is ignored."""
    if not ids.is_container_id(event.name):
        return None
    if event.mask & (inotify.IN_CREATE | inotify.IN_MOVED_TO):
        return Change("added", event.name)
    if event.mask & (inotify.IN_DELETE | inotify.IN_MOVED_FROM):
        return Change("removed", event.name)
    return None
