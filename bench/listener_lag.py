"""Benchmark: lag from a Podman event's own timestamp to its listener entry in the trail.

One run, private Podman storage and config (rendered from tests/*.conf.in as
the test harness does), a ``podman system service`` on a temporary socket, and
three subscribers at once:

* ``podman --url SOCKET events --format json`` (the baseline): the Podman CLI
  reading the same service the listener reads; its lag is event time to the
  moment its JSON line is read from its stdout;
* ``podman events --format json`` (a reference): the CLI reading the events log
  directly, without the service;
* ``shieldaudit listen`` (a subprocess, fsync always): its lag is event time to
  the moment the entry appears in the container's ``audit.jsonl``, seen through
  inotify (so a whole entry, written with one ``write()``, is in the file).

N containers are run one after another (``podman run --name … true``, then
``podman rm``). Prints p50/p99/max per subscriber. Target: the listener's p99
within 100 ms of the baseline's p99.

Usage: .venv/bin/python bench/listener_lag.py [--containers N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import percentile, podman_env, teardown
from shieldaudit.sidecar.watch.inotify import IN_CLOSE_WRITE, IN_CREATE, IN_MODIFY, Inotify

REPO = Path(__file__).resolve().parent.parent
IMAGE = "localhost/shieldaudit-test:latest"
TARGET_MS = 100.0
SHIELDAUDIT = (sys.executable, "-c", "from shieldaudit.cli import main; main()")


def rfc3339_ns(text: str) -> int:
    """Parse Podman's ``2026-11-23T18:39:41.862674772Z`` (or ``+00:00``) to ns, exactly."""
    from datetime import datetime  # noqa: PLC0415

    main_part, _, rest = text.partition(".")
    digits = ""
    tz = "Z"
    for i, char in enumerate(rest):
        if not char.isdigit():
            digits, tz = rest[:i], rest[i:]
            break
    else:
        digits = rest
    if not rest:  # no fraction
        main_part, tz = text[:19], text[19:]
    offset = "+00:00" if tz in ("Z", "") else tz
    seconds = int(datetime.fromisoformat(main_part + offset).timestamp())
    return seconds * 1_000_000_000 + int((digits or "0").ljust(9, "0")[:9])


class CliSubscriber:
    """``podman [--url U] events --format json``, lags recorded as lines are read."""

    def __init__(self, env: dict[str, str], url: str | None) -> None:
        """Start the subscriber and its reader thread."""
        argv = [
            "podman",
            *(["--url", url] if url else []),
            "events",
            "--format",
            "json",
            "--filter",
            "type=container",
        ]
        self.proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        self.lags: list[float] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            now = time.time_ns()
            try:
                event = json.loads(raw)
                self.lags.append((now - rfc3339_ns(event["Time"])) / 1e6)
            except (ValueError, KeyError):
                continue

    def stop(self) -> None:
        """Stop the subscriber."""
        self.proc.terminate()
        self.proc.wait(10)


class TrailWatcher:
    """Sees each new trail line through inotify; lag = arrival - the entry's event_time_ns."""

    def __init__(self, root: Path) -> None:
        """Watch ``root/containers`` and every trail directory created in it."""
        self.containers = root / "containers"
        self.containers.mkdir(parents=True, exist_ok=True)
        self.lags: list[float] = []
        self._ino = Inotify()
        self._dirs: dict[int, Path] = {}
        self._offsets: dict[Path, int] = {}
        self._top = self._ino.add_watch(self.containers, IN_CREATE)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _watch_dir(self, directory: Path) -> None:
        wd = self._ino.add_watch(directory, IN_MODIFY | IN_CREATE | IN_CLOSE_WRITE)
        self._dirs[wd] = directory
        self._drain(directory / "audit.jsonl")  # lines written before the watch existed

    def _drain(self, path: Path) -> None:
        now = time.time_ns()
        try:
            with path.open("rb") as handle:
                handle.seek(self._offsets.get(path, 0))
                data = handle.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self._offsets[path] = self._offsets.get(path, 0) + end
        for line in data[:end].splitlines():
            entry = json.loads(line)
            if entry.get("source") == "events":
                self.lags.append((now - entry["event_time_ns"]) / 1e6)

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._ino.fileno()], [], [], 0.2)
            if not ready:
                continue
            for event in self._ino.read_events():
                if event.wd == self._top and event.name:
                    self._watch_dir(self.containers / event.name)
                elif event.wd in self._dirs and event.name == "audit.jsonl":
                    self._drain(self._dirs[event.wd] / event.name)

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        self.thread.join(5)
        self._ino.close()


def start_service(env: dict[str, str], sock: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{sock}"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(str(sock))
        except OSError:
            time.sleep(0.05)
        else:
            return proc
        finally:
            probe.close()
    sys.exit("podman system service did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--containers", type=int, default=100, help="containers (default 100)")
    parser.add_argument("--quick", action="store_true", help="20 containers")
    args = parser.parse_args()
    count = 20 if args.quick else args.containers
    tmp = Path(tempfile.mkdtemp(prefix="listener-bench-"))
    env = podman_env(tmp)
    service = listener = None
    subscribers: dict[str, CliSubscriber] = {}
    watcher = None
    try:
        subprocess.run([str(REPO / "scripts" / "build-test-image.sh"), IMAGE], env=env, check=True)
        (tmp / "sock").mkdir()
        sock = tmp / "sock" / "podman.sock"
        service = start_service(env, sock, tmp / "service.log")
        root = tmp / "root"
        root.mkdir(mode=0o700)
        watcher = TrailWatcher(root)
        listener = subprocess.Popen(
            [*SHIELDAUDIT, "--root", str(root), "listen", "--url", f"unix://{sock}"],
            env={**env, "SHIELDAUDIT_FSYNC": "always"},
            stderr=(tmp / "listen.log").open("ab"),
        )
        subscribers["podman --url SOCKET events (baseline)"] = CliSubscriber(env, f"unix://{sock}")
        subscribers["podman events, no service (reference)"] = CliSubscriber(env, None)
        time.sleep(2)  # let every subscriber connect before the first event
        for i in range(count):
            name = f"lag-{i:03d}"
            subprocess.run(
                ["podman", "run", "--name", name, IMAGE, "true"],
                env=env,
                capture_output=True,
                check=True,
            )
            subprocess.run(["podman", "rm", name], env=env, capture_output=True, check=True)
        expected = len(subscribers["podman --url SOCKET events (baseline)"].lags)
        deadline = time.monotonic() + 30
        while len(watcher.lags) < expected and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
    finally:
        if watcher is not None:
            watcher.stop()
        for sub in subscribers.values():
            sub.stop()
        if listener is not None:
            listener.send_signal(signal.SIGTERM)
            listener.wait(30)
        if service is not None:
            service.terminate()
            service.wait(30)
        teardown(env, tmp)
        shutil.rmtree(tmp, ignore_errors=True)

    results = {**{k: v.lags for k, v in subscribers.items()}, "shieldaudit listen": watcher.lags}
    print(
        f"listener_lag: {count} containers (`podman run --name N {IMAGE} true` + `podman rm`), "
        f"Podman events_logger=file, runc, {os.cpu_count()} CPUs, fsync always"
    )
    print()
    print("| subscriber | events | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    for name, lags in results.items():
        if not lags:
            print(f"| {name} | 0 | - | - | - |")
            continue
        print(
            f"| {name} | {len(lags)} | {statistics.median(lags):.1f} | "
            f"{percentile(lags, 0.99):.1f} | {max(lags):.1f} |"
        )
    base = results["podman --url SOCKET events (baseline)"]
    mine = results["shieldaudit listen"]
    if base and mine:
        delta = percentile(mine, 0.99) - percentile(base, 0.99)
        verdict = "met" if delta <= TARGET_MS else "NOT met"
        print()
        print(
            f"target: listener p99 within {TARGET_MS:.0f} ms of the baseline p99: "
            f"{verdict} ({delta:+.1f} ms)"
        )


if __name__ == "__main__":
    main()
