"""Sidecar benchmark: ready time, idle CPU, RSS, entry-to-metric latency, catch-up.

``python bench/sidecar/run.py [--quick] [--containers N] [--backlog N]``

Baselines measured in the same run, on the same files:

* GNU ``tail -F`` on every ``audit.jsonl`` (latency and idle CPU, running side
  by side with the sidecar, so both see the same appends at the same moment);
* a loop that ``select()``s on the trail files themselves (idle CPU): regular
  files are always "readable", so such a loop never sleeps. ``select()`` is
  limited to 1,024 descriptors, so it watches the first 1,000 trails.

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from shieldaudit.core.settings import StoreSettings
from shieldaudit.store import chain
from shieldaudit.store.writer import TrailWriter
from sidecar_helpers import SidecarProc

#: Every wait's bound: the catch-up of a million entries included.
DEADLINE_S = 1800.0
TICKS = os.sysconf("SC_CLK_TCK")
SEGMENT_BYTES = 64 * 1024


def cid(n: int) -> str:
    return f"{n:064x}"


def generate(root: Path, containers: int, per_container: int) -> int:
    """Write trails directly in the real chain format (fast: no locks, no fsync)."""
    (root / "containers").mkdir(parents=True, mode=0o700)
    (root / "state").mkdir(mode=0o700)
    total = 0
    for n in range(containers):
        directory = root / "containers" / cid(n)
        directory.mkdir(mode=0o700)
        prev = chain.GENESIS
        segment: list[bytes] = []
        size = 0
        sealed = 0
        for seq in range(1, per_container + 1):
            body = chain.build_body(
                {
                    "seq": seq,
                    "ts": "2026-11-23T10:00:00.000000Z",
                    "source": "hook" if seq % 2 else "events",
                    "action": "poststart" if seq % 2 else "start",
                    "container_id": cid(n),
                    "container": f"c{n}",
                },
                prev,
                None,
            )
            line, prev = chain.seal(body, None)
            segment.append(line)
            size += len(line)
            total += 1
            if size >= SEGMENT_BYTES:
                sealed += 1
                (directory / f"audit-{sealed:06d}.jsonl").write_bytes(b"".join(segment))
                segment, size = [], 0
        (directory / "audit.jsonl").write_bytes(b"".join(segment))
    return total


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Sidecar(SidecarProc):
    """A ``shieldaudit sidecar --no-listen`` process on a free port; its output goes to files."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        """Start it now (the clock for time-to-ready starts here), ``env`` added."""
        super().__init__(
            root, env=env, logs=root.parent / f"{root.name}-sidecar", deadline_s=DEADLINE_S
        )

    def events(self) -> float:
        """Return shieldaudit_events_total summed over its labels (-1 when unreachable).

        A plain line scan, not a parse: it runs in a tight loop beside the sidecar.
        """
        status, body = self.get("/metrics")
        if status != 200:
            return -1
        total = 0.0
        for line in body.splitlines():
            if line.startswith("shieldaudit_events_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def time_to_ready(self) -> float:
        """Poll /readyz every 10 ms; return seconds since the process started."""
        self.wait_until(self.ready, "/readyz to turn 200", interval=0.01)
        return time.monotonic() - self.started

    def stop(self) -> None:
        """SIGTERM and wait."""
        try:
            self.terminate(timeout=60)
        finally:
            self.close()


def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, float]:
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    time.sleep(seconds)
    return {name: 100 * (cpu_seconds(pid) - before[name]) / seconds for name, pid in pids.items()}


SELECT_LOOP = """
import os, select, sys, time
fds = [os.open(p, os.O_RDONLY) for p in sys.argv[1:]]
while True:
    ready, _, _ = select.select(fds, [], [], 1.0)
    for fd in ready:
        os.read(fd, 65536)
"""


def tail_reader(proc: subprocess.Popen[bytes], seen: dict[str, float]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        at = time.monotonic()
        marker = line.find(b'"detail":"bench-')
        if marker >= 0:
            token = line[marker + 10 : line.index(b'"', marker + 10)].decode()
            seen[token] = at


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 trails, 50,000-entry backlog")
    parser.add_argument("--containers", type=int, default=None)
    parser.add_argument("--backlog", type=int, default=None)
    parser.add_argument("--idle-seconds", type=float, default=None)
    parser.add_argument("--samples", type=int, default=None)
    args = parser.parse_args()
    containers = args.containers or (500 if args.quick else 10_000)
    backlog = args.backlog or (50_000 if args.quick else 1_000_000)
    idle_seconds = args.idle_seconds or (5.0 if args.quick else 30.0)
    samples = args.samples or (40 if args.quick else 200)
    rng = random.Random(1)
    rows: list[tuple[str, str, str, str]] = []

    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as tmp:
        base = Path(tmp)
        base.chmod(0o700)
        # -- steady state: N trails with a little history --------------------------------
        root = base / "steady"
        root.mkdir(mode=0o700)
        generate(root, containers, 3)
        sidecar = Sidecar(root)
        ready = sidecar.time_to_ready()
        files = [str(root / "containers" / cid(n) / "audit.jsonl") for n in range(containers)]
        tail = subprocess.Popen(
            ["tail", "-q", "-n", "0", "-F", *files],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        tail_seen: dict[str, float] = {}
        threading.Thread(target=tail_reader, args=(tail, tail_seen), daemon=True).start()
        time.sleep(2.0)  # let tail set up its watches
        rss = rss_mib(sidecar.proc.pid)
        cpu = idle_cpu({"sidecar": sidecar.proc.pid, "tail": tail.pid}, idle_seconds)
        looper = subprocess.Popen([sys.executable, "-c", SELECT_LOOP, *files[:1000]])
        time.sleep(0.5)
        cpu_select = idle_cpu({"select": looper.pid}, min(idle_seconds, 10.0))["select"]
        looper.kill()
        looper.wait()

        # -- latency: the same appends seen by both --------------------------------------
        sidecar_lat: list[float] = []
        tail_lat: list[float] = []
        expected = sidecar.events()
        settings = StoreSettings(root=root, max_segment_bytes=SEGMENT_BYTES, fsync="never")
        with TrailWriter(settings) as writer:
            for i in range(samples):
                token = f"bench-{i}"
                target = cid(rng.randrange(containers))
                t0 = time.monotonic()
                writer.append(target, {"source": "hook", "action": "poststop", "detail": token})
                expected += 1
                while sidecar.events() < expected:
                    time.sleep(0.001)  # a busy scrape loop would steal the sidecar's CPU
                sidecar_lat.append(time.monotonic() - t0)
                deadline = time.monotonic() + 5
                while token not in tail_seen and time.monotonic() < deadline:
                    time.sleep(0.0005)
                if token in tail_seen:
                    tail_lat.append(tail_seen[token] - t0)
                time.sleep(0.02 + rng.random() * 0.03)
        tail.kill()
        tail.wait()
        sidecar.stop()
        restart = Sidecar(root)
        ready_again = restart.time_to_ready()
        restart.stop()

        # -- catch-up on a backlog --------------------------------------------------------
        backlog_root = base / "backlog"
        backlog_root.mkdir(mode=0o700)
        per = max(1, backlog // containers)
        t_gen = time.monotonic()
        total = generate(backlog_root, containers, per)
        gen_s = time.monotonic() - t_gen
        catch = Sidecar(backlog_root)
        catch.wait_until(lambda: catch.events() >= total, "the catch-up")
        catch_s = time.monotonic() - catch.started
        rss_after = rss_mib(catch.proc.pid)
        catch.stop()

    ms = 1000.0
    rows.append(("time to ready, no checkpoint (3 entries/trail)", f"{ready:.2f} s", "", ""))
    rows.append(("time to ready, restart with checkpoint", f"{ready_again:.2f} s", "", ""))
    rows.append(
        (
            f"idle CPU over {idle_seconds:g} s (% of one core)",
            f"{cpu['sidecar']:.2f} %",
            f"tail -F: {cpu['tail']:.2f} %; select on files: {cpu_select:.1f} %",
            "≤ 0.5 %",
        )
    )
    rows.append(("RSS, steady", f"{rss:.1f} MiB", "", "≤ 100 MiB"))
    rows.append(("RSS, after catch-up", f"{rss_after:.1f} MiB", "", "≤ 100 MiB"))
    p50, p99 = percentile(sidecar_lat, 0.5) * ms, percentile(sidecar_lat, 0.99) * ms
    t50 = percentile(tail_lat, 0.5) * ms if tail_lat else float("nan")
    t99 = percentile(tail_lat, 0.99) * ms if tail_lat else float("nan")
    rows.append(
        (
            f"entry-to-metric latency p50 / p99 ({len(sidecar_lat)} entries)",
            f"{p50:.1f} / {p99:.1f} ms",
            (
                f"tail -F entry-to-line: {t50:.1f} / {t99:.1f} ms ({len(tail_lat)} seen); "
                f"ratio p50 {p50 / t50:.2f}"
            ),
            "p99 ≤ 100 ms",
        )
    )
    rows.append(
        (
            f"catch-up, {total:,} entries in {containers:,} trails (from process start)",
            f"{total / catch_s:,.0f} entries/s ({catch_s:.1f} s)",
            f"generated in {gen_s:.1f} s",
            "≥ 100,000 entries/s",
        )
    )
    print(
        f"\nSidecar at {containers:,} trails (one run; {os.cpu_count()} CPUs; "
        "latency percentiles over the same appends for both)\n"
    )
    print("| measure | sidecar | baseline / note | target |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\n" + json.dumps({"statistics_mean_latency_ms": statistics.mean(sidecar_lat) * ms}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
