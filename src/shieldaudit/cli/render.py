"""Turning rows and entries into lines for people (pure: no I/O, no clock, no terminal probing).

Colour is a parameter: the command decides once, at the edge, from whether
stdout is a terminal and ``NO_COLOR`` (:func:`use_colour`). Widths are computed
on the plain text, then colour codes (``click.style``) are wrapped around the
padded cell, so columns stay aligned with or without colour.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Final

import click

from shieldaudit.core.timefmt import parse_ts

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import datetime

    from shieldaudit.core.models import Entry

#: ``click.style`` arguments (foreground colour, bold, dim) by style name.
STYLES: Final[dict[str, tuple[str | None, bool, bool]]] = {
    "bold": (None, True, False),
    "dim": (None, False, True),
    **{c: (c, False, False) for c in ("red", "green", "yellow", "blue", "magenta", "cyan")},
}
#: Style of each lifecycle state.
STATE_STYLES: Final[dict[str, str]] = {
    "created": "cyan",
    "running": "green",
    "paused": "blue",
    "exited": "yellow",
    "failed": "red",
    "removed": "dim",
    "unknown": "magenta",
}
SOURCE_STYLES: Final[dict[str, str]] = {"hook": "blue", "events": "magenta", "cli": "cyan"}
GAP: Final = "  "
ELLIPSIS: Final = "…"

#: A cell: plain text, or (text, style name).
Cell = str | tuple[str, str | None]


def use_colour(*, isatty: bool, environ: Mapping[str, str]) -> bool:
    """Return whether to colour output: only on a terminal, never with ``NO_COLOR`` set.

    See https://no-color.org: any non-empty ``NO_COLOR`` disables colour.
    """
    return isatty and not environ.get("NO_COLOR") and environ.get("TERM") != "dumb"


def paint(text: str, style: str | None, *, colour: bool) -> str:
    """Wrap ``text`` in the style's codes (``click.style``) when colouring."""
    if not colour or not style or not text:
        return text
    attrs = STYLES.get(style)
    if attrs is None:
        return text
    foreground, bold, dim = attrs
    # None, not False: click.style(bold=False) would emit a "not bold" code.
    return click.style(text, fg=foreground, bold=bold or None, dim=dim or None)


def truncate(text: str, width: int) -> str:
    """Cut ``text`` to ``width`` characters, marking the cut with an ellipsis."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    return text[: width - 1] + ELLIPSIS


def printable(text: str) -> str:
    """Escape control characters, so a hostile name or detail cannot drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Cell]],
    *,
    colour: bool,
    right: frozenset[int] = frozenset(),
) -> list[str]:
    """Lay rows out in aligned columns under a header; ``right`` lists right-aligned columns."""
    plain = [[_text(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in plain:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    last = len(headers) - 1
    lines = [
        GAP.join(_pad(h, widths[i], i in right, i == last) for i, h in enumerate(headers)).rstrip()
    ]
    lines[0] = paint(lines[0], "bold", colour=colour)
    for row, cells in zip(plain, rows, strict=True):
        out = []
        for i, (text, cell) in enumerate(zip(row, cells, strict=True)):
            style = cell[1] if isinstance(cell, tuple) else None
            out.append(paint(_pad(text, widths[i], i in right, i == last), style, colour=colour))
        lines.append(GAP.join(out).rstrip())
    return lines


def _text(cell: Cell) -> str:
    return printable(cell[0] if isinstance(cell, tuple) else cell)


def _pad(text: str, width: int, right: bool, last: bool) -> str:
    if right:
        return text.rjust(width)
    return text if last else text.ljust(width)


def human_age(seconds: float) -> str:
    """Say how long ago something happened, the way ``podman ps`` does.

    >>> human_age(150)
    '2 minutes ago'
    """
    if seconds < 0:
        return "in the future"
    if seconds < 1:
        return "just now"
    for unit, size in (
        ("year", 365 * 86400),
        ("month", 30 * 86400),
        ("week", 7 * 86400),
        ("day", 86400),
        ("hour", 3600),
        ("minute", 60),
        ("second", 1),
    ):
        if seconds >= size:
            count = int(seconds // size)
            if count == 1:
                article = "an" if unit == "hour" else "a"
                return f"About {article} {unit} ago" if unit != "second" else "1 second ago"
            return f"{count} {unit}s ago"
    return "just now"  # pragma: no cover -- seconds >= 1 always matches a unit


def when(ts: str, now: datetime, *, exact: bool) -> str:
    """Render an entry timestamp: relative (``2 minutes ago``) or exactly as recorded."""
    if not ts:
        return "-"
    if exact:
        return ts
    try:
        moment = parse_ts(ts)
    except ValueError:
        return ts
    return human_age((now - moment).total_seconds())


def short_ts(ts: str, *, exact: bool) -> str:
    """Render an entry timestamp for a listing: to the second, or in full with ``exact``."""
    if exact or len(ts) != 27 or not ts.endswith("Z"):
        return ts or "-"
    return ts[:19] + "Z"


def details(entry: Entry) -> str:
    """Summarise the optional fields of an entry as ``key=value`` pairs."""
    parts = []
    for key, value in (
        ("pid", entry.pid),
        ("exit_code", entry.exit_code),
        ("image", entry.image),
        ("dest", entry.dest),
        ("detail", entry.detail),
    ):
        if value is None or value == "":
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        parts.append(f"{key}={printable(text)}")
    return " ".join(parts)


def entry_line(
    entry: Entry,
    *,
    exact: bool,
    colour: bool,
    label: str | None = None,
) -> str:
    """Render one entry as a line with fixed-width columns (streamed, so no table).

    Columns: time, [``label``: the container's name or short ID], seq, source,
    action, details.
    """
    source = entry.source
    action = printable(entry.action)
    seq = entry.seq
    cells = [paint(short_ts(entry.ts, exact=exact), "dim", colour=colour)]
    if label is not None:
        shown = printable(label)
        cells.append(shown if exact else truncate(shown, 20).ljust(20))
    cells.append(f"{seq!s:>6}")
    cells.append(paint(f"{source:<6}", SOURCE_STYLES.get(source), colour=colour))
    cells.append(f"{action:<14}")
    more = details(entry)
    cells.append(more if exact else truncate(more, 80))
    return GAP.join(cells).rstrip()
