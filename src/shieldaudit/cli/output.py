"""Where the listing commands' output goes, and how they end when nobody reads it any more.

click turns a closed pipe (``shieldaudit show … | head -1``) into exit status 1
and Ctrl-C into a blank line plus ``Aborted.``; a listing should instead stop
quietly, like ``cat``: :func:`quiet_exit` ends the command with status 0 on
EPIPE (stdout pointed at ``/dev/null`` so the interpreter's final flush is
silent too) and 130 on Ctrl-C, printing nothing.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import sys
from typing import TYPE_CHECKING, Final, ParamSpec, TypeVar

import click

from shieldaudit.cli import render

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from shieldaudit.cli.trails import Trails

P = ParamSpec("P")
R = TypeVar("R")

EXIT_INTERRUPTED: Final = 130


def colour_wanted() -> bool:
    """Decide colour once, at the edge: a terminal on stdout and no ``NO_COLOR``."""
    return render.use_colour(isatty=sys.stdout.isatty(), environ=os.environ)


@contextlib.contextmanager
def quiet_exit() -> Iterator[None]:
    """End the command silently on a closed stdout (status 0) or Ctrl-C (status 130)."""
    try:
        yield
        sys.stdout.flush()
    except KeyboardInterrupt:
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        devnull = os.open(os.devnull, os.O_WRONLY)
        with contextlib.suppress(OSError):
            os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        raise click.exceptions.Exit(0) from None


def quiet(command: Callable[P, R]) -> Callable[P, R]:
    """Run a command callback inside :func:`quiet_exit`."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with quiet_exit():
            return command(*args, **kwargs)

    return wrapper


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
