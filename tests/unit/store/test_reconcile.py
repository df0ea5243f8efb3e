"""Reconciliation of Podman's start events with the hook's entries (pure logic, and the watcher).

The trails here are written with explicit times, shaped like what Podman 4.3
with runc 1.1 writes (hooks first, then ``init``/``start`` a few ms later),
so each test states one rule of docs/sidecar.md "Unaudited starts".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from shieldaudit.sidecar.watch.checkpoint import Mark
from shieldaudit.sidecar.watch.tally import Tally
from shieldaudit.sidecar.watch.watcher import Watcher
from shieldaudit.store.reconcile import (
    MAX_HOOKS,
    Ledger,
    audit_entries,
    format_us,
    ts_us,
)
from shieldaudit.store.writer import TrailWriter
from store_helpers import CID_A, CID_B, settings

if TYPE_CHECKING:
    from pathlib import Path

T0 = 1_796_000_000_000_000  # µs
S = 1_000_000
GRACE = 5 * S


def entry(seq: int, at: int, source: str, action: str) -> dict[str, object]:
    return {"seq": seq, "ts": format_us(at), "source": source, "action": action, "container": "c"}


def run(seq: int, at: int, *, hooks: bool = True) -> list[dict[str, object]]:
    """One `podman run`: hooks (unless bypassed) then Podman's init/start, then the end."""
    out = []
    if hooks:
        out += [
            entry(seq, at, "hook", "createRuntime"),
            entry(seq + 1, at + 50_000, "hook", "poststart"),
        ]
    base = seq + len(out)
    out += [
        entry(base, at + 60_000, "events", "init"),
        entry(base + 1, at + 70_000, "events", "start"),
        entry(base + 2, at + 200_000, "events", "died"),
    ]
    if hooks:
        out.append(entry(base + 3, at + 300_000, "hook", "poststop"))
    return out


def audit(entries: list[dict[str, object]], now: int = T0 + 3600 * S, **kw: int):
    return audit_entries(entries, now_us=now, grace_us=GRACE, **kw)


def test_timestamps_parse_and_format_round_trip():
    """Entry times become µs since the epoch and back; anything else is not a time."""
    assert ts_us(format_us(T0 + 123)) == T0 + 123
    for bad in ("", "2026-11-22T10:42:12Z", "2026-13-22T10:42:12.000000Z", 7, None, "x" * 27):
        assert ts_us(bad) is None


def test_hooked_starts_and_restarts_are_audited():
    """Every start with both hook entries in its interval is audited (restarts too)."""
    trail = run(1, T0) + run(10, T0 + 10 * S) + run(20, T0 + 20 * S)
    result = audit(trail)
    assert (result.starts, result.unaudited, result.events_missing) == (3, (), 0)


def test_bypassed_start_is_unaudited_and_the_next_normal_start_is_not():
    """A start without hook entries is flagged; the same container started normally again is not."""
    trail = run(1, T0, hooks=False) + run(10, T0 + 10 * S)
    result = audit(trail)
    assert result.starts == 2
    assert [v.seq for v in result.unaudited] == [2]
    assert result.unaudited[0].missing == ("createRuntime", "poststart")


def test_one_missing_stage_is_enough():
    """A start with createRuntime but no poststart (one hooks.d file removed) is unaudited."""
    trail = [e for e in run(1, T0) if e["action"] != "poststart"]
    (verdict,) = audit(trail).unaudited
    assert verdict.missing == ("poststart",)


def test_a_start_waits_for_its_grace_period():
    """Within the grace period a start without hooks is pending, not unaudited."""
    trail = run(1, T0, hooks=False)
    early = audit(trail, now=T0 + 70_000 + GRACE - 1)
    assert (early.pending, early.unaudited) == (1, ())
    late = audit(trail, now=T0 + 70_000 + GRACE)
    assert (late.pending, len(late.unaudited)) == (0, 1)


def test_order_of_arrival_does_not_matter():
    """Events written before the hooks' entries (a lagging hook, a replay) pair by time."""
    trail = run(1, T0) + run(10, T0 + 10 * S)
    assert audit(list(reversed(trail))).unaudited == ()
    events_first = [e for e in trail if e["source"] == "events"] + [
        e for e in trail if e["source"] == "hook"
    ]
    assert audit(events_first).starts == 2
    assert audit(events_first).unaudited == ()


def test_failed_start_exec_and_pause_are_not_starts():
    """A failed start (createRuntime, no start event), exec and pause judge nothing."""
    trail = [
        entry(1, T0, "events", "create"),
        entry(2, T0 + 100, "hook", "createRuntime"),
        entry(3, T0 + 200, "events", "cleanup"),
        entry(4, T0 + S, "events", "exec"),
        entry(5, T0 + S, "events", "pause"),
    ]
    result = audit(trail)
    assert (result.starts, result.unaudited, result.events_missing) == (0, (), 0)


def test_a_failed_attempt_does_not_cover_a_bypassed_start():
    """The failed start's createRuntime does not make a later hookless start audited."""
    trail = [entry(1, T0, "hook", "createRuntime"), *run(2, T0 + S, hooks=False)]
    (verdict,) = audit(trail).unaudited
    assert verdict.missing == ("poststart",)


def test_hooks_of_a_later_run_do_not_cover_an_earlier_start():
    """Hook entries after a start belong to the next run, whatever their order in the trail."""
    bypassed = run(1, T0, hooks=False)
    later_hooks = [e for e in run(10, T0 + 10 * S) if e["source"] == "hook"]
    (verdict,) = audit(later_hooks + bypassed).unaudited
    assert verdict.seq == 2


def test_duplicate_start_event_is_judged_once():
    """A start event written twice (same time) is one start."""
    trail = run(1, T0, hooks=False)
    trail.append(dict(trail[1], seq=99))
    result = audit(trail)
    assert (result.starts, len(result.unaudited)) == (1, 1)


def test_events_missing_when_the_listener_was_down():
    """Hook runs without start events are reported as events missing, never as unaudited."""
    hooks_only = [e for e in run(1, T0) + run(10, T0 + 10 * S) if e["source"] == "hook"]
    result = audit(hooks_only)
    assert (result.starts, result.unaudited, result.events_missing) == (0, (), 2)
    with_last = hooks_only + [e for e in run(10, T0 + 10 * S) if e["source"] == "events"]
    result = audit(with_last)
    assert (result.starts, result.unaudited, result.events_missing) == (1, (), 1)


def test_initialised_not_started_is_not_events_missing():
    """`podman init` without start: hooks (runc 1.1 runs poststart on create) then init only."""
    trail = [e for e in run(1, T0) if e["action"] not in {"start", "died", "poststop"}]
    assert audit(trail).events_missing == 0


def test_unseen_history_makes_a_hookless_start_unknown_not_unaudited():
    """A floor (history skipped or dropped) turns a start that may have had hooks into unknown."""
    trail = run(1, T0 + S, hooks=False)
    result = audit(trail, floor_us=T0 + 2 * S)
    assert (result.unaudited, result.unknown) == ((), 1)
    # Once a judged start lies above the floor, the next one is judged normally.
    more = trail + run(10, T0 + 10 * S) + run(20, T0 + 20 * S, hooks=False)
    result = audit(more, floor_us=T0 + 2 * S)
    assert ([v.seq for v in result.unaudited], result.unknown) == ([21], 1)


def test_hook_entries_are_bounded_per_container():
    """A listener down for long: MAX_HOOKS hook entries are kept; older ones set the floor."""
    ledger = Ledger()
    for i in range(MAX_HOOKS + 10):
        ledger.observe(("hook", "poststart"), format_us(T0 + i * S), i + 1, "c")
    assert len(ledger.hooks) == MAX_HOOKS
    assert ledger.floor == T0 + 9 * S


def test_ledger_json_round_trip_and_garbage():
    """The checkpoint form round-trips; anything else is refused, not half-loaded."""
    ledger = Ledger()
    for e in run(1, T0) + run(10, T0 + 10 * S, hooks=False):
        ledger.observe((e["source"], e["action"]), e["ts"], int(e["seq"]), e["container"])
    assert Ledger.from_json(ledger.to_json()) == ledger
    for bad in (
        None,
        [],
        [1, 2, [], []][:3],
        [1, 0, [1], []],
        [-1, 0, [], []],
        [0, 0, [], [[1, 2]]],
    ):
        assert Ledger.from_json(bad) is None
    mark = Mark(3, "m", audit=ledger)
    assert Mark.from_json(__import__("json").loads(mark.to_json())) == mark
    old = Mark.from_json([3, "m", 0, 0, 0, 0, False])
    assert old is not None
    assert old.audit is None


# -- the watcher: counted once, published only once saved -----------------------------


class Clock:
    """A wall clock the test sets."""

    def __init__(self, now: float) -> None:
        """Start at ``now`` seconds since the epoch."""
        self.now = now

    def __call__(self) -> float:
        """Return the time."""
        return self.now


def write_trail(root: Path, cid: str, entries: list[dict[str, object]]) -> None:
    with TrailWriter(settings(root)) as writer:
        for e in entries:
            fields = {k: v for k, v in e.items() if k != "seq"}
            writer.append(cid, fields)


def watcher(root: Path, wall: Clock, tally: Tally, emitted: list[dict[str, object]]) -> Watcher:
    def publish(t: Tally) -> None:
        tally.unaudited_starts += t.unaudited_starts

    return Watcher(
        root,
        publish=publish,
        use_inotify=False,
        clock=lambda: 0.0,
        emit=emitted.append,
        grace=GRACE / S,
        wall=wall,
    )


@pytest.mark.parametrize("crash_before_save", [True, False])
def test_watcher_counts_an_unaudited_start_once_across_a_crash(tmp_path, crash_before_save):
    """Judged after the grace period; published only with its checkpoint; never twice.

    A process killed after judging but before saving published nothing, so the
    next one counts it; a process that saved and published leaves nothing to
    count again.
    """
    root = tmp_path / "root"
    write_trail(root, CID_A, run(1, T0, hooks=False) + run(10, T0 + 10 * S))
    write_trail(root, CID_B, run(1, T0))
    wall = Clock((T0 + 60_000) / S)  # before the first start's grace period ends
    first_tally, first_emitted = Tally(), []
    first = watcher(root, wall, first_tally, first_emitted)
    first.scan()
    first.commit()
    assert first_tally.unaudited_starts == 0  # still pending: not yet judged
    wall.now = (T0 + 3600 * S) / S
    first.scan()
    first.judge_due()
    assert [e["action"] for e in first_emitted if e["source"] == "sidecar"] == ["unaudited_start"]
    if not crash_before_save:
        first.commit()
    first.close()
    assert first_tally.unaudited_starts == (0 if crash_before_save else 1)

    second_tally: Tally = Tally()
    second = watcher(root, wall, second_tally, [])
    second.scan()
    second.judge_due()
    second.commit()
    second.close()
    assert first_tally.unaudited_starts + second_tally.unaudited_starts == 1


def test_watcher_judges_starts_written_while_it_was_down(tmp_path):
    """A bypassed start that happened while no sidecar ran is counted by the next one."""
    root = tmp_path / "root"
    write_trail(root, CID_A, run(1, T0))
    wall = Clock((T0 + 3600 * S) / S)
    tally: Tally = Tally()
    first = watcher(root, wall, tally, [])
    first.scan()
    first.commit()
    first.close()
    write_trail(root, CID_A, run(10, T0 + 10 * S, hooks=False))
    second = watcher(root, wall, tally, [])
    second.scan()
    second.commit()
    second.close()
    assert tally.unaudited_starts == 1
