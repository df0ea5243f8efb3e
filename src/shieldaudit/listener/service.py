"""The listener loop: connect, replay from the cursor, write each new event once, reconnect.

:class:`Listener` runs in whatever thread calls :meth:`Listener.run` (the
``listen`` command's worker thread, or one of the sidecar's); :meth:`Listener.close`
from any other thread (or a signal handler) stops it after the entry being
written, if any, is on disk and the cursor saved. Its counters live in
:class:`ListenerStatus`, which the sidecar turns into metrics.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from shieldaudit.core.errors import (
    InvalidContainerIdError,
    LockTimeoutError,
    ShieldAuditError,
    StorageError,
    UnsafePathError,
)
from shieldaudit.listener.cursor import Cursor, CursorStore, Seen, recent_event_keys
from shieldaudit.listener.events import Mapped, Skipped, decode_line, map_event
from shieldaudit.listener.source import EventSource, EventStream, SourceLost, SourceUnavailable
from shieldaudit.store import instance

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from shieldaudit.store.writer import TrailWriter

log = logging.getLogger("shieldaudit.listener")

#: Prune the dedup memory after this many writes (cheap; keeps it bounded).
PRUNE_EVERY: Final = 256
#: A stream that lasted this long ends an outage: the next loss reconnects at once.
STABLE_STREAM_S: Final = 5.0
#: ``--once`` replays up to this many seconds past its start (see _catch_up).
ONCE_UNTIL_MARGIN_S: Final = 3
#: How far past the wall clock an event time may move the cursor.
MAX_SKEW_NS: Final = 60 * 1_000_000_000


class ListenerBusyError(instance.InstanceBusyError):
    """Another listener already writes events into this root."""


@dataclass
class ListenerStatus:
    """What the listener is doing, for metrics and ``/readyz`` (read from any thread).

    ``reconnects`` counts connections made again after one was lost (the first
    connection, even after failed attempts, is not a reconnect).
    """

    connected: bool = False
    reconnects: int = 0
    events_written: int = 0
    duplicates_dropped: int = 0
    events_skipped: int = 0
    write_errors: int = 0
    #: events older than the very first start (no cursor yet), which are not recorded
    before_first_start: int = 0
    skipped_by_reason: Counter[str] = field(default_factory=Counter)
    last_event_ns: int | None = None


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential delays: ``initial``, doubling, at most ``cap`` seconds."""

    initial: float = 0.2
    cap: float = 5.0

    def delay(self, attempt: int) -> float:
        """Return the delay before retry number ``attempt`` (0-based)."""
        return float(min(self.cap, self.initial * (2 ** min(attempt, 30))))


class Listener:
    """Subscribe to container events and append one ``source=events`` entry per event."""

    def __init__(
        self,
        root: Path,
        source: EventSource,
        writer: TrailWriter,
        *,
        status: ListenerStatus | None = None,
        clock: Callable[[], int] = time.time_ns,
        backoff: Backoff | None = None,
        fsync: bool = True,
    ) -> None:
        """Wire the listener; nothing is opened until :meth:`run`.

        Args:
            root: the trail root (the cursor and lock live under ``<root>/state``).
            source: where events come from (:class:`PodmanSource` in production).
            writer: the trail writer every entry goes through.
            status: shared counters (the sidecar passes its own to read them).
            clock: wall clock in ns (the first start's cursor).
            backoff: reconnect delays.
            fsync: make each cursor save durable (follow the store's fsync policy).
        """
        self.root = root
        self.source = source
        self.writer = writer
        self.status = status if status is not None else ListenerStatus()
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._cursors = CursorStore(root, fsync=fsync)
        self._seen = Seen()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._stream: EventStream | None = None
        self._cursor = Cursor(0)
        self._started_ns = 0
        self._not_before_ns = 0
        self._scanned: set[str] = set()
        self._since_prune = 0

    # -- control -----------------------------------------------------------

    def close(self) -> None:
        """Ask the loop to stop; safe from any thread and from a signal handler."""
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.close()

    @property
    def stopping(self) -> bool:
        """Return whether :meth:`close` was called."""
        return self._stop.is_set()

    # -- the loop ----------------------------------------------------------

    def run(self, *, once: bool = False) -> None:
        """Listen until :meth:`close`; with ``once``, catch up to now and return.

        Raises:
            ListenerBusyError: another listener holds this root.
            SourceUnavailable: ``once`` and the service cannot be reached.
        """
        lock_fd = self._take_lock()
        try:
            self._start_cursor()
            if once:
                self._catch_up()
            else:
                self._loop()
        finally:
            os.close(lock_fd)
            self.status.connected = False

    def _take_lock(self) -> int:
        """Hold ``<root>/state/listener.lock`` so two listeners never write the same events."""
        return instance.hold(
            self.root, "listener", "stop it, or use 'sidecar --no-listen'", ListenerBusyError
        )

    def _start_cursor(self) -> None:
        self._started_ns = self._clock()
        saved = self._cursors.load()
        if saved is None:
            # First start: begin now, and persist it at once so that a crash
            # before the first event still replays from here. The replay's
            # overlap reaches back before now; those events are not ours.
            self._cursor = Cursor(self._started_ns)
            self._not_before_ns = self._started_ns
            self._cursors.save(self._cursor, self.source.url)
            log.info("listener: no cursor yet, starting at the current time")
        else:
            self._cursor = saved

    def _catch_up(self) -> None:
        """Replay from the cursor up to a moment just after now, then stop.

        ``until`` is whole seconds and must be clearly in the future: Podman
        4.3's file events backend returns nothing, or part of the log, when it
        has already passed by the time the request is served.
        """
        until = self._clock() // 1_000_000_000 + ONCE_UNTIL_MARGIN_S
        stream = self._open(until)  # SourceUnavailable propagates: one attempt
        try:
            self._consume(stream)
        except SourceLost as exc:
            if not self.stopping:
                raise SourceUnavailable(f"events stream broke: {exc}") from exc

    def _loop(self) -> None:  # noqa: C901 -- one state machine, easier to follow whole
        attempt = 0
        outage_since: float | None = None
        ever_connected = False
        # A service that accepts and drops the stream at once must neither be
        # hammered nor fill the log: back off, and report such a series once.
        flapping = False
        while not self.stopping:
            try:
                stream = self._open(None)
            except SourceUnavailable as exc:
                if outage_since is None:
                    outage_since = time.monotonic()
                    log.warning(
                        "listener: cannot reach Podman at %s: %s; retrying with backoff "
                        "(is the service running? 'systemctl start podman.socket')",
                        self.source.url,
                        exc,
                    )
                self._stop.wait(self._backoff.delay(attempt))
                attempt += 1
                continue
            if ever_connected:
                self.status.reconnects += 1
            if outage_since is not None:
                log.warning(
                    "listener: connected to %s after %.1fs (%d attempts)",
                    self.source.url,
                    time.monotonic() - outage_since,
                    attempt,
                )
            ever_connected = True
            outage_since = None
            connected_at = time.monotonic()
            try:
                self._consume(stream)
            except SourceLost as exc:
                problem = str(exc)
            else:
                # Podman ends an open-ended stream only when it shuts down.
                problem = "the service closed the events stream"
            if self._stop.is_set():
                break
            stable = time.monotonic() - connected_at >= STABLE_STREAM_S
            if stable:
                attempt = 0
                flapping = False
            if not flapping:
                outage_since = time.monotonic()
                log.warning(
                    "listener: lost the events stream from %s: %s; reconnecting",
                    self.source.url,
                    problem,
                )
                flapping = not stable
            if not stable:
                self._stop.wait(self._backoff.delay(attempt))
                attempt += 1

    def _open(self, until: int | None) -> EventStream:
        stream = self.source.open(self._cursor.replay_since(), until)
        with self._lock:
            self._stream = stream
        if self.stopping:  # close() ran before the stream was visible to it
            stream.close()
        self.status.connected = True
        return stream

    def _consume(self, stream: EventStream) -> None:
        """Write every new event of one stream; returns when the stream ends."""
        try:
            for line in stream.lines():
                if self.stopping:
                    return
                self._handle(line)
        finally:
            self.status.connected = False
            with self._lock:
                self._stream = None
            stream.release()

    # -- one event -----------------------------------------------------------

    def _handle(self, line: bytes) -> None:
        decoded = decode_line(line)
        result = decoded if isinstance(decoded, Skipped) else map_event(decoded)
        if isinstance(result, Skipped):
            self._skip(result)
            return
        if result.key.time_ns < self._not_before_ns:
            self.status.before_first_start += 1
            return
        if self._already_written(result):
            self.status.duplicates_dropped += 1
            return
        if not self._write(result):
            return
        self._seen.add(result.key)
        self.status.events_written += 1
        self.status.last_event_ns = result.key.time_ns
        if result.key.time_ns > self._cursor.time_ns:
            # An event stamped far in the future (a skewed clock) must not push
            # the replay start past events still to come; dedup covers the rest.
            self._cursor = Cursor(min(result.key.time_ns, self._clock() + MAX_SKEW_NS))
        try:
            self._cursors.save(self._cursor, self.source.url)
        except StorageError as exc:
            # The entry is written; a stale cursor only means a longer replay,
            # which dedup absorbs. Not worth stopping the listener for.
            log.warning("listener: %s", exc)
        self._since_prune += 1
        if self._since_prune >= PRUNE_EVERY:
            self._prune()

    def _skip(self, skipped: Skipped) -> None:
        self.status.events_skipped += 1
        self.status.skipped_by_reason[skipped.reason] += 1
        log.debug("listener: skipped an event (%s): %s", skipped.reason, skipped.detail)

    def _already_written(self, mapped: Mapped) -> bool:
        key = mapped.key
        if key in self._seen:
            return True
        # An event from before this process started may have been written by
        # the previous one after its last cursor save: ask the trail itself.
        if key.time_ns < self._started_ns and key.container_id not in self._scanned:
            self._scanned.add(key.container_id)
            try:
                found = recent_event_keys(self.root, key.container_id, self._cursor.floor_ns())
            except ShieldAuditError as exc:
                log.warning("listener: cannot read the trail of %s: %s", key.container_id, exc)
                found = set()
            for old in found:
                self._seen.add(old)
            return key in self._seen
        return False

    def _write(self, mapped: Mapped) -> bool:
        """Append the entry, retrying with backoff while the store fails; False if skipped."""
        attempt = 0
        while True:
            try:
                self.writer.append(mapped.key.container_id, mapped.fields)
            except (InvalidContainerIdError, UnsafePathError) as exc:
                # This trail can never be written safely; recording the rest matters more.
                self.status.write_errors += 1
                self._skip(Skipped("unwritable", str(exc)))
                log.error("listener: event for %s dropped: %s", mapped.key.container_id, exc)  # noqa: TRY400
                return False
            except (StorageError, LockTimeoutError, OSError) as exc:
                self.status.write_errors += 1
                if attempt == 0:
                    log.error("listener: cannot write an event entry: %s; retrying", exc)  # noqa: TRY400
                if self.stopping:
                    # Not written, cursor not advanced: the next start replays it.
                    return False
                self._stop.wait(self._backoff.delay(attempt))
                attempt += 1
            else:
                if attempt:
                    log.warning("listener: writing again after %d failed attempts", attempt)
                return True

    def _prune(self) -> None:
        self._since_prune = 0
        floor = self._cursor.floor_ns()
        self._seen.prune(floor)
        if floor > self._started_ns:
            self._scanned.clear()  # no replay can reach before this process started
