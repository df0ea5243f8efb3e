"""``shieldaudit seal``: seal every trail's head now (and advance an evolving key)."""

from __future__ import annotations

import click

from shieldaudit.cli.context import app
from shieldaudit.core.errors import EXIT_FAILURE
from shieldaudit.store import seals


@click.command("seal")
@click.pass_context
def seal_command(ctx: click.Context) -> None:
    """Seal every trail's head now.

    Writes one seal to ROOT/seals/seals.jsonl recording each trail's last seq
    and mac, the trails prune removed and the segments retention removed since
    the previous seal; with an evolving key, closes the current epoch and
    replaces the key file with the next epoch's key. Prints one summary line.
    A trail found truncated, rewritten or removed without a tombstone is
    printed (and stays sealed as it was) and the exit status is 1.
    """
    outcome = seals.seal_now(app(ctx).settings().store())
    for problem in outcome.seal_problems:
        click.echo(problem)
    for container_id, problem in sorted(outcome.problems.items()):
        click.echo(f"{container_id[:12]} seals: {problem}")
    epoch = "" if outcome.epoch is None else f"; epoch {outcome.epoch} closed"
    click.echo(
        f"seal {outcome.number} at {outcome.ts}: {outcome.trails} trail(s), "
        f"{outcome.changed} changed, {outcome.tombstones} pruned, "
        f"{outcome.retired} segment(s) retired{epoch}",
    )
    if outcome.problems or outcome.seal_problems:
        click.echo("Error: tampering found: run 'shieldaudit verify'", err=True)
        ctx.exit(EXIT_FAILURE)
