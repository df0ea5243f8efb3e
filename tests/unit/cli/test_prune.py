"""``prune``: only ended, old, quiet trails go — with their lock file — and never via a symlink."""

from __future__ import annotations

import json
import os
import time

import pytest

from cli_helpers import SECOND, T0, cid, invoke, write_trail
from shieldaudit.cli.prune import keep_reason, prune
from shieldaudit.store import layout
from shieldaudit.store.summary import State, Summary
from shieldaudit.store.trails import Trails

ENDED_OLD, RUNNING_OLD, REMOVED_OLD = cid("a"), cid("b"), cid("c")


def _age_files(root, container_id, mtime=T0 // SECOND):
    """Date a trail's files and directory back to when its entries say they were written.

    Prune counts the later of the recorded time and the modification time, so
    a trail written by a test just now is not old until its mtimes say so too.
    """
    directory = root / "containers" / container_id
    for path in [*directory.iterdir(), directory]:
        os.utime(path, (mtime, mtime))


@pytest.fixture
def root(tmp_path):
    """Three trails from 2026-11-22: one exited, one still running, one removed."""
    root = tmp_path / "root"
    write_trail(root, ENDED_OLD, ["create", "start", "died"], name="done")
    write_trail(root, RUNNING_OLD, ["create", "start"], name="svc")
    write_trail(root, REMOVED_OLD, ["create", "start", "died", "remove"], name="gone")
    for container_id in (ENDED_OLD, RUNNING_OLD, REMOVED_OLD):
        _age_files(root, container_id)
    return root


def test_dry_run_lists_what_would_go_and_removes_nothing(root):
    """--dry-run names the ended trails and leaves every file in place."""
    result = invoke(root, "prune", "--older-than", "1d", "--dry-run")
    assert result.code == 0
    assert sorted(line.split()[2] for line in result.lines[:-1]) == [
        ENDED_OLD[:12],
        REMOVED_OLD[:12],
    ]
    assert result.lines[-1] == "Would remove 2 trail(s); kept 1."
    assert len(list((root / "containers").iterdir())) == 3


def test_prune_removes_ended_trails_and_their_state_never_a_running_one(root):
    """Ended trails go with their lock file and torn fragments; the running one stays."""
    torn = root / "state" / "torn"
    torn.mkdir(parents=True)
    (torn / f"{ENDED_OLD}-1.fragment").write_bytes(b"x")
    (torn / f"{RUNNING_OLD}-1.fragment").write_bytes(b"y")
    result = invoke(root, "prune", "--older-than", "1d")
    assert result.code == 0
    assert result.lines[-1] == "Removed 2 trail(s); kept 1."
    assert [p.name for p in (root / "containers").iterdir()] == [RUNNING_OLD]
    locks = sorted(p.name for p in (root / "state" / "locks").iterdir())
    assert locks == [f"{RUNNING_OLD}.lock"]
    assert [p.name for p in torn.iterdir()] == [f"{RUNNING_OLD}-1.fragment"]
    assert invoke(root, "verify").code == 0


def test_prune_keeps_trails_newer_than_age(root):
    """Trails whose last entry is younger than AGE stay (the fixture's are from 2026-11-22)."""
    result = invoke(root, "prune", "--older-than", "1000w", "--json")
    assert result.out == ""
    assert len(list((root / "containers").iterdir())) == 3


def test_prune_counts_a_fresh_modification_time_as_activity(root):
    """Entries stamped long ago (a clock set back) in a trail modified a minute ago: kept.

    The trail says it ended on 2026-11-22, but its file changed a minute ago,
    past the settle time: prune --older-than 1d keeps it and lists nothing;
    once its mtime is two days old too, it goes, shown as last active 2 days ago.
    """
    recent = time.time() - 60
    _age_files(root, ENDED_OLD, mtime=recent)
    kept = invoke(root, "prune", "--older-than", "1d", "--dry-run")
    assert [line.split()[2] for line in kept.lines[:-1]] == [REMOVED_OLD[:12]]
    assert invoke(root, "prune", "--older-than", "1d").lines[-1] == "Removed 1 trail(s); kept 2."
    assert (root / "containers" / ENDED_OLD).exists()
    _age_files(root, ENDED_OLD, mtime=recent - 2 * 86400)
    gone = invoke(root, "prune", "--older-than", "1d")
    assert gone.lines[0].startswith(f"removed {ENDED_OLD[:12]} done (exited, 3 entries, ")
    assert gone.lines[0].endswith("last active 2 days ago)")
    assert not (root / "containers" / ENDED_OLD).exists()


def test_prune_json_lines(root):
    """--json prints one object per removed trail."""
    result = invoke(root, "prune", "--older-than", "1d", "--json")
    rows = [json.loads(x) for x in result.lines]
    assert {r["container_id"] for r in rows} == {ENDED_OLD, REMOVED_OLD}
    assert {r["action"] for r in rows} == {"removed"}


def test_prune_skips_a_trail_written_seconds_ago(root):
    """A trail modified within the settle time is kept even if its entries look old and ended."""
    write_trail(root, ENDED_OLD, ["cleanup"], start_ns=T0 + 60 * SECOND)
    result = invoke(root, "prune", "--older-than", "1d")
    assert (root / "containers" / ENDED_OLD).exists()
    assert result.lines[-1] == "Removed 1 trail(s); kept 2."


def test_prune_does_not_follow_a_symlinked_trail_directory(root, tmp_path):
    """A symlink planted in containers/ is not followed: its target's files survive."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "audit.jsonl").write_bytes(b"precious\n")
    os.symlink(outside, root / "containers" / cid("d"))
    result = invoke(root, "prune", "--older-than", "1d")
    assert (outside / "audit.jsonl").read_bytes() == b"precious\n"
    assert result.code == 0
    assert result.lines[-1] == "Removed 2 trail(s); kept 1."
    assert result.err.startswith(f"Warning: skipped {cid('d')[:12]}: ")


def test_prune_bad_age_is_a_usage_error(root):
    """A bad AGE is exit 2 with one Error line; --older-than is required."""
    bad = invoke(root, "prune", "--older-than", "soon")
    assert bad.code == 2
    assert bad.err.startswith("Error: invalid --older-than 'soon'")
    assert invoke(root, "prune").code == 2


def test_prune_waits_for_the_lock_and_reports_a_busy_trail(root):
    """A trail whose lock is held by a writer is kept and reported (exit 1)."""
    with Trails(root) as trails, layout.Lock(trails.root_fd, ENDED_OLD, root):
        outcomes, errors = prune(
            trails, "9999-01-01T00:00:00.000000Z", dry_run=False, now=2e9, lock_timeout=0.05
        )
    assert len(errors) == 1
    assert errors[0].startswith(f"{ENDED_OLD[:12]}: kept: timed out")
    assert (root / "containers" / ENDED_OLD).exists()
    assert {o.summary.container_id for o in outcomes if o.removed} == {REMOVED_OLD}


@pytest.mark.parametrize(
    ("modified", "kept"),
    [
        ("", False),
        ("2026-01-01T00:00:00.000000Z", False),
        ("2026-02-28T23:59:59.999999Z", False),
        ("2026-03-01T00:00:00.000000Z", True),
        ("2026-11-01T00:00:00.000000Z", True),
    ],
)
def test_keep_reason_counts_the_later_of_entry_time_and_modification_time(modified, kept):
    """An old last entry in a trail modified at or after the cutoff is kept (clock set back)."""
    reason = keep_reason(
        _summary(State.EXITED), "2026-03-01T00:00:00.000000Z", settling=False, modified=modified
    )
    assert (reason is not None) is kept
    if kept:
        assert reason == "modified too recently"


def _summary(state, last_ts="2026-01-01T00:00:00.000000Z"):
    segments = 0 if state is State.UNKNOWN and not last_ts else 1
    return Summary(
        cid("e"), "", "", 1, 1, 1, last_ts, last_ts, "x", state, tail_ok=True, segments=segments
    )


@pytest.mark.parametrize(
    ("state", "last_ts", "settling", "kept"),
    [
        (State.EXITED, "2026-01-01T00:00:00.000000Z", False, False),
        (State.REMOVED, "2026-01-01T00:00:00.000000Z", False, False),
        (State.FAILED, "2026-01-01T00:00:00.000000Z", False, False),
        (State.PAUSED, "2026-01-01T00:00:00.000000Z", False, True),
        (State.RUNNING, "2026-01-01T00:00:00.000000Z", False, True),
        (State.CREATED, "2026-01-01T00:00:00.000000Z", False, True),
        (State.UNKNOWN, "2026-01-01T00:00:00.000000Z", False, True),
        (State.EXITED, "2026-06-01T00:00:00.000000Z", False, True),
        (State.EXITED, "", False, True),
        (State.EXITED, "2026-01-01T00:00:00.000000Z", True, True),
        (State.UNKNOWN, "", False, False),  # no segment at all: see _summary
    ],
)
def test_keep_reason_decision_table(state, last_ts, settling, kept):
    """Removed only when ended, older than the cutoff, and not written just now."""
    reason = keep_reason(_summary(state, last_ts), "2026-03-01T00:00:00.000000Z", settling=settling)
    assert (reason is not None) is kept


def test_prune_removes_an_empty_trail_directory_left_by_an_interrupted_prune(root):
    """A trail directory with no segment at all (a prune killed half-way) is removed when quiet."""
    empty = root / "containers" / cid("e")
    empty.mkdir(mode=0o700)
    st = empty.stat()
    os.utime(empty, (st.st_atime - 3600, st.st_mtime - 3600))
    result = invoke(root, "prune", "--older-than", "1d")
    assert not empty.exists()
    assert result.lines[-1] == "Removed 3 trail(s); kept 1."


def test_prune_keeps_a_fresh_empty_trail_directory(root):
    """An empty trail directory created just now (a writer about to append) is kept."""
    (root / "containers" / cid("e")).mkdir(mode=0o700)
    invoke(root, "prune", "--older-than", "1s")
    assert (root / "containers" / cid("e")).exists()
