"""``shieldaudit listen``: record every Podman container event in its container's trail."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING

import click

from shieldaudit.cli.context import app
from shieldaudit.cli.options import setting_option
from shieldaudit.core.errors import ShieldAuditError

if TYPE_CHECKING:
    from shieldaudit.listener import Listener


@click.command("listen")
@setting_option(
    "--url",
    setting="podman_url",
    metavar="URL",
    show_default="SHIELDAUDIT_PODMAN_URL, the config file, else the current user's Podman "
    "socket; unix:///run/podman/podman.sock for root",
    help="Podman service URL.",
)
@click.option(
    "--once",
    is_flag=True,
    help="Catch up from the saved cursor to now, then exit; exit 1 if Podman "
    "cannot be reached (for scripts and timers).",
)
@click.option("-v", "--verbose", is_flag=True, help="Also log each skipped event.")
@click.pass_context
def listen_command(ctx: click.Context, *, url: str | None, once: bool, verbose: bool) -> None:
    """Append a source=events entry for every Podman container event.

    Runs until SIGTERM or Ctrl-C (the entry being written is finished and the
    cursor saved, then it exits 0). While Podman is unreachable it logs one
    line and keeps retrying with backoff; after a reconnect or a restart it
    replays from its cursor, so events are recorded once, none lost.
    Non-container events (images, pods, volumes…) are ignored.
    """
    from shieldaudit.listener import Listener, PodmanSource, SourceUnavailable  # noqa: PLC0415
    from shieldaudit.store.writer import TrailWriter  # noqa: PLC0415

    context = app(ctx)
    settings = context.settings(podman_url=url)
    _configure_logging(verbose=verbose)
    source = PodmanSource(settings.podman_url)
    with TrailWriter(settings.store(), keys=context.keys()) as writer:
        listener = Listener(settings.root, source, writer, fsync=settings.fsync == "always")
        try:
            run_until_signal(listener, once=once)
        except SourceUnavailable as exc:
            raise ShieldAuditError(
                f"cannot reach Podman at {settings.podman_url}: {exc} (start the service, "
                "or pass --url)",
            ) from None
    status = listener.status
    logging.getLogger("shieldaudit.listener").info(
        "listener: stopped; %d written, %d duplicates dropped, %d skipped",
        status.events_written,
        status.duplicates_dropped,
        status.events_skipped,
    )


def _configure_logging(*, verbose: bool) -> None:
    """Send the listener's log lines to stderr, unless the caller configured logging."""
    logger = logging.getLogger("shieldaudit.listener")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def run_until_signal(listener: Listener, *, once: bool = False) -> None:
    """Run ``listener`` in a worker thread; SIGTERM/SIGINT stop it cleanly.

    The main thread only waits for signals, so the handler never interrupts a
    write: it asks the loop to stop, and the loop stops after the current
    entry and cursor save.
    """
    failure: list[BaseException] = []

    def target() -> None:
        try:
            listener.run(once=once)
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the main thread
            failure.append(exc)

    def on_signal(_signum: int, _frame: object) -> None:
        listener.close()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    worker = threading.Thread(target=target, name="shieldaudit-listener", daemon=True)
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.5)
    finally:
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
    if failure:
        raise failure[0]
