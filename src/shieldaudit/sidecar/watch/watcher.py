"""The watch loop: discover trails, wait on inotify (or poll), read, checkpoint, publish.

One thread, one ``selectors`` loop over two descriptors: the inotify instance
(directory watches on ``containers/``, on each container directory and on
``state/``) and a wake-up pipe for shutdown. Directory watches see rotation (a
rename) and new files without holding any trail file open. When inotify is
unavailable, or ``fs.inotify.max_user_watches`` is reached, the trails that
could not be watched are polled every ``poll_interval`` seconds instead.

Counts are published to the metrics only after the checkpoint that covers them
is on disk (:mod:`shieldaudit.sidecar.watch.commits`; the counts wait in
:mod:`shieldaudit.sidecar.watch.tally`). That includes unaudited starts: each
trail's reconciliation ledger (:mod:`shieldaudit.store.reconcile`) is fed by
the entries as they are read and judged once a start is ``grace`` seconds old
(:mod:`shieldaudit.sidecar.watch.starts`), and the ledger is saved in the same
checkpoint record as the position.

This module is the loop and discovery: which trails exist, which have
something to read, and in what order reading, judging and saving happen.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import threading
import time
from typing import TYPE_CHECKING, Final, Self

from shieldaudit.core import ids
from shieldaudit.core.errors import ShieldAuditError
from shieldaudit.sidecar.watch import inotify
from shieldaudit.sidecar.watch.anchor import ACTIVE_SEGMENT, mark_at_end
from shieldaudit.sidecar.watch.checkpoint import (
    HOOK_SHARD,
    SHARDS,
    CheckpointWriter,
    Loaded,
    Mark,
    checkpoint_path,
    load,
    shard_of,
)
from shieldaudit.sidecar.watch.commits import MAX_COMMIT_INTERVAL, Commits
from shieldaudit.sidecar.watch.hookerrors import HookErrorsTail
from shieldaudit.sidecar.watch.starts import StartJudge
from shieldaudit.sidecar.watch.tailer import Tail
from shieldaudit.sidecar.watch.tally import Tally
from shieldaudit.sidecar.watch.watches import Watches
from shieldaudit.store import layout
from shieldaudit.store.chain import NO_KEYS, KeyRing
from shieldaudit.store.reconcile import DEFAULT_GRACE_S

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

log = logging.getLogger("shieldaudit.sidecar")

__all__ = ["IDLE_TIMEOUT", "MAX_COMMIT_INTERVAL", "READ_BUDGET", "Watcher"]

#: Bytes read from one trail before others get a turn and a checkpoint may happen.
READ_BUDGET: Final = 4 * 1024 * 1024
#: Housekeeping wake-up when idle and nothing is polled.
IDLE_TIMEOUT: Final = 30.0


class Watcher:
    """Watches every trail under a root (a context manager; :meth:`run` in one thread)."""

    def __init__(
        self,
        root: Path,
        *,
        publish: Callable[[Tally], None],
        watched: Callable[[int], None] = lambda _n: None,
        emit: Callable[[Mapping[str, object]], None] | None = None,
        from_end: bool = False,
        poll_interval: float = 1.0,
        use_inotify: bool = True,
        keys: KeyRing | None = NO_KEYS,
        inotify_factory: Callable[[], inotify.Inotify] = inotify.Inotify,
        clock: Callable[[], float] = time.monotonic,
        grace: float = DEFAULT_GRACE_S,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """Open the root (created 0700 when missing) and load the checkpoint.

        Args:
            root: the trail root.
            publish: receives the counts once the checkpoint covering them is saved.
            watched: receives the number of trails watched whenever it changes.
            emit: receives each new entry as it is read (``--emit``).
            from_end: without a checkpoint, skip the history of trails that exist at start.
            poll_interval: seconds between polls of trails inotify cannot watch.
            use_inotify: False forces polling (also the fallback when inotify fails).
            keys: keys to recompute each entry's mac with (None: check links only).
            inotify_factory: creates the inotify instance (tests inject failures).
            clock: monotonic seconds.
            grace: seconds a start event waits for its hook entries before it is judged.
            wall: the wall clock (seconds since the epoch), which entry times use.
        """
        self.root = root
        self._watched = watched
        self._emit = emit
        self._keys = keys
        self._poll_interval = poll_interval
        self._clock = clock
        self.ready = threading.Event()
        self._tallies = {shard: Tally() for shard in SHARDS}
        self._root_fd = layout.open_root(root, create=True)
        self._containers_fd = layout.open_subdir(
            self._root_fd, layout.CONTAINERS_DIR, layout.containers_path(root), create=True
        )
        layout.state_path(root).mkdir(mode=layout.DIR_MODE, exist_ok=True)
        checkpoint = CheckpointWriter(checkpoint_path(root))
        self._commits = Commits(checkpoint, self._tallies, publish, clock)
        self._starts = StartJudge(
            grace,
            tally_of=lambda cid: self._tallies[shard_of(cid)],
            changed=self._commits.unsaved.add,
            emit=emit,
            wall=wall,
        )
        loaded = load(checkpoint.path)
        self._saved_marks: dict[str, Mark] = loaded.marks if loaded else {}
        self._hook = HookErrorsTail(
            layout.hook_errors_path(root), loaded.hook_errors if loaded else None
        )
        # With a checkpoint there is no history to skip: trails that appeared
        # while the sidecar was down hold new entries.
        self._from_end = from_end and loaded is None
        self._resume(checkpoint, loaded)
        self._tails: dict[str, Tail] = {}
        self._scanned = False  # trails found after the first scan are new: read all of them
        self._dirty: set[str] = set()  # trails with something to read
        self._hook_dirty = True
        self._polled: set[str] = set()
        self._poll_all = not use_inotify
        self._last_poll = 0.0
        self._watches: Watches | None = None
        self._warned: set[str] = set()  # trails whose read failure was logged
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if use_inotify:
            self._start_inotify(inotify_factory)

    def _resume(self, checkpoint: CheckpointWriter, loaded: Loaded | None) -> None:
        """Start the checkpoint writer from what was loaded (or mark everything to be written)."""
        for cid, mark in self._saved_marks.items():
            checkpoint.update(cid, mark)  # kept as saved until the trail moves
        if self._from_end:
            self._hook.skip_to_end()
        checkpoint.set_hook_errors(self._hook.position)
        if loaded is None:
            checkpoint.mark_all_dirty()  # the first save writes every shard

    # -- lifecycle --------------------------------------------------------------

    def _start_inotify(self, factory: Callable[[], inotify.Inotify]) -> None:
        try:
            self._watches = Watches(self.root, factory)
        except OSError as exc:
            log.warning(
                "inotify unavailable (%s): polling every %gs instead", exc, self._poll_interval
            )
            self._poll_all = True

    @property
    def polling(self) -> bool:
        """Return whether every trail is polled (no inotify at all)."""
        return self._poll_all

    @property
    def polled(self) -> int:
        """Return how many trails are polled because they could not be watched."""
        return len(self._polled)

    def wake(self) -> None:
        """Interrupt a waiting :meth:`run` (thread- and signal-safe)."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        """Release every descriptor."""
        if self._watches is not None:
            self._watches.close()
            self._watches = None
        for fd in (self._containers_fd, self._root_fd, self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._containers_fd = self._root_fd = self._wake_r = self._wake_w = -1

    def __enter__(self) -> Self:
        """Use as a context manager."""
        return self

    def __exit__(self, *_exc: object) -> None:
        """Close on exit."""
        self.close()

    def run(self, stop: threading.Event) -> None:
        """Scan, then follow every trail until ``stop`` is set; checkpoint on the way out."""
        self.scan()
        self.commit()
        self.ready.set()
        selector = selectors.DefaultSelector()
        try:
            selector.register(self._wake_r, selectors.EVENT_READ)
            if self._watches is not None:
                selector.register(self._watches.fileno(), selectors.EVENT_READ)
            while not stop.is_set():
                for key, _ in selector.select(self._timeout()):
                    if key.fd == self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                    else:
                        self._handle_events()
                self._maybe_poll()
                self.process(stop)
                self.judge_due()
                self._commits.maybe(self._tails)
        finally:
            selector.close()
            self.commit()

    def _timeout(self) -> float:
        now = self._clock()
        waits = [IDLE_TIMEOUT]
        if self._dirty:
            waits.append(0.0)
        commit = self._commits.wait()
        if commit is not None:
            waits.append(commit)
        if self._poll_all or self._polled:
            waits.append(self._last_poll + self._poll_interval - now)
        start = self._starts.wait()
        if start is not None:
            waits.append(start)
        return max(0.0, min(waits))

    # -- discovery ----------------------------------------------------------------

    def scan(self) -> None:
        """Find every trail directory (adding new ones, dropping gone ones) and read them."""
        try:
            names = os.listdir(self._containers_fd)  # noqa: PTH208 -- a directory fd
        except OSError as exc:
            log.warning("cannot list %s: %s", layout.containers_path(self.root), exc)
            return
        present = {name for name in names if ids.is_container_id(name)}
        for cid in sorted(present - self._tails.keys()):
            self._add(cid, at_start=not self._scanned)
        for cid in self._tails.keys() - present:
            self._remove(cid)
        for cid in [c for c in self._saved_marks if c not in present]:
            del self._saved_marks[cid]  # its trail was removed while we were down
            self._commits.checkpoint.forget(cid)
        self._dirty.update(self._tails)
        self._scanned = True
        self._hook_dirty = True
        self._watched(len(self._tails))
        self.process(None)

    def _add(self, cid: str, *, at_start: bool) -> None:
        if cid in self._tails:
            return
        self._watch(cid)
        saved = self._saved_marks.pop(cid, None)
        if saved is not None:
            # A record saved before reconciliation existed: what came before it is unseen.
            tail = Tail(
                cid,
                saved,
                self._tallies[shard_of(cid)],
                emit=self._emit,
                keys=self._keys,
                audit_floor=self._starts.now_us(),
            )
        elif at_start and self._from_end:
            try:
                dir_fd = self._open_dir(cid)
            except OSError:
                return
            except ShieldAuditError as exc:  # unsafe (a symlink, someone else's directory)
                self._warn_once(cid, f"cannot open trail {cid[:12]}: {exc}")
                return
            try:
                mark = mark_at_end(dir_fd)
            finally:
                os.close(dir_fd)
            tail = Tail(
                cid,
                mark,
                self._tallies[shard_of(cid)],
                emit=self._emit,
                keys=self._keys,
                trusted=True,
                audit_floor=self._starts.now_us(),  # history skipped
            )
            self._commits.unsaved.add(cid)
        else:
            tail = Tail(
                cid,
                Mark(),
                self._tallies[shard_of(cid)],
                emit=self._emit,
                keys=self._keys,
                trusted=True,
            )
        self._tails[cid] = tail
        self._dirty.add(cid)

    def _watch(self, cid: str) -> None:
        if self._watches is not None and not self._watches.add(cid, self._poll_interval):
            self._polled.add(cid)

    def _remove(self, cid: str) -> None:
        self._tails.pop(cid, None)
        self._dirty.discard(cid)
        self._commits.unsaved.discard(cid)
        self._polled.discard(cid)
        self._warned.discard(cid)
        self._starts.forget(cid)
        self._commits.checkpoint.forget(cid)
        if self._watches is not None:
            self._watches.remove(cid)

    def _handle_events(self) -> None:
        assert self._watches is not None  # noqa: S101 -- only registered when present
        count = len(self._tails)
        for change in self._watches.read():
            if change.kind == "changed":
                self._dirty.add(change.cid)
            elif change.kind == "added":
                self._add(change.cid, at_start=False)
            elif change.kind == "removed":
                self._remove(change.cid)
            elif change.kind == "hook_errors":
                self._hook_dirty = True
            else:
                log.warning("inotify queue overflowed: rescanning every trail")
                self.scan()
        if len(self._tails) != count:
            self._watched(len(self._tails))

    def _maybe_poll(self) -> None:
        if not (self._poll_all or self._polled):
            return
        now = self._clock()
        if now - self._last_poll < self._poll_interval:
            return
        self._last_poll = now
        if self._poll_all:
            before = len(self._tails)
            self.scan_names_only()
            if len(self._tails) != before:
                self._watched(len(self._tails))
            self._hook_dirty = True
        for cid in self._polled if not self._poll_all else list(self._tails):
            tail = self._tails.get(cid)
            if tail is not None and self._changed(cid, tail.mark):
                self._dirty.add(cid)

    def scan_names_only(self) -> None:
        """Add new trail directories and drop gone ones, without reading (polling mode)."""
        try:
            names = os.listdir(self._containers_fd)  # noqa: PTH208 -- a directory fd
        except OSError:
            return
        present = {name for name in names if ids.is_container_id(name)}
        for cid in present - self._tails.keys():
            self._add(cid, at_start=False)
        for cid in self._tails.keys() - present:
            self._remove(cid)

    def _changed(self, cid: str, mark: Mark) -> bool:
        """Cheap poll check: one ``stat`` of the active segment."""
        if mark.segment != ACTIVE_SEGMENT:
            return True
        try:
            st = os.stat(f"{cid}/{layout.ACTIVE_FILE}", dir_fd=self._containers_fd)
        except OSError:
            return False
        return st.st_ino != mark.inode or st.st_size != mark.offset

    # -- reading and committing -------------------------------------------------

    def _open_dir(self, cid: str) -> int:
        return layout.open_subdir(
            self._containers_fd, cid, layout.containers_path(self.root) / cid, create=False
        )

    def process(self, stop: threading.Event | None) -> None:
        """Read every trail marked dirty, checkpointing on the way when due."""
        if self._hook_dirty:
            self._hook_dirty = False
            count = self._hook.advance()
            if count:
                self._tallies[HOOK_SHARD].hook_errors += count
                self._commits.checkpoint.set_hook_errors(self._hook.position)
        while self._dirty:
            if stop is not None and stop.is_set():
                return
            self._advance(self._dirty.pop())
            self._commits.maybe(self._tails)

    def _advance(self, cid: str) -> None:
        tail = self._tails.get(cid)
        if tail is None:
            return
        try:
            dir_fd = self._open_dir(cid)
        except FileNotFoundError:
            return  # removed: the containers watch (or the next scan) drops it
        except (OSError, ShieldAuditError) as exc:
            self._warn_once(cid, f"cannot open trail {cid[:12]}: {exc}")
            return
        try:
            moved, more = tail.advance(dir_fd, READ_BUDGET)
        except (OSError, ShieldAuditError) as exc:
            # A symlink or FIFO planted in place of a segment, an I/O error: the
            # trail is retried on its next change, and the log says it once.
            self._warn_once(cid, f"cannot read trail {cid[:12]}: {exc}")
            moved, more = False, False
        finally:
            os.close(dir_fd)
        if moved:
            self._warned.discard(cid)
            self._commits.unsaved.add(cid)
        if more:
            self._dirty.add(cid)
        else:
            self._starts.schedule(cid, tail)

    def _warn_once(self, cid: str, message: str) -> None:
        if cid not in self._warned:
            self._warned.add(cid)
            log.warning("%s", message)

    def judge_due(self) -> None:
        """Judge the starts whose grace period is over, on trails read to their end."""
        self._starts.judge_due(self._tails, self._dirty)

    # -- committing (see commits.py) ----------------------------------------------

    def commit(self) -> None:
        """Save the checkpoint shards that changed; publish each one's counts once it is saved."""
        self._commits.commit(self._tails)
