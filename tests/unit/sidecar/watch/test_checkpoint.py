"""The checkpoint file and the inotify event decoder: round trips and hostile content."""

from __future__ import annotations

import os
import struct

from shieldaudit.sidecar.watch import inotify
from shieldaudit.sidecar.watch.checkpoint import CheckpointWriter, Mark, load

CID = "c" * 64


def test_checkpoint_round_trip(tmp_path):
    """Saved marks and the hook-error position load back unchanged; files are 0600."""
    directory = tmp_path / "state" / "sidecar-checkpoint"
    writer = CheckpointWriter(directory)
    mark = Mark(7, "a" * 64, 3, 1234, 567, 2, skipping=True)
    writer.update(CID, mark)
    writer.set_hook_errors((99, 10))
    assert list(writer.save()) == ["c", "hook"]

    loaded = load(directory)
    assert loaded is not None
    assert loaded.marks == {CID: mark}
    assert loaded.hook_errors == (99, 10)
    assert {oct(p.stat().st_mode & 0o777) for p in directory.iterdir()} == {"0o600"}
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]
    assert list(writer.save()) == []  # nothing changed: nothing written


def test_only_changed_shards_are_rewritten(tmp_path):
    """A save rewrites the shards whose containers moved, and no other."""
    directory = tmp_path / "cp"
    writer = CheckpointWriter(directory)
    writer.mark_all_dirty()
    assert len(list(writer.save())) == 17
    writer.update("1" * 64, Mark(1, "m"))
    writer.update("1" + "2" * 63, Mark(2, "n"))
    assert list(writer.save()) == ["1"]


def test_corrupt_or_foreign_checkpoint_is_ignored(tmp_path):
    """Garbage, another version, misplaced or bad records load as nothing (history re-read)."""
    directory = tmp_path / "cp"
    assert load(directory) is None
    directory.mkdir()
    (directory / "0.json").write_bytes(b"\x00garbage")
    (directory / "1.json").write_text('{"version": 99, "containers": {}}')
    (directory / "hook.json").write_text('{"version": 1, "hook_errors": "x"}')
    (directory / "d.json").write_text(
        '{"version": 1, "containers": {"../etc": [1,"m",0,0,0,0,false],'
        f'"{"d" * 63}e": [-1,"m",0,0,0,0,false], "{"d" * 64}": [1,"m",0,0,0,0,false],'
        f'"{"e" * 64}": [1,"m",0,0,0,0,false]}}}}'
    )
    loaded = load(directory)
    assert loaded is not None
    assert list(loaded.marks) == ["d" * 64]
    assert loaded.hook_errors is None


def test_forget_drops_a_container(tmp_path):
    """A forgotten trail is no longer in the next save."""
    directory = tmp_path / "cp"
    writer = CheckpointWriter(directory)
    writer.update(CID, Mark(1, "m"))
    list(writer.save())
    writer.forget(CID)
    assert list(writer.save()) == ["c"]
    loaded = load(directory)
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
