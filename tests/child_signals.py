"""Every process the suite starts begins with SIGINT and SIGTERM at their defaults.

Loaded as a pytest plugin from ``tests/conftest.py``.

A disposition of "ignore" (SIG_IGN) and a blocked signal mask survive ``fork``
and ``exec``: when pytest is started from a background job of a
non-interactive shell (``cmd &`` ignores SIGINT and SIGQUIT), under some CI
runners, or by a supervisor that blocks signals, every child would inherit
them, and a test sending Ctrl-C to ``shieldaudit tail -f`` would wait
forever. Python's ``subprocess`` only restores SIGPIPE, SIGXFZ and SIGXFSZ in
the child (``restore_signals=True``).

A *handled* signal, on the other hand, is reset to the default by ``exec``.
So at start-up the suite replaces an inherited "ignore" (or block) of SIGINT
and SIGTERM in its own process with a handler that does nothing: pytest
itself still shrugs these signals off, as whoever started it asked, and every
child (``subprocess`` calls, fixtures, scripts, Podman's own children)
starts with the default disposition and an unblocked mask, whatever the
test's call site looks like.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import FrameType

    import pytest

#: The signals tests send to their children (``tail -f`` gets Ctrl-C, daemons get SIGTERM).
RESET = (signal.SIGINT, signal.SIGTERM)


def _still_ignored(signum: int, frame: FrameType | None) -> None:
    """Do nothing: like SIG_IGN for this process, but reset to default by ``exec``."""
    del signum, frame


def reset_inherited_signals() -> list[signal.Signals]:
    """Make RESET signals default in future children; return those that were ignored or blocked.

    Signals this process handles or leaves at their default are not touched.
    """
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    changed = []
    for sig in RESET:
        if signal.getsignal(sig) == signal.SIG_IGN or sig in blocked:
            signal.signal(sig, _still_ignored)
            changed.append(sig)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, changed)
    return changed


def pytest_configure(config: pytest.Config) -> None:
    """Before any fixture or test starts a process."""
    del config
    reset_inherited_signals()
