"""The checkpoint file and the inotify event decoder: round trips and hostile content."""

from __future__ import annotations

import os
import struct

from shieldaudit.watch import inotify
from shieldaudit.watch.checkpoint import CheckpointWriter, Mark, load

CID = "c" * 64


def test_checkpoint_round_trip(tmp_path):
    """Saved marks and the hook-error position load back unchanged; the file is 0600."""
    path = tmp_path / "state" / "sidecar-checkpoint.json"
    writer = CheckpointWriter(path)
    mark = Mark(7, "a" * 64, 3, 1234, 567, 2, skipping=True)
    writer.update(CID, mark)
    writer.save((99, 10))

    loaded = load(path)
    assert loaded is not None
    assert loaded.marks == {CID: mark}
    assert loaded.hook_errors == (99, 10)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_corrupt_or_foreign_checkpoint_is_ignored(tmp_path):
    """Garbage, another version, bad IDs and bad records load as nothing (history re-read)."""
    path = tmp_path / "cp.json"
    assert load(path) is None
    path.write_bytes(b"\x00garbage")
    assert load(path) is None
    path.write_text('{"version": 99, "containers": {}}')
    assert load(path) is None
    path.write_text(
        '{"version": 1, "hook_errors": "x", "containers": {"../etc": [1,"m",0,0,0,0,false],'
        f'"{CID}": [-1,"m",0,0,0,0,false], "{"d" * 64}": [1,"m",0,0,0,0,false]}}}}'
    )
    loaded = load(path)
    assert loaded is not None
    assert list(loaded.marks) == ["d" * 64]
    assert loaded.hook_errors is None


def test_forget_drops_a_container(tmp_path):
    """A forgotten trail is no longer in the next save."""
    path = tmp_path / "cp.json"
    writer = CheckpointWriter(path)
    writer.update(CID, Mark(1, "m"))
    writer.forget(CID)
    writer.save((0, 0))
    loaded = load(path)
    assert loaded is not None
    assert loaded.marks == {}


def test_parse_events_decodes_names_and_padding():
    """Raw inotify records (with NUL padding) decode to wd, mask, cookie and name."""
    name = b"audit.jsonl"
    padded = name + b"\0" * (16 - len(name))
    data = struct.pack("iIII", 3, inotify.IN_MODIFY, 0, len(padded)) + padded
    data += struct.pack("iIII", 1, inotify.IN_Q_OVERFLOW, 0, 0)
    events = inotify.parse_events(data)
    assert events == [
        inotify.Event(3, inotify.IN_MODIFY, 0, "audit.jsonl"),
        inotify.Event(1, inotify.IN_Q_OVERFLOW, 0, ""),
    ]


def test_inotify_reports_directory_changes(tmp_path):
    """A real instance reports a file created in a watched directory, and nothing when idle."""
    with inotify.Inotify() as ino:
        ino.add_watch(tmp_path, inotify.IN_CREATE | inotify.IN_MODIFY)
        assert ino.read_events() == []
        (tmp_path / "audit.jsonl").write_bytes(b"x\n")
        events = ino.read_events()
    assert any(e.name == "audit.jsonl" and e.mask & inotify.IN_CREATE for e in events)
    assert os.path.exists(tmp_path / "audit.jsonl")
