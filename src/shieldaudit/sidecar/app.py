"""Wiring the sidecar: the watch loop, the HTTP endpoints, the listener thread, signals.

The watch loop runs in the calling (main) thread so SIGTERM and SIGINT are
handled there: the handler sets the stop event and wakes the loop, which saves
its checkpoint, publishes, and returns; then the listener stops, the final seal
is made, and the server stops. Every wait on the way out is bounded, so a
Podman service that went away or hangs cannot hold the exit.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import threading
from typing import TYPE_CHECKING, BinaryIO, Final, Protocol

from prometheus_client import CollectorRegistry

from shieldaudit.core.errors import ShieldAuditError
from shieldaudit.core.models import WatchEvent
from shieldaudit.sidecar.http import DEFAULT_TIMEOUT_S, ServerHandle, serve
from shieldaudit.sidecar.metrics import SidecarMetrics
from shieldaudit.sidecar.watch.watcher import Watcher
from shieldaudit.store import instance, seals
from shieldaudit.store import manifest as hookmanifest
from shieldaudit.store.chain import NO_KEYS, KeyRing
from shieldaudit.store.reconcile import DEFAULT_GRACE_S

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path
    from types import FrameType

    from shieldaudit.core.settings import Settings, StoreSettings

log = logging.getLogger("shieldaudit.sidecar")

#: Seconds shutdown waits for the listener's thread to stop.
LISTENER_STOP_S: Final = 2.0
#: Seconds shutdown waits for a periodic seal in progress before the final seal.
SEAL_STOP_S: Final = 10.0


class SidecarBusyError(instance.InstanceBusyError):
    """Another sidecar already counts this root."""


class ListenerHandle(Protocol):
    """What the sidecar needs from an in-process events listener."""

    def status(self) -> tuple[bool, int]:
        """Return ``(connected, reconnects)``."""
        ...

    def close(self) -> None:
        """Stop the listener and wait (bounded) for its thread; only the first call waits."""
        ...


def watch_event(entry: Mapping[str, object]) -> bytes:
    """Project an entry onto a WatchEvent JSON line, newline included (pure).

    The line's keys are documented in docs/sidecar.md, "``--emit``".
    """
    return WatchEvent.from_entry(entry).json_line()


def line_emitter(stream: BinaryIO) -> Callable[[Mapping[str, object]], None]:
    """Return an emitter writing one flushed WatchEvent line per entry to ``stream``."""

    def emit(entry: Mapping[str, object]) -> None:
        stream.write(watch_event(entry))
        stream.flush()

    return emit


class Sidecar:
    """The running sidecar (a context manager): watcher, endpoints and listener."""

    def __init__(
        self,
        root: Path,
        *,
        registry: CollectorRegistry | None = None,
        addr: str = "127.0.0.1",
        port: int = 9469,
        emit: Callable[[Mapping[str, object]], None] | None = None,
        from_end: bool = False,
        poll_interval: float = 1.0,
        use_inotify: bool = True,
        keys: KeyRing | None = NO_KEYS,
        listener: Callable[[], ListenerHandle] | None = None,
        grace: float = DEFAULT_GRACE_S,
        http_timeout: float = DEFAULT_TIMEOUT_S,
        sealing: tuple[StoreSettings, float] | None = None,
    ) -> None:
        """Lock the root, open the checkpoint, start serving; the watch loop starts in :meth:`run`.

        Args:
            root: the trail root.
            registry: where metrics go (a fresh one by default).
            addr: metrics address.
            port: metrics port (0 picks a free one).
            emit: receives each entry (``--emit``).
            from_end: skip history present at start.
            poll_interval: polling period for trails inotify cannot watch.
            use_inotify: False forces polling.
            keys: the chain keys, to recompute each entry's mac (None: links only).
            listener: starts the in-process events listener; None for ``--no-listen``.
            grace: seconds a start event waits for its hook entries (``unaudited_grace``).
            http_timeout: seconds an HTTP client has to send a request (or take the answer).
            sealing: the store settings and interval to seal every trail's head at
                (and once more on a clean stop); None or an interval of 0: no sealing.

        Raises:
            SidecarBusyError: another sidecar holds ``<root>/state/sidecar.lock``.
        """
        # Held until close(): a second sidecar would count every entry again
        # and overwrite this one's checkpoint.
        self._lock_fd = instance.hold(root, "sidecar", "stop it first", SidecarBusyError)
        self.registry = registry if registry is not None else CollectorRegistry()
        self._listener: ListenerHandle | None = None
        self.metrics = SidecarMetrics(
            self.registry,
            listener_status=self._listener_status,
            hooks_check=lambda: hookmanifest.check(root),
        )
        self.stop_event = threading.Event()
        self._sealer = Sealer(sealing[0], self.metrics) if sealing and sealing[1] else None
        self._seal_interval = sealing[1] if sealing else 0.0
        self._seal_thread: threading.Thread | None = None
        try:
            self.watcher = Watcher(
                root,
                publish=self.metrics.publish,
                watched=self.metrics.set_watched,
                emit=emit,
                from_end=from_end,
                poll_interval=poll_interval,
                use_inotify=use_inotify,
                keys=keys,
                grace=grace,
            )
        except BaseException:
            self._unlock()
            raise
        self._listener_factory = listener
        try:
            self.server: ServerHandle = serve(
                self.registry, self.readiness, addr, port, timeout=http_timeout
            )
        except BaseException:
            self.watcher.close()
            self._unlock()
            raise

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _listener_status(self) -> tuple[bool, int]:
        if self._listener is None:
            return False, 0
        return self._listener.status()

    def readiness(self) -> tuple[bool, str]:
        """Return whether the sidecar is ready, and why not."""
        if not self.watcher.ready.is_set():
            return False, "initial scan of the trails is running"
        if self._listener_factory is not None and (
            self._listener is None or not self._listener.status()[0]
        ):
            return False, "events listener is not connected to Podman"
        return True, "ready"

    def stop(self) -> None:
        """Ask the watch loop to finish (safe from a signal handler or another thread)."""
        self.stop_event.set()
        self.watcher.wake()

    def run(self) -> None:
        """Start the listener, run the watch loop until :meth:`stop`, then shut down.

        Every wait on the way out is bounded (see docs/sidecar.md, "Shutdown"):
        the listener's thread gets :data:`LISTENER_STOP_S`, a seal in progress
        :data:`SEAL_STOP_S`; what does not finish in time is logged and left
        behind (both are daemon threads), and the process exits as usual.
        """
        try:
            if self._listener_factory is not None:
                self._listener = self._listener_factory()
            if self._sealer is not None:
                self._seal_thread = threading.Thread(
                    target=self._sealer.every,
                    args=(self._seal_interval, self.stop_event),
                    name="sealer",
                    daemon=True,
                )
                self._seal_thread.start()
            self.watcher.run(self.stop_event)  # returns with the final checkpoint saved
            self._stop_listener()  # before the last seal, so that it covers the last events
            if self._sealer is not None and self.stop_event.is_set():
                self._final_seal(self._sealer)
        finally:
            self.close()

    def _stop_listener(self) -> None:
        if self._listener is not None:
            try:
                self._listener.close()
            except Exception:
                log.exception("stopping the events listener failed")

    def _final_seal(self, sealer: Sealer) -> None:
        """Seal once more on a clean stop, after a periodic seal in progress (bounded wait)."""
        thread = self._seal_thread
        if thread is not None:
            thread.join(SEAL_STOP_S)
            if thread.is_alive():
                log.warning(
                    "a seal still running %gs after the stop was left unfinished: "
                    "no final seal (the next seal covers this run)",
                    SEAL_STOP_S,
                )
                return
        sealer.seal()  # a clean stop seals what this run saw last

    def close(self) -> None:
        """Stop the listener and the server, release the watcher."""
        self._stop_listener()
        self.server.close()
        self.watcher.close()
        self._unlock()

    def __enter__(self) -> Sidecar:  # noqa: PYI034 -- not meant to be subclassed
        """Use as a context manager."""
        return self

    def __exit__(self, *_exc: object) -> None:
        """Close on exit."""
        self.close()


class Sealer:
    """Seals every trail's head for the sidecar and reports what the seals find."""

    def __init__(self, settings: StoreSettings, metrics: SidecarMetrics) -> None:
        """Export the last seal's time as it is on disk now."""
        self._settings = settings
        self._metrics = metrics
        self._seen: set[str] = set()
        last = seals.last_seal_time(settings.root)
        if last is not None:
            metrics.last_seal.set(last)

    def every(self, interval: float, stop: threading.Event) -> None:
        """Seal every ``interval`` seconds until ``stop`` is set."""
        while not stop.wait(interval):
            self.seal()

    def seal(self) -> None:
        """Seal now; count each problem found once in ``shieldaudit_integrity_failures_total``."""
        try:
            outcome = seals.seal_now(self._settings)
        except ShieldAuditError as exc:
            log.error("cannot seal: %s", exc.message)  # noqa: TRY400 -- one line
            return
        except OSError as exc:
            log.error("cannot seal: %s", exc.strerror or exc)  # noqa: TRY400 -- one line
            return
        self._metrics.last_seal.set(seals.seconds(outcome.ts))
        found = [*outcome.seal_problems]
        found += [f"{cid[:12]} seals: {problem}" for cid, problem in outcome.problems.items()]
        new = [problem for problem in found if problem not in self._seen]
        for problem in new:
            log.warning("%s", problem)
            if len(self._seen) < 100_000:  # bounded whatever a hostile root holds
                self._seen.add(problem)
        if new:
            self._metrics.integrity_failures.inc(len(new))


class RunnableListener(Protocol):
    """The events listener as the sidecar drives it (``shieldaudit.listener.Listener``)."""

    def run(self) -> None:
        """Listen until :meth:`close` (reconnecting on its own)."""
        ...

    def close(self) -> None:
        """Ask :meth:`run` to return; safe from any thread."""
        ...


class ThreadedListener:
    """Runs a listener in a daemon thread and reports its status to the metrics."""

    def __init__(
        self,
        listener: RunnableListener,
        status: Callable[[], tuple[bool, int]],
        *,
        on_close: Callable[[], None] = lambda: None,
    ) -> None:
        """Start ``listener.run`` in a thread.

        Args:
            listener: what to run.
            status: reads ``(connected, reconnects)``.
            on_close: releases what the listener used (its trail writer), once it stopped.
        """
        self._listener = listener
        self._status = status
        self._on_close = on_close
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="events-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # The sidecar keeps counting trails when the listener dies; /readyz and
        # shieldaudit_listener_connected show it, and the log says why.
        try:
            self._listener.run()
        except ShieldAuditError as exc:
            log.error("the events listener stopped: %s", exc.message)  # noqa: TRY400 -- one line
        except Exception:
            log.exception("the events listener stopped")

    def status(self) -> tuple[bool, int]:
        """Return ``(connected, reconnects)``; never connected once its thread ended."""
        connected, reconnects = self._status()
        return connected and self._thread.is_alive(), reconnects

    def close(self, timeout: float = LISTENER_STOP_S) -> None:
        """Stop the listener, wait up to ``timeout`` seconds, then release its resources.

        Only the first call waits. A listener still running then (blocked on a
        Podman service that accepts connections and never answers, for one) is
        left behind with a warning: it writes nothing more, and its cursor is
        saved after each event it wrote.
        """
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._listener.close()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning(
                "the events listener did not stop within %gs (waiting on the Podman service): "
                "left behind",
                timeout,
            )
            return
        self._on_close()


def start_listener(settings: Settings, keys: KeyRing) -> ListenerHandle:
    """Start the events listener in a thread of this process (podman-py imported here).

    Raises:
        ShieldAuditError: the listener is not part of this installation.
    """
    try:
        module = importlib.import_module("shieldaudit.listener")
    except ImportError:
        raise ShieldAuditError(
            "the events listener is not available in this installation: run with --no-listen",
        ) from None
    from shieldaudit.store.writer import TrailWriter  # noqa: PLC0415

    writer = TrailWriter(settings.store(), keys=keys)
    listener = module.Listener(
        settings.root,
        module.PodmanSource(settings.podman_url),
        writer,
        fsync=settings.fsync == "always",
    )
    state = listener.status

    def status() -> tuple[bool, int]:
        return bool(state.connected), int(state.reconnects)

    return ThreadedListener(listener, status, on_close=writer.close)


def run_until_signalled(sidecar: Sidecar) -> None:
    """Run ``sidecar`` in this (main) thread; SIGTERM and SIGINT stop it cleanly."""

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        sidecar.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        sidecar.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
