"""``shieldaudit verify``: check every chain (or one container's), exit 0 or 1."""

from __future__ import annotations

import json

import click

from shieldaudit.cli.context import app
from shieldaudit.cli.resolve import resolve_container
from shieldaudit.errors import EXIT_FAILURE
from shieldaudit.store.reader import list_container_ids
from shieldaudit.store.verify import Report, verify_container


@click.command("verify")
@click.argument("container", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per container.")
@click.pass_context
def verify_command(ctx: click.Context, container: str | None, as_json: bool) -> None:
    """Verify the hash chain of every trail (or of CONTAINER).

    Prints one line per problem (container, segment, seq, what is wrong) and a
    summary; exits 1 if any chain does not hold.
    """
    context = app(ctx)
    settings = context.settings()
    keys = context.keys()
    root = settings.root
    ids = [resolve_container(root, container)] if container else list_container_ids(root)
    reports: list[Report] = []
    for container_id in ids:
        report = verify_container(root, container_id, keys, keep_segments=settings.keep_segments)
        reports.append(report)
        if as_json:
            click.echo(json.dumps(_as_dict(report)))
            continue
        for problem in report.problems:
            click.echo(problem.render())
        for note in report.notes:
            click.echo(f"{container_id[:12]} note: {note}", err=True)
    failed = [r for r in reports if not r.ok]
    if not as_json:
        entries = sum(r.entries for r in reports)
        problems = sum(len(r.problems) for r in reports)
        verdict = "FAILED" if failed else "OK"
        click.echo(
            f"{verdict}: {len(reports)} container(s), {entries} entries, "
            f"{problems} problem(s) in {len(failed)} container(s)",
        )
    if failed:
        ctx.exit(EXIT_FAILURE)


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
        "notes": report.notes,
    }
