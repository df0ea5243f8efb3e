"""The spool follower's batches: a sync that fails in its thread loses and doubles nothing.

The sync of a batch runs beside the next batch (``spool._Batches``); when it
fails, what was applied since the checkpoint must be applied again, and the
checkpoint must not have moved past it. Real files in a temporary directory;
the failure is injected into the sync call only.

Also pins that removing a finished file while the batch read before is
still being made durable does not move that batch's checkpoint on: the
checkpoint only forgets the removed file.
"""

from __future__ import annotations

import errno
import json
import os
import time
from typing import TYPE_CHECKING

import pytest

from cli_helpers import cid
from fleet_helpers import SEPARATOR, files_of, node_trail, shipped
from shieldaudit.core.errors import StorageError
from shieldaudit.fleet import collect as collect_module
from shieldaudit.fleet.collect import Collector, Metrics
from shieldaudit.fleet.spool import Spool, follow

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

AN_HOUR_AGO = 1_700_000_000


def spool_with(tmp_path: Path, records: list[bytes], per_file: int) -> Path:
    """Write records into spool files of per_file records each, all finished an hour ago."""
    spool = tmp_path / "spool" / "spool"
    spool.parent.mkdir()
    for index in range(0, len(records), per_file):
        path = spool.with_name(f"spool.2026120217{index // per_file:02d}")
        path.write_bytes(b"".join(records[index : index + per_file]))
        os.utime(path, (AN_HOUR_AGO, AN_HOUR_AGO))
    return spool


def run_once(central: Path, spool: Path) -> Collector:
    """Follow the spool to its end in this process (syncs on); return the closed collector."""
    collector = Collector(central)
    reader = Spool(spool)
    try:
        follow(collector, reader, Metrics(collector.counts, None), once=True)
    finally:
        reader.close()
        collector.close()
    return collector


def test_a_failed_sync_moves_no_checkpoint_and_the_next_run_completes_the_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second batch's sync fails: the run stops, the checkpoint covers at most batch one.

    The next run applies the rest: the copy is the node's, every line once.
    """
    root = tmp_path / "node"
    node_trail(root, cid("1"), 60)
    node_trail(root, cid("2"), 60)
    records = [SEPARATOR + m for m in shipped(root)]
    spool = spool_with(tmp_path, records, per_file=20)
    write_for_sync = Collector.write_for_sync
    calls: list[int] = []

    def failing_second(self: Collector) -> Callable[[], None]:
        durable = write_for_sync(self)
        calls.append(1)
        if len(calls) != 2:
            return durable

        def fail() -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        return fail

    monkeypatch.setattr(Collector, "write_for_sync", failing_second)
    monkeypatch.setattr(Spool, "read", _small_batches(Spool.read))
    central = tmp_path / "central"
    with pytest.raises(StorageError, match="Input/output error"):
        run_once(central, spool)
    saved = json.loads(spool.with_name("spool.checkpoint").read_bytes())
    applied = sum(entry["offset"] for entry in saved["files"])
    assert 0 < applied < sum(len(r) for r in records)

    monkeypatch.undo()
    collector = run_once(central, spool)
    assert files_of(central / "node-a") == files_of(root)
    assert collector.counts.conflicts == 0
    assert not (central / "node-a" / "conflicts").exists()


def _small_batches(read: Callable[..., object]) -> Callable[..., object]:
    """Spool.read with a small budget, so the spool takes several batches."""

    def small(self: Spool, limit: int = 4 * 1024 * 1024) -> object:
        return read(self, min(limit, 8 * 1024))

    return small


def test_without_syncfs_the_batch_is_made_durable_before_it_is_checkpointed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the C library has no syncfs, each batch is synced file by file, in line."""
    monkeypatch.setattr(collect_module, "_syncfs", None)
    root = tmp_path / "node"
    node_trail(root, cid("3"), 30)
    spool = spool_with(tmp_path, [SEPARATOR + m for m in shipped(root)], per_file=10)
    run_once(tmp_path / "central", spool)
    assert files_of(tmp_path / "central" / "node-a") == files_of(root)


RECORD = b'\x1enode-a {"file":"/x","offset":0} {}\n'


def offsets(spool: Path) -> dict[str, int]:
    """The checkpoint's offsets by file name."""
    data = json.loads(spool.with_name("spool.checkpoint").read_bytes())
    return {e["name"]: e["offset"] for e in data["files"]}


def test_removing_a_file_does_not_checkpoint_a_batch_still_syncing(tmp_path):
    """A file removed on an empty pass leaves the other files' checkpoint where it was."""
    spool = tmp_path / "spool"
    older, newer = tmp_path / "spool.202612021700", tmp_path / "spool.202612021701"
    older.write_bytes(RECORD * 2)
    newer.write_bytes(RECORD)
    reader = Spool(spool, fsync=False)
    try:
        assert len(reader.read().records) == 3
        reader.commit(reader.mark())  # durable: both files checkpointed to their end
        with newer.open("ab") as f:
            f.write(RECORD)
        assert len(reader.read().records) == 1  # read, applied, not yet durable
        assert older.exists()  # written a moment ago: kept for the grace
        an_hour_ago = time.time() - 3600
        os.utime(older, (an_hour_ago, an_hour_ago))
        assert reader.read().records == []
        assert not older.exists()
        assert offsets(spool) == {newer.name: len(RECORD)}
    finally:
        reader.close()
