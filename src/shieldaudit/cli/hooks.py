"""``shieldaudit install-hooks``: put the OCI hook into a hooks.d directory (or take it out)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from shieldaudit import hooksd
from shieldaudit.cli.context import app
from shieldaudit.ocistate import STAGES


@click.command("install-hooks")
@click.option(
    "--hooks-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=hooksd.DEFAULT_HOOKS_DIR,
    show_default=True,
    help="hooks.d directory to write to (podman --hooks-dir, containers.conf hooks_dir).",
)
@click.option(
    "--stage",
    "stages",
    multiple=True,
    type=click.Choice(STAGES),
    help="OCI stage to hook; repeatable. [default: createRuntime, poststart, poststop]",
)
@click.option(
    "--annotation",
    metavar="REGEX[=REGEX]",
    default=None,
    help="Only audit containers with an annotation whose key (and value) match; anchored.",
)
@click.option(
    "--fail-closed",
    is_flag=True,
    help="Make the runtime refuse containers the hook cannot record.",
)
@click.option("--uninstall", is_flag=True, help="Remove the files install-hooks wrote.")
@click.pass_context
def install_hooks_command(  # noqa: PLR0917 -- click passes one argument per option
    ctx: click.Context,
    hooks_dir: Path,
    stages: tuple[str, ...],
    annotation: str | None,
    fail_closed: bool,
    uninstall: bool,
) -> None:
    """Install the OCI hook for Podman/CRI-O as hooks.d JSON files, one per stage.

    Each file runs the hook with this installation's Python and carries the
    current settings (root, segment size, retention, fsync, key file) in its
    environment. Files are validated, the hook is run once to check it works,
    and each file is moved into place atomically. Files not written by
    install-hooks are never overwritten or removed.
    """
    if uninstall:
        for path in hooksd.uninstall(hooks_dir):
            click.echo(f"removed {path}")
        return
    from shieldaudit.store import chain, layout  # noqa: PLC0415 -- only when installing

    store = app(ctx).settings().store()
    # Fail now, not on the next container start: the root must be usable and
    # the key file readable by the user that installs (normally the one that runs hooks).
    root_fd = layout.open_root(store.root, create=True)
    os.close(root_fd)
    chain.store_keys(store)
    env = hooksd.settings_env(store, fail_closed=fail_closed)
    command = hooksd.hook_command()
    docs = {
        stage: hooksd.build_hook(stage, command, env, annotation)
        for stage in (stages or hooksd.DEFAULT_STAGES)
    }
    written, removed = hooksd.install(hooks_dir, docs)
    for path in written:
        click.echo(f"installed {path}")
    for path in removed:
        click.echo(f"removed {path}")
