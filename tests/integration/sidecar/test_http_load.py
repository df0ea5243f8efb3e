"""The sidecar's HTTP server as a real process, over real loopback sockets.

Thousands of idle and half-sent connections cost no thread and bounded
memory while a scrape still answers; hundreds of concurrent scrapes all get a
complete answer; idle and half-sent connections are closed after the timeout;
``HEAD``, OpenMetrics and gzip are negotiated by prometheus_client's own app.
Every wait is a deadline, never a sleep or a timing assertion.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import resource
import socket
import time
from typing import TYPE_CHECKING

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from sidecar_helpers import SidecarProc

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

DEADLINE_S = 60.0
#: The scrape deadline while connections pile up (the client's timeout).
SCRAPE_TIMEOUT_S = 2.0
#: Memory a held connection may cost the server, at most (a thread cost ~40 KiB).
PER_CONNECTION_BYTES = 16 * 1024


def raise_nofile() -> int:
    """Raise this process's soft open-files limit to the hard one (children inherit it)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Sidecar(SidecarProc):
    """A ``shieldaudit sidecar --no-listen`` process on a free loopback port."""

    def __init__(self, root: Path, http_timeout: float) -> None:
        """Start it and wait until it answers."""
        super().__init__(root, "--http-timeout", str(http_timeout))
        try:
            self.wait_until(lambda: self.get("/healthz")[0] == 200, "/healthz to answer")
        except BaseException:
            self.close()
            raise

    def status(self) -> dict[str, int]:
        """Threads, resident memory (bytes) and open descriptors of the process."""
        fields = {}
        with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as status:
            for line in status:
                name, _, value = line.partition(":")
                fields[name] = value.split()
        return {
            "threads": int(fields["Threads"][0]),
            "rss": int(fields["VmRSS"][0]) * 1024,
            "fds": len(os.listdir(f"/proc/{self.proc.pid}/fd")),
        }

    def wait_for_fds(self, low: int, high: int) -> None:
        """Wait until the server holds between ``low`` and ``high`` descriptors."""
        deadline = time.monotonic() + DEADLINE_S
        while not low <= self.status()["fds"] <= high:
            assert time.monotonic() < deadline, f"server holds {self.status()['fds']} fds"
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, wait, and make sure it exited cleanly."""
        try:
            if self.proc.poll() is None:
                assert self.terminate() == 0, self.stderr()
        finally:
            self.close()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one response (status, lower-cased headers, body by Content-Length)."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-head: {buffer!r}"
        buffer += chunk
    head, _, body = buffer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def request(
    port: int, raw: bytes, timeout: float = 10.0, *, head: bool = False
) -> tuple[int, dict[str, str], bytes]:
    """Send a raw request on a new connection and read its response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        if head:
            status, headers, _ = read_head_only(sock)
            return status, headers, b""
        return read_response(sock)


def read_head_only(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read a response's head; return what followed it (should be nothing for HEAD)."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return int(status_line.split()[1]), headers, rest


def wait_closed(sock: socket.socket) -> bytes:
    """Read until the server closes; return everything it sent (bounded by a deadline)."""
    sock.settimeout(DEADLINE_S)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[Sidecar]:
    """A sidecar that keeps idle connections for ten minutes (longer than any test)."""
    raise_nofile()
    proc = Sidecar(tmp_path / "root", http_timeout=600)
    yield proc
    proc.stop()


def open_connections(port: int, count: int) -> list[socket.socket]:
    """Open ``count`` connections; every other one sends half a request and stops."""
    opened = []
    try:
        for n in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
            opened.append(sock)
            if n % 2:
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\n")
    except BaseException:
        for sock in opened:
            sock.close()
        raise
    return opened


def test_thousands_of_idle_connections_cost_no_thread_and_bounded_memory(sidecar):
    """3,000 idle and half-sent connections: same threads, bounded RSS, scrapes answer in 2 s."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    count = min(3000, hard - 200)
    assert count >= 1000, f"open-files hard limit {hard} is too low for this test"
    first = request(sidecar.port, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
    assert first[0] == 200
    before = sidecar.status()

    rounds = []
    for _ in range(2):  # the second round must reuse what the first one cost
        held = open_connections(sidecar.port, count)
        try:
            sidecar.wait_for_fds(before["fds"] + count - 5, before["fds"] + count + 5)
            # Accepted is not yet set up: once this answers, the loop has caught up
            # with the burst of new connections, and they are just being held.
            assert request(sidecar.port, b"GET /healthz HTTP/1.0\r\n\r\n", DEADLINE_S)[0] == 200
            status, _, body = request(
                sidecar.port, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n", SCRAPE_TIMEOUT_S
            )
            assert status == 200
            assert "shieldaudit_build_info" in body.decode()
            rounds.append(sidecar.status())
        finally:
            for sock in held:
                sock.close()
        sidecar.wait_for_fds(0, before["fds"] + 10)  # the server saw them all go

    for during in rounds:
        assert during["threads"] == before["threads"]
        assert during["rss"] - before["rss"] < count * PER_CONNECTION_BYTES, (before, during)
    assert rounds[1]["rss"] < rounds[0]["rss"] + 8 * 1024 * 1024, rounds


async def scrape(port: int) -> tuple[int, bytes]:
    """One scrape over its own connection: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        await writer.drain()
        data = await reader.read()  # the whole answer, up to the server's close
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(x.split(":")[1]) for x in lines if x.lower().startswith("content-length:"))
    assert len(body) == length, "truncated body"
    return int(lines[0].split()[1]), body


def test_500_concurrent_scrapes_all_answered(sidecar):
    """500 scrapes started at once: every one gets a complete 200 (a real listen backlog)."""

    async def all_at_once() -> list[tuple[int, bytes]]:
        return await asyncio.wait_for(
            asyncio.gather(*(scrape(sidecar.port) for _ in range(500))), DEADLINE_S
        )

    results = asyncio.run(all_at_once())
    assert len(results) == 500
    assert {status for status, _ in results} == {200}
    for _, body in results:
        names = {family.name for family in text_string_to_metric_families(body.decode())}
        assert "shieldaudit_build_info" in names
    assert sidecar.status()["threads"] <= 4  # main, HTTP loop, render worker (+ none per scrape)


def test_head_has_headers_and_no_body(sidecar):
    """HEAD /metrics and /healthz: 200 and Content-Length, no body (the next answer follows)."""
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=DEADLINE_S) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        _, get_headers, get_body = read_response(sock)
        sock.sendall(b"HEAD /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, rest = read_head_only(sock)
        assert status == 200
        assert headers["content-type"] == get_headers["content-type"]
        assert int(headers["content-length"]) == len(get_body) > 0
        # Same connection: the next bytes are the next answer's, not a body.
        sock.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n")
        buffer = rest
        while buffer.count(b"\r\n\r\n") < 2 or not buffer.endswith(b"ok\n"):
            chunk = sock.recv(65536)
            assert chunk
            buffer += chunk
        first, second = buffer.split(b"\r\n\r\n", 1)
        assert first.startswith(b"HTTP/1.1 200 OK")
        assert second.startswith(b"HTTP/1.1 200 OK")
        assert second.endswith(b"\r\n\r\nok\n")


def test_openmetrics_and_gzip_negotiated(sidecar):
    """Accept: OpenMetrics gets OpenMetrics; Accept-Encoding: gzip gets gzip; both combine."""
    port = sidecar.port
    status, headers, body = request(
        port, b"GET /metrics HTTP/1.1\r\nHost: t\r\nAccept: application/openmetrics-text\r\n\r\n"
    )
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    assert "shieldaudit_events" in {f.name for f in openmetrics_families(body.decode())}

    status, headers, body = request(
        port, b"GET /metrics HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n"
    )
    assert (status, headers["content-encoding"]) == (200, "gzip")
    assert headers["content-type"].startswith("text/plain")
    text = gzip.decompress(body).decode()
    assert "shieldaudit_events_total" in text

    status, headers, body = request(
        port,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nAccept: application/openmetrics-text; "
        b"version=1.0.0\r\nAccept-Encoding: br, gzip;q=0.5\r\n\r\n",
    )
    assert headers["content-encoding"] == "gzip"
    assert gzip.decompress(body).endswith(b"# EOF\n")

    status, headers, body = request(port, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
    assert "content-encoding" not in headers
    assert headers["content-type"].startswith("text/plain; version=0.0.4")


def test_name_filter_restricts_the_families(sidecar):
    """?name[]=... returns only the named families (prometheus_client's own app)."""
    status, _, body = request(
        sidecar.port,
        b"GET /metrics?name[]=shieldaudit_build_info&name[]=shieldaudit_rotations_total "
        b"HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    assert status == 200
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert names == {"shieldaudit_build_info", "shieldaudit_rotations"}


def test_idle_and_half_sent_connections_are_closed_after_the_timeout(tmp_path):
    """--http-timeout 1: an idle connection is closed silently, a half-sent one with a 408."""
    proc = Sidecar(tmp_path / "root", http_timeout=1)
    try:
        with (
            socket.create_connection(("127.0.0.1", proc.port)) as idle,
            socket.create_connection(("127.0.0.1", proc.port)) as half,
            socket.create_connection(("127.0.0.1", proc.port)) as kept,
        ):
            half.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\n")
            kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_response(kept)[0] == 200  # then idle on a keep-alive connection

            assert wait_closed(idle) == b""
            answer = wait_closed(half)
            assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
            assert b"\r\nConnection: close\r\n" in answer
            assert wait_closed(kept) == b""
        assert request(proc.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")[0] == 200
    finally:
        proc.stop()
