"""The ``shieldaudit`` command: global options, lazy subcommands, and the one exit boundary.

Subcommands live in their own modules and are imported only when invoked, so
``shieldaudit --version`` or ``verify`` never pay for podman-py or the exporter.
Every command ends through :func:`run`, the one place that turns an outcome
into an exit status and says what went wrong: a
:class:`~shieldaudit.core.errors.ShieldAuditError` or a usage error is one
``Error: …`` line with its exit code (2 for usage); Ctrl-C ends any command
silently with 130 and a closed stdout (``| head``) silently with 0.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import sys
from typing import TYPE_CHECKING, Any, Final

import click

from shieldaudit import __version__
from shieldaudit.cli.context import AppContext
from shieldaudit.core.errors import ShieldAuditError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

#: name -> (module, attribute): imported on first use.
COMMANDS: Final[dict[str, tuple[str, str]]] = {
    "ls": ("shieldaudit.cli.ls", "ls_command"),
    "show": ("shieldaudit.cli.show", "show_command"),
    "tail": ("shieldaudit.cli.tail", "tail_command"),
    "verify": ("shieldaudit.cli.verify", "verify_command"),
    "prune": ("shieldaudit.cli.prune", "prune_command"),
    "seal": ("shieldaudit.cli.seal", "seal_command"),
    "keys": ("shieldaudit.cli.keys", "keys_command"),
    "install-hooks": ("shieldaudit.cli.install_hooks", "install_hooks_command"),
    "listen": ("shieldaudit.cli.listen", "listen_command"),
    "sidecar": ("shieldaudit.cli.sidecar", "sidecar_command"),
    "completion": ("shieldaudit.cli.completion", "completion_command"),
    "collect": ("shieldaudit.cli.collect", "collect_command"),
}


EXIT_INTERRUPTED: Final = 130


class Ended(BaseException):
    """Ctrl-C or a closed stdout, carried past click's own handling to :func:`run`.

    click would print a blank line for Ctrl-C and exit 1 on a closed pipe; a
    ``BaseException`` that click does not know reaches :func:`run` untouched.
    """

    def __init__(self, status: int, *, pipe_closed: bool) -> None:
        """Record the exit status, and whether stdout has gone."""
        super().__init__(status)
        self.status = status
        self.pipe_closed = pipe_closed


@contextlib.contextmanager
def carried() -> Iterator[None]:
    """Turn Ctrl-C and EPIPE into :class:`Ended`; flush stdout first, so EPIPE shows here."""
    try:
        try:
            yield
        finally:
            sys.stdout.flush()
    except KeyboardInterrupt:
        raise Ended(EXIT_INTERRUPTED, pipe_closed=False) from None
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        raise Ended(0, pipe_closed=True) from None


class LazyGroup(click.Group):
    """A group whose subcommands are imported when used, and run inside :func:`carried`."""

    def list_commands(self, ctx: click.Context) -> list[str]:  # noqa: ARG002 -- click API
        """Return every command name, in the order of :data:`COMMANDS`."""
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:  # noqa: ARG002
        """Import and return the named command."""
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module = importlib.import_module(target[0])
        command = getattr(module, target[1])
        assert isinstance(command, click.Command)  # noqa: S101 -- a programming error otherwise
        return command

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,  # noqa: ANN401 -- click's signature
    ) -> click.Context:
        """Parse the global options (``--help``, ``--version`` print here)."""
        with carried():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:  # noqa: ANN401 -- click's signature
        """Parse and run the subcommand."""
        with carried():
            return super().invoke(ctx)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
# --root and --config are plain strings: the settings loader checks them and says
# what is wrong in one ``Error:`` line naming the setting (click would print its
# usage block for a directory given as --config).
# click.Path with no checks: it completes file names in a shell and converts nothing.
@click.option(
    "--root",
    metavar="DIRECTORY",
    type=click.Path(),
    default=None,
    show_default="SHIELDAUDIT_ROOT, the config file, else /var/lib/shieldaudit for root, "
    "~/.local/state/shieldaudit for others",
    help="Trail root.",
)
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    type=click.Path(),
    default=None,
    show_default="SHIELDAUDIT_CONFIG, else /etc/shieldaudit/config.toml if present",
    help="TOML config file.",
)
@click.version_option(__version__, "--version", prog_name="shieldaudit")
@click.pass_context
def cli(ctx: click.Context, root: str | None, config_file: str | None) -> None:
    """Tamper-evident audit trails of the container lifecycle.

    Trails live under ROOT/containers/<id>/audit.jsonl. Exit codes: 0 success,
    1 failure (including a chain that does not verify), 2 usage error or unknown
    or ambiguous container.
    """
    ctx.obj = AppContext(root_option=root, config_option=config_file)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI and exit with its status."""
    sys.exit(run(argv))


def run(
    argv: Sequence[str] | None = None,
    **extra: Any,  # noqa: ANN401 -- passed through to click's main()
) -> int:
    """Run the CLI and return the exit status: the one place every command ends."""
    try:
        return outcome(argv, **extra)
    except Ended as ended:
        if ended.pipe_closed:
            _silence_stdout()
        return ended.status


def outcome(
    argv: Sequence[str] | None = None,
    **extra: Any,  # noqa: ANN401 -- passed through to click's main()
) -> int:
    """Run the CLI, show its error if any, return its status; :class:`Ended` is let through.

    :func:`run` for a command that runs others in turn (``ls`` and ``verify``
    over node copies): Ctrl-C or a closed stdout ends them all, not one.
    """
    extra.setdefault("prog_name", "shieldaudit")
    try:
        result = cli.main(
            args=list(argv) if argv is not None else None, standalone_mode=False, **extra
        )
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        # A usage error is one line; a bare group (no_args_is_help) shows its help.
        if isinstance(exc, click.UsageError) and not isinstance(
            exc, click.exceptions.NoArgsIsHelpError
        ):
            click.echo(f"Error: {usage_line(exc)}", err=True)
        else:
            exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        # Only a declined prompt: Ctrl-C arrives as Ended.
        click.echo("Aborted.", err=True)
        return EXIT_INTERRUPTED
    except ShieldAuditError as exc:
        click.echo(f"Error: {exc.message}", err=True)
        return exc.exit_code
    # Without standalone mode, click returns ctx.exit(N)'s code instead of raising.
    return result if isinstance(result, int) else 0


def usage_line(exc: click.UsageError) -> str:
    """Say a usage error in one line, in the style of every other error, and where help is.

    click's own display is a usage block, a hint and the message on three lines.
    """
    message = " ".join(line.strip() for line in exc.format_message().splitlines() if line.strip())
    command = exc.ctx.command_path if exc.ctx is not None else "shieldaudit"
    return f"{message.rstrip('.')}: see '{command} --help'"


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush stays quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    with contextlib.suppress(OSError):
        os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
