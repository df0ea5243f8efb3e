"""What listings print besides their rows: colour is decided at the edge."""

from __future__ import annotations

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
