"""Shell completion of container names (``shieldaudit completion`` prints the script).

click does the protocol: the script ``completion`` prints calls ``shieldaudit`` again with
``_SHIELDAUDIT_COMPLETE`` set, and click answers from the parameters'
``shell_complete``. Container arguments complete to the names in the trails and,
once a hex prefix is typed, to short IDs. Completion never fails loudly: an
unreadable root or a bad setting completes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from click.shell_completion import CompletionItem

from shieldaudit.core.errors import ShieldAuditError
from shieldaudit.core.ids import HEX_DIGITS

if TYPE_CHECKING:
    import click

    from shieldaudit.store.trails import Trails

#: Length of the IDs offered, as ``ls`` shows them (the full ID when that is not unique).
SHORT_ID: Final = 12


def container_names(
    ctx: click.Context,
    param: click.Parameter,  # noqa: ARG001 -- click's shell_complete signature
    incomplete: str,
) -> list[CompletionItem]:
    """Complete a CONTAINER argument from the trails under the configured root."""
    from shieldaudit.cli.context import AppContext  # noqa: PLC0415 -- only when completing
    from shieldaudit.store.trails import Trails  # noqa: PLC0415

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
    if lowered and HEX_DIGITS.issuperset(lowered):
        matching = sorted(i for i in ids if i.startswith(lowered))
        shorts = {i[:SHORT_ID] for i in ids}
        unique = len(shorts) == len(ids)
        items += [CompletionItem(i[:SHORT_ID] if unique else i) for i in matching]
    return items
