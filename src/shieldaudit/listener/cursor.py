"""The listener's memory: the persisted cursor, the bounded dedup set, and the trail scan.

Exactly-once rests on two facts:

* the **cursor** (``<root>/state/listener-cursor.json``) is the newest event
  time written; a replay starts a safe margin before it, so nothing written to
  Podman's event log after the last entry can be missed;
* the **trails themselves** are the record of what was written: every events
  entry carries ``event_time_ns``, so after a restart an event older than the
  process is checked against the tail of its container's trail. A SIGKILL
  between an entry's write and the cursor's save therefore cannot duplicate it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from shieldaudit.core.errors import ContainerNotFoundError, StorageError
from shieldaudit.listener.events import EVENT_TIME_KEY, SOURCE, EventKey
from shieldaudit.store import chain, layout
from shieldaudit.store.reader import TrailDir
from shieldaudit.store.tailscan import reverse_lines

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger("shieldaudit.listener")

CURSOR_FILE: Final = "listener-cursor.json"
CURSOR_VERSION: Final = 1
_NS_PER_S: Final = 1_000_000_000
#: How far before the cursor a replay starts. Podman stamps an event when it
#: creates it and appends it to its log a little later, so the log is only
#: nearly in time order; the margin covers that (and Podman-py's whole seconds).
REPLAY_OVERLAP_NS: Final = 5 * _NS_PER_S
#: Entries in a trail are in stream order, not strictly time order: a trail scan
#: reads this far past the replay start before it trusts that it is done.
SCAN_SLACK_NS: Final = 60 * _NS_PER_S
#: A trail scan never reads more lines than this (hook entries included).
MAX_SCAN_LINES: Final = 100_000


@dataclass(frozen=True, slots=True)
class Cursor:
    """The newest event time written (or, before any, the first start time)."""

    time_ns: int

    def replay_since(self) -> int:
        """Return the ``since`` (whole seconds, inclusive in Podman) for a replay."""
        return max(0, (self.time_ns - REPLAY_OVERLAP_NS) // _NS_PER_S)

    def floor_ns(self) -> int:
        """Return the oldest event time a replay from this cursor can deliver."""
        return self.replay_since() * _NS_PER_S


class CursorStore:
    """Load and atomically save the cursor under ``<root>/state/``."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        """Remember the root; nothing is opened until first use."""
        self.root = root
        self.path = layout.state_path(root, CURSOR_FILE)
        self._fsync = fsync

    def load(self) -> Cursor | None:
        """Return the saved cursor, or None when there is none or it is unreadable.

        An unreadable cursor is moved aside (``…json.corrupt``) and reported
        once: the listener then starts as on a first start.
        """
        try:
            data = self._read()
        except FileNotFoundError:
            return None
        try:
            value = json.loads(data)
            time_ns = value["time_ns"]
            if not isinstance(time_ns, int) or isinstance(time_ns, bool) or time_ns < 0:
                raise TypeError("time_ns is not a non-negative integer")  # noqa: TRY301
        except (ValueError, KeyError, TypeError) as exc:
            aside = self.path.with_name(CURSOR_FILE + ".corrupt")
            with contextlib.suppress(OSError):
                self.path.replace(aside)
            log.warning(
                "listener: cursor %s is unreadable (%s); moved to %s, starting from now",
                self.path,
                exc,
                aside,
            )
            return None
        return Cursor(time_ns)

    def _read(self) -> bytes:
        root_fd = layout.open_root(self.root, create=True)
        try:
            state_fd = layout.open_subdir(root_fd, layout.STATE_DIR, self.path.parent, create=True)
            try:
                fd = layout.open_regular(state_fd, CURSOR_FILE, os.O_RDONLY, self.path)
                try:
                    return os.read(fd, 64 * 1024)
                finally:
                    os.close(fd)
            finally:
                os.close(state_fd)
        finally:
            os.close(root_fd)

    def save(self, cursor: Cursor, url: str) -> None:
        """Write the cursor atomically: temp file, fsync, rename.

        A crash at any point leaves either the old cursor or the new one, never
        a half-written file that would make the next start lose its place.
        """
        body = json.dumps(
            {"version": CURSOR_VERSION, "time_ns": cursor.time_ns, "url": url},
            separators=(",", ":"),
        ).encode()
        tmp_name = f".{CURSOR_FILE}.{os.getpid()}.tmp"
        try:
            root_fd = layout.open_root(self.root, create=True)
            try:
                state_fd = layout.open_subdir(
                    root_fd, layout.STATE_DIR, self.path.parent, create=True
                )
            finally:
                os.close(root_fd)
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp_name, dir_fd=state_fd)
                fd = layout.open_regular(
                    state_fd,
                    tmp_name,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                    self.path.with_name(tmp_name),
                )
                try:
                    os.write(fd, body + b"\n")
                    if self._fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                # No fsync of the directory: if a crash loses the rename, the
                # old cursor remains and the next replay is only longer (dedup
                # absorbs it). The file itself is synced before the rename, so a
                # crash can never leave an empty cursor in its place.
                os.replace(tmp_name, CURSOR_FILE, src_dir_fd=state_fd, dst_dir_fd=state_fd)
            finally:
                os.close(state_fd)
        except OSError as exc:
            raise StorageError(f"cannot save the listener cursor {self.path}: {exc}") from None


class Seen:
    """Event keys already written, per container, bounded to the replay window.

    Keys older than the oldest event a replay can still deliver are dropped by
    :meth:`prune`, so memory follows the event rate, not the uptime.
    """

    def __init__(self) -> None:
        """Start empty."""
        self._by_container: dict[str, set[tuple[str, int]]] = {}
        self._size = 0

    def __contains__(self, key: EventKey) -> bool:
        """Return whether ``key`` was written."""
        keys = self._by_container.get(key.container_id)
        return keys is not None and (key.status, key.time_ns) in keys

    def __len__(self) -> int:
        """Return how many keys are held."""
        return self._size

    def add(self, key: EventKey) -> None:
        """Remember a written key."""
        keys = self._by_container.setdefault(key.container_id, set())
        before = len(keys)
        keys.add((key.status, key.time_ns))
        self._size += len(keys) - before

    def prune(self, floor_ns: int) -> None:
        """Forget keys older than ``floor_ns`` (a replay can no longer deliver them)."""
        for container_id in list(self._by_container):
            keys = self._by_container[container_id]
            kept = {k for k in keys if k[1] >= floor_ns}
            self._size -= len(keys) - len(kept)
            if kept:
                self._by_container[container_id] = kept
            else:
                del self._by_container[container_id]


def recent_event_keys(root: Path, container_id: str, floor_ns: int) -> set[EventKey]:
    """Return the keys of the events entries at the end of a trail, back to ``floor_ns``.

    Reads the trail backwards (newest segment first) and stops at the first
    events entry older than ``floor_ns - SCAN_SLACK_NS``, so the cost is the
    replay window, not the trail's length. A missing trail has no keys.
    """
    keys: set[EventKey] = set()
    try:
        trail = TrailDir(root, container_id)
    except ContainerNotFoundError:
        return keys
    stop_before = floor_ns - SCAN_SLACK_NS
    scanned = 0
    with trail:
        for segment in reversed(trail.segments()):
            try:
                fd = trail.open_segment(segment)
            except FileNotFoundError:
                continue  # sealed away by retention while we looked
            try:
                for data in reverse_lines(fd, os.fstat(fd).st_size):
                    scanned += 1
                    if scanned > MAX_SCAN_LINES:
                        return keys
                    key = _key_of(container_id, data)
                    if key is None:
                        continue
                    if key.time_ns < stop_before:
                        return keys
                    keys.add(key)
            finally:
                os.close(fd)
    return keys


def _key_of(container_id: str, data: bytes) -> EventKey | None:
    # Cheap pre-check: most lines of a busy trail can be skipped without JSON.
    if b'"source":"events"' not in data:
        return None
    try:
        entry = chain.parse_line(data)
    except ValueError:
        return None
    time_ns = entry.get(EVENT_TIME_KEY)
    action = entry.get("action")
    if entry.get("source") != SOURCE or not isinstance(action, str):
        return None
    if not isinstance(time_ns, int) or isinstance(time_ns, bool):
        return None
    return EventKey(container_id, action, time_ns)
