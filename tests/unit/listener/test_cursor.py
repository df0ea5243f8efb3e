"""Pins the listener's memory: atomic cursor files, bounded dedup, and the trail scan."""

from __future__ import annotations

import json
import os

from shieldaudit.listener.cursor import (
    REPLAY_OVERLAP_NS,
    SCAN_SLACK_NS,
    Cursor,
    CursorStore,
    Seen,
    recent_event_keys,
)
from shieldaudit.listener.events import EventKey
from shieldaudit.store.writer import TrailWriter
from store_helpers import CID_A, settings

S = 1_000_000_000


def test_cursor_round_trips_and_leaves_no_temp_file(tmp_path):
    """A saved cursor loads back; the state dir holds only the final file."""
    store = CursorStore(tmp_path / "root")

    store.save(Cursor(1795458373910091721), "unix:///x.sock")

    assert store.load() == Cursor(1795458373910091721)
    assert sorted(os.listdir(tmp_path / "root" / "state")) == ["listener-cursor.json"]
    saved = json.loads((tmp_path / "root" / "state" / "listener-cursor.json").read_text())
    assert saved["url"] == "unix:///x.sock"


def test_missing_cursor_is_none(tmp_path):
    """No cursor file means a first start."""
    assert CursorStore(tmp_path / "root").load() is None


def test_corrupt_cursor_is_moved_aside(tmp_path, caplog):
    """An unreadable cursor is set aside with one warning and treated as absent."""
    store = CursorStore(tmp_path / "root")
    store.save(Cursor(5), "u")
    store.path.write_text('{"time_ns": "soon"}')

    assert store.load() is None
    assert store.path.with_name("listener-cursor.json.corrupt").exists()
    assert not store.path.exists()
    assert "unreadable" in caplog.text


def test_replay_starts_an_overlap_before_the_cursor_in_whole_seconds():
    """Replay since = floor((cursor - overlap) / 1 s): Podman takes whole seconds."""
    cursor = Cursor(100 * S + 700_000_000)

    assert cursor.replay_since() == (100 * S + 700_000_000 - REPLAY_OVERLAP_NS) // S
    assert cursor.floor_ns() == cursor.replay_since() * S
    assert Cursor(0).replay_since() == 0


def test_seen_forgets_keys_below_the_floor():
    """Dedup memory keeps only keys a replay can still deliver."""
    seen = Seen()
    old = EventKey(CID_A, "start", 10 * S)
    new = EventKey(CID_A, "died", 20 * S)
    seen.add(old)
    seen.add(new)
    seen.add(new)

    assert len(seen) == 2
    seen.prune(15 * S)

    assert old not in seen
    assert new in seen
    assert len(seen) == 1
    seen.prune(30 * S)
    assert len(seen) == 0


def _event_entry(writer, action, time_ns):
    writer.append(CID_A, {"source": "events", "action": action, "event_time_ns": time_ns})


def test_trail_scan_finds_recent_event_keys_and_stops_at_the_floor(tmp_path):
    """The scan returns the events entries' keys newer than floor - slack, ignoring hook lines."""
    root = tmp_path / "root"
    with TrailWriter(settings(root, max_segment_bytes=600)) as writer:  # several segments
        _event_entry(writer, "create", 1 * S)
        _event_entry(writer, "start", SCAN_SLACK_NS + 50 * S)
        writer.append(CID_A, {"source": "hook", "action": "poststop"})
        _event_entry(writer, "died", SCAN_SLACK_NS + 60 * S)

    keys = recent_event_keys(root, CID_A, floor_ns=SCAN_SLACK_NS + 40 * S)

    assert keys == {
        EventKey(CID_A, "start", SCAN_SLACK_NS + 50 * S),
        EventKey(CID_A, "died", SCAN_SLACK_NS + 60 * S),
    }
    assert len(list((root / "containers" / CID_A).iterdir())) > 1


def test_trail_scan_of_missing_trail_is_empty(tmp_path):
    """A container never written (or pruned) has no keys."""
    root = tmp_path / "root"
    CursorStore(root).save(Cursor(1), "u")  # the listener has created the root by then

    assert recent_event_keys(root, CID_A, 0) == set()
