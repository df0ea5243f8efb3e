"""The watch loop: discover trails, wait on inotify (or poll), read, checkpoint, publish.

One thread, one ``selectors`` loop over two descriptors: the inotify instance
(directory watches on ``containers/``, on each container directory and on
``state/``) and a wake-up pipe for shutdown. Directory watches see rotation (a
rename) and new files without holding any trail file open. When inotify is
unavailable, or ``fs.inotify.max_user_watches`` is reached, the trails that
could not be watched are polled every ``poll_interval`` seconds instead.

Counts are published to the metrics only after the checkpoint that covers them
is on disk (see :mod:`shieldaudit.sidecar.watch.tally`). That includes unaudited starts:
each trail's reconciliation ledger (:mod:`shieldaudit.store.reconcile`) is fed
by the entries as they are read and judged once a start is ``grace`` seconds
old, and the ledger is saved in the same checkpoint record as the position.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import selectors
import threading
import time
from typing import TYPE_CHECKING, Final, Self

from shieldaudit.core import ids
from shieldaudit.core.errors import ShieldAuditError
from shieldaudit.sidecar.watch import inotify
from shieldaudit.sidecar.watch.anchor import ACTIVE, mark_at_end
from shieldaudit.sidecar.watch.checkpoint import (
    HOOK_SHARD,
    SHARDS,
    CheckpointWriter,
    Mark,
    checkpoint_path,
    load,
    shard_of,
)
from shieldaudit.sidecar.watch.hookerrors import HookErrorsTail
from shieldaudit.sidecar.watch.tailer import Tail
from shieldaudit.sidecar.watch.tally import Tally
from shieldaudit.sidecar.watch.watches import Watches
from shieldaudit.store import layout
from shieldaudit.store.chain import NO_KEYS, KeyRing
from shieldaudit.store.reconcile import DEFAULT_GRACE_S

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

log = logging.getLogger("shieldaudit.sidecar")

#: Bytes read from one trail before others get a turn and a checkpoint may happen.
READ_BUDGET: Final = 4 * 1024 * 1024
#: Checkpoint at least this often while entries flow (docs/sidecar.md, "Exactly once").
MAX_COMMIT_INTERVAL: Final = 1.0
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
        emit: Callable[[dict[str, object]], None] | None = None,
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
        self._publish = publish
        self._watched = watched
        self._emit = emit
        self._keys = keys
        self._from_end = from_end
        self._poll_interval = poll_interval
        self._clock = clock
        self._wall = wall
        self._grace_us = round(grace * 1_000_000)
        self._due: list[tuple[int, str]] = []  # (when µs, container): starts to judge
        self._scheduled: dict[str, int] = {}
        self.ready = threading.Event()
        self._tallies = {shard: Tally() for shard in SHARDS}
        self._root_fd = layout.open_root(root, create=True)
        self._containers_fd = layout.open_subdir(
            self._root_fd, layout.CONTAINERS_DIR, layout.containers_path(root), create=True
        )
        self._state_dir = layout.state_path(root)
        self._state_dir.mkdir(mode=layout.DIR_MODE, exist_ok=True)
        self._checkpoint = CheckpointWriter(checkpoint_path(root))
        loaded = load(self._checkpoint.path)
        self._saved_marks: dict[str, Mark] = loaded.marks if loaded else {}
        for cid, mark in self._saved_marks.items():
            self._checkpoint.update(cid, mark)  # kept as saved until the trail moves
        self._hook = HookErrorsTail(
            layout.hook_errors_path(root), loaded.hook_errors if loaded else None
        )
        if loaded is not None:
            # With a checkpoint there is no history to skip: trails that appeared
            # while the sidecar was down hold new entries.
            self._from_end = False
        elif from_end:
            self._hook.skip_to_end()
        self._checkpoint.set_hook_errors(self._hook.position)
        if loaded is None:
            self._checkpoint.mark_all_dirty()  # the first save writes every shard
        self._tails: dict[str, Tail] = {}
        self._scanned = False  # trails found after the first scan are new: read all of them
        self._dirty: set[str] = set()  # trails with something to read
        self._unsaved: set[str] = set()  # trails whose mark moved since the last save
        self._hook_dirty = True
        self._polled: set[str] = set()
        self._poll_all = not use_inotify
        self._last_poll = 0.0
        self._last_commit = clock()
        self._commit_cost = 0.0
        self._watches: Watches | None = None
        self._save_failing = False
        self._warned: set[str] = set()  # trails whose read failure was logged
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if use_inotify:
            self._start_inotify(inotify_factory)

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
                self._judge_due()
                self._maybe_commit(force=False)
        finally:
            selector.close()
            self.commit()

    def _timeout(self) -> float:
        now = self._clock()
        waits = [IDLE_TIMEOUT]
        if self._dirty:
            waits.append(0.0)
        if self._pending():
            waits.append(self._last_commit + self._commit_gap() - now)
        if self._poll_all or self._polled:
            waits.append(self._last_poll + self._poll_interval - now)
        if self._due:
            waits.append((self._due[0][0] - self._now_us()) / 1_000_000)
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
            self._checkpoint.forget(cid)
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
                audit_floor=self._now_us(),
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
                audit_floor=self._now_us(),  # history skipped
            )
            self._unsaved.add(cid)
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
        self._unsaved.discard(cid)
        self._polled.discard(cid)
        self._warned.discard(cid)
        self._scheduled.pop(cid, None)
        self._checkpoint.forget(cid)
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
        if mark.segment != ACTIVE:
            return True
        try:
            st = os.stat(f"{cid}/{layout.ACTIVE}", dir_fd=self._containers_fd)
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
                self._checkpoint.set_hook_errors(self._hook.position)
        while self._dirty:
            if stop is not None and stop.is_set():
                return
            self._advance(self._dirty.pop())
            self._maybe_commit(force=False)

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
            self._unsaved.add(cid)
        if more:
            self._dirty.add(cid)
        else:
            self._schedule(cid, tail)

    # -- reconciliation -----------------------------------------------------------

    def _now_us(self) -> int:
        return round(self._wall() * 1_000_000)

    def _schedule(self, cid: str, tail: Tail) -> None:
        """Judge the trail's due starts now; remember when the next one is due."""
        ledger = tail.mark.audit
        if ledger is None or not ledger.pending:
            return
        due = ledger.next_due(self._grace_us)
        if due is not None and due <= self._now_us():
            self._judge(cid, tail)
            due = ledger.next_due(self._grace_us)
        if due is not None and due < self._scheduled.get(cid, due + 1):
            self._scheduled[cid] = due
            heapq.heappush(self._due, (due, cid))

    def _judge_due(self) -> None:
        """Judge the starts whose grace period is over, on trails read to their end."""
        now = self._now_us()
        while self._due and self._due[0][0] <= now:
            when, cid = heapq.heappop(self._due)
            if self._scheduled.get(cid) != when:
                continue  # superseded by an earlier schedule
            del self._scheduled[cid]
            tail = self._tails.get(cid)
            if tail is not None and cid not in self._dirty:  # else judged after its read
                self._schedule(cid, tail)

    def _judge(self, cid: str, tail: Tail) -> None:
        ledger = tail.mark.audit
        assert ledger is not None  # noqa: S101 -- every Tail has one
        verdicts = ledger.judge(self._now_us(), self._grace_us)
        if not verdicts:
            return
        self._unsaved.add(cid)  # the ledger is part of the checkpoint record
        tally = self._tallies[shard_of(cid)]
        for verdict in verdicts:
            if verdict.unaudited:
                tally.unaudited_starts += 1
                log.warning(
                    "unaudited start: container %s (%s) started at %s without hook entries (%s)",
                    cid[:12],
                    verdict.container or "-",
                    verdict.watch_event(cid)["ts"],
                    ", ".join(verdict.missing),
                )
                if self._emit is not None:
                    self._emit(verdict.watch_event(cid))

    def _warn_once(self, cid: str, message: str) -> None:
        if cid not in self._warned:
            self._warned.add(cid)
            log.warning("%s", message)

    def _commit_gap(self) -> float:
        """Seconds between checkpoints: short when they are cheap, at most one second.

        Publishing waits for the checkpoint, so this bounds entry-to-metric
        latency; scaling it with the cost of a save keeps a 10,000-trail
        checkpoint from eating the catch-up throughput.
        """
        return min(MAX_COMMIT_INTERVAL, max(0.01, 4 * self._commit_cost))

    def _pending(self) -> bool:
        """Return whether anything waits for a checkpoint."""
        return bool(self._unsaved or self._checkpoint.dirty) or not all(
            tally.empty() for tally in self._tallies.values()
        )

    def _maybe_commit(self, *, force: bool) -> None:
        if not self._pending():
            return
        if force or self._clock() - self._last_commit >= self._commit_gap():
            self.commit()

    def commit(self) -> None:
        """Save the checkpoint shards that changed, publishing each one's counts once it is saved.

        Counts reach the metrics only after the shard covering them is durable:
        a scrape never shows what a restart would count again.
        """
        started = self._clock()
        for cid in self._unsaved:
            tail = self._tails.get(cid)
            if tail is not None:
                self._checkpoint.update(cid, tail.mark)
        self._unsaved.clear()
        for shard, tally in self._tallies.items():
            if not tally.empty():
                self._checkpoint.dirty.add(shard)
        try:
            for shard in self._checkpoint.save():
                tally = self._tallies[shard]
                if not tally.empty():
                    self._publish(tally.take())
        except OSError as exc:
            # Unsaved shards stay dirty and their counts unpublished: retried after the gap.
            if not self._save_failing:
                log.warning("cannot save checkpoint in %s: %s", self._checkpoint.path, exc)
            self._save_failing = True
            self._last_commit = self._clock()
            return
        if self._save_failing:
            log.warning("checkpoint saved again after earlier failures")
        self._save_failing = False
        self._last_commit = self._clock()
        self._commit_cost = self._last_commit - started
