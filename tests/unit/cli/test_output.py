"""Where listing output goes: colour at the edge, quiet ends on Ctrl-C and a closed pipe."""

from __future__ import annotations

import errno

import click
import pytest

from shieldaudit.cli import output


def test_colour_is_decided_from_the_terminal_and_no_color(monkeypatch):
    """Colour when stdout is a terminal, unless NO_COLOR is set."""

    class Terminal:
        def isatty(self):
            return True

    monkeypatch.setattr(output.sys, "stdout", Terminal())
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert output.colour_wanted()
    monkeypatch.setenv("NO_COLOR", "1")
    assert not output.colour_wanted()


@pytest.mark.parametrize(
    ("raised", "code"),
    [(KeyboardInterrupt(), 130), (BrokenPipeError(errno.EPIPE, "Broken pipe"), 0)],
)
def test_quiet_exit_turns_ctrl_c_and_epipe_into_silent_exits(raised, code):
    """Ctrl-C exits 130 and a closed pipe exits 0, both without a word."""
    with pytest.raises(click.exceptions.Exit) as info, output.quiet_exit():
        raise raised
    assert info.value.exit_code == code


def test_quiet_exit_lets_other_os_errors_through():
    """An I/O error that is not EPIPE is not hidden."""
    with pytest.raises(PermissionError), output.quiet_exit():
        raise PermissionError(errno.EACCES, "denied")
