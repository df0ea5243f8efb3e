r"""``shieldaudit collect --spool``: the spool rsyslog writes, followed by a real collect process.

The spool is written here as the collector's rsyslog writes it (one record
per message, ``\x1e`` first) and rotated with the shipped rotation script,
so each failure mode can be set up exactly: files rotated (and a record split
across two of them) while collect is down, a record torn by a crash of
rsyslog and written again after it, collect killed with SIGKILL mid-stream,
a checkpoint lost or unreadable. Each time every line arrives once and the
copy is the node's, byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import TYPE_CHECKING

import pytest

from cli_helpers import cid
from fleet_helpers import SEPARATOR, SHIELDAUDIT, files_of, metric, node_trail, shipped
from rsyslog_harness import ROTATE, CollectProcess, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


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


def append(spool: Path, data: bytes) -> None:
    """Append to the spool as omfile does."""
    with spool.open("ab") as f:
        f.write(data)


def rotate(spool: Path) -> None:
    """Run the shipped rotation script as rsyslog does at the size limit."""
    subprocess.run([str(ROTATE), str(spool)], check=True, timeout=60)


def numbered(spool: Path) -> list[str]:
    """The rotated spool files still present."""
    return sorted(p.name for p in spool.parent.iterdir() if p.name.startswith("spool.0"))


def checkpoint(spool: Path) -> dict[str, int]:
    """The checkpoint collect keeps next to the spool."""
    return json.loads(spool.with_name("spool.checkpoint").read_bytes())


def test_rotated_while_collect_was_down_applied_once_and_removed(setup):
    """Files rotated while collect was down are read in order, once, then removed.

    One record is split across two rotated files (rsyslog writes its buffer
    in pieces); the rotation script numbers files 1, 2, 3, … A second run
    finds nothing new.
    """
    root, records, collect = setup
    spool = collect.spool
    chunks = [records[i : i + 15] for i in range(0, len(records), 15)]
    for i, chunk in enumerate(chunks):
        data = b"".join(chunk)
        if i == 1:  # split mid-record across a rotation
            append(spool, data[:-40])
            rotate(spool)
            append(spool, data[-40:])
        else:
            append(spool, data)
        if i < len(chunks) - 1:
            rotate(spool)
    assert numbered(spool) == [f"spool.{n:010d}" for n in range(1, len(chunks) + 1)]
    result = collect.once()
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert files_of(collect.central / "node-a") == files_of(root)
    assert numbered(spool) == []  # read past and checkpointed: removed
    assert checkpoint(spool) == {
        "inode": spool.stat().st_ino,
        "offset": spool.stat().st_size,
    }
    assert collect.metrics is not None
    text = collect.metrics.read_text()
    assert metric(text, 'shieldaudit_collect_entries_total{outcome="stored"}') == len(records)
    assert metric(text, "shieldaudit_collect_spool_backlog_bytes") == 0
    assert metric(text, "shieldaudit_collect_spool_file_bytes") == spool.stat().st_size
    again = collect.once()
    assert again.returncode == 0, again.stderr
    text = collect.metrics.read_text()
    assert metric(text, 'shieldaudit_collect_entries_total{outcome="stored"}') == 0
    assert metric(text, 'shieldaudit_collect_entries_total{outcome="duplicate"}') == 0
    # Numbering goes on from the highest file present, so order holds after removals.
    append(spool, b"")
    rotate(spool)
    assert numbered(spool) == ["spool.0000000001"]


def test_torn_record_written_again_after_a_crash_of_rsyslog(setup):
    """A record cut short by a crash of rsyslog, then written whole again, is applied once.

    Until more arrives, the unfinished record is not read past; afterwards
    the fragment is dropped and counted.
    """
    root, records, collect = setup
    spool = collect.spool
    append(spool, b"".join(records[:10]) + records[10][:57])
    first = collect.once()
    assert first.returncode == 0, first.stderr
    size_before = spool.stat().st_size
    assert checkpoint(spool)["offset"] == size_before - 57  # not past the unfinished record
    # rsyslog again: the batch it had not finished is written again from its start.
    append(spool, b"".join(records[8:]))
    second = collect.once()
    assert second.returncode == 0, second.stderr
    assert files_of(collect.central / "node-a") == files_of(root)
    assert collect.metrics is not None
    text = collect.metrics.read_text()
    assert metric(text, "shieldaudit_collect_spool_torn_total") == 1
    assert metric(text, 'shieldaudit_collect_entries_total{outcome="duplicate"}') == 2
    assert metric(text, "shieldaudit_collect_conflicts_total") == 0
    assert not (collect.central / "node-a" / "conflicts").exists()


def test_kill_9_mid_stream_then_the_checkpoint(setup):
    """Collect killed with SIGKILL while following goes on from its checkpoint: every line once.

    The spool grows and rotates while collect is dead.
    """
    root, records, collect = setup
    spool = collect.spool
    collect.start()
    half = len(records) // 2
    for record in records[:half]:
        append(spool, record)
    trail = collect.central / "node-a" / "containers"
    wait_for(trail.is_dir, 60, "the first lines in the copy")
    collect.stop(signal.SIGKILL)
    rotate(spool)
    append(spool, b"".join(records[half:-1]))
    rotate(spool)
    collect.start()
    append(spool, records[-1])  # rsyslog's next message starts a new spool
    wait_for(lambda: files_of(collect.central / "node-a") == files_of(root), 60, "the whole copy")
    wait_for(lambda: numbered(spool) == [], 60, "the rotated files to be removed")
    assert collect.stop() == 0  # SIGTERM: a clean stop
    assert not (collect.central / "node-a" / "conflicts").exists()
    assert "Traceback" not in collect.log()


@pytest.mark.parametrize("damage", ["removed", "unreadable"])
def test_lost_checkpoint_reads_from_the_oldest_file_and_drops_what_is_held(setup, damage):
    """Without a usable checkpoint, collect reads the spool's files again: nothing is doubled.

    The lines it held already (from the files still there) are dropped as redelivered.
    """
    root, records, collect = setup
    spool = collect.spool
    append(spool, b"".join(records[:30]))
    assert collect.once().returncode == 0
    rotate(spool)
    append(spool, b"".join(records[30:]))
    point = spool.with_name("spool.checkpoint")
    if damage == "removed":
        point.unlink()
    else:
        point.write_bytes(b"{not json" + b" " * 100)
    result = collect.once()
    assert result.returncode == 0, result.stderr
    if damage == "unreadable":
        assert "spool.checkpoint is unreadable" in result.stderr
    assert files_of(collect.central / "node-a") == files_of(root)
    assert collect.metrics is not None
    text = collect.metrics.read_text()
    assert metric(text, 'shieldaudit_collect_entries_total{outcome="duplicate"}') == 30
    assert metric(text, 'shieldaudit_collect_entries_total{outcome="stored"}') == len(records) - 30
    assert metric(text, "shieldaudit_collect_conflicts_total") == 0
    assert numbered(spool) == []


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
    append(spool, junk[0] + b"".join(records[:5]) + b"".join(junk[1:]) + b"".join(records[5:]))
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
