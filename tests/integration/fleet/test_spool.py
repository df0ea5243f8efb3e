r"""``shieldaudit collect --spool``: the spool files rsyslog writes, followed by a real collect.

The spool files are written here as the collector's rsyslog writes them (one
record per message, ``\x1e`` first, one file per minute named
``spool.YYYYMMDDhhmm``), so each failure mode can be set up exactly: files
written while collect is down, a file still held open by a writer, a record
torn by a crash of rsyslog at the end of a file and written again in the
next, collect killed with SIGKILL mid-stream, a checkpoint lost, unreadable
or of another shape, two collects on one spool or one central directory,
leases unavailable. Each time every line arrives once and the copy is the
node's, byte for byte.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from cli_helpers import cid
from fleet_helpers import (
    SEPARATOR,
    SHIELDAUDIT,
    files_of,
    fill,
    metric,
    node_trail,
    on_tmpfs,
    shipped,
    tmpfs_of,
)
from rsyslog_harness import CollectProcess, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

#: Older than collect's grace (a few seconds) for a file no longer written.
AN_HOUR_AGO = time.time() - 3600


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Path, list[bytes], CollectProcess]]:
    """A node with two trails (rotation on), their spool records, and collect (not started)."""
    root = tmp_path / "node"
    node_trail(root, cid("1"), 40)
    node_trail(root, cid("2"), 25)
    records = [SEPARATOR + m for m in shipped(root)]
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    collect = CollectProcess(
        SHIELDAUDIT, tmp_path / "central", spool_dir / "spool", tmp_path / "collect.prom"
    )
    try:
        yield root, records, collect
    finally:
        collect.kill()


def minute(n: int) -> str:
    """The name of the spool file of minute ``n`` of an hour."""
    return f"spool.2026120217{n:02d}"


def append(spool: Path, name: str, data: bytes, *, old: bool = True) -> Path:
    """Append to one spool file as omfile does; ``old``: last written an hour ago."""
    path = spool.with_name(name)
    with path.open("ab") as f:
        f.write(data)
    if old:
        os.utime(path, (AN_HOUR_AGO, AN_HOUR_AGO))
    return path


def spool_files(spool: Path) -> list[str]:
    """The spool files still present."""
    return sorted(
        p.name for p in spool.parent.iterdir() if re.fullmatch(r"spool\.[0-9]{12}", p.name)
    )


def checkpoint(spool: Path) -> dict[str, tuple[int, int]]:
    """The checkpoint collect keeps next to the spool: name -> (inode, offset)."""
    data = json.loads(spool.with_name("spool.checkpoint").read_bytes())
    return {e["name"]: (e["inode"], e["offset"]) for e in data["files"]}


def stored(collect: CollectProcess, outcome: str = "stored") -> int:
    """One outcome of collect's last run, from its metrics file."""
    assert collect.metrics is not None
    return metric(
        collect.metrics.read_text(), f'shieldaudit_collect_entries_total{{outcome="{outcome}"}}'
    )


def test_files_written_while_collect_was_down_applied_once_and_removed(setup):
    """Spool files written while collect was down are applied once; all but the newest removed.

    Names that are not spool.<12 digits> (files of an older layout, copies,
    collect's own) are left alone. A second run finds nothing new.
    """
    root, records, collect = setup
    spool = collect.spool
    chunks = [records[i : i + 15] for i in range(0, len(records), 15)]
    for i, chunk in enumerate(chunks):
        append(spool, minute(i), b"".join(chunk))
    strays = ["spool.0000000001", "spool.20261202", "spool.202612021700.bak", "spool"]
    for name in strays:
        spool.with_name(name).write_bytes(b"not a spool file\n")
    result = collect.once()
    assert result.returncode == 0, result.stderr
    assert files_of(collect.central / "node-a") == files_of(root)
    newest = minute(len(chunks) - 1)
    assert spool_files(spool) == [newest]  # the newest is rsyslog's until a later one exists
    target = spool.with_name(newest).stat()
    assert checkpoint(spool)[newest] == (target.st_ino, target.st_size)
    for name in strays:
        assert spool.with_name(name).read_bytes() == b"not a spool file\n"
    assert collect.metrics is not None
    text = collect.metrics.read_text()
    assert stored(collect) == len(records)
    assert metric(text, "shieldaudit_collect_spool_backlog_bytes") == 0
    assert metric(text, "shieldaudit_collect_spool_files") == 1
    again = collect.once()
    assert again.returncode == 0, again.stderr
    assert again.stderr == ""
    assert stored(collect) == 0
    assert stored(collect, "duplicate") == 0


def test_a_backlog_of_many_files_is_applied_in_batches_and_removed(setup):
    """A record per file, files over several hours: each applied once, all but the newest removed.

    Batches are bounded by bytes, not by files; the checkpoint names only the
    files begun, not the whole backlog.
    """
    root, records, collect = setup
    spool = collect.spool
    names = [f"spool.20261202{10 + i // 60:02d}{i % 60:02d}" for i in range(len(records))]
    for name, record in zip(names, records, strict=True):
        append(spool, name, record)
    result = collect.once()
    assert result.returncode == 0, result.stderr
    assert files_of(collect.central / "node-a") == files_of(root)
    assert spool_files(spool) == [names[-1]]
    assert list(checkpoint(spool)) == [names[-1]]
    assert stored(collect) == len(records)


def test_a_file_held_open_by_a_writer_is_never_removed(setup):
    """A file some process still has open for writing stays, however old; closed, it goes.

    It goes only once a later file exists and it is unmodified for a few
    seconds: a file written just now stays until then.
    """
    root, records, collect = setup
    spool = collect.spool
    held = append(spool, minute(0), b"".join(records[:20]))
    append(spool, minute(1), b"".join(records[20:40]))
    writer = os.open(held, os.O_WRONLY | os.O_APPEND)
    try:
        for _ in range(2):
            result = collect.once()
            assert result.returncode == 0, result.stderr
            assert spool_files(spool) == [minute(0), minute(1)]
        # The writer writes on: collect reads it, the file stays.
        os.write(writer, b"".join(records[40:50]))
        os.utime(held, (AN_HOUR_AGO, AN_HOUR_AGO))
        assert collect.once().returncode == 0
        assert spool_files(spool) == [minute(0), minute(1)]
        assert stored(collect) == 10
    finally:
        os.close(writer)
    # Closed, but written a moment ago: it stays for a few seconds more.
    append(spool, minute(1), b"".join(records[50:]), old=False)
    os.utime(held)
    assert collect.once().returncode == 0
    assert spool_files(spool) == [minute(0), minute(1)]
    os.utime(held, (AN_HOUR_AGO, AN_HOUR_AGO))
    result = collect.once()
    assert result.returncode == 0, result.stderr
    assert spool_files(spool) == [minute(1)]
    assert files_of(collect.central / "node-a") == files_of(root)


@pytest.mark.parametrize("again", [1, 0], ids=["in the next file", "in the same file"])
def test_torn_record_written_again_after_a_crash_of_rsyslog_is_applied_once(setup, again):
    """A record cut short by a crash of rsyslog, then written whole, is applied once.

    rsyslog writes the batch it had not finished again, into the next
    minute's file or (back within the minute) after the fragment. At the end
    of a file, the unfinished record is not read past until the file is
    finished (a later file, no writer); then it is counted as torn and
    dropped. Within a file, what precedes the record's separator is.
    """
    root, records, collect = setup
    spool = collect.spool
    append(spool, minute(0), b"".join(records[:10]) + records[10][:57])
    first = collect.once()
    assert first.returncode == 0, first.stderr
    assert checkpoint(spool)[minute(0)][1] == len(b"".join(records[:10]))
    append(spool, minute(again), b"".join(records[8:]))
    second = collect.once()
    assert second.returncode == 0, second.stderr
    assert files_of(collect.central / "node-a") == files_of(root)
    assert collect.metrics is not None
    text = collect.metrics.read_text()
    assert metric(text, "shieldaudit_collect_spool_torn_total") == 1
    assert stored(collect, "duplicate") == 2
    assert metric(text, "shieldaudit_collect_conflicts_total") == 0
    assert not (collect.central / "node-a" / "conflicts").exists()
    assert spool_files(spool) == [minute(again)]
    third = collect.once()  # nothing counted twice
    assert third.returncode == 0, third.stderr
    assert metric(collect.metrics.read_text(), "shieldaudit_collect_spool_torn_total") == 0


def test_kill_9_mid_stream_with_several_files_then_the_checkpoint(setup):
    """Collect killed with SIGKILL while following goes on from its checkpoint: every line once.

    Several files are present when it is killed, more are written while it is dead.
    """
    root, records, collect = setup
    spool = collect.spool
    collect.start()
    half = len(records) // 2
    for i, record in enumerate(records[:half]):
        append(spool, minute(i // 10), record)
    trail = collect.central / "node-a" / "containers"
    wait_for(trail.is_dir, 60, "the first lines in the copy")
    collect.stop(signal.SIGKILL)
    for i, record in enumerate(records[half:-1]):
        append(spool, minute(10 + i // 10), record)
    collect.start()
    append(spool, minute(59), records[-1])
    wait_for(lambda: files_of(collect.central / "node-a") == files_of(root), 60, "the whole copy")
    wait_for(lambda: spool_files(spool) == [minute(59)], 60, "the read files to be removed")
    assert collect.stop() == 0  # SIGTERM: a clean stop
    assert not (collect.central / "node-a" / "conflicts").exists()
    assert "Traceback" not in collect.log()
    assert collect.once().returncode == 0
    assert stored(collect) == 0
    assert stored(collect, "duplicate") == 0


@pytest.mark.parametrize("damage", ["removed", "unreadable", "other shape"])
def test_lost_checkpoint_reads_every_file_and_drops_what_is_held(setup, damage):
    """Without a usable checkpoint, collect reads the spool files again: nothing is doubled.

    It says so in one line; the lines it held already are dropped as redelivered.
    """
    root, records, collect = setup
    spool = collect.spool
    append(spool, minute(0), b"".join(records[:20]))
    append(spool, minute(1), b"".join(records[20:30]))
    assert collect.once().returncode == 0
    assert spool_files(spool) == [minute(1)]
    append(spool, minute(2), b"".join(records[30:]))
    point = spool.with_name("spool.checkpoint")
    if damage == "removed":
        point.unlink()
    elif damage == "unreadable":
        point.write_bytes(b"{not json" + b" " * 100)
    else:
        point.write_text('{"inode": 1, "offset": 0}')
    result = collect.once()
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "reading every spool file from its start" in result.stderr
    assert files_of(collect.central / "node-a") == files_of(root)
    assert stored(collect, "duplicate") == 10
    assert stored(collect) == len(records) - 30
    assert collect.metrics is not None
    assert metric(collect.metrics.read_text(), "shieldaudit_collect_conflicts_total") == 0
    assert spool_files(spool) == [minute(2)]


def test_runs_with_nothing_to_apply_say_nothing(setup):
    """A spool with only an empty file, collected twice: no checkpoint is reported missing."""
    _, _, collect = setup
    append(collect.spool, minute(0), b"")
    for _ in range(2):
        result = collect.once()
        assert (result.returncode, result.stderr) == (0, "")
    assert checkpoint(collect.spool) == {}


def test_two_collects_on_one_spool_the_second_exits_naming_the_first(setup):
    """A second collect on a spool (another central directory too) exits 1 in one line.

    The first keeps going, and nothing is applied twice.
    """
    root, records, collect = setup
    spool = collect.spool
    collect.start()
    append(spool, minute(0), b"".join(records[:30]))
    wait_for(
        lambda: spool_files(spool) == [minute(0)] and (collect.central / "node-a").is_dir(),
        60,
        "the first lines",
    )
    assert collect.proc is not None
    other = CollectProcess(SHIELDAUDIT, collect.central.with_name("other"), spool)
    second = other.once()
    assert second.returncode == 1
    assert second.stderr.count("\n") == 1, second.stderr
    assert second.stderr.startswith(f"Error: another shieldaudit collect is following {spool} ")
    assert f"(pid {collect.proc.pid}; " in second.stderr
    assert not collect.central.with_name("other").exists()
    append(spool, minute(1), b"".join(records[30:]))
    wait_for(lambda: files_of(collect.central / "node-a") == files_of(root), 60, "the whole copy")
    assert collect.stop() == 0
    assert collect.once().returncode == 0
    assert stored(collect, "duplicate") == 0


def test_two_collects_on_one_central_directory_the_second_exits_at_once(setup, tmp_path):
    """A second collect on a central directory (from another spool) exits 1 in one line."""
    _, records, collect = setup
    collect.start()
    append(collect.spool, minute(0), b"".join(records[:5]))
    wait_for((collect.central / "node-a").is_dir, 60, "the first lines")
    assert collect.proc is not None
    (tmp_path / "spool2").mkdir()
    other = CollectProcess(SHIELDAUDIT, collect.central, tmp_path / "spool2" / "spool")
    second = other.once()
    assert second.returncode == 1
    assert second.stderr.count("\n") == 1, second.stderr
    assert second.stderr.startswith(
        f"Error: another shieldaudit collect is writing {collect.central} "
    )
    assert f"(pid {collect.proc.pid}; " in second.stderr
    assert collect.stop() == 0


def test_without_file_leases_a_file_is_removed_only_after_the_long_wait(setup):
    """Without leases (not the files' owner, no CAP_LEASE), collect says so once and keeps them.

    A file unmodified for less than the long wait stays; one older goes.
    """
    _, records, collect = setup
    spool = collect.spool
    recent = time.time() - 60
    for i in range(3):
        path = append(spool, minute(i), b"".join(records[i * 20 : (i + 1) * 20]))
        os.chown(path, 12345, 12345)
    os.utime(spool.with_name(minute(1)), (recent, recent))
    result = subprocess.run(
        ["setpriv", "--bounding-set", "-lease", *collect.args("--once")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "cannot take a file lease on" in result.stderr
    assert spool_files(spool) == [minute(1), minute(2)]
    assert stored(collect) == 60


def test_malformed_and_oversized_records_are_refused_and_skipped(setup):
    """Records that are not shipped lines are counted and skipped; the rest is applied."""
    root, records, collect = setup
    spool = collect.spool
    junk = [
        b"no separator at all\n",
        SEPARATOR + b"node-a {not json\n",
        SEPARATOR + b"../etc " + records[0][1:],
        SEPARATOR + b"node-a " + b"x" * (2 * 1024 * 1024) + b"\n",
    ]
    data = junk[0] + b"".join(records[:5]) + b"".join(junk[1:]) + b"".join(records[5:])
    append(spool, minute(0), data)
    result = collect.once()
    assert result.returncode == 0, result.stderr
    assert files_of(collect.central / "node-a") == files_of(root)
    assert sorted(os.listdir(collect.central)) == [".shieldaudit-fleet", "node-a"]
    assert collect.metrics is not None
    text = collect.metrics.read_text()
    refused = sum(
        int(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("shieldaudit_collect_refused_total{")
    )
    assert refused == len(junk)


def test_central_disk_full_keeps_the_checkpoint_and_loses_nothing(setup):
    """The central copy's disk full: collect says so, keeps its checkpoint, retries; nothing lost.

    collect runs in a mount namespace of its own with the central directory
    on a 256 KiB tmpfs that a filler file takes whole. The spool file it
    cannot apply stays, with the checkpoint short of its end; once space is
    freed, every line is in the copy once (a line cut short by the full disk
    is cut off when the trail is opened again), and the file is removed.
    """
    root, records, collect = setup
    spool = collect.spool
    central = collect.central
    central.mkdir(mode=0o700)
    collect.wrapper = on_tmpfs(central, 256)
    collect.start()
    assert collect.proc is not None
    inside = tmpfs_of(collect.proc.pid, central, 256, 60)
    filler = inside / "filler"
    fill(filler)
    append(spool, minute(1), b"".join(records))
    wait_for(lambda: "No space left on device" in collect.log(), 60, "collect to fail storing")
    assert "cannot store: " in collect.log()
    assert spool_files(spool) == [minute(1)]
    done = (
        checkpoint(spool).get(minute(1), (0, 0))[1]
        if spool.with_name("spool.checkpoint").exists()
        else 0
    )
    assert done < spool.with_name(minute(1)).stat().st_size
    assert collect.proc.poll() is None  # still running, trying again every second

    filler.unlink()
    append(spool, minute(2), b"")  # a later file: the first one may then be removed
    wait_for(lambda: files_of(inside / "node-a") == files_of(root), 60, "the whole copy")
    wait_for(lambda: spool_files(spool) == [minute(2)], 60, "the applied file to be removed")
    assert not (inside / "node-a" / "conflicts").exists()
    assert collect.stop() == 0
    assert "Traceback" not in collect.log()
