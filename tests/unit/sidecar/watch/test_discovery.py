"""Discovering trails: thousands of directories, new ones while running, and the fallbacks.

These run the real watch loop in a thread over real inotify (or polling), in tmp_path.
"""

from __future__ import annotations

import errno
import threading
import time
from typing import TYPE_CHECKING

import pytest

from shieldaudit.core.models import WatchEvent
from shieldaudit.sidecar.app import watch_event
from shieldaudit.sidecar.watch import inotify
from shieldaudit.sidecar.watch.watcher import Watcher
from shieldaudit.store.writer import TrailWriter
from store_helpers import CID_A, CID_B, settings

if TYPE_CHECKING:
    from shieldaudit.sidecar.watch.tally import Tally

DEADLINE_S = 60.0


def cid(n: int) -> str:
    return f"{n:064x}"


class Loop:
    """A watcher running its loop in a thread, with what it published."""

    def __init__(self, root, **kwargs) -> None:
        """Prepare the watcher; the loop starts on entering the ``with`` block."""
        self.events = 0
        self.rotations = 0
        self.watched = 0
        self.lock = threading.Lock()
        self.watcher = Watcher(root, publish=self._publish, watched=self._watched, **kwargs)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.watcher.run, args=(self.stop_event,))

    def _publish(self, tally: Tally) -> None:
        with self.lock:
            self.events += sum(tally.events.values())
            self.rotations += tally.rotations

    def _watched(self, n: int) -> None:
        self.watched = n

    def __enter__(self):
        """Start the loop."""
        self.thread.start()
        return self

    def __exit__(self, *exc):
        """Stop the loop the way SIGTERM does and release the watcher."""
        self.stop_event.set()
        self.watcher.wake()
        self.thread.join(timeout=30)
        self.watcher.close()

    def wait_for(self, condition, what: str) -> None:
        """Poll ``condition`` until it holds, failing after the deadline."""
        deadline = time.monotonic() + DEADLINE_S
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}: events={self.events}")
            time.sleep(0.02)


def write_one_each(root, ids) -> None:
    with TrailWriter(settings(root)) as writer:
        for c in ids:
            writer.append(c, {"source": "hook", "action": "createRuntime"})


def test_discovers_5000_trails_including_new_ones(tmp_path):
    """4,000 trails present at start and 1,000 created while running are all watched and read."""
    root = tmp_path / "root"
    write_one_each(root, [cid(n) for n in range(4000)])
    with Loop(root) as loop:
        loop.wait_for(loop.watcher.ready.is_set, "initial scan")
        write_one_each(root, [cid(n) for n in range(4000, 5000)])
        loop.wait_for(lambda: loop.events == 5000 and loop.watched == 5000, "5000 trails")
        assert loop.watcher.polled == 0
        write_one_each(root, [cid(n) for n in range(0, 5000, 50)])
        loop.wait_for(lambda: loop.events == 5100, "a second entry in 100 trails")
    assert loop.events == 5100


class _NoInotify:
    def __init__(self) -> None:
        raise OSError(errno.ENOSYS, "inotify_init1: Function not implemented")


def test_polls_when_inotify_is_unavailable(tmp_path):
    """Without inotify every trail is polled: new trails and entries are still counted."""
    root = tmp_path / "root"
    write_one_each(root, [CID_A])
    with Loop(root, inotify_factory=_NoInotify, poll_interval=0.05) as loop:
        loop.wait_for(lambda: loop.events == 1, "history")
        assert loop.watcher.polling
        write_one_each(root, [CID_A, CID_B])
        loop.wait_for(lambda: loop.events == 3 and loop.watched == 2, "polled entries")


class _TwoWatchesOnly(inotify.Inotify):
    """Real inotify whose watch limit is hit after the containers and state dirs + 1 trail."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def add_watch(self, path, mask):
        self.count += 1
        if self.count > 3:
            raise OSError(errno.ENOSPC, "inotify_add_watch: No space left on device")
        return super().add_watch(path, mask)


def test_polls_trails_beyond_the_watch_limit(tmp_path):
    """When max_user_watches is reached, trails that got no watch are polled instead."""
    root = tmp_path / "root"
    ids = [cid(n) for n in range(5)]
    write_one_each(root, ids)
    with Loop(root, inotify_factory=_TwoWatchesOnly, poll_interval=0.05) as loop:
        loop.wait_for(lambda: loop.events == 5, "history")
        assert loop.watcher.polled == 4
        assert not loop.watcher.polling
        write_one_each(root, ids)
        loop.wait_for(lambda: loop.events == 10, "entries of watched and polled trails")


def test_removed_trail_is_no_longer_watched(tmp_path):
    """A pruned trail directory leaves the watched set."""
    root = tmp_path / "root"
    write_one_each(root, [CID_A, CID_B])
    with Loop(root) as loop:
        loop.wait_for(lambda: loop.watched == 2 and loop.events == 2, "two trails")
        directory = root / "containers" / CID_B
        for path in directory.iterdir():
            path.unlink()
        directory.rmdir()
        loop.wait_for(lambda: loop.watched == 1, "one trail")


def test_emitted_lines_are_watch_events(tmp_path):
    """--emit lines carry the WatchEvent fields of each entry, in order, one per line."""
    root = tmp_path / "root"
    with TrailWriter(settings(root)) as writer:
        writer.append(CID_A, {"source": "events", "action": "start", "container": "web"})
        writer.append(CID_A, {"source": "hook", "action": "poststop", "dest": "d", "detail": "x"})
    lines: list[bytes] = []
    with Loop(root, emit=lambda e: lines.append(watch_event(e))) as loop:
        loop.wait_for(lambda: loop.events == 2, "two entries")
    events = [WatchEvent.model_validate_json(line) for line in lines]
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
    assert [(e.seq, e.source, e.action, e.container) for e in events] == [
        (1, "events", "start", "web"),
        (2, "hook", "poststop", ""),
    ]
    assert (events[1].dest, events[1].detail, events[1].container_id) == ("d", "x", CID_A)


class _Overflowing(inotify.Inotify):
    """Real inotify whose queue "overflows" once after the first read: events are lost."""

    def __init__(self) -> None:
        """Start with the overflow armed."""
        super().__init__()
        self.armed = True

    def read_events(self):
        """Drop the real events once, reporting an overflow instead, as the kernel does."""
        events = super().read_events()
        if self.armed and events:
            self.armed = False
            return [inotify.Event(-1, inotify.IN_Q_OVERFLOW, 0, "")]
        return events


def test_queue_overflow_rescans_every_trail(tmp_path):
    """When inotify's queue overflows (events lost), every trail is rescanned: none missed."""
    root = tmp_path / "root"
    (root / "containers").mkdir(parents=True, mode=0o700)
    with Loop(root, inotify_factory=_Overflowing) as loop:
        loop.wait_for(loop.watcher.ready.is_set, "initial scan")
        write_one_each(root, [cid(n) for n in range(20)])
        loop.wait_for(lambda: loop.events == 20 and loop.watched == 20, "20 trails")
