"""The ``shieldaudit`` command: global options, lazy subcommands, and the one error display.

Subcommands live in their own modules and are imported only when invoked, so
``shieldaudit --version`` or ``verify`` never pay for podman-py or the exporter.
Every :class:`~shieldaudit.core.errors.ShieldAuditError` is shown here, once, as one
``Error: …`` line with its exit code; Ctrl-C exits quietly with 130 and a closed
pipe (``| head``) ends the command silently.
"""

from __future__ import annotations

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
    from collections.abc import Sequence

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


class LazyGroup(click.Group):
    """A group whose subcommands are imported when used."""

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


def run(  # noqa: C901, PLR0911 -- one branch per outcome, in the one place errors are shown
    argv: Sequence[str] | None = None,
    **extra: Any,  # noqa: ANN401 -- passed through to click's main()
) -> int:
    """Run the CLI and return the exit status; the one place errors are shown."""
    try:
        try:
            result = cli.main(
                args=list(argv) if argv is not None else None, standalone_mode=False, **extra
            )
        except click.exceptions.Exit as exc:
            return exc.exit_code
        except click.ClickException as exc:
            exc.show()
            return exc.exit_code
        except click.exceptions.Abort as exc:
            # click turns Ctrl-C into Abort (after a newline): exit quietly, as
            # Ctrl-C should; an Abort from a declined prompt says so.
            if not isinstance(exc.__cause__, KeyboardInterrupt):
                click.echo("Aborted.", err=True)
            return 130
        except ShieldAuditError as exc:
            click.echo(f"Error: {exc.message}", err=True)
            return exc.exit_code
        except KeyboardInterrupt:
            return 130
        else:
            # Without standalone mode, click returns ctx.exit(N)'s code instead of raising.
            return result if isinstance(result, int) else 0
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            _silence_stdout()
            return 0
        raise


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush stays quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
