"""``shieldaudit ls``, ``show`` and ``tail``: reading trails for people and scripts."""

from __future__ import annotations

import json

import click

from shieldaudit.cli.context import app
from shieldaudit.cli.resolve import resolve_container
from shieldaudit.store.reader import TrailDir, list_container_ids


@click.command("ls")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def ls_command(ctx: click.Context, as_json: bool) -> None:
    """List containers with a trail."""
    root = app(ctx).settings().root
    for container_id in list_container_ids(root):
        with TrailDir(root, container_id) as trail:
            last = trail.last_entries(1)
        row = {"container_id": container_id, "last": last[0] if last else None}
        click.echo(json.dumps(row) if as_json else container_id[:12])


@click.command("show")
@click.argument("container")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def show_command(ctx: click.Context, container: str, as_json: bool) -> None:
    """Show CONTAINER's trail (a name or a unique ID prefix)."""
    root = app(ctx).settings().root
    container_id = resolve_container(root, container, newest_by_name=True)
    with TrailDir(root, container_id) as trail:
        for record in trail.records():
            if record.entry is None:
                continue
            if as_json:
                click.echo(json.dumps(record.entry))
            else:
                e = record.entry
                click.echo(f"{e.get('seq')} {e.get('ts')} {e.get('source')} {e.get('action')}")


@click.command("tail")
@click.pass_context
def tail_command(ctx: click.Context) -> None:
    """Show the last entries of all containers."""
    app(ctx)
    raise click.UsageError("tail is not implemented yet")
