"""Pins checkpoint-then-publish (sidecar.watch.commits): counts are visible once saved."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from shieldaudit.sidecar.watch.checkpoint import SHARDS, CheckpointWriter, Mark, load, shard_of
from shieldaudit.sidecar.watch.commits import MAX_COMMIT_INTERVAL, Commits
from shieldaudit.sidecar.watch.tailer import Tail
from shieldaudit.sidecar.watch.tally import Tally

if TYPE_CHECKING:
    from pathlib import Path

CID = "c" * 64


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        """Start at 100 s."""
        self.now = 100.0

    def __call__(self) -> float:
        """Return the current time."""
        return self.now


def setup(tmp_path: Path) -> tuple[Commits, dict[str, Tally], list[Tally], Clock]:
    tallies = {shard: Tally() for shard in SHARDS}
    published: list[Tally] = []
    clock = Clock()
    commits = Commits(CheckpointWriter(tmp_path / "checkpoint"), tallies, published.append, clock)
    return commits, tallies, published, clock


def test_counts_are_published_only_with_their_shard_saved(tmp_path):
    """A count waits in its tally until the checkpoint holding the mark is on disk."""
    commits, tallies, published, _clock = setup(tmp_path)
    tail = Tail(CID, Mark(last_seq=3, last_mac="m" * 64), tallies[shard_of(CID)])
    tallies[shard_of(CID)].events[("hook", "poststop")] = 3
    commits.unsaved.add(CID)

    assert commits.pending()
    assert published == []
    commits.commit({CID: tail})

    assert [t.events for t in published] == [{("hook", "poststop"): 3}]
    saved = load(tmp_path / "checkpoint")
    assert saved is not None
    assert saved.marks[CID].last_seq == 3
    assert not commits.pending()
    assert commits.wait() is None


def test_maybe_waits_for_the_gap_and_the_gap_is_bounded(tmp_path):
    """While something waits, saves are at most MAX_COMMIT_INTERVAL apart, never within the gap."""
    commits, tallies, published, clock = setup(tmp_path)
    tallies[shard_of(CID)].rotations = 1
    commits.maybe({})  # the gap since construction is not over

    assert published == []
    assert 0 < commits.gap() <= MAX_COMMIT_INTERVAL
    wait = commits.wait()
    assert wait is not None
    assert wait <= MAX_COMMIT_INTERVAL
    clock.now += MAX_COMMIT_INTERVAL
    commits.maybe({})

    assert [t.rotations for t in published] == [1]


def test_a_failed_save_publishes_nothing_and_retries(tmp_path, caplog):
    """Disk trouble: counts stay unpublished (one warning); the next save publishes them once."""
    commits, tallies, published, clock = setup(tmp_path)
    (tmp_path / "checkpoint").write_text("a file where the directory goes")
    tallies[shard_of(CID)].parse_errors = 2

    commits.commit({})
    commits.commit({})

    assert published == []
    assert commits.pending()
    assert caplog.text.count("cannot save checkpoint") == 1
    os.unlink(tmp_path / "checkpoint")
    clock.now += MAX_COMMIT_INTERVAL
    commits.commit({})

    assert [t.parse_errors for t in published] == [2]
    assert "checkpoint saved again" in caplog.text
