"""Checkpoint, then publish: the order that makes every count exactly once.

:class:`Commits` saves the checkpoint shards that changed and hands each
shard's counts to the metrics only once that shard is durable: a scrape never
shows what a restart would count again (docs/sidecar.md, "Exactly once"). It
also decides when a save is due: at most :data:`MAX_COMMIT_INTERVAL` apart
while entries flow, sooner when saves are cheap.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from shieldaudit.sidecar.watch.checkpoint import CheckpointWriter
    from shieldaudit.sidecar.watch.tailer import Tail
    from shieldaudit.sidecar.watch.tally import Tally

log = logging.getLogger("shieldaudit.sidecar")

#: Checkpoint at least this often while entries flow (docs/sidecar.md, "Exactly once").
MAX_COMMIT_INTERVAL: Final = 1.0


class Commits:
    """When and how the watcher's counts become durable, then visible."""

    def __init__(
        self,
        checkpoint: CheckpointWriter,
        tallies: Mapping[str, Tally],
        publish: Callable[[Tally], None],
        clock: Callable[[], float],
    ) -> None:
        """Save through ``checkpoint``; publish each shard's tally in ``tallies`` once saved."""
        self.checkpoint = checkpoint
        #: trails whose mark moved (or whose ledger changed) since the last save
        self.unsaved: set[str] = set()
        self._tallies = tallies
        self._publish = publish
        self._clock = clock
        self._last = clock()
        self._cost = 0.0
        self._failing = False

    def gap(self) -> float:
        """Seconds between checkpoints: short when they are cheap, at most one second.

        Publishing waits for the checkpoint, so this bounds entry-to-metric
        latency; scaling it with the cost of a save keeps a 10,000-trail
        checkpoint from eating the catch-up throughput.
        """
        return min(MAX_COMMIT_INTERVAL, max(0.01, 4 * self._cost))

    def pending(self) -> bool:
        """Return whether anything waits for a checkpoint."""
        return bool(self.unsaved or self.checkpoint.dirty) or not all(
            tally.empty() for tally in self._tallies.values()
        )

    def wait(self) -> float | None:
        """Return the seconds until a save is due, or None when nothing waits for one."""
        if not self.pending():
            return None
        return self._last + self.gap() - self._clock()

    def maybe(self, tails: Mapping[str, Tail]) -> None:
        """Save (and publish) when something waits and the gap since the last save is over."""
        if self.pending() and self._clock() - self._last >= self.gap():
            self.commit(tails)

    def commit(self, tails: Mapping[str, Tail]) -> None:
        """Save the checkpoint shards that changed, publishing each one's counts once it is saved.

        Counts reach the metrics only after the shard covering them is durable:
        a scrape never shows what a restart would count again.
        """
        started = self._clock()
        for cid in self.unsaved:
            tail = tails.get(cid)
            if tail is not None:
                self.checkpoint.update(cid, tail.mark)
        self.unsaved.clear()
        for shard, tally in self._tallies.items():
            if not tally.empty():
                self.checkpoint.dirty.add(shard)
        try:
            for shard in self.checkpoint.save():
                tally = self._tallies[shard]
                if not tally.empty():
                    self._publish(tally.take())
        except OSError as exc:
            # Unsaved shards stay dirty and their counts unpublished: retried after the gap.
            if not self._failing:
                log.warning("cannot save checkpoint in %s: %s", self.checkpoint.path, exc)
            self._failing = True
            self._last = self._clock()
            return
        if self._failing:
            log.warning("checkpoint saved again after earlier failures")
        self._failing = False
        self._last = self._clock()
        self._cost = self._last - started
