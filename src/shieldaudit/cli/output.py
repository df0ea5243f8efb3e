"""What the listing commands print besides their rows: the colour decision and warnings.

How a command ends when nobody reads its output any more (``| head``) or on
Ctrl-C is decided once for every command, in :func:`shieldaudit.cli.run`.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from shieldaudit.cli import render

if TYPE_CHECKING:
    from shieldaudit.store.trails import Trails


def colour_wanted() -> bool:
    """Decide colour once, at the edge: a terminal on stdout and no ``NO_COLOR``."""
    return render.use_colour(isatty=sys.stdout.isatty(), environ=os.environ)


def warn(trails: Trails) -> None:
    """Print the trails that had to be skipped, one ``Warning:`` line each on stderr.

    Each warning is printed once per command run, however often the trail was
    read (resolving a name reads it, then the command reads it again).
    """
    ctx = click.get_current_context(silent=True)
    shown: set[str] = ctx.meta.setdefault("shieldaudit.warned", set()) if ctx else set()
    for problem in trails.problems:
        if problem not in shown:
            shown.add(problem)
            click.echo(f"Warning: {problem}", err=True)
    trails.problems.clear()
