"""``shieldaudit keys init``: create an evolving (forward-secure) signing key."""

from __future__ import annotations

import os
from pathlib import Path

import click

from shieldaudit.cli.context import app
from shieldaudit.core.errors import ShieldAuditError, UsageError
from shieldaudit.store import fskey


@click.group("keys")
def keys_command() -> None:
    """Manage the forward-secure signing key."""


@keys_command.command("init")
@click.option(
    "--verification-key",
    "verification_key",
    required=True,
    metavar="FILE",
    type=click.Path(),
    help="Where to write the verification key (then move it off this host).",
)
@click.pass_context
def init_command(ctx: click.Context, *, verification_key: str) -> None:
    """Create an evolving signing key at the configured key file (SHIELDAUDIT_KEY_FILE).

    Each seal replaces it with the next epoch's key, so a key taken from this
    host can never sign an earlier epoch. FILE receives the verification key:
    keep it off this host and give it to 'shieldaudit verify
    --verification-key FILE' to check every epoch.
    """
    settings = app(ctx).settings()
    key_file = settings.key_file
    if key_file is None:
        raise UsageError(
            "no key file is configured: set SHIELDAUDIT_KEY_FILE (or key_file in the config "
            "file) to where the signing key goes, for example /etc/shieldaudit/key",
        )
    if not verification_key.strip():
        raise UsageError(
            "--verification-key is empty: give the file to write the verification key to"
        )
    target = Path(verification_key).expanduser().absolute()
    if not target.parent.is_dir():
        raise UsageError(
            f"--verification-key {target}: {target.parent} is not a directory: "
            "give a file in an existing directory",
        )
    for path, what in ((key_file, "the signing key"), (target, "the verification key")):
        if _inside(path, settings.root):
            raise UsageError(
                f"{path} is inside the trail root {settings.root}: put {what} elsewhere"
            )
        if os.path.lexists(path):
            raise UsageError(
                f"{path} already exists: refusing to replace it; remove it or choose another path"
            )
    if _same(key_file, target):
        raise UsageError("the verification key must not be the signing key file")
    seed = fskey.new_seed()
    kid = fskey.kid_of(seed)
    try:
        fskey.write_new(target, fskey.encode(fskey.VERIFICATION_HEADER, kid, 0, seed))
        fskey.write_new(key_file, fskey.encode(fskey.SIGNING_HEADER, kid, 0, seed))
    except OSError as exc:
        raise ShieldAuditError(f"cannot write {exc.filename}: {exc.strerror or exc}") from None
    click.echo(
        f"created evolving signing key {kid} at {key_file} (epoch 0); verification key "
        f"written to {target}: copy it off this host, then delete it here",
    )


def _inside(path: Path, root: Path) -> bool:
    real = os.path.realpath(path)
    real_root = os.path.realpath(root)
    return real == real_root or real.startswith(real_root.rstrip("/") + "/")


def _same(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)
