"""The in-process sidecar over HTTP: readiness, the listener adapter, clean shutdown.

Binds port 0 on loopback and reads every value from a fresh registry.
"""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry

from http_helpers import http_get, wait_for
from shieldaudit.core.settings import StoreSettings
from shieldaudit.sidecar.app import Sidecar, SidecarBusyError, ThreadedListener
from shieldaudit.store.writer import TrailWriter

CID = "e" * 64


def get(port: int, path: str) -> tuple[int, str] | None:
    return http_get(f"http://127.0.0.1:{port}{path}")


def eventually(condition, what: str) -> None:
    wait_for(condition, what, lambda: "")


class FakeListener:
    """Stands in for shieldaudit.listener.Listener: connected when told, runs until closed."""

    def __init__(self) -> None:
        """Start disconnected."""
        self.connected = False
        self.reconnects = 0
        self.closed = threading.Event()

    def run(self) -> None:
        """Block until closed, like a real listener."""
        self.closed.wait()

    def close(self) -> None:
        """Make run() return."""
        self.closed.set()


def test_readiness_follows_scan_and_listener(tmp_path):
    """/readyz is 503 until the scan is done and the listener is connected; gauges follow."""
    root = tmp_path / "root"
    with TrailWriter(StoreSettings(root=root, fsync="never")) as writer:
        writer.append(CID, {"source": "events", "action": "create"})
    fake = FakeListener()
    registry = CollectorRegistry()
    sidecar = Sidecar(
        root,
        registry=registry,
        port=0,
        listener=lambda: ThreadedListener(fake, lambda: (fake.connected, fake.reconnects)),
    )
    port = sidecar.server.port
    status, body = get(port, "/readyz")
    assert (status, body) == (503, "initial scan of the trails is running\n")
    thread = threading.Thread(target=sidecar.run)
    thread.start()
    try:
        eventually(sidecar.watcher.ready.is_set, "initial scan")
        assert get(port, "/readyz") == (503, "events listener is not connected to Podman\n")
        assert registry.get_sample_value("shieldaudit_listener_connected") == 0
        fake.connected, fake.reconnects = True, 2
        assert get(port, "/readyz") == (200, "ready\n")
        assert registry.get_sample_value("shieldaudit_listener_connected") == 1
        assert registry.get_sample_value("shieldaudit_listener_reconnects_total") == 2
        labels = {"source": "events", "action": "create"}
        assert registry.get_sample_value("shieldaudit_events_total", labels) == 1
        assert get(port, "/healthz") == (200, "ok\n")
    finally:
        sidecar.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert fake.closed.is_set()


def test_no_listen_is_ready_after_scan(tmp_path):
    """Without a listener, /readyz is 200 once the trails are scanned; close frees the port."""
    sidecar = Sidecar(tmp_path / "root", registry=CollectorRegistry(), port=0)
    port = sidecar.server.port
    thread = threading.Thread(target=sidecar.run)
    thread.start()
    try:
        eventually(lambda: get(port, "/readyz") == (200, "ready\n"), "ready")
        assert sidecar.registry.get_sample_value("shieldaudit_watched_containers") == 0
    finally:
        sidecar.stop()
        thread.join(timeout=10)
    assert get(port, "/healthz") is None  # nothing listens


def test_one_sidecar_per_root_in_one_process_too(tmp_path):
    """A second Sidecar on a held root raises SidecarBusyError; close() lets the next one in."""
    root = tmp_path / "root"
    first = Sidecar(root, registry=CollectorRegistry(), port=0)
    try:
        with pytest.raises(
            SidecarBusyError, match=f"another shieldaudit sidecar is running on {root}"
        ):
            Sidecar(root, registry=CollectorRegistry(), port=0)
        assert (root / "state" / "sidecar.lock").read_text().strip().isdigit()
    finally:
        first.close()
    with Sidecar(root, registry=CollectorRegistry(), port=0) as again:
        assert get(again.server.port, "/healthz") == (200, "ok\n")
