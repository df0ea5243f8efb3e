"""The fleet side of ``verify`` and ``ls``: every node copy at once, or two roots compared."""

from __future__ import annotations

from pathlib import Path

import click

from shieldaudit.core.errors import EXIT_FAILURE, EXIT_OK, UsageError
from shieldaudit.fleet import check
from shieldaudit.store.verify import Report


def fleet_verify(
    root: Path,
    against: str | None,
    *,
    container: str | None,
    as_json: bool,
    key: str | None = None,
) -> int:
    """Run ``verify`` on every node copy of a central directory, or compare with ``against``."""
    if against is not None:
        if container is not None or as_json:
            raise UsageError("--against compares whole roots: drop CONTAINER and --json")
        return _against(root, Path(against))
    args = ["verify", *([container] if container else []), *(["--json"] if as_json else [])]
    return each_node(root, [*args, *(["--verification-key", key] if key else [])])


def each_node(central: Path, args: list[str]) -> int:
    """Run a read-side command on every node copy, each under a ``== NODE`` heading.

    Run in this process, one node after the other; the exit status is the worst.
    Ctrl-C (or a closed stdout) ends the whole run, not only the node being read.
    """
    from shieldaudit.cli import outcome  # noqa: PLC0415 -- the CLI imports this module

    status = EXIT_OK
    nodes = check.node_names(central)
    # With --json, stdout stays JSON lines only: the headings go to stderr.
    aside = "--json" in args
    for node in nodes:
        click.echo(f"== {node}", err=aside)
        code = outcome(["--root", str(central / node), *args])
        status = max(status, code)
    click.echo(f"{len(nodes)} node(s) under {central}", err=aside)
    return status


def _against(here: Path, there: Path) -> int:
    if not there.is_dir():
        raise UsageError(f"--against {there}: not a directory (give another copy of this root)")
    partings = check.compare(here, there)
    failures = 0
    for parting in partings:
        if parting.failure:
            failures += 1
            click.echo(parting.render())
        else:
            click.echo(f"{parting.render()} (note)", err=True)
    verdict = "FAILED" if failures else "OK"
    click.echo(f"{verdict}: {failures} container(s) whose history parts from {there}")
    return EXIT_FAILURE if failures else EXIT_OK


def conflict_reports(root: Path) -> list[Report]:
    """Print the conflicts a collected copy holds; return a failed report for them, if any."""
    lines, count = check.conflict_lines(root)
    for line in lines:
        click.echo(line)
    if count > len(lines):
        click.echo(f"conflicts: … and {count - len(lines)} more")
    return [Report("conflicts", problem_count=count)] if count else []
