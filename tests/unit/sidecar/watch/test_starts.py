"""Pins the judging of container starts (sidecar.watch.starts): once, after the grace."""

from __future__ import annotations

from shieldaudit.sidecar.watch.checkpoint import Mark
from shieldaudit.sidecar.watch.starts import StartJudge
from shieldaudit.sidecar.watch.tailer import Tail
from shieldaudit.sidecar.watch.tally import Tally
from shieldaudit.store.reconcile import START, format_us

CID = "d" * 64
T0 = 1_800_000_000.0


class Wall:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        """Start at T0."""
        self.now = T0

    def __call__(self) -> float:
        """Return the current time."""
        return self.now


def started_tail(tally: Tally, at: float, seq: int = 1) -> Tail:
    tail = Tail(CID, Mark(), tally)
    assert tail.mark.audit is not None
    tail.mark.audit.observe(START, format_us(round(at * 1_000_000)), seq, "web")
    return tail


def test_a_start_without_hooks_is_judged_once_after_the_grace():
    """Not before the grace is over; then one verdict, counted, emitted and its ledger saved."""
    wall = Wall()
    tally = Tally()
    changed: list[str] = []
    emitted: list[dict[str, object]] = []
    judge = StartJudge(
        5.0, tally_of=lambda _cid: tally, changed=changed.append, emit=emitted.append, wall=wall
    )
    tail = started_tail(tally, T0)

    judge.schedule(CID, tail)
    assert tally.unaudited_starts == 0
    assert judge.wait() == 5.0
    wall.now += 5.0
    judge.judge_due({CID: tail}, unread=set())
    judge.judge_due({CID: tail}, unread=set())

    assert tally.unaudited_starts == 1
    assert changed == [CID]
    assert [(e["action"], e["container"], e["seq"]) for e in emitted] == [
        ("unaudited_start", "web", 1)
    ]
    assert judge.wait() is None


def test_an_unread_trail_is_judged_after_its_read_and_a_removed_one_never():
    """A due start on a trail with entries still to read waits for its read; forget drops it."""
    wall = Wall()
    tally = Tally()
    judge = StartJudge(1.0, tally_of=lambda _cid: tally, changed=lambda _cid: None, wall=wall)
    tail = started_tail(tally, T0)
    judge.schedule(CID, tail)
    wall.now += 2.0

    judge.judge_due({CID: tail}, unread={CID})
    assert tally.unaudited_starts == 0
    judge.schedule(CID, tail)  # what the watcher does once the trail is read
    assert tally.unaudited_starts == 1

    other = started_tail(tally, T0 + 10, seq=2)
    judge.schedule(CID, other)
    judge.forget(CID)
    wall.now += 20.0
    judge.judge_due({}, unread=set())
    assert tally.unaudited_starts == 1
