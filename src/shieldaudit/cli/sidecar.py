"""``shieldaudit sidecar``: watch every trail, export metrics, optionally run the listener."""

from __future__ import annotations

import contextlib
import logging
import resource
import sys
from typing import TYPE_CHECKING

import click

from shieldaudit.cli.context import app
from shieldaudit.cli.options import setting_option

if TYPE_CHECKING:
    from shieldaudit.core.settings import Settings
    from shieldaudit.sidecar.app import ListenerHandle
    from shieldaudit.store.chain import KeyRing


def listener_factory(settings: Settings, keys: KeyRing) -> ListenerHandle:
    """Start the events listener in a thread of this process (imported only when used)."""
    from shieldaudit.sidecar.app import start_listener  # noqa: PLC0415 -- podman-py is heavy

    return start_listener(settings, keys)


def raise_open_files_limit() -> None:
    """Raise this process's soft open-files limit to its hard limit.

    Each scrape connection is a descriptor; the soft limit (often 1,024) would
    cap connections well below what the server holds without trouble. Nothing
    in the sidecar uses ``select()`` (limited to descriptors below 1,024).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@click.command("sidecar")
@click.option("--no-listen", is_flag=True, help="Do not run the events listener in-process.")
@setting_option(
    "--metrics-addr",
    setting="metrics_addr",
    metavar="ADDRESS",
    help="Address for /metrics, /healthz and /readyz.",
)
@setting_option(
    "--metrics-port",
    setting="metrics_port",
    help="Port for /metrics (0: the kernel chooses).",
)
@click.option("--emit", is_flag=True, help="Write each entry as a WatchEvent JSON line on stdout.")
@click.option("--from-end", is_flag=True, help="Skip the history of existing trails.")
@setting_option(
    "--poll-interval",
    setting="poll_interval",
    help="Seconds between polls when inotify is unavailable or its watch limit is hit.",
)
@setting_option(
    "--unaudited-grace",
    setting="unaudited_grace",
    help="Seconds a container start may wait for its hook entries before it counts as unaudited.",
)
@setting_option(
    "--http-timeout",
    setting="http_timeout",
    help="Seconds an HTTP client has to send its request; idle connections close.",
)
@click.pass_context
def sidecar_command(  # noqa: PLR0917 -- click passes one argument per option
    ctx: click.Context,
    no_listen: bool,
    metrics_addr: str | None,
    metrics_port: int | None,
    emit: bool,
    from_end: bool,
    poll_interval: float | None,
    unaudited_grace: float | None,
    http_timeout: float | None,
) -> None:
    """Watch every trail, count entries exactly once, serve Prometheus metrics.

    Serves /metrics, /healthz and /readyz; SIGTERM stops it cleanly after a
    final checkpoint. Without a checkpoint it reads all history (unless
    --from-end).
    """
    from shieldaudit.sidecar.app import (  # noqa: PLC0415 -- the exporter is heavy
        Sidecar,
        line_emitter,
        run_until_signalled,
    )

    context = app(ctx)
    settings = context.settings(
        metrics_addr=metrics_addr,
        metrics_port=metrics_port,
        poll_interval=poll_interval,
        unaudited_grace=unaudited_grace,
        http_timeout=http_timeout,
    )
    keys = context.keys()
    raise_open_files_limit()
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="shieldaudit sidecar: %(message)s"
    )
    sidecar = Sidecar(
        settings.root,
        addr=settings.metrics_addr,
        port=settings.metrics_port,
        emit=line_emitter(sys.stdout.buffer) if emit else None,
        from_end=from_end,
        poll_interval=settings.poll_interval,
        keys=keys,
        listener=None if no_listen else (lambda: listener_factory(settings, keys)),
        grace=settings.unaudited_grace,
        http_timeout=settings.http_timeout,
        sealing=(settings.store(), settings.seal_interval),
    )
    run_until_signalled(sidecar)
