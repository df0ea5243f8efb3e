"""``shieldaudit verify``: check every chain (or one container's), exit 0 or 1."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from shieldaudit.cli.context import app
from shieldaudit.cli.output import quiet
from shieldaudit.cli.resolve import resolve_container
from shieldaudit.cli.trails import Trails
from shieldaudit.errors import EXIT_FAILURE, ContainerNotFoundError, ShieldAuditError
from shieldaudit.store.verify import Report, verify_container

if TYPE_CHECKING:
    from pathlib import Path

    from shieldaudit.store.chain import KeyRing


@click.command("verify")
@click.argument("container", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per container.")
@click.pass_context
@quiet
def verify_command(ctx: click.Context, *, container: str | None, as_json: bool) -> None:
    """Verify the hash chain of every trail (or of CONTAINER).

    Prints one line per problem (container, segment, seq, what is wrong; the
    first 20 per container, then how many more) and a summary; exits 1 if any
    chain does not hold. CONTAINER is a name (the most
    recent container to bear it) or a unique ID prefix. Notes (history
    shortened by retention, a torn final line) go to stderr.
    """
    context = app(ctx)
    settings = context.settings()
    keys = context.keys()
    root = settings.root
    with Trails(root) as trails:
        trails.check_state()  # writers refuse a loose state/: say so here too
        ids = [] if container else trails.ids()
    if container:
        ids = [resolve_container(root, container)]
    reports: list[Report] = []
    for container_id in ids:
        report = _verify_one(
            root, container_id, keys, settings.keep_segments, explicit=container is not None
        )
        if report is None:
            continue
        reports.append(report)
        if as_json:
            click.echo(json.dumps(_as_dict(report)))
            continue
        for problem in report.problems:
            click.echo(problem.render())
        if report.more_problems:
            click.echo(more_line(report))
        for note in report.notes:
            click.echo(f"{container_id[:12]} note: {note}", err=True)
    failed = [r for r in reports if not r.ok]
    if not as_json:
        entries = sum(r.entries for r in reports)
        problems = sum(r.problem_count for r in reports)
        verdict = "FAILED" if failed else "OK"
        click.echo(
            f"{verdict}: {len(reports)} container(s), {entries} entries, "
            f"{problems} problem(s) in {len(failed)} container(s)",
        )
    if failed:
        ctx.exit(EXIT_FAILURE)


def _verify_one(
    root: Path, container_id: str, keys: KeyRing, keep: int, *, explicit: bool
) -> Report | None:
    """Verify one trail; verifying all, a vanished trail is skipped and an unsafe one reported."""
    try:
        return verify_container(root, container_id, keys, keep_segments=keep)
    except ContainerNotFoundError:
        if explicit:
            raise
        return None  # pruned while we were verifying the others
    except ShieldAuditError as exc:
        if explicit:
            raise
        # An unsafe or unreadable trail is a problem of that trail, not the end of the run.
        report = Report(container_id)
        report.add("-", None, exc.message)
        return report


def more_line(report: Report) -> str:
    """Return the line that stands for the problems not printed (pure)."""
    more = report.more_problems
    noun = "problem" if more == 1 else "problems"
    return f"{report.container_id[:12]} … and {more} more {noun} in this trail"


def _as_dict(report: Report) -> dict[str, object]:
    return {
        "container_id": report.container_id,
        "ok": report.ok,
        "entries": report.entries,
        "first_seq": report.first_seq,
        "last_seq": report.last_seq,
        "segments": report.segments,
        "keyed": report.keyed,
        "problems": [
            {"segment": p.segment, "seq": p.seq, "message": p.message} for p in report.problems
        ],
        "problem_count": report.problem_count,
        "notes": report.notes,
    }
