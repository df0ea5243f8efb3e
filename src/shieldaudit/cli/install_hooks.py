"""``shieldaudit install-hooks``: put the OCI hook into a hooks.d directory (or take it out)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from shieldaudit.cli.context import app
from shieldaudit.core.errors import UsageError
from shieldaudit.hook import hooksd, hooksdir
from shieldaudit.hook.ocistate import STAGES


@click.command("install-hooks")
@click.option(
    "--hooks-dir",
    "hooks_dir_option",
    # click.Path with no checks (it completes file names): _given_hooks_dir says
    # what is wrong in one Error: line, where click's checks print a usage block.
    type=click.Path(),
    metavar="DIRECTORY",
    default=None,
    show_default="the one Podman reads: the last directory of hooks_dir in containers.conf, "
    "else /usr/share/containers/oci/hooks.d",
    help="hooks.d directory to write to.",
)
@click.option(
    "--stage",
    "stages",
    multiple=True,
    type=click.Choice(STAGES),
    default=hooksd.DEFAULT_STAGES,
    show_default=True,
    help="OCI stage to hook; repeatable.",
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
    hooks_dir_option: str | None,
    stages: tuple[str, ...],
    annotation: str | None,
    fail_closed: bool,
    uninstall: bool,
) -> None:
    """Install the OCI hook for Podman/CRI-O as hooks.d JSON files, one per stage.

    Each file runs this installation's native shieldaudit-hook and carries the
    current settings (root, segment size, retention, fsync, key file) and the
    Python of the reference path it hands unusual cases to in its environment.
    Files are validated, both paths are run once against a throwaway root to
    check they work, and each file is moved into place atomically. Files not written by
    install-hooks are never overwritten or removed.

    Without --hooks-dir the files go where this host's Podman reads hooks:
    the last directory of hooks_dir in containers.conf (following
    CONTAINERS_CONF, the system, drop-in and user files, and
    CONTAINERS_CONF_OVERRIDE, as Podman does), else Podman's built-in
    /usr/share/containers/oci/hooks.d. The last line says which and why.
    """
    if hooks_dir_option is not None:
        hooks_dir, choice = _given_hooks_dir(hooks_dir_option), None
    else:
        choice = hooksdir.resolve_host()
        hooks_dir = choice.directory
    if uninstall:
        for path in hooksd.uninstall(hooks_dir):
            click.echo(f"removed {path}")
        _record(ctx, hooks_dir, [])
        return
    if choice is not None:
        _check_writable(choice)
    from shieldaudit.store import chain, layout  # noqa: PLC0415 -- only when installing

    store = app(ctx).settings().store()
    # Fail now, not on the next container start: the root must be usable and
    # the key file readable by the user that installs (normally the one that runs hooks).
    root_fd = layout.open_root(store.root, create=True)
    os.close(root_fd)
    chain.store_keys(store)
    closed = fail_closed or store.fail_closed
    env = hooksd.settings_env(store, fail_closed=closed, python=sys.executable)
    executable = hooksd.native_hook_path()
    docs = {
        stage: hooksd.build_hook(stage, executable, env, annotation, fail_closed=closed)
        for stage in (stages or hooksd.DEFAULT_STAGES)
    }
    written, removed = hooksd.install(hooks_dir, docs)
    _record(ctx, hooks_dir, written)
    for path in written:
        click.echo(f"installed {path}")
    for path in removed:
        click.echo(f"removed {path}")
    where = (
        "as asked (--hooks-dir)"
        if choice is None
        else f"the hooks directory Podman reads ({choice.reason})"
    )
    click.echo(f"installed {len(written)} hooks into {hooks_dir}, {where}")


def _given_hooks_dir(text: str) -> Path:
    """Check ``--hooks-dir`` before anything runs: a directory this user can write (or create).

    Raises:
        UsageError: empty, a file (or below one), or not writable (exit 2).
    """
    if not text.strip():
        raise UsageError("--hooks-dir is empty: give the hooks.d directory to write to")
    path = Path(text)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is not a directory" if existing == path else f"is below {existing}, a file"
        raise UsageError(
            f"--hooks-dir {path} {where}: give a directory (it is created if missing)",
        )
    if not os.access(existing, os.W_OK):
        raise UsageError(
            f"--hooks-dir {path}: this user cannot write {existing}: run install-hooks as "
            "a user who can, or give a directory of your own",
        )
    return path


def _check_writable(choice: hooksdir.HooksDirChoice) -> None:
    """Refuse early, with what to do, when the resolved directory is not ours to write."""
    existing = choice.directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if os.access(existing, os.W_OK):
        return
    mine = "~/.config/containers/oci/hooks.d"
    raise UsageError(
        f"Podman reads hooks from {choice.directory} ({choice.reason}), which this user "
        f"cannot write: run install-hooks as root, or (rootless Podman) list {mine} as "
        "hooks_dir in ~/.config/containers/containers.conf and run it again, "
        "or pass --hooks-dir DIR",
    )


def _record(ctx: click.Context, hooks_dir: Path, written: list[Path]) -> None:
    """Note what this root's hooks.d files are, for ``shieldaudit_hooks_installed``."""
    from shieldaudit.store import manifest as hookmanifest  # noqa: PLC0415 -- only when installing

    root = app(ctx).settings().root
    if written or hookmanifest.manifest_path(root).exists():
        hookmanifest.record(root, hooks_dir, written)
