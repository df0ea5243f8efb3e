"""Rendering for people: aligned tables, colour only when asked, relative times, escaping."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shieldaudit.cli import render
from shieldaudit.core.models import Entry

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.mark.parametrize(
    ("isatty", "environ", "expected"),
    [
        (True, {}, True),
        (False, {}, False),
        (True, {"NO_COLOR": "1"}, False),
        (True, {"NO_COLOR": ""}, True),  # no-color.org: only a non-empty value counts
        (True, {"TERM": "dumb"}, False),
    ],
)
def test_use_colour_only_on_a_terminal_without_no_color(isatty, environ, expected):
    """Colour needs a terminal; NO_COLOR (non-empty) or TERM=dumb turns it off."""
    assert render.use_colour(isatty=isatty, environ=environ) is expected


@given(
    st.lists(
        st.tuples(st.text(max_size=12), st.text(max_size=12), st.integers(0, 10**9)),
        max_size=8,
    )
)
def test_table_columns_align_with_and_without_colour(rows):
    """Every column starts at the same offset on every line; colour codes change no width."""
    cells = [[a, (b, "red"), str(n)] for a, b, n in rows]
    plain = render.table(["A", "B", "N"], cells, colour=False, right=frozenset({2}))
    coloured = render.table(["A", "B", "N"], cells, colour=True, right=frozenset({2}))
    assert [ANSI.sub("", line) for line in coloured] == plain
    widths = {len(line) for line in plain}
    # The last column is right-aligned, so every line has the same length.
    assert len(widths) == 1


def test_table_pads_and_styles_cells():
    """Cells are padded to the widest value, separated by two spaces; the header is bold."""
    lines = render.table(["ID", "STATE"], [["abc", ("running", "green")], ["a", "x"]], colour=True)
    assert lines[0] == "\x1b[1mID   STATE\x1b[0m"
    assert lines[1] == "abc  \x1b[32mrunning\x1b[0m"
    assert render.table(["ID", "STATE"], [["a", "x"]], colour=False) == ["ID  STATE", "a   x"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "in the future"),
        (0.2, "just now"),
        (1, "1 second ago"),
        (59, "59 seconds ago"),
        (60, "About a minute ago"),
        (150, "2 minutes ago"),
        (3600, "About an hour ago"),
        (7200, "2 hours ago"),
        (86400 * 3, "3 days ago"),
        (86400 * 15, "2 weeks ago"),
        (86400 * 65, "2 months ago"),
        (86400 * 800, "2 years ago"),
    ],
)
def test_human_age(seconds, text):
    """Ages read like podman ps."""
    assert render.human_age(seconds) == text


def test_when_and_short_ts():
    """Relative by default, exact on request; listings cut timestamps to the second."""
    now = datetime(2026, 11, 22, 10, 2, 30, tzinfo=UTC)
    ts = "2026-11-22T10:00:00.123456Z"
    assert render.when(ts, now, exact=False) == "2 minutes ago"
    assert render.when(ts, now, exact=True) == ts
    assert render.when("", now, exact=False) == "-"
    assert render.when("garbage", now, exact=False) == "garbage"
    assert render.short_ts(ts, exact=False) == "2026-11-22T10:00:00Z"
    assert render.short_ts(ts, exact=True) == ts


def test_truncate_and_printable():
    """Long text is cut with an ellipsis; control characters are shown escaped."""
    assert render.truncate("abcdef", 4) == "abc…"
    assert render.truncate("abc", 4) == "abc"
    assert render.truncate("abc", 0) == ""
    assert render.printable("a\x1b[2Jb\nc") == "a\\x1b[2Jb\\nc"
    assert render.printable("plain") == "plain"


def test_entry_line_columns_and_details():
    """An entry line: time, optional label, seq, source, action, then key=value details."""
    entry = Entry.model_validate(
        {
            "seq": 7,
            "ts": "2026-11-22T10:00:00.123456Z",
            "source": "hook",
            "action": "poststop",
            "container_id": "c" * 64,
            "pid": 0,
            "exit_code": 137,
            "image": "",
            "detail": "oom",
            "prev": "0" * 64,
            "chain": "sha256",
            "mac": "a" * 64,
        }
    )
    line = render.entry_line(entry, exact=False, colour=False, label="web")
    assert line.split() == [
        "2026-11-22T10:00:00Z",
        "web",
        "7",
        "hook",
        "poststop",
        "pid=0",
        "exit_code=137",
        "detail=oom",
    ]
    exact = render.entry_line(entry, exact=True, colour=False)
    assert exact.startswith("2026-11-22T10:00:00.123456Z")
    coloured = render.entry_line(entry, exact=False, colour=True, label="web")
    assert ANSI.sub("", coloured) == line


def test_every_state_style_exists_and_unknown_styles_are_plain():
    """Each lifecycle state has a real style; an unknown style name leaves the text plain."""
    assert set(render.STATE_STYLES.values()) <= set(render.STYLES)
    assert render.paint("x", "no-such-style", colour=True) == "x"
