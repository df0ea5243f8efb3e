"""``shieldaudit ls``: list the containers with a trail, most recently active first.

``ls`` reads each trail's first line and last few lines, never whole files.
``--json`` prints one JSON object per container, one per line.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from shieldaudit.cli import render
from shieldaudit.cli.context import app
from shieldaudit.cli.fleet import each_node
from shieldaudit.cli.output import colour_wanted, warn
from shieldaudit.core.errors import ContainerNotFoundError
from shieldaudit.fleet.check import is_fleet
from shieldaudit.store.trails import Trails

if TYPE_CHECKING:
    from shieldaudit.store.summary import Summary

__all__ = ["ls_command"]

LS_HEADERS = (
    "CONTAINER ID",
    "NAME",
    "IMAGE",
    "ENTRIES",
    "FIRST",
    "LAST",
    "ACTION",
    "STATE",
    "AUDIT",
)


def write_json_line(line: bytes | str) -> None:
    """Write one JSON line to stdout (bytes as stored, or text)."""
    out = sys.stdout.buffer
    out.write((line.encode() if isinstance(line, str) else line) + b"\n")


def chain_cell(summary: Summary, verified: bool | None) -> render.Cell:
    """Say what is known about a trail's chain: fully verified, or only its tail checked."""
    if verified is not None:
        return ("ok", "green") if verified else ("FAILED", "red")
    if summary.tail_ok is None:
        return "-"
    return ("tail ok", "green") if summary.tail_ok else ("BROKEN", "red")


def audit_cell(summary: Summary) -> render.Cell:
    """Say whether the container's starts were all audited (see docs/cli.md, ``ls``)."""
    audit = summary.audit
    if audit is None:
        return "-"
    if audit.unaudited:
        return ("UNAUDITED", "red")
    if audit.events_missing:
        return ("events missing", "yellow")
    if audit.starts:
        return ("ok", "green")
    return "-"


def ls_row(
    summary: Summary, now: datetime, *, exact: bool, verified: bool | None
) -> list[render.Cell]:
    """Build one ``ls`` table row (pure)."""
    state = str(summary.state)
    return [
        summary.container_id if exact else summary.container_id[:12],
        summary.name or "-",
        (summary.image if exact else render.truncate(summary.image, 40)) or "-",
        str(summary.entries),
        render.when(summary.first_ts, now, exact=exact),
        render.when(summary.last_ts, now, exact=exact),
        summary.last_action or "-",
        (state, render.STATE_STYLES.get(state)),
        audit_cell(summary),
        chain_cell(summary, verified),
    ]


@click.command("ls")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--no-trunc", is_flag=True, help="Full IDs and exact RFC 3339 times.")
@click.option(
    "--verify",
    "full_verify",
    is_flag=True,
    help="Verify every chain in full (reads whole trails), not only check each tail.",
)
@click.pass_context
def ls_command(ctx: click.Context, *, as_json: bool, no_trunc: bool, full_verify: bool) -> None:
    """List containers with a trail, most recently active first.

    CHAIN says "tail ok" when the last entries link to each other (cheap; not
    a verification), or, with --verify, "ok"/"FAILED" from a full verify.
    AUDIT says "UNAUDITED" when Podman reported a start without its hook
    entries, "events missing" for hook runs Podman's events never reported.
    """
    context = app(ctx)
    settings = context.settings()
    root = settings.root
    if is_fleet(root):  # a central directory of collected node copies: each in turn
        args = ["ls", *(["--json"] if as_json else []), *(["--no-trunc"] if no_trunc else [])]
        ctx.exit(each_node(root, [*args, *(["--verify"] if full_verify else [])]))
    audit_at = (time.time_ns() // 1000, round(settings.unaudited_grace * 1_000_000))
    with Trails(root) as trails:
        summaries = [
            s for i in trails.ids() for s in [trails.summary(i, audit_at=audit_at)] if s is not None
        ]
        warn(trails)
    summaries.sort(key=lambda s: (s.last_ts, s.container_id), reverse=True)
    verdicts: dict[str, bool | None] = dict.fromkeys((s.container_id for s in summaries), None)
    if full_verify:
        from shieldaudit.store.verify import verify_container  # noqa: PLC0415 -- only when asked

        keys = context.keys()
        for s in summaries:
            try:
                report = verify_container(
                    root, s.container_id, keys, keep_segments=settings.keep_segments
                )
            except ContainerNotFoundError:
                continue  # pruned meanwhile
            verdicts[s.container_id] = report.ok
    if as_json:
        import json  # noqa: PLC0415

        for s in summaries:
            row = s.as_dict()
            if full_verify:
                row["verified"] = verdicts[s.container_id]
            write_json_line(json.dumps(row))
        return
    now = datetime.now(UTC)
    rows = [ls_row(s, now, exact=no_trunc, verified=verdicts[s.container_id]) for s in summaries]
    headers = (*LS_HEADERS, "VERIFY" if full_verify else "CHAIN")
    colour = colour_wanted()
    for line in render.table(headers, rows, colour=colour, right=frozenset({3})):
        click.echo(line, color=colour)  # the decision is ours: click would strip codes again
