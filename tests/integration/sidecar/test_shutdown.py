"""The sidecar's shutdown is bounded even when the Podman service goes away under its listener.

A real ``podman system service`` serves the in-process listener; the service
is then stopped (the socket gone) or replaced by a socket that accepts
connections and never answers (a service dying, or hung, while the listener
reconnects to it). A SIGTERM must still make the sidecar exit 0, with its
checkpoint saved. The 30 s bound is a liveness bound, not a benchmark.
"""

from __future__ import annotations

import contextlib
import signal
import socket
from typing import TYPE_CHECKING

import pytest

from shieldaudit.sidecar.watch.checkpoint import checkpoint_path, load
from sidecar_helpers import DEADLINE_S, SidecarProc
from store_helpers import CID_A, write

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.podman

#: SidecarProc.terminate waits this long for the exit, then the test fails.
EXIT_BOUND_S = 30


class SilentService:
    """A unix socket on ``path`` that accepts connections and never answers."""

    def __init__(self, path: Path) -> None:
        """Listen on ``path`` (where the Podman service's socket was)."""
        path.unlink(missing_ok=True)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.sock.settimeout(DEADLINE_S)
        self.held: list[socket.socket] = []

    def wait_for_request(self) -> bytes:
        """Accept until a client sent a request (the listener then waits for an answer)."""
        while True:
            conn, _ = self.sock.accept()
            self.held.append(conn)
            conn.settimeout(DEADLINE_S)
            with contextlib.suppress(OSError):
                data = conn.recv(4096)
                if data:
                    return data

    def close(self) -> None:
        """Drop every connection and the socket."""
        for conn in self.held:
            conn.close()
        self.sock.close()
        self.path.unlink(missing_ok=True)


@pytest.mark.parametrize("service", ["stopped", "hung"])
def test_sigterm_exits_with_checkpoint_when_podman_went_away(tmp_path, podman_service, service):
    """Service stopped, or hung while the listener reconnects: SIGTERM still exits 0, saved."""
    root = tmp_path / "root"
    write(root, CID_A, 2)
    sidecar = SidecarProc(root, listen=True, env={"SHIELDAUDIT_PODMAN_URL": podman_service.url})
    try:
        ready = sidecar.wait_ready()
        assert ready["shieldaudit_listener_connected"] == 1
        podman_service.stop()
        with contextlib.ExitStack() as stack:
            silent = None
            if service == "hung":
                silent = SilentService(podman_service.socket_path)
                stack.callback(silent.close)
            sidecar.wait_for(
                lambda v: v.get("shieldaudit_listener_connected") == 0, "the lost stream"
            )
            write(root, CID_A, 1)  # counted (so checkpointed) while the listener is away
            sidecar.wait_for(lambda v: v.get("shieldaudit_events_total") == 3, "the new entry")

            if silent is not None:
                # The listener reconnects and waits for an answer that never comes.
                assert silent.wait_for_request().startswith(b"GET ")

            sidecar.proc.send_signal(signal.SIGTERM)
            assert sidecar.proc.wait(timeout=EXIT_BOUND_S) == 0
            log = sidecar.stderr()
            if silent is not None:
                assert "the events listener did not stop within 2s" in log
    finally:
        sidecar.close()

    saved = load(checkpoint_path(root))
    assert saved is not None
    assert saved.marks[CID_A].last_seq == 3
    again = SidecarProc(root)  # --no-listen: nothing of the history is counted twice
    try:
        assert again.wait_ready()["shieldaudit_events_total"] == 0
        assert again.terminate() == 0
    finally:
        again.close()
