"""Rotation-safe, exactly-once tailing: one test per known failure of other log tailers.

Each "process" below is a Watcher with a frozen clock, so it checkpoints only
when the test says so: ``stop()`` is a clean shutdown (checkpoint, then
publish), ``crash()`` is ``kill -9`` (nothing saved, nothing more published).
What a process published is what Prometheus would have scraped from it.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from typing import TYPE_CHECKING

from shieldaudit.sidecar.watch.checkpoint import checkpoint_path
from shieldaudit.sidecar.watch.tally import Tally
from shieldaudit.sidecar.watch.watcher import Watcher
from shieldaudit.store.chain import Key, KeyRing
from shieldaudit.store.writer import TrailWriter
from store_helpers import CID_A, CID_B, settings, trail

if TYPE_CHECKING:
    from pathlib import Path

SMALL = 1200  # bytes per segment: a rotation every few entries


class Process:
    """One sidecar process's watcher; counts only what it published."""

    def __init__(self, root: Path, **kwargs) -> None:
        """Start a process on ``root`` (polling, frozen clock: it commits only when told)."""
        self.published = Tally()
        self.emitted: list[dict[str, object]] = []
        self.watcher = Watcher(
            root,
            publish=self._publish,
            use_inotify=False,
            clock=lambda: 0.0,
            emit=self.emitted.append,
            **kwargs,
        )

    def _publish(self, tally: Tally) -> None:
        p = self.published
        for key, count in tally.events.items():
            p.events[key] = p.events.get(key, 0) + count
        p.rotations += tally.rotations
        p.parse_errors += tally.parse_errors
        p.integrity_failures += tally.integrity_failures
        p.hook_errors += tally.hook_errors

    @property
    def events(self) -> int:
        """Return how many entries this process published."""
        return sum(self.published.events.values())

    def step(self) -> Process:
        """Read whatever is new (no checkpoint)."""
        self.watcher.scan()
        return self

    def stop(self) -> Process:
        """Clean shutdown: read, checkpoint, publish."""
        self.watcher.scan()
        self.watcher.commit()
        self.watcher.close()
        return self

    def crash(self) -> Process:
        """Simulate kill -9: what was read but not checkpointed is neither saved nor published."""
        self.watcher.close()
        return self


def writer(root: Path, **overrides: object) -> TrailWriter:
    values: dict[str, object] = {"max_segment_bytes": SMALL, "keep_segments": 0}
    values.update(overrides)
    return TrailWriter(settings(root, **values))


def append(root: Path, cid: str, count: int, **overrides: object) -> list[int]:
    with writer(root, **overrides) as w:
        return [
            w.append(cid, {"source": "hook", "action": "poststart", "detail": f"n{i}"}).seq
            for i in range(count)
        ]


def sealed(root: Path, cid: str) -> list[str]:
    return sorted(p.name for p in trail(root, cid).iterdir() if p.name.startswith("audit-"))


def test_offset_committed_only_after_processing(tmp_path):
    """Fluent Bit #5912: a crash after reading but before processing loses nothing.

    The checkpoint moves only after the entries it covers were counted, and the
    counts are published only once that checkpoint is on disk; so after a crash
    the next process counts exactly what the dead one never published.
    """
    root = tmp_path / "root"
    append(root, CID_A, 10)
    first = Process(root).stop()
    append(root, CID_A, 7)
    crashed = Process(root).step()  # read the 7, then killed before its checkpoint
    assert crashed.events == 0
    crashed.crash()
    last = Process(root).stop()

    assert (first.events, last.events) == (10, 7)
    seqs = [e["seq"] for e in last.emitted]
    assert seqs == list(range(11, 18))


def test_partial_last_line_survives_restart(tmp_path):
    """Fluent Bit #11265: a line without its newline at shutdown is counted once, whole."""
    root = tmp_path / "root"
    append(root, CID_A, 4, max_segment_bytes=10 * 1024 * 1024)
    active = trail(root, CID_A) / "audit.jsonl"
    data = active.read_bytes()
    cut = data.rstrip(b"\n").rfind(b"\n") + 1 + 40  # 40 bytes into the 4th line
    active.write_bytes(data[:cut])

    first = Process(root).stop()
    with active.open("ab") as f:
        f.write(data[cut:])
    second = Process(root).stop()

    assert (first.events, second.events) == (3, 1)
    assert second.emitted[0]["seq"] == 4
    assert first.published.parse_errors == second.published.parse_errors == 0
    assert second.published.integrity_failures == 0


def test_partial_line_completed_while_running(tmp_path):
    """A partial line is held until its newline arrives, then counted once."""
    root = tmp_path / "root"
    append(root, CID_A, 2, max_segment_bytes=10 * 1024 * 1024)
    active = trail(root, CID_A) / "audit.jsonl"
    data = active.read_bytes()
    cut = data.rstrip(b"\n").rfind(b"\n") + 10
    active.write_bytes(data[:cut])
    proc = Process(root).step()
    proc.step()
    with active.open("ab") as f:
        f.write(data[cut:])
    proc.stop()

    assert proc.events == 2
    assert proc.published.parse_errors == 0


def test_rotated_segment_drained_before_new_active(tmp_path):
    """Fluent Bit #10414: a segment sealed with unread bytes is read to its end first."""
    root = tmp_path / "root"
    append(root, CID_A, 1)
    proc = Process(root).step()
    append(root, CID_A, 12)  # several rotations with nothing read in between
    proc.stop()

    assert proc.events == 13
    assert [e["seq"] for e in proc.emitted] == list(range(1, 14))
    assert proc.published.rotations == len(sealed(root, CID_A)) > 1
    assert proc.published.integrity_failures == 0


def test_rotation_while_down_neither_reread_nor_lost(tmp_path):
    """Fluent Bit #1330: rotations while the sidecar is down lose and repeat nothing."""
    root = tmp_path / "root"
    append(root, CID_A, 3)
    first = Process(root).stop()
    before = len(sealed(root, CID_A))
    append(root, CID_A, 15)
    second = Process(root).stop()

    assert (first.events, second.events) == (3, 15)
    assert [e["seq"] for e in second.emitted] == list(range(4, 19))
    assert first.published.rotations == before
    assert second.published.rotations == len(sealed(root, CID_A)) - before
    assert second.published.integrity_failures == 0


def test_inode_reuse_not_confused_with_checkpoint(tmp_path):
    """Vector #23076: a new file that got the checkpointed inode number is not resumed mid-way.

    The filesystem reuses the inode number of a deleted segment for a new
    ``audit.jsonl``; the checkpoint's (inode, offset) then points into the
    middle of unrelated data. The test plants exactly that hint and checks the
    anchor (last seq and mac) wins.
    """
    root = tmp_path / "root"
    append(root, CID_A, 4, max_segment_bytes=10 * 1024 * 1024)
    Process(root).stop()
    append(root, CID_A, 1)  # sealed: the old file is now audit-000001.jsonl
    append(root, CID_A, 19, max_segment_bytes=10 * 1024 * 1024)
    path = checkpoint_path(root) / "a.json"
    state = json.loads(path.read_text())
    mark = state["containers"][CID_A]
    new_active = trail(root, CID_A) / "audit.jsonl"
    assert new_active.stat().st_size > mark[4]
    mark[2], mark[3] = 0, new_active.stat().st_ino  # "same inode", stale offset
    path.write_text(json.dumps(state))

    second = Process(root).stop()

    assert second.events == 20
    assert [e["seq"] for e in second.emitted] == list(range(5, 25))
    assert second.published.parse_errors == 0
    assert second.published.integrity_failures == 0


def test_truncate_and_regrow_while_down(tmp_path):
    """Promtail: a trail truncated and regrown past the old offset is read from its start.

    The entries after the truncation are new (a rewound chain), so all are
    counted, and the rewind itself is one integrity failure.
    """
    root = tmp_path / "root"
    append(root, CID_A, 5, max_segment_bytes=10 * 1024 * 1024)
    Process(root).stop()
    active = trail(root, CID_A) / "audit.jsonl"
    old_size = active.stat().st_size
    os.truncate(active, 0)
    append(root, CID_A, 8, max_segment_bytes=10 * 1024 * 1024)
    assert active.stat().st_size > old_size

    second = Process(root).stop()

    assert second.events == 8
    assert [e["seq"] for e in second.emitted] == list(range(1, 9))
    assert second.published.integrity_failures == 1
    assert second.published.parse_errors == 0


def test_truncation_while_running_rereads_new_content(tmp_path):
    """A trail truncated under a running sidecar is re-read from its start, counted once."""
    root = tmp_path / "root"
    append(root, CID_A, 5, max_segment_bytes=10 * 1024 * 1024)
    proc = Process(root).step()
    os.truncate(trail(root, CID_A) / "audit.jsonl", 0)
    append(root, CID_A, 2, max_segment_bytes=10 * 1024 * 1024)
    proc.stop()

    assert proc.events == 7
    assert proc.published.integrity_failures == 1


def test_malformed_and_oversized_lines_counted_and_skipped(tmp_path):
    """Malformed lines and a line over 1 MiB are counted as parse errors; entries continue."""
    root = tmp_path / "root"
    append(root, CID_A, 4, max_segment_bytes=64 * 1024 * 1024)
    active = trail(root, CID_A) / "audit.jsonl"
    lines = active.read_bytes().splitlines(keepends=True)
    garbage = [
        b"not json at all\n",
        b"[" * 200_000 + b"\n",  # nesting deep enough to exhaust a recursive parser
        b'{"seq": "1", "mac": 5}\n',
        b"x" * (3 * 1024 * 1024) + b"\n",
    ]
    active.write_bytes(b"".join(lines[:2] + garbage + lines[2:]))
    proc = Process(root).stop()

    assert proc.events == 4
    assert proc.published.parse_errors == 4
    assert proc.published.integrity_failures == 0


def test_oversized_partial_line_is_skipped_across_restarts(tmp_path):
    """A growing line over 1 MiB is counted once, even when its newline comes after a restart."""
    root = tmp_path / "root"
    append(root, CID_A, 1, max_segment_bytes=64 * 1024 * 1024)
    active = trail(root, CID_A) / "audit.jsonl"
    with active.open("ab") as f:
        f.write(b"y" * (2 * 1024 * 1024))
    first = Process(root).stop()
    with active.open("ab") as f:
        f.write(b"y" * 1000 + b"\n")
    append(root, CID_A, 1, max_segment_bytes=64 * 1024 * 1024)
    second = Process(root).stop()

    assert (first.events, second.events) == (1, 1)
    assert first.published.parse_errors + second.published.parse_errors == 1


def test_gap_in_chain_is_an_integrity_failure(tmp_path):
    """An entry deleted from the middle of a trail shows as one integrity failure."""
    root = tmp_path / "root"
    append(root, CID_A, 5, max_segment_bytes=10 * 1024 * 1024)
    active = trail(root, CID_A) / "audit.jsonl"
    lines = active.read_bytes().splitlines(keepends=True)
    active.write_bytes(b"".join(lines[:2] + lines[3:]))
    proc = Process(root).stop()

    assert proc.events == 4
    assert proc.published.integrity_failures == 1


def test_from_end_skips_history_but_reads_new_containers(tmp_path):
    """--from-end skips what exists at start; later entries and new trails are read."""
    root = tmp_path / "root"
    append(root, CID_A, 9)
    history = len(sealed(root, CID_A))
    proc = Process(root, from_end=True).step()
    append(root, CID_A, 2)
    append(root, CID_B, 3)
    proc.stop()

    assert proc.events == 5
    assert proc.published.rotations == len(sealed(root, CID_A)) - history + len(sealed(root, CID_B))
    assert sorted(e["seq"] for e in proc.emitted if e["container_id"] == CID_A) == [10, 11]


def test_hook_errors_counted_once_across_restarts(tmp_path):
    """Lines of state/hook-errors.jsonl are counted, and not again after a restart."""
    root = tmp_path / "root"
    append(root, CID_A, 1)
    errors = root / "state" / "hook-errors.jsonl"
    errors.write_text('{"ts":"x","stage":"poststop","container_id":"","error":"e"}\n' * 3)
    first = Process(root).stop()
    with errors.open("a") as f:
        f.write('{"ts":"x","stage":"poststop","container_id":"","error":"e"}\n')
    second = Process(root).stop()

    assert (first.published.hook_errors, second.published.hook_errors) == (3, 1)


def test_random_crashes_and_rotations_count_each_entry_once(tmp_path):
    """Random writes, rotations, clean stops and kill -9s: published counts add up exactly.

    Summed over every process, entries and rotations published equal what was
    written and sealed, never more, never less.
    """
    rng = random.Random(5912)
    root = tmp_path / "root"
    written = 0
    events = rotations = 0
    for _ in range(25):
        proc = Process(root)
        for _ in range(rng.randint(0, 3)):
            cid = rng.choice([CID_A, CID_B])
            n = rng.randint(0, 9)
            append(root, cid, n)
            written += n
            proc.step()
            if rng.random() < 0.5:
                proc.watcher.commit()
        if rng.random() < 0.5:
            proc.crash()
        else:
            proc.stop()
        events += proc.events
        rotations += proc.published.rotations
        append(root, rng.choice([CID_A, CID_B]), k := rng.randint(0, 6))
        written += k
    final = Process(root).stop()
    events += final.events
    rotations += final.published.rotations

    assert events == written
    assert rotations == len(sealed(root, CID_A)) + len(sealed(root, CID_B))
    assert final.published.integrity_failures == 0


def test_nothing_published_while_the_checkpoint_cannot_be_saved(tmp_path):
    """Disk full or an unwritable checkpoint: counts wait unpublished, then go out once."""
    root = tmp_path / "root"
    append(root, CID_A, 3)
    append(root, CID_B, 2)
    blocker = checkpoint_path(root) / "b.json"
    blocker.mkdir(parents=True)  # a directory where B's shard goes: that save fails
    (blocker / "x").write_text("")
    proc = Process(root).step()
    proc.watcher.commit()
    assert proc.events == 3  # A's shard was saved and published; B's waits
    (blocker / "x").unlink()
    blocker.rmdir()
    proc.stop()

    assert proc.events == 5
    assert json.loads(blocker.read_text())["containers"][CID_B][0] == 2


def test_modified_entry_is_an_integrity_failure(tmp_path):
    """An entry edited in place (its mac no longer matches) counts one integrity failure."""
    root = tmp_path / "root"
    append(root, CID_A, 3, max_segment_bytes=10 * 1024 * 1024)
    active = trail(root, CID_A) / "audit.jsonl"
    active.write_bytes(active.read_bytes().replace(b'"detail":"n1"', b'"detail":"X1"'))
    proc = Process(root).stop()

    assert proc.events == 3
    assert proc.published.integrity_failures == 1
    assert proc.published.parse_errors == 0


def test_keyed_chains_checked_with_the_key_only(tmp_path):
    """A keyed trail is verified with the key; without it, macs are not judged.

    With the key an edit is caught; without it nothing is claimed either way
    (links are still checked).
    """
    root = tmp_path / "root"
    ring = KeyRing((Key.from_secret(b"k" * 32),))
    with TrailWriter(settings(root), keys=ring) as w:
        for i in range(3):
            w.append(CID_A, {"source": "hook", "action": "poststart", "detail": f"n{i}"})
    active = trail(root, CID_A) / "audit.jsonl"
    active.write_bytes(active.read_bytes().replace(b'"detail":"n2"', b'"detail":"X2"'))

    with_key = Process(root, keys=ring).stop()
    checkpoint = checkpoint_path(root)
    for path in checkpoint.iterdir():
        path.unlink()
    checkpoint.rmdir()
    without_key = Process(root).stop()

    assert with_key.events == without_key.events == 3
    assert with_key.published.integrity_failures == 1
    assert without_key.published.integrity_failures == 0


def test_planted_symlink_or_fifo_is_not_followed(tmp_path):
    """A symlink or FIFO in place of audit.jsonl is refused: nothing read, nothing hangs."""
    root = tmp_path / "root"
    append(root, CID_A, 2)
    append(root, CID_B, 2)
    outside = tmp_path / "outside.jsonl"
    outside.write_bytes((trail(root, CID_B) / "audit.jsonl").read_bytes())
    for path in trail(root, CID_B).iterdir():
        path.unlink()
    (trail(root, CID_B) / "audit.jsonl").symlink_to(outside)
    fifo_dir = trail(root, "f" * 64)
    fifo_dir.mkdir(mode=0o700)
    os.mkfifo(fifo_dir / "audit.jsonl")
    proc = Process(root).stop()

    assert proc.events == 2
    assert {e["container_id"] for e in proc.emitted} == {CID_A}
    assert proc.published.parse_errors == 0


def test_from_end_only_without_checkpoint(tmp_path):
    """With a checkpoint, --from-end skips nothing: trails born while down are read whole."""
    root = tmp_path / "root"
    append(root, CID_A, 2)
    Process(root, from_end=True).stop()
    append(root, CID_A, 1)
    append(root, CID_B, 3)  # a new trail while the sidecar was down
    second = Process(root, from_end=True).stop()

    assert second.events == 4


def test_random_retention_never_counts_twice(tmp_path):
    """Retention deleting unread segments at random moments: no entry is counted twice.

    Every gap left by deleted entries is one integrity failure, except before
    the first entry ever seen of a trail: like ``verify``, history then starts
    at the oldest retained entry.
    """
    rng = random.Random(10414)
    root = tmp_path / "root"
    seen: dict[str, list[int]] = {CID_A: [], CID_B: []}
    failures = 0
    for _ in range(15):
        proc = Process(root)
        for _ in range(rng.randint(1, 4)):
            append(root, rng.choice([CID_A, CID_B]), rng.randint(0, 12), keep_segments=2)
            if rng.random() < 0.7:
                proc.step()
        proc.stop()
        failures += proc.published.integrity_failures
        for entry in proc.emitted:
            seen[str(entry["container_id"])].append(int(entry["seq"]))  # type: ignore[arg-type]
    gaps = 0
    for seqs in seen.values():
        assert seqs == sorted(set(seqs))  # strictly increasing: never twice
        gaps += sum(1 for a, b in itertools.pairwise(seqs) if b != a + 1)
    assert failures == gaps


def test_validated_decoding_decides_every_line_as_json_did(tmp_path):
    """What the fast decoding refuses, json decides: an odd entry counts, a non-store line not."""
    root = tmp_path / "root"
    with writer(root, max_segment_bytes=64 * 1024 * 1024) as w:
        w.append(CID_A, {"source": "hook", "action": "poststart", "detail": "lone \ud800"})
        w.append(CID_A, {"source": "hook", "action": "poststart", "container": "wéb"})
        w.append(CID_A, {"source": "events", "action": "start", "detail": "x"})
    active = trail(root, CID_A) / "audit.jsonl"
    lines = active.read_bytes().splitlines(keepends=True)
    assert b"\\ud800" in lines[0]  # an escaped lone surrogate: json takes it, pydantic does not
    assert b"\\u00e9" in lines[1]  # the store writes ASCII
    not_entries = [
        b" " + lines[2],  # whitespace around the object
        lines[2].rstrip(b"\n") + b" \n",
        lines[1].replace(b"\\u00e9", "é".encode()),  # raw UTF-8: never written by the store
        b'{"seq":1.0,"mac":"m","prev":""}\n',  # no coercion of seq or mac
        b'{"seq":true,"mac":"m","prev":""}\n',
        b'{"seq":1,"mac":5,"prev":""}\n',
        b'{"seq":1,"mac":"m"}\n',  # prev is required
        b'{"seq":1,"mac":"m","prev":"",}\n',
    ]
    active.write_bytes(b"".join(lines[:2] + not_entries + lines[2:]))
    proc = Process(root).stop()

    assert proc.events == 3
    assert proc.published.parse_errors == len(not_entries)
    assert proc.published.integrity_failures == 0
    assert [e["detail"] for e in proc.emitted] == ["lone \ud800", "", "x"]
    assert proc.emitted[1]["container"] == "wéb"


def test_a_list_or_object_as_source_or_action_counts_as_other(tmp_path):
    """A foreign line with a list as source or an object as action is counted, not fatal."""
    root = tmp_path / "root"
    with writer(root, max_segment_bytes=64 * 1024 * 1024) as w:
        w.append(CID_A, {"source": ["hook"], "action": "poststart"})
        w.append(CID_A, {"source": "hook", "action": {"a": 1}})
        w.append(CID_A, {"source": "hook", "action": "poststart"})
    proc = Process(root).stop()

    assert proc.events == 3
    assert proc.published.events == {
        (None, "poststart"): 1,
        ("hook", None): 1,
        ("hook", "poststart"): 1,
    }
    assert proc.published.parse_errors == 0
    assert proc.published.integrity_failures == 0
