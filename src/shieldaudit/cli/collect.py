"""``shieldaudit collect``: the collector's end of the fleet pipeline (run by rsyslog's omprog)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from shieldaudit.core.errors import UsageError
from shieldaudit.fleet.collect import Collector, Protocol, read_batches


@click.command("collect")
@click.option(
    "--central",
    metavar="DIRECTORY",
    required=True,
    help="Where node copies are rebuilt, one directory per node.",
)
@click.option(
    "--metrics-file",
    metavar="FILE",
    default=None,
    help="Prometheus text file to keep current (for node_exporter's textfile collector).",
)
def collect_command(central: str, metrics_file: str | None) -> None:
    """Rebuild shipped trails and seals under CENTRAL/<node>/, as the node has them.

    Reads one message per line on stdin, as rsyslog's omprog sends them
    (deploy/rsyslog/collector.conf), and answers each once it is durable. A
    line already held is dropped; one that contradicts the held history is
    kept under CENTRAL/<node>/conflicts/ and reported by verify.
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
    collector = Collector(target)
    replies: list[bytes] = []

    def log(message: str) -> None:
        click.echo(f"shieldaudit collect: {message}", err=True)

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


def _answer(fd: int, replies: list[bytes]) -> None:
    data = memoryview(b"".join(replies))
    replies.clear()
    while data:
        data = data[os.write(fd, data) :]
