"""Metrics endpoint benchmark: held connections and concurrent scrapes, old server vs new.

``python bench/metrics_http.py [--quick] [--connections N ...] [--scrapes N] [--rounds N]``

Each server runs in its own process serving the sidecar's metrics registry:

* ``old``: the thread-per-connection ``http.server`` the sidecar used before
  (kept here only, as the baseline), listen backlog 5, no timeouts;
* ``new``: ``shieldaudit.sidecar.http.serve`` (one asyncio thread, one render worker).

For each: threads and RSS of the server process with N idle or half-sent
connections open, how long a ``/healthz`` sent right after opening them
took (the server catching up with the burst), and whether a scrape with a 2 s
timeout then answers; then
rounds of S concurrent scrapes (5 s client timeout each): how many were
answered, p50/p99 latency. Prints a Markdown table; ratios are new/old.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from common import percentile

SCRAPE = b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
HALF = b"GET /metrics HTTP/1.1\r\nHost: bench\r\n"


# -- the servers (child processes) ------------------------------------------


def registry():
    """Return a registry with the sidecar's metrics (every series at 0)."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    from shieldaudit.sidecar.metrics import SidecarMetrics  # noqa: PLC0415

    reg = CollectorRegistry()
    SidecarMetrics(reg)
    return reg


def serve_old(port: int) -> None:
    """The previous server: ThreadingHTTPServer, a thread per connection (baseline)."""
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest  # noqa: PLC0415

    reg = registry()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(reg)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

    server = Server(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()


def serve_new(port: int) -> None:
    """The sidecar's server as it is now."""
    from shieldaudit.sidecar.http import serve  # noqa: PLC0415

    handle = serve(registry(), lambda: (True, "ready"), port=port, timeout=600)
    print("ready", flush=True)
    sys.stdin.read()
    handle.close()


# -- the client ---------------------------------------------------------------


def raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """A server process (``old`` or ``new``)."""

    def __init__(self, kind: str) -> None:
        """Start it and wait for its 'ready' line."""
        self.kind = kind
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--port", str(self.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == b"ready\n"

    def status(self) -> tuple[int, int, int]:
        """Threads, RSS in bytes, open descriptors."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            fields[name] = value.split()
        fds = sum(1 for _ in Path(f"/proc/{self.proc.pid}/fd").iterdir())
        return int(fields["Threads"][0]), int(fields["VmRSS"][0]) * 1024, fds

    def scrape_once_ready(self) -> None:
        """Scrape once (warms the server up, as a running sidecar is)."""
        assert scrape_once(self.port, 10) is not None

    def close(self) -> None:
        """Close its stdin (it exits), or kill it."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def scrape_once(port: int, timeout: float, raw: bytes = SCRAPE) -> float | None:
    """One scrape on a new connection; its latency, or None when it did not complete."""
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(max(0.01, timeout - (time.perf_counter() - started)))
            sock.sendall(raw)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return None
    return time.perf_counter() - started if data.startswith(b"HTTP/1.") else None


async def _scrape(port: int, limit_s: float) -> float | None:
    started = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(limit_s):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(SCRAPE)
            data = await reader.read()
    except (OSError, TimeoutError):
        return None
    finally:
        if writer is not None:
            writer.close()
    answered = data[:12] in {b"HTTP/1.1 200", b"HTTP/1.0 200"}
    return time.perf_counter() - started if answered else None


def concurrent_scrapes(port: int, count: int, timeout: float) -> list[float | None]:
    async def run() -> list[float | None]:
        return list(await asyncio.gather(*(_scrape(port, timeout) for _ in range(count))))

    return asyncio.run(run())


def held_connections(child: Child, counts: list[int]) -> list[dict[str, object]]:
    """Open connections up to each count (half of them half-sent); measure at each step."""
    rows = []
    threads0, rss0, fds0 = child.status()
    first = scrape_once(child.port, 2)
    rows.append({"held": 0, "threads": threads0, "rss": rss0, "scrape": first, "caught_up": 0.0})
    held: list[socket.socket] = []
    try:
        for count in counts:
            while len(held) < count:
                sock = socket.create_connection(("127.0.0.1", child.port), timeout=10)
                if len(held) % 2:
                    sock.sendall(HALF)
                held.append(sock)
            deadline = time.monotonic() + 30
            while child.status()[2] < fds0 + count - 5 and time.monotonic() < deadline:
                time.sleep(0.1)  # let the server accept them all
            # Accepted is not yet set up: wait until the server has caught up.
            caught_up = scrape_once(child.port, 60, b"GET /healthz HTTP/1.0\r\n\r\n")
            assert caught_up is not None
            threads, rss, _ = child.status()
            rows.append(
                {
                    "held": count,
                    "threads": threads,
                    "rss": rss,
                    "scrape": scrape_once(child.port, 2),
                    "caught_up": caught_up,
                }
            )
    finally:
        for sock in held:
            sock.close()
    return rows


def main() -> int:
    """Measure both servers; print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", choices=("old", "new"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="1,000 connections, one round")
    parser.add_argument("--connections", type=int, nargs="*", default=[1000, 3000])
    parser.add_argument("--scrapes", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    raise_nofile()
    if args.serve == "old":
        serve_old(args.port)
        return 0
    if args.serve == "new":
        serve_new(args.port)
        return 0
    counts = [1000] if args.quick else args.connections
    rounds = 1 if args.quick else args.rounds

    held: dict[str, list[dict[str, object]]] = {}
    scrapes: dict[str, list[tuple[int, float, float]]] = {}
    for kind in ("old", "new"):
        child = Child(kind)
        try:
            held[kind] = held_connections(child, counts)
        finally:
            child.close()
        scrapes[kind] = []
        for _ in range(rounds):  # a fresh process each round: nothing left from before
            child = Child(kind)
            try:
                child.scrape_once_ready()
                results = concurrent_scrapes(child.port, args.scrapes, 5.0)
                threads_after = child.status()[0]
            finally:
                child.close()
            answered = [r for r in results if r is not None]
            p50 = percentile(answered, 0.5) if answered else float("nan")
            p99 = percentile(answered, 0.99) if answered else float("nan")
            scrapes[kind].append((len(answered), p50, p99))
            print(f"{kind}: threads after {args.scrapes} scrapes: {threads_after}", file=sys.stderr)

    print("### Held connections (half idle, half with a half-sent request)\n")
    print(
        "| server | connections | threads | RSS MB | RSS growth MB | first /healthz after "
        "opening them | then a scrape (2 s timeout) |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for kind in ("old", "new"):
        base = held[kind][0]["rss"]
        for row in held[kind]:
            scrape = row["scrape"]
            shown = f"{scrape * 1000:.1f} ms" if isinstance(scrape, float) else "**timed out**"
            caught = row["caught_up"]
            assert isinstance(caught, float)
            rss = row["rss"]
            assert isinstance(rss, int)
            assert isinstance(base, int)
            print(
                f"| {kind} | {row['held']:,} | {row['threads']} | {rss / 1e6:.1f} | "
                f"{(rss - base) / 1e6:.1f} | {caught * 1000:.0f} ms | {shown} |"
            )
    print(f"\n### {args.scrapes} concurrent scrapes (5 s client timeout), median of {rounds}\n")
    print("| server | answered (each round) | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    summary = {}
    for kind in ("old", "new"):
        answered = statistics.median(r[0] for r in scrapes[kind])
        p50 = statistics.median(r[1] for r in scrapes[kind]) * 1000
        p99 = statistics.median(r[2] for r in scrapes[kind]) * 1000
        summary[kind] = (answered, p50, p99)
        per_round = ", ".join(str(r[0]) for r in scrapes[kind])
        print(f"| {kind} | {answered:.0f}/{args.scrapes} ({per_round}) | {p50:.1f} | {p99:.1f} |")
    old_growth = held["old"][-1]["rss"] - held["old"][0]["rss"]  # type: ignore[operator]
    new_growth = held["new"][-1]["rss"] - held["new"][0]["rss"]  # type: ignore[operator]
    print(
        f"\nRatios new/old: RSS growth at {counts[-1]:,} connections "
        f"{new_growth / old_growth:.2f}; p99 of answered scrapes "
        f"{summary['new'][2] / summary['old'][2]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
