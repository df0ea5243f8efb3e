"""The writer: seq and chain derived from the trail, rotation, retention, torn tails, safety."""

from __future__ import annotations

import itertools
import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from shieldaudit.core.errors import InvalidContainerIdError, StorageError, UnsafePathError
from shieldaudit.store import chain
from shieldaudit.store.reader import TrailDir
from shieldaudit.store.verify import verify_container
from shieldaudit.store.writer import MAX_ENTRY_BYTES, TrailWriter
from store_helpers import CID_A, CID_B, all_lines, settings, trail, write


def test_first_entry_links_to_genesis_and_has_every_contract_key(tmp_path):
    """Seq 1 links to the genesis value; every contract key is present, unknowns empty/null."""
    root = tmp_path / "root"
    write(root, CID_A, 1)
    (line,) = all_lines(root, CID_A)
    entry = json.loads(line)
    assert entry["seq"] == 1
    assert entry["prev"] == chain.GENESIS
    for key in (
        "seq",
        "ts",
        "source",
        "action",
        "container",
        "container_id",
        "image",
        "pid",
        "exit_code",
        "dest",
        "detail",
        "prev",
    ):
        assert key in entry
    assert entry["container"] == ""
    assert entry["pid"] is None
    assert entry["container_id"] == CID_A
    assert entry["ts"].endswith("Z")
    assert len(entry["ts"]) == len("2026-11-22T10:42:12.211996Z")
    assert list(entry)[-1] == "mac"


def test_seq_continues_across_writers_and_processes_state(tmp_path):
    """A new writer (no shared memory) continues seq and chain from the file itself."""
    root = tmp_path / "root"
    assert write(root, CID_A, 3) == [1, 2, 3]
    assert write(root, CID_A, 2) == [4, 5]
    entries = [json.loads(line) for line in all_lines(root, CID_A)]
    for before, after in itertools.pairwise(entries):
        assert after["prev"] == before["mac"]
    assert verify_container(root, CID_A).ok


def test_containers_have_independent_sequences(tmp_path):
    """Each container has its own seq starting at 1."""
    root = tmp_path / "root"
    write(root, CID_A, 2)
    assert write(root, CID_B, 1) == [1]


def test_rotation_seals_numbered_segments_and_continues_chain(tmp_path):
    """Reaching max_segment_bytes seals audit.jsonl as audit-NNNNNN.jsonl; seq and chain go on."""
    root = tmp_path / "root"
    write(root, CID_A, 30, max_segment_bytes=1024, keep_segments=0)
    names = sorted(os.listdir(trail(root, CID_A)))
    assert "audit.jsonl" in names
    sealed = [n for n in names if n != "audit.jsonl"]
    assert sealed[0] == "audit-000001.jsonl"
    assert sealed == [f"audit-{i:06d}.jsonl" for i in range(1, len(sealed) + 1)]
    for name in sealed:
        assert (trail(root, CID_A) / name).stat().st_size >= 1024
    seqs = [json.loads(line)["seq"] for line in all_lines(root, CID_A)]
    assert seqs == list(range(1, 31))
    assert verify_container(root, CID_A).ok


def test_rotation_continues_when_active_segment_is_empty(tmp_path):
    """Right after a rotation the next writer finds the head in the newest sealed segment."""
    root = tmp_path / "root"
    write(root, CID_A, 3, max_segment_bytes=256)  # every entry exceeds 256 bytes: rotates each time
    assert (trail(root, CID_A) / "audit.jsonl").stat().st_size == 0
    assert write(root, CID_A, 1, max_segment_bytes=256) == [4]
    assert verify_container(root, CID_A).ok


def test_retention_keeps_newest_sealed_segments_and_verify_notes_history_start(tmp_path):
    """keep_segments=3 leaves three sealed segments; verify passes and says where history starts."""
    root = tmp_path / "root"
    write(root, CID_A, 20, max_segment_bytes=256, keep_segments=3)
    sealed = sorted(n for n in os.listdir(trail(root, CID_A)) if n.startswith("audit-"))
    assert sealed == ["audit-000018.jsonl", "audit-000019.jsonl", "audit-000020.jsonl"]
    report = verify_container(root, CID_A, keep_segments=3)
    assert report.ok, [p.render() for p in report.problems]
    assert report.first_seq == 18
    assert any("history starts" in note for note in report.notes)


def test_permissions_directories_0700_files_0600(tmp_path):
    """Trail directories are created 0700 and trail files 0600."""
    root = tmp_path / "root"
    write(root, CID_A, 3, max_segment_bytes=256)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "containers").stat().st_mode) == 0o700
    assert stat.S_IMODE(trail(root, CID_A).stat().st_mode) == 0o700
    for path in trail(root, CID_A).iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_torn_tail_is_set_aside_never_glued(tmp_path):
    """A crash fragment (no newline) is cut out, saved under state/torn, and recorded."""
    root = tmp_path / "root"
    write(root, CID_A, 2)
    active = trail(root, CID_A) / "audit.jsonl"
    with active.open("ab") as handle:
        handle.write(b'{"seq":3,"ts":"2026-11-2')
    report = verify_container(root, CID_A)
    assert report.ok
    assert any("torn final line" in note for note in report.notes)
    write(root, CID_A, 1)
    lines = all_lines(root, CID_A)
    entries = [json.loads(line) for line in lines]  # every line parses: nothing glued
    assert [e["seq"] for e in entries] == [1, 2, 3]
    assert entries[2]["torn_tail_bytes"] == len(b'{"seq":3,"ts":"2026-11-2')
    saved = list((root / "state" / "torn").iterdir())
    assert len(saved) == 1
    assert saved[0].read_bytes() == b'{"seq":3,"ts":"2026-11-2'
    assert verify_container(root, CID_A).ok


def test_garbage_last_line_does_not_stop_writers(tmp_path):
    """A malformed complete last line: the writer continues after the last valid entry."""
    root = tmp_path / "root"
    write(root, CID_A, 2)
    with (trail(root, CID_A) / "audit.jsonl").open("ab") as handle:
        handle.write(b"not json at all\n")
    assert write(root, CID_A, 1) == [3]
    report = verify_container(root, CID_A)
    assert not report.ok
    assert any("not JSON" in p.message for p in report.problems)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "A" * 64,
        "a" * 63,
        "a" * 65,
        "../" + "a" * 61,
        "a" * 32 + "/" + "a" * 31,
        "..",
        "g" * 64,
        "a" * 63 + "\n",
    ],
)
def test_hostile_ids_are_refused_and_nothing_is_created(tmp_path, bad):
    """Only 64 lower-case hex IDs become paths; anything else is refused before touching disk."""
    root = tmp_path / "root"
    with TrailWriter(settings(root)) as writer, pytest.raises(InvalidContainerIdError):
        writer.append(bad, {"source": "cli", "action": "x"})
    assert not root.exists()


def test_world_writable_root_is_refused(tmp_path):
    """A root writable by group or others is refused with a clear chmod hint."""
    root = tmp_path / "root"
    root.mkdir()
    root.chmod(0o777)
    with TrailWriter(settings(root)) as writer, pytest.raises(UnsafePathError, match="chmod go-w"):
        writer.append(CID_A, {"source": "cli", "action": "x"})
    assert not (root / "containers").exists()


def test_symlinked_trail_file_is_refused_and_target_untouched(tmp_path):
    """audit.jsonl replaced by a symlink to a file outside the root: refused, target unchanged."""
    root = tmp_path / "root"
    write(root, CID_A, 1)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious\n")
    active = trail(root, CID_A) / "audit.jsonl"
    active.unlink()
    active.symlink_to(outside)
    with TrailWriter(settings(root)) as writer, pytest.raises(UnsafePathError, match="symlink"):
        writer.append(CID_A, {"source": "cli", "action": "x"})
    assert outside.read_bytes() == b"precious\n"


def test_symlinked_trail_directory_is_refused(tmp_path):
    """containers/<id> symlinked to a directory outside the root: refused, nothing written."""
    root = tmp_path / "root"
    write(root, CID_B, 1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "containers" / CID_A).symlink_to(elsewhere)
    with TrailWriter(settings(root)) as writer, pytest.raises(UnsafePathError, match="symlink"):
        writer.append(CID_A, {"source": "cli", "action": "x"})
    assert list(elsewhere.iterdir()) == []


def test_fifo_in_place_of_trail_is_refused_without_hanging(tmp_path):
    """A FIFO planted as audit.jsonl is refused (opened non-blocking), not waited on."""
    root = tmp_path / "root"
    write(root, CID_A, 1)
    active = trail(root, CID_A) / "audit.jsonl"
    active.unlink()
    os.mkfifo(active)
    with TrailWriter(settings(root)) as writer, pytest.raises(UnsafePathError, match="regular"):
        writer.append(CID_A, {"source": "cli", "action": "x"})


def test_oversized_entry_is_refused_and_trail_unchanged(tmp_path):
    """An entry over the size limit is refused; the trail keeps only valid entries."""
    root = tmp_path / "root"
    write(root, CID_A, 1)
    before = all_lines(root, CID_A)
    with TrailWriter(settings(root)) as writer, pytest.raises(StorageError, match="limit"):
        writer.append(CID_A, {"source": "cli", "action": "x", "detail": "x" * MAX_ENTRY_BYTES})
    assert all_lines(root, CID_A) == before


def test_short_write_from_file_size_limit_is_undone(tmp_path):
    """A write cut short (file size limit, like a full disk) is truncated back and reported."""
    root = tmp_path / "root"
    write(root, CID_A, 1)
    size = (trail(root, CID_A) / "audit.jsonl").stat().st_size
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from pathlib import Path
        from shieldaudit.core.settings import StoreSettings
        from shieldaudit.store.writer import TrailWriter
        from shieldaudit.core.errors import StorageError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({size + 100}, {size + 100}))
        try:
            with TrailWriter(StoreSettings(root=Path({str(root)!r}), fsync="never")) as w:
                w.append({CID_A!r}, {{"source": "cli", "action": "x"}})
        except StorageError as exc:
            print("refused:", exc)
            sys.exit(3)
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 3, result.stderr
    assert "short write" in result.stdout or "File too large" in result.stdout
    assert (trail(root, CID_A) / "audit.jsonl").stat().st_size == size
    assert write(root, CID_A, 1) == [2]
    assert verify_container(root, CID_A).ok


def test_keyed_chain_marks_entries_with_key_id(tmp_path):
    """With a key file, entries say hmac-sha256:<kid> and verify needs the key."""
    root = tmp_path / "root"
    key_file = tmp_path / "key"
    key_file.write_bytes(b"0123456789abcdef0123456789abcdef\n")
    key_file.chmod(0o600)
    write(root, CID_A, 3, key_file=key_file)
    entries = [json.loads(line) for line in all_lines(root, CID_A)]
    keys = chain.load_keys(key_file)
    assert {e["chain"] for e in entries} == {"hmac-sha256:" + keys.keys[0].kid}
    assert verify_container(root, CID_A, keys).ok
    without = verify_container(root, CID_A)
    assert not without.ok
    assert any("no key file" in p.message for p in without.problems)


def test_reader_last_entries_reads_across_segments(tmp_path):
    """last_entries returns the newest entries, oldest first, across a rotation boundary."""
    root = tmp_path / "root"
    write(root, CID_A, 10, max_segment_bytes=1024)
    with TrailDir(root, CID_A) as directory:
        last = directory.last_entries(4)
    assert [e.seq for e in last] == [7, 8, 9, 10]


def test_deeply_nested_garbage_line_is_skipped_not_a_crash(tmp_path):
    """A line of 200,000 '[' (hostile nesting) is reported by verify; appends continue."""
    root = tmp_path / "root"
    write(root, CID_A, 1)
    with (trail(root, CID_A) / "audit.jsonl").open("ab") as handle:
        handle.write(b"[" * 200_000 + b"\n")
    assert write(root, CID_A, 1) == [2]
    report = verify_container(root, CID_A)
    assert any("nested too deeply" in p.message for p in report.problems)
    assert report.last_seq == 2
