"""``shieldaudit completion SHELL``: print the shell completion script.

click does the protocol: the script calls ``shieldaudit`` again with
``_SHIELDAUDIT_COMPLETE`` set, and click answers from the parameters'
``shell_complete`` (container names come from .complete).
"""

from __future__ import annotations

from typing import Final

import click
from click.shell_completion import get_completion_class

__all__ = ["completion_command"]

SHELLS: Final = ("bash", "zsh", "fish")
#: What click reads to tell a completion request from a normal run.
COMPLETE_VAR: Final = "_SHIELDAUDIT_COMPLETE"


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion_command(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish).

    For bash add 'eval "$(shieldaudit completion bash)"' to ~/.bashrc (zsh: the
    same with zsh, in ~/.zshrc); for fish write the output to
    ~/.config/fish/completions/shieldaudit.fish. Commands, options and container
    names (for show, tail and verify) complete.
    """
    completion_class = get_completion_class(shell)
    assert completion_class is not None  # noqa: S101 -- click.Choice allows only known shells
    top = ctx.find_root()
    click.echo(completion_class(top.command, {}, "shieldaudit", COMPLETE_VAR).source())
