"""Shell completion: ``shieldaudit completion SHELL`` and the container names it completes.

click does the protocol: the script printed here calls ``shieldaudit`` again with
``_SHIELDAUDIT_COMPLETE`` set, and click answers from the parameters'
``shell_complete``. Container arguments complete to the names in the trails and,
once a hex prefix is typed, to short IDs. Completion never fails loudly: an
unreadable root or a bad setting completes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import click
from click.shell_completion import CompletionItem, get_completion_class

from shieldaudit.core.errors import ShieldAuditError

if TYPE_CHECKING:
    from shieldaudit.cli.trails import Trails

SHELLS: Final = ("bash", "zsh", "fish")
#: What click reads to tell a completion request from a normal run.
COMPLETE_VAR: Final = "_SHIELDAUDIT_COMPLETE"
_HEX: Final = frozenset("0123456789abcdef")
#: Length of the IDs offered, as ``ls`` shows them (the full ID when that is not unique).
SHORT_ID: Final = 12


def container_names(
    ctx: click.Context,
    param: click.Parameter,  # noqa: ARG001 -- click's shell_complete signature
    incomplete: str,
) -> list[CompletionItem]:
    """Complete a CONTAINER argument from the trails under the configured root."""
    from shieldaudit.cli.context import AppContext  # noqa: PLC0415 -- only when completing
    from shieldaudit.cli.trails import Trails  # noqa: PLC0415

    top = ctx.find_root().params
    context = AppContext(root_option=top.get("root"), config_option=top.get("config_file"))
    try:
        with Trails(context.settings().root) as trails:
            return candidates(trails, incomplete)
    except (ShieldAuditError, OSError):
        return []


def candidates(trails: Trails, incomplete: str) -> list[CompletionItem]:
    """Names starting with ``incomplete``, then short IDs when it is a hex prefix, sorted."""
    ids = trails.ids()
    names: dict[str, str] = {}
    for container_id in ids:
        summary = trails.summary(container_id)
        if summary is not None and summary.name and summary.name.startswith(incomplete):
            names.setdefault(summary.name, container_id[:SHORT_ID])
    items = [CompletionItem(name, help=short) for name, short in sorted(names.items())]
    lowered = incomplete.lower()
    if lowered and _HEX.issuperset(lowered):
        matching = sorted(i for i in ids if i.startswith(lowered))
        shorts = {i[:SHORT_ID] for i in ids}
        unique = len(shorts) == len(ids)
        items += [CompletionItem(i[:SHORT_ID] if unique else i) for i in matching]
    return items


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
