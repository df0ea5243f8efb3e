"""``shieldaudit show``: one container's trail, for people and scripts.

``show`` streams a trail segment by segment in ``seq`` order, one line at a
time, so memory stays flat whatever the trail's size. ``--json`` prints the
entries exactly as stored, one JSON object per line.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from shieldaudit.cli import render
from shieldaudit.cli.complete import container_names
from shieldaudit.cli.context import app
from shieldaudit.cli.output import colour_wanted
from shieldaudit.cli.resolve import resolve_all
from shieldaudit.cli.timeargs import parse_time, ts_bound
from shieldaudit.core.errors import ContainerNotFoundError, UsageError
from shieldaudit.store.reader import INCOMPLETE, TrailDir, decoded_lines
from shieldaudit.store.reconcile import WATCHED, Audit, Auditor
from shieldaudit.store.trails import Trails

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from shieldaudit.core.models import Entry
    from shieldaudit.store.summary import Summary

__all__ = ["show_command"]


def entry_filter(
    *,
    since: str | None,
    until: str | None,
    actions: Sequence[str],
    source: str | None,
) -> Callable[[Entry], bool]:
    """Build the predicate of ``show``'s filters (pure); bounds are entry-format timestamps.

    Entry timestamps share one fixed format, so bounds compare as strings.
    """
    wanted = frozenset(actions)

    def keep(entry: Entry) -> bool:
        if since is not None and entry.ts < since:
            return False
        if until is not None and entry.ts > until:
            return False
        if wanted and entry.action not in wanted:
            return False
        return source is None or entry.source == source

    return keep


def time_bounds(
    since: str | None, until: str | None, now: datetime
) -> tuple[str | None, str | None]:
    """Parse ``--since``/``--until`` into entry-format bounds; refuse an empty window."""
    low = ts_bound(parse_time(since, now, what="--since")) if since is not None else None
    high = ts_bound(parse_time(until, now, what="--until")) if until is not None else None
    if low is not None and high is not None and low > high:
        raise UsageError(f"--since {since!r} is after --until {until!r}: swap them")
    return low, high


@click.command("show")
@click.argument("container", shell_complete=container_names)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, as stored.")
@click.option(
    "--since", metavar="T", help="Entries at or after T (RFC 3339, or an age: 10m, 2h, 7d)."
)
@click.option("--until", metavar="T", help="Entries at or before T (RFC 3339, or an age).")
@click.option(
    "--action", "actions", metavar="A", multiple=True, help="Only this action (repeatable)."
)
@click.option("--source", type=click.Choice(["hook", "events", "cli"]), help="Only this source.")
@click.option("--all", "every", is_flag=True, help="Every container the name (or prefix) matches.")
@click.option("--no-trunc", is_flag=True, help="Exact times and full details.")
@click.pass_context
def show_command(
    ctx: click.Context,
    *,
    container: str,
    as_json: bool,
    since: str | None,
    until: str | None,
    actions: tuple[str, ...],
    source: str | None,
    every: bool,
    no_trunc: bool,
) -> None:
    """Show the trail of CONTAINER (a name or a unique ID prefix), oldest first.

    A name given to several containers over time shows the most recent one;
    --all shows each of them, oldest first. Each container's entries end with
    a 'state:' line (created, running, paused, exited, failed, removed), as in
    ls; --json prints only the stored entries.
    """
    settings = app(ctx).settings()
    root = settings.root
    grace_us = round(settings.unaudited_grace * 1_000_000)
    low, high = time_bounds(since, until, datetime.now(UTC))
    keep = entry_filter(since=low, until=high, actions=actions, source=source)
    ids = resolve_all(root, container, every=every)
    colour = False if as_json else colour_wanted()
    unreadable = 0
    for container_id in ids:
        label = container_id[:12] if len(ids) > 1 else None
        auditor = Auditor()
        unreadable += _stream(
            root,
            container_id,
            keep,
            as_json=as_json,
            colour=colour,
            exact=no_trunc,
            label=label,
            auditor=auditor,
        )
        audit = auditor.audit(now_us=time.time_ns() // 1000, grace_us=grace_us)
        _audit_notes(audit, container_id)
        if not as_json:
            _state_line(root, container_id, label=label, colour=colour)
    sys.stdout.flush()
    if unreadable:
        click.echo(
            f"Note: {unreadable} line(s) could not be read as entries; run 'shieldaudit verify'",
            err=True,
        )


_RECONCILED = WATCHED | {("events", "init")}


def _audit_notes(audit: Audit, container_id: str) -> None:
    """Say on stderr, after a trail, which of its starts ran without hook entries.

    Stderr, so that stdout stays the entries (``--json``: one entry per line).
    """
    for verdict in audit.unaudited:
        event = verdict.watch_event(container_id)
        click.echo(
            f"UNAUDITED: the start at {event['ts']} (seq {verdict.seq}) of {container_id[:12]} "
            f"has no hook entry ({', '.join(verdict.missing)}): it ran with the OCI hooks "
            "bypassed or removed",
            err=True,
        )
    if audit.events_missing:
        click.echo(
            f"Note: {audit.events_missing} hook run(s) of {container_id[:12]} have no Podman "
            "start event (the events listener was not running, or Podman lost the events)",
            err=True,
        )


def _keep_noting(entry: Entry, keep: Callable[[Entry], bool], auditor: Auditor) -> bool:
    """Apply ``show``'s filter; reconcile every entry, shown or not."""
    if (entry.source, entry.action) in _RECONCILED:
        auditor.add(entry)
    return keep(entry)


def state_line(summary: Summary, *, label: str | None, colour: bool) -> str:
    """Return the line that ends a container's entries in ``show``: its lifecycle state (pure)."""
    state = str(summary.state)
    prefix = f"{label}  " if label is not None else ""
    return f"{prefix}state: {render.paint(state, render.STATE_STYLES.get(state), colour=colour)}"


def _state_line(root: Path, container_id: str, *, label: str | None, colour: bool) -> None:
    """Print the container's state after its entries (nothing if the trail went meanwhile)."""
    with Trails(root) as trails:
        summary = trails.summary(container_id)
    if summary is not None:
        sys.stdout.write(state_line(summary, label=label, colour=colour) + "\n")


def _stream(
    root: Path,
    container_id: str,
    keep: Callable[[Entry], bool],
    *,
    as_json: bool,
    colour: bool,
    exact: bool,
    label: str | None,
    auditor: Auditor,
) -> int:
    """Print one trail's matching entries; return how many lines were not entries.

    Every entry (matching or not) goes to ``auditor``, which keeps none of them.
    """
    unreadable = 0
    binary = sys.stdout.buffer
    text = sys.stdout
    try:
        trail = TrailDir(root, container_id)
    except ContainerNotFoundError:
        return 0  # pruned between resolving and reading
    with trail:
        segments = trail.segments()
        for segment in segments:
            try:
                fd = trail.open_segment(segment)
            except FileNotFoundError:
                continue  # removed by retention meanwhile
            try:
                for kind, line, entry in decoded_lines(fd):
                    if entry is None:
                        # A final line still being written is not an error.
                        if kind != INCOMPLETE or segment is not segments[-1]:
                            unreadable += 1
                        continue
                    if not _keep_noting(entry, keep, auditor):
                        continue
                    if as_json:
                        binary.write(line + b"\n")
                    else:
                        text.write(
                            render.entry_line(entry, exact=exact, colour=colour, label=label) + "\n"
                        )
            finally:
                os.close(fd)
    return unreadable
