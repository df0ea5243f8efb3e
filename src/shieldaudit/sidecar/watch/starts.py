"""Judging container starts: each one once its grace period is over (unaudited starts).

Each trail's reconciliation ledger (:mod:`shieldaudit.store.reconcile`) is fed
by its tail as entries are read; :class:`StartJudge` keeps a heap of when each
trail's next pending start is due and judges it then — only on a trail read to
its end, so a start's hook entries, if any, have been seen. A judged ledger is
part of the trail's checkpoint record, so a verdict is counted once.
"""

from __future__ import annotations

import heapq
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Container, Mapping

    from shieldaudit.sidecar.watch.tailer import Tail
    from shieldaudit.sidecar.watch.tally import Tally

log = logging.getLogger("shieldaudit.sidecar")


class StartJudge:
    """The schedule of due starts, and the verdicts."""

    def __init__(
        self,
        grace: float,
        *,
        tally_of: Callable[[str], Tally],
        changed: Callable[[str], None],
        emit: Callable[[Mapping[str, object]], None] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """Judge starts ``grace`` seconds old.

        Args:
            grace: seconds a start event waits for its hook entries.
            tally_of: the tally a container's counts go to.
            changed: told which trail's ledger changed (its record must be saved).
            emit: receives an ``unaudited_start`` WatchEvent per unaudited start.
            wall: the wall clock (seconds since the epoch), which entry times use.
        """
        self._grace_us = round(grace * 1_000_000)
        self._tally_of = tally_of
        self._changed = changed
        self._emit = emit
        self._wall = wall
        self._due: list[tuple[int, str]] = []  # (when µs, container): starts to judge
        self._scheduled: dict[str, int] = {}

    def now_us(self) -> int:
        """Return the wall clock in µs."""
        return round(self._wall() * 1_000_000)

    def wait(self) -> float | None:
        """Return the seconds until the next start is due, or None when none is pending."""
        if not self._due:
            return None
        return (self._due[0][0] - self.now_us()) / 1_000_000

    def forget(self, cid: str) -> None:
        """Drop a removed trail's schedule (its heap entry is skipped when it comes up)."""
        self._scheduled.pop(cid, None)

    def schedule(self, cid: str, tail: Tail) -> None:
        """Judge the trail's due starts now; remember when the next one is due."""
        ledger = tail.mark.audit
        if ledger is None or not ledger.pending:
            return
        due = ledger.next_due(self._grace_us)
        if due is not None and due <= self.now_us():
            self._judge(cid, tail)
            due = ledger.next_due(self._grace_us)
        if due is not None and due < self._scheduled.get(cid, due + 1):
            self._scheduled[cid] = due
            heapq.heappush(self._due, (due, cid))

    def judge_due(self, tails: Mapping[str, Tail], unread: Container[str]) -> None:
        """Judge the starts whose grace period is over, on trails read to their end.

        A trail in ``unread`` still has entries to read: it is judged after its read.
        """
        now = self.now_us()
        while self._due and self._due[0][0] <= now:
            when, cid = heapq.heappop(self._due)
            if self._scheduled.get(cid) != when:
                continue  # superseded by an earlier schedule
            del self._scheduled[cid]
            tail = tails.get(cid)
            if tail is not None and cid not in unread:  # else judged after its read
                self.schedule(cid, tail)

    def _judge(self, cid: str, tail: Tail) -> None:
        ledger = tail.mark.audit
        assert ledger is not None  # noqa: S101 -- every Tail has one
        verdicts = ledger.judge(self.now_us(), self._grace_us)
        if not verdicts:
            return
        self._changed(cid)  # the ledger is part of the checkpoint record
        tally = self._tally_of(cid)
        for verdict in verdicts:
            if verdict.unaudited:
                tally.unaudited_starts += 1
                log.warning(
                    "unaudited start: container %s (%s) started at %s without hook entries (%s)",
                    cid[:12],
                    verdict.container or "-",
                    verdict.watch_event(cid)["ts"],
                    ", ".join(verdict.missing),
                )
                if self._emit is not None:
                    self._emit(verdict.watch_event(cid))
