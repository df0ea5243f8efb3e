"""The Podman events listener (docs/listener.md): every container event, once, in its trail.

``events`` maps an event to entry fields (pure), ``cursor`` remembers what was
written, ``source`` talks to Podman through podman-py, ``service`` runs the
reconnecting loop.
"""

from __future__ import annotations

from shieldaudit.listener.service import Backoff, Listener, ListenerBusyError, ListenerStatus
from shieldaudit.listener.source import PodmanSource, SourceUnavailable

__all__ = [
    "Backoff",
    "Listener",
    "ListenerBusyError",
    "ListenerStatus",
    "PodmanSource",
    "SourceUnavailable",
]
