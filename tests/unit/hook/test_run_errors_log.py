"""The hook's failure log stays bounded, and the sidecar counts every line once across rotations."""

from __future__ import annotations

import os
import threading

import pytest

from shieldaudit.hook import run as hook
from shieldaudit.sidecar.watch.hookerrors import HookErrorsTail

CID = "c" * 64


@pytest.fixture
def small_log(monkeypatch):
    """Make the log rotate at 1 KiB (about five failure lines)."""
    monkeypatch.setattr(hook, "HOOK_ERRORS_MAX_BYTES", 1024)


def _record(root, count, start=0):
    for i in range(count):
        assert (
            hook.record_error(str(root), "poststart", CID, f"failure {start + i}", sync=False)
            is None
        )


def _lines(path):
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.usefixtures("small_log")
def test_full_log_rotates_to_one_previous_generation(tmp_path):
    """At the size limit the log becomes hook-errors.1.jsonl; only two generations exist."""
    root = tmp_path / "root"
    _record(root, 40)
    state = root / "state"
    current, previous = state / "hook-errors.jsonl", state / "hook-errors.1.jsonl"
    assert previous.exists()
    assert previous.stat().st_size >= 1024
    assert current.stat().st_size < 1024 + 300
    assert sorted(p.name for p in state.iterdir() if p.name.startswith("hook-errors")) == [
        "hook-errors.1.jsonl",
        "hook-errors.jsonl",
    ]
    assert _lines(current)[-1].endswith('"failure 39"}')


@pytest.mark.usefixtures("small_log")
def test_sidecar_counts_each_line_once_across_rotations(tmp_path):
    """Counting between writes, across several rotations, gives exactly what was recorded."""
    root = tmp_path / "root"
    tail = HookErrorsTail(root / "state" / "hook-errors.jsonl")
    total = 0
    written = 0
    for batch in (3, 4, 2, 5, 1, 6, 3):
        _record(root, batch, written)
        written += batch
        total += tail.advance()
        assert total == written
    assert tail.advance() == 0


@pytest.mark.usefixtures("small_log")
def test_restart_between_rotations_drains_the_previous_generation(tmp_path):
    """A checkpointed position in a log that was rotated meanwhile: its rest is still counted."""
    root = tmp_path / "root"
    path = root / "state" / "hook-errors.jsonl"
    _record(root, 2)
    first = HookErrorsTail(path)
    assert first.advance() == 2
    saved = first.position
    _record(root, 4, 2)  # crosses the limit once while the sidecar is down
    restarted = HookErrorsTail(path, saved)
    assert restarted.advance() == 4


@pytest.mark.usefixtures("small_log")
def test_two_rotations_while_away_never_overcount(tmp_path):
    """If a whole generation came and went while down, counts fall short, never over."""
    root = tmp_path / "root"
    path = root / "state" / "hook-errors.jsonl"
    _record(root, 1)
    first = HookErrorsTail(path)
    assert first.advance() == 1
    saved = first.position
    _record(root, 30, 1)
    restarted = HookErrorsTail(path, saved)
    assert 0 < restarted.advance() < 30


def test_concurrent_failing_hooks_rotate_once_and_lose_nothing(tmp_path, monkeypatch):
    """Eight threads recording at once across one rotation: every line is in one generation."""
    monkeypatch.setattr(hook, "HOOK_ERRORS_MAX_BYTES", 3000)  # 24 lines cross it once
    root = tmp_path / "root"
    per_thread = 3
    threads = [threading.Thread(target=_record, args=(root, per_thread, n * 100)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    state = root / "state"
    previous = _lines(state / "hook-errors.1.jsonl")
    found = previous + _lines(state / "hook-errors.jsonl")
    assert previous  # it did rotate
    assert len(found) == 8 * per_thread


def test_a_loose_state_directory_is_not_written(tmp_path):
    """A group-writable ``state/`` is refused as the store refuses it: nothing is appended."""
    root = tmp_path / "root"
    _record(root, 1)
    state = root / "state"
    state.chmod(0o770)
    before = (state / "hook-errors.jsonl").read_bytes()
    why = hook.record_error(str(root), "poststart", CID, "another failure", sync=False)
    assert why is not None
    assert why.startswith(f"{state} is writable by group or others (mode 0770)")
    assert f"run 'chmod go-w {state}'" in why
    assert (state / "hook-errors.jsonl").read_bytes() == before


def test_a_foreign_state_directory_is_not_written(tmp_path):
    """A ``state/`` owned by another user than the root's owner (or root) is refused."""
    root = tmp_path / "root"
    _record(root, 1)
    state = root / "state"
    os.chown(state, 54321, -1)
    before = (state / "hook-errors.jsonl").read_bytes()
    why = hook.record_error(str(root), "poststart", CID, "another failure", sync=False)
    assert why is not None
    assert why.startswith(f"{state} belongs to uid 54321, not to the owner of the directory")
    assert (state / "hook-errors.jsonl").read_bytes() == before


def test_a_hard_linked_log_is_not_written(tmp_path):
    """A log with another hard link is refused: appending would change a file outside the root."""
    root = tmp_path / "root"
    _record(root, 1)
    log = root / "state" / "hook-errors.jsonl"
    outside = tmp_path / "outside"
    os.link(log, outside)
    before = outside.read_bytes()
    why = hook.record_error(str(root), "poststart", CID, "another failure", sync=False)
    assert why is not None
    assert why.startswith(f"{log} has 2 hard links")
    assert outside.read_bytes() == before
