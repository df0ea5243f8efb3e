"""The HTTP server's protocol edges over real loopback sockets (served in this process).

Bad and oversized requests get the right status and a closed connection;
keep-alive and pipelining work; past the connection cap the longest-waiting
reader is dropped for the newcomer; ``close()`` drops every connection;
concurrent scrapes share a render that started after they arrived.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING

import pytest
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shieldaudit.core.errors import ShieldAuditError
from shieldaudit.sidecar.http import MAX_HEADERS, MAX_LINE, serve

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.metrics_core import Metric

    from shieldaudit.sidecar.http import ServerHandle

DEADLINE_S = 60.0


@pytest.fixture
def server() -> Iterator[ServerHandle]:
    registry = CollectorRegistry()
    Gauge("probe_value", "A value to scrape", registry=registry).set(7)
    handle = serve(registry, lambda: (False, "not yet"), port=0, timeout=30)
    yield handle
    handle.close()


def exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw``, then read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as sock:
        sock.sendall(raw)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /" + b"a" * MAX_LINE + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"b" * MAX_LINE + b"\r\n\r\n", 431),
        (
            b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % n for n in range(MAX_HEADERS + 1)),
            431,
        ),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /metrics HTTP/2.0\r\n\r\n", 505),
        (b"GET /metrics HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nHost: t\r\n folded\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"GET metrics HTTP/1.1\r\n\r\n", 400),
    ],
    ids=[
        "long-line",
        "long-header",
        "many-headers",
        "garbage",
        "http2",
        "space-in-name",
        "folded",
        "two-lengths",
        "chunked",
        "big-body",
        "bad-target",
    ],
)
def test_bad_requests_get_their_status_and_a_close(server, raw, status):
    """Each malformed or oversized request: its 4xx/5xx, Connection: close, then EOF."""
    answer = exchange(server.port, raw)
    assert status_of(answer) == status
    assert b"\r\nConnection: close\r\n" in answer


def test_methods_paths_and_readiness(server):
    """405 with Allow for POST, 404 elsewhere, /readyz from the callback, absolute-form target."""
    answer = exchange(server.port, b"POST /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 405
    assert b"\r\nAllow: GET, HEAD\r\n" in answer
    assert status_of(exchange(server.port, b"GET /nope HTTP/1.0\r\n\r\n")) == 404
    answer = exchange(server.port, b"GET /readyz HTTP/1.0\r\n\r\n")
    assert (status_of(answer), answer.split(b"\r\n\r\n")[1]) == (503, b"not yet\n")
    answer = exchange(server.port, b"GET http://localhost/metrics?x=1 HTTP/1.0\r\n\r\n")
    assert status_of(answer) == 200
    assert b"probe_value 7.0" in answer


def test_keep_alive_pipelining_and_a_small_body(server):
    """Three pipelined requests (one with a small body) on one connection, in order."""
    raw = (
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    answer = exchange(server.port, raw)
    assert answer.count(b"HTTP/1.1 ") == 3
    first, rest = answer.split(b"HTTP/1.1 200 OK", 2)[1:]
    assert first.endswith(b"ok\n")
    assert b"probe_value 7.0" in rest
    assert rest.endswith(b"\r\nConnection: close\r\n\r\nnot yet\n")


def test_http10_keep_alive_only_when_asked(server):
    """HTTP/1.0 closes after the answer unless it sent Connection: keep-alive."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_S) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        received = b""
        while not received.endswith(b"ok\n"):
            received += sock.recv(65536)
        assert b"\r\nConnection: keep-alive\r\n" in received
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        while chunk := sock.recv(65536):
            received += chunk
        assert received.count(b"200 OK") == 2
        assert received.endswith(b"\r\nConnection: close\r\n\r\nok\n")


def test_past_the_cap_the_longest_waiting_reader_is_dropped():
    """With max_connections=20, 30 idle connections: the oldest 10 are closed, scrapes answer."""
    handle = serve(CollectorRegistry(), lambda: (True, "ready"), port=0, max_connections=20)
    held: list[socket.socket] = []
    try:
        for _ in range(30):
            held.append(socket.create_connection(("127.0.0.1", handle.port)))
            deadline = time.monotonic() + DEADLINE_S
            while handle.connections < min(len(held), 20):  # accepted, in order
                assert time.monotonic() < deadline
                time.sleep(0.01)
        answer = exchange(handle.port, b"GET /healthz HTTP/1.0\r\n\r\n")
        assert status_of(answer) == 200
        for sock in held[:11]:  # the 30 and the scrape pushed out the first 11
            sock.settimeout(DEADLINE_S)
            assert sock.recv(1) == b""
        held[-1].sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        held[-1].settimeout(DEADLINE_S)
        assert held[-1].recv(65536).startswith(b"HTTP/1.1 200 OK")
    finally:
        for sock in held:
            sock.close()
        handle.close()


def test_close_drops_connections_and_frees_the_port():
    """close() ends held connections at once; the port can be bound again; in use is an error."""
    handle = serve(CollectorRegistry(), lambda: (True, "ready"), port=0)
    port = handle.port
    with pytest.raises(ShieldAuditError, match=f"cannot listen on 127.0.0.1:{port}"):
        serve(CollectorRegistry(), lambda: (True, "ready"), port=port)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        deadline = time.monotonic() + DEADLINE_S
        while handle.connections < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        handle.close()
        sock.settimeout(DEADLINE_S)
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(65536) == b""
    again = serve(CollectorRegistry(), lambda: (True, "ready"), port=port)
    again.close()


class GatedCollector(Collector):
    """Reports how many times it was collected; the first collection waits for a gate."""

    def __init__(self) -> None:
        """Start closed, never collected."""
        self.calls = 0
        self.entered = threading.Event()
        self.gate = threading.Event()

    def collect(self) -> Iterator[Metric]:
        """Yield ``renders`` = the number of this collection."""
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            assert self.gate.wait(DEADLINE_S)
        yield GaugeMetricFamily("renders", "Collections so far", value=self.calls)


def test_concurrent_scrapes_share_the_next_render_never_an_older_one():
    """Scrapes arriving during a render wait for the next one and share it: 3 scrapes, 2 renders."""
    registry = CollectorRegistry()
    gated = GatedCollector()
    registry.register(gated)
    handle = serve(registry, lambda: (True, "ready"), port=0)
    try:
        with (
            socket.create_connection(("127.0.0.1", handle.port), timeout=DEADLINE_S) as first,
            socket.create_connection(("127.0.0.1", handle.port), timeout=DEADLINE_S) as second,
            socket.create_connection(("127.0.0.1", handle.port), timeout=DEADLINE_S) as third,
        ):
            first.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert gated.entered.wait(DEADLINE_S)  # the first render is under way, held
            second.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            third.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            deadline = time.monotonic() + DEADLINE_S
            while handle.waiting_for_render < 2:
                assert time.monotonic() < deadline, "the later scrapes never queued"
                time.sleep(0.01)
            gated.gate.set()
            answers = [exchange_on(sock) for sock in (first, second, third)]
        assert [a.rsplit(b"\n", 2)[-2] for a in answers] == [
            b"renders 1.0",
            b"renders 2.0",
            b"renders 2.0",
        ]
        assert gated.calls == 2
    finally:
        gated.gate.set()
        handle.close()


def exchange_on(sock: socket.socket) -> bytes:
    """Read until the server closes ``sock``."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_client_leaving_mid_body_is_quietly_dropped(server, caplog):
    """A body cut short by the client's close ends that connection only, with nothing logged."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_S) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nContent-Length: 10\r\n\r\nhalf")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(65536) == b""
    assert status_of(exchange(server.port, b"GET /healthz HTTP/1.0\r\n\r\n")) == 200
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
