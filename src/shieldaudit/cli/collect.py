"""``shieldaudit collect``: the collector's end of the fleet pipeline.

By default it follows the spool the collector's rsyslog writes
(``--spool``, deploy/rsyslog/collector.conf); without ``--spool`` it speaks
omprog's protocol on stdin and stdout (one answer per line, slower).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from shieldaudit.core.errors import UsageError
from shieldaudit.fleet.collect import Collector, Metrics, Protocol, read_batches
from shieldaudit.fleet.spool import Spool, follow

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType


@click.command("collect")
@click.option(
    "--central",
    metavar="DIRECTORY",
    required=True,
    help="Where node copies are rebuilt, one directory per node.",
)
@click.option(
    "--spool",
    metavar="FILE",
    default=None,
    help="Follow the spool files the collector's rsyslog writes (FILE.<UTC minute>).",
)
@click.option(
    "--once",
    is_flag=True,
    help="With --spool: stop once everything the spool holds is applied.",
)
@click.option(
    "--metrics-file",
    metavar="FILE",
    default=None,
    help="Prometheus text file to keep current (for node_exporter's textfile collector).",
)
def collect_command(central: str, spool: str | None, once: bool, metrics_file: str | None) -> None:
    """Rebuild shipped trails and seals under CENTRAL/<node>/, as the node has them.

    With --spool, follows the spool files the collector's rsyslog writes
    (SPOOL.YYYYMMDDhhmm, deploy/rsyslog/collector.conf) in batches: each batch
    is made durable, then checkpointed (SPOOL.checkpoint), and files read to
    their end that rsyslog no longer writes are removed. SPOOL.lock keeps a
    second collect off the same spool. Without --spool, reads one message per
    line on stdin, as rsyslog's omprog sends them, and answers each once it
    is durable. A line already held is dropped; one that contradicts the held
    history is kept under CENTRAL/<node>/conflicts/ and reported by verify.
    """
    if not central:
        raise UsageError("--central is empty: give the directory for the node copies")
    target = Path(central).absolute()
    if not target.parent.is_dir():
        # Creating a whole path from a typo would scatter node copies: only the last part.
        raise UsageError(
            f"--central {target}: {target.parent} does not exist; create it, or fix the path"
        )
    metrics = Path(metrics_file).absolute() if metrics_file else None
    if metrics is not None and not metrics.parent.is_dir():
        raise UsageError(f"--metrics-file: {metrics.parent} is not a directory")
    spool_path = Path(spool).absolute() if spool else None
    if spool_path is not None and not spool_path.parent.is_dir():
        raise UsageError(f"--spool: {spool_path.parent} is not a directory")
    if once and spool_path is None:
        raise UsageError("--once needs --spool")

    def log(message: str) -> None:
        click.echo(f"shieldaudit collect: {message}", err=True)

    if spool_path is not None:
        _follow(target, spool_path, metrics, once=once, log=log)
        return
    collector = Collector(target)
    replies: list[bytes] = []
    protocol = Protocol(collector, replies.append, metrics_file=metrics, log=log)
    out = sys.stdout.fileno()
    try:
        protocol.start()
        _answer(out, replies)
        # Every line read in one go is answered in one write: rsyslog sends one
        # line and waits, a faster feeder gets its answers in batches.
        for lines in read_batches(sys.stdin.fileno()):
            for line in lines:
                protocol.handle(line)
            _answer(out, replies)
    finally:
        collector.close()
        protocol.write_metrics(force=True)


def _follow(
    central: Path,
    path: Path,
    metrics_path: Path | None,
    *,
    once: bool,
    log: Callable[[str], None],
) -> None:
    stopping: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    spool = Spool(path, log=log)  # its lock first: a second collect on it stops here
    try:
        collector = Collector(central)
    except BaseException:
        spool.close()
        raise
    metrics = Metrics(collector.counts, metrics_path, log)
    try:
        follow(collector, spool, metrics, once=once, stop=lambda: bool(stopping), log=log)
    finally:
        spool.close()
        collector.close()
        metrics.write(force=True)


def _answer(fd: int, replies: list[bytes]) -> None:
    data = memoryview(b"".join(replies))
    replies.clear()
    while data:
        data = data[os.write(fd, data) :]
