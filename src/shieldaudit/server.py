"""The sidecar's HTTP endpoints: ``/metrics``, ``/healthz`` and ``/readyz``.

A small ``http.server`` in its own thread; :func:`serve` returns a handle with
the bound port and ``close()``, so tests bind port 0 and stop it cleanly.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from shieldaudit.errors import ShieldAuditError
from shieldaudit.metrics import render

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client import CollectorRegistry


@dataclass
class ServerHandle:
    """A running server: where it listens, and how to stop it."""

    server: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        """Return the bound port (useful after binding port 0)."""
        return int(self.server.server_address[1])

    def close(self) -> None:
        """Stop serving and wait for the thread."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class _Server(ThreadingHTTPServer):
    """Carries what the handler serves."""

    daemon_threads = True
    registry: CollectorRegistry
    ready: Callable[[], tuple[bool, str]]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, render(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._send(200, b"ok\n")
        elif path == "/readyz":
            ok, why = self.server.ready()
            self._send(200 if ok else 503, (why + "\n").encode())
        else:
            self._send(404, b"not found: try /metrics, /healthz or /readyz\n")

    def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 -- stdlib signature
        """Stay quiet: a scrape every few seconds is not news."""


def serve(
    registry: CollectorRegistry,
    ready: Callable[[], tuple[bool, str]],
    addr: str = "127.0.0.1",
    port: int = 9469,
) -> ServerHandle:
    """Start serving in a daemon thread; return the handle.

    Args:
        registry: what ``/metrics`` renders.
        ready: returns ``(ready, reason)`` for ``/readyz``.
        addr: address to bind (loopback by default: metrics are not for the world).
        port: port to bind; 0 picks a free one.

    Raises:
        ShieldAuditError: the address cannot be bound (in use, or not local).
    """
    try:
        server = _Server((addr, port), _Handler)
    except OSError as exc:
        raise ShieldAuditError(
            f"cannot listen on {addr}:{port}: {exc.strerror or exc}; "
            "choose another --metrics-addr/--metrics-port",
        ) from None
    server.registry = registry
    server.ready = ready
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return ServerHandle(server, thread)
