"""Pins the listener loop with a scripted event source: once-only writes, replay, backoff, stop."""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING

import pytest

from shieldaudit.cli import run
from shieldaudit.core.errors import StorageError
from shieldaudit.listener.cursor import Cursor, CursorStore
from shieldaudit.listener.service import Backoff, Listener, ListenerBusyError
from shieldaudit.listener.source import SourceLost, SourceUnavailable
from shieldaudit.store.reader import TrailDir
from shieldaudit.store.writer import TrailWriter
from store_helpers import CID_A, CID_B, settings

if TYPE_CHECKING:
    from collections.abc import Iterator

S = 1_000_000_000
START = 1_795_000_000 * S
FAST = Backoff(initial=0.001, cap=0.005)


def line(cid: str, status: str, time_ns: int, name: str = "web") -> bytes:
    """One event line as Podman sends it."""
    return json.dumps(
        {
            "status": status,
            "Type": "container",
            "Actor": {"ID": cid, "Attributes": {"name": name, "image": "img"}},
            "time": time_ns // S,
            "timeNano": time_ns,
        }
    ).encode()


class FakeStream:
    """Yields its lines, then ends as scripted: 'lost', 'end', or 'block' until closed."""

    def __init__(self, lines: list[bytes], then: str = "lost") -> None:
        """Script the stream."""
        self._lines = lines
        self._then = then
        self.closed = threading.Event()

    def lines(self) -> Iterator[bytes]:
        """Yield the scripted lines, then end as scripted."""
        yield from self._lines
        if self._then == "lost":
            raise SourceLost("connection reset")
        if self._then == "block":
            self.closed.wait(30)

    def close(self) -> None:
        """Wake a blocked reader."""
        self.closed.set()

    def release(self) -> None:
        """Same as close."""
        self.close()


class FakeSource:
    """Opens scripted streams (or raises SourceUnavailable); when done, stops the listener."""

    url = "fake:///podman.sock"

    def __init__(self, script: list[object]) -> None:
        """Script the opens."""
        self.script = list(script)
        self.opened_since: list[int | None] = []
        self.listener: Listener | None = None

    def open(self, since: int | None, until: int | None = None) -> FakeStream:  # noqa: ARG002
        """Record since; return the next scripted stream or raise the scripted error."""
        self.opened_since.append(since)
        if not self.script:
            assert self.listener is not None
            self.listener.close()
            return FakeStream([], then="block")
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        assert isinstance(step, FakeStream)
        return step


def make_listener(root, source, *, clock_ns=START, writer=None) -> Listener:
    listener = Listener(
        root,
        source,
        writer or TrailWriter(settings(root)),
        clock=lambda: clock_ns,
        backoff=FAST,
        fsync=False,
    )
    source.listener = listener
    return listener


def events_of(root, cid):
    with TrailDir(root, cid) as trail:
        return [
            (r.entry["action"], r.entry["event_time_ns"], r.entry["seq"])
            for r in trail.records()
            if r.entry is not None
        ]


def test_each_event_written_once_across_a_replaying_reconnect(tmp_path):
    """After a lost stream the replay re-sends old events; only new ones are written."""
    root = tmp_path / "root"
    first = [line(CID_A, "create", START + 1), line(CID_A, "start", START + 2)]
    replay = [*first, line(CID_A, "died", START + 3)]
    source = FakeSource([FakeStream(first), FakeStream(replay)])
    listener = make_listener(root, source)

    listener.run()

    assert events_of(root, CID_A) == [
        ("create", START + 1, 1),
        ("start", START + 2, 2),
        ("died", START + 3, 3),
    ]
    assert listener.status.duplicates_dropped == 2
    assert listener.status.reconnects == 2  # the replay stream, then the final one
    assert CursorStore(root).load() == Cursor(START + 3)


def test_first_start_begins_at_its_own_start_time_and_saves_it(tmp_path):
    """With no cursor the replay starts from the start time, persisted before any event."""
    root = tmp_path / "root"
    source = FakeSource([])
    listener = make_listener(root, source)

    listener.run()

    assert source.opened_since == [Cursor(START).replay_since()]
    assert CursorStore(root).load() == Cursor(START)


def test_first_start_ignores_events_from_before_it(tmp_path):
    """The replay overlap reaches before the first start; those older events are not written."""
    root = tmp_path / "root"
    early = [line(CID_A, "create", START - 2 * S), line(CID_A, "start", START + 1)]
    listener = make_listener(root, FakeSource([FakeStream(early, then="end")]))

    listener.run()

    assert [e[0] for e in events_of(root, CID_A)] == ["start"]
    assert listener.status.before_first_start == 1


def test_later_start_replays_events_from_before_it(tmp_path):
    """With a cursor, events that happened while the listener was down are written."""
    root = tmp_path / "root"
    CursorStore(root).save(Cursor(START - 3 * S), "fake")
    early = [line(CID_A, "create", START - 2 * S), line(CID_A, "start", START + 1)]
    listener = make_listener(root, FakeSource([FakeStream(early, then="end")]))

    listener.run()

    assert [e[0] for e in events_of(root, CID_A)] == ["create", "start"]


def test_restart_after_kill_between_write_and_cursor_save_does_not_duplicate(tmp_path):
    """An entry written by a previous process whose cursor lagged is found in the trail."""
    root = tmp_path / "root"
    with TrailWriter(settings(root)) as writer:
        for status, t in (("create", START + 1), ("start", START + 2)):
            writer.append(CID_A, {"source": "events", "action": status, "event_time_ns": t})
    CursorStore(root).save(Cursor(START + 1), "fake")  # the save after "start" never happened
    replay = [
        line(CID_A, "create", START + 1),
        line(CID_A, "start", START + 2),
        line(CID_A, "died", START + 3),
    ]
    listener = make_listener(root, FakeSource([FakeStream(replay)]), clock_ns=START + 10 * S)

    listener.run()

    assert [e[0] for e in events_of(root, CID_A)] == ["create", "start", "died"]
    assert listener.status.duplicates_dropped == 2


def test_unreachable_service_logs_once_per_outage_and_keeps_retrying(tmp_path, caplog):
    """Several failed attempts give one warning; connecting after them is logged once too."""
    root = tmp_path / "root"
    down = [SourceUnavailable("No such file or directory")] * 4
    source = FakeSource([*down, FakeStream([line(CID_A, "create", START + 1)])])
    listener = make_listener(root, source)

    with caplog.at_level("WARNING", logger="shieldaudit.listener"):
        listener.run()

    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot reach Podman" in m for m in messages) == 1
    assert sum("lost the events stream" in m for m in messages) == 1
    assert sum("connected to" in m for m in messages) == 2  # one per outage
    assert "No such file or directory" in messages[0]
    assert listener.status.events_written == 1
    assert listener.status.reconnects == 1  # only the reconnect after the lost stream


def test_stream_dropped_at_once_again_and_again_is_reported_once(tmp_path, caplog):
    """A service that accepts and drops every stream gives one lost line, not one per try."""
    root = tmp_path / "root"
    source = FakeSource([FakeStream([]) for _ in range(6)])
    listener = make_listener(root, source)

    with caplog.at_level("WARNING", logger="shieldaudit.listener"):
        listener.run()

    messages = [r.getMessage() for r in caplog.records]
    assert sum("lost the events stream" in m for m in messages) == 1
    assert len(source.opened_since) == 7
    assert listener.status.reconnects == 6


def test_dedup_memory_stays_bounded_to_the_replay_window(tmp_path):
    """600 events one second apart leave only the last few seconds' keys in memory."""
    root = tmp_path / "root"
    CursorStore(root).save(Cursor(START), "fake")
    stream = [line(CID_A, "exec", START + i * S) for i in range(1, 601)]
    source = FakeSource([FakeStream(stream, then="end")])
    listener = make_listener(root, source, clock_ns=START + 700 * S)

    listener.run()

    assert listener.status.events_written == 600
    assert len(listener._seen) < 100


def test_malformed_and_foreign_events_are_counted_and_skipped(tmp_path):
    """Bad lines never stop the listener; each is counted under its reason."""
    root = tmp_path / "root"
    bad = [
        b"{not json",
        b"[]",
        line("not-a-container-id", "start", START + 1),
        json.dumps({"status": "pull", "Type": "image", "timeNano": START}).encode(),
        line(CID_B, "create", START + 5),
    ]
    listener = make_listener(root, FakeSource([FakeStream(bad, then="end")]))

    listener.run()

    assert listener.status.events_skipped == 4
    assert listener.status.skipped_by_reason == {"malformed": 2, "bad_id": 1, "not_container": 1}
    assert [e[0] for e in events_of(root, CID_B)] == ["create"]


class FlakyWriter:
    """Fails the first ``failures`` appends with a disk-full error, then writes."""

    def __init__(self, writer: TrailWriter, failures: int) -> None:
        """Wrap a real writer."""
        self.writer = writer
        self.failures = failures

    def append(self, container_id, fields):
        """Fail while failures remain, then append."""
        if self.failures:
            self.failures -= 1
            raise StorageError("cannot write: No space left on device")
        return self.writer.append(container_id, fields)


def test_storage_failure_is_retried_until_the_entry_is_written(tmp_path):
    """A failing store does not lose the event: the write is retried with backoff."""
    root = tmp_path / "root"
    writer = FlakyWriter(TrailWriter(settings(root)), failures=3)
    stream = FakeStream([line(CID_A, "create", START + 1)], then="end")
    listener = make_listener(root, FakeSource([stream]), writer=writer)  # type: ignore[arg-type]

    listener.run()

    assert [e[0] for e in events_of(root, CID_A)] == ["create"]
    assert listener.status.write_errors == 3


def test_close_from_another_thread_stops_a_blocked_stream(tmp_path):
    """close() wakes a listener waiting for events; run() returns and connected drops."""
    root = tmp_path / "root"
    stream = FakeStream([line(CID_A, "create", START + 1)], then="block")
    listener = make_listener(root, FakeSource([stream]))
    worker = threading.Thread(target=listener.run)
    worker.start()
    try:
        stream.closed.wait(0)  # not closed yet
        deadline_hit = not _wait_for(lambda: listener.status.events_written == 1)
        listener.close()
        worker.join(10)
    finally:
        listener.close()
    assert not deadline_hit
    assert not worker.is_alive()
    assert stream.closed.is_set()
    assert listener.status.connected is False


def _wait_for(condition, timeout=10.0) -> bool:
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return True
        done.wait(0.01)
    return False


def test_second_listener_on_the_same_root_is_refused(tmp_path):
    """Two listeners on one root would write every event twice: the second one fails."""
    root = tmp_path / "root"
    stream = FakeStream([], then="block")
    first = make_listener(root, FakeSource([stream]))
    worker = threading.Thread(target=first.run)
    worker.start()
    try:
        assert _wait_for(lambda: first.status.connected)
        with pytest.raises(ListenerBusyError, match="another shieldaudit listener"):
            make_listener(root, FakeSource([])).run()
    finally:
        first.close()
        worker.join(10)


def test_once_replays_to_now_and_returns(tmp_path):
    """run(once=True) reads one stream to its end and returns without reconnecting."""
    root = tmp_path / "root"
    source = FakeSource([FakeStream([line(CID_A, "create", START + 1)], then="end")])
    listener = make_listener(root, source)

    listener.run(once=True)

    assert [e[0] for e in events_of(root, CID_A)] == ["create"]
    assert len(source.opened_since) == 1


def test_once_with_unreachable_service_raises(tmp_path):
    """run(once=True) makes one attempt and reports why it failed."""
    source = FakeSource([SourceUnavailable("Connection refused")])

    with pytest.raises(SourceUnavailable, match="Connection refused"):
        make_listener(tmp_path / "root", source).run(once=True)


def test_cli_once_with_missing_socket_is_one_error_line(tmp_path, capsys):
    """`listen --once` against a socket that does not exist exits 1 with one Error line."""
    root = tmp_path / "root"

    code = run(["--root", str(root), "listen", "--once", "--url", f"unix://{tmp_path}/none.sock"])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("Error: cannot reach Podman at unix://")
    assert "No such file or directory" in err[-1]
    assert not any("Traceback" in e for e in err)
