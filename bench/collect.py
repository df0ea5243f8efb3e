"""Fleet collection: collect's ingest rate and memory, and node-to-central with real rsyslog.

Usage: python bench/collect.py [--entries N] [--e2e N] [--rate R] [--runs K]

1. collect alone: node trails are written (TrailWriter, 1 MiB segments, 100
   containers on each of 2 nodes), turned into the spool records the
   collector's rsyslog writes, and a real ``collect --spool --once`` applies
   them, K runs with N/4 and K runs with N entries, each on a fresh copy.
   Reported: the median entries/s (wall, and per CPU-second of collect) with
   every run, and collect's peak RSS for both sizes (bounded memory: the two
   peaks are close). For comparison, omprog's lockstep
   protocol (one line, one answer) is fed N/10 entries.
2. Through rsyslog: the same trails, on two nodes each with its own rsyslogd
   (deploy/rsyslog/node.conf), are shipped over RELP to a collector rsyslogd
   (deploy/rsyslog/collector.conf), K runs of each, alternating:
   - baseline, rsyslog forwarding alone: from starting the node rsyslogds to
     the last record in the collector's spool (collect not running);
   - full path: the same with collect following the spool, to the last entry
     durable in the central copies (collect's metrics, written as soon as it
     has read the spool to its end).
   Reported: median entries/s of each and the full path's ratio to the
   baseline.
3. Delay: a node writes one trail at R entries/s (fsync always); the delay
   from the node's append returning to the line being in the spool (rsyslog
   alone) and in the central trail (rsyslog + collect), polled every
   millisecond: p50, p99 and max.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import percentile
from rsyslog_harness import (
    CollectProcess,
    Rsyslogd,
    collector_config,
    free_port,
    node_config,
    wait_for,
)
from shieldaudit.core.settings import StoreSettings
from shieldaudit.hook import hooksd
from shieldaudit.store.writer import TrailWriter

SHIELDAUDIT = str(Path(hooksd.native_hook_path()).parent / "shieldaudit")
NODES = ("node-a", "node-b")
BATCH = 1024


def write_trails(base: Path, entries: int) -> dict[str, Path]:
    """Write ``entries`` entries over 2 nodes x 100 containers; return each node's root."""
    roots = {}
    for node in NODES:
        root = base / node
        settings = StoreSettings(
            root, max_segment_bytes=1024 * 1024, keep_segments=0, fsync="never"
        )
        ids = [f"{node}{i:04d}".encode().hex().ljust(64, "0") for i in range(100)]
        with TrailWriter(settings) as writer:
            for i in range(entries // 2):
                writer.append(
                    ids[i % len(ids)],
                    {
                        "source": "hook",
                        "action": "poststart",
                        "container": f"web-{i % 100}",
                        "image": "registry.example/app:1.0",
                        "pid": 4242 + i,
                    },
                )
        roots[node] = root
    return roots


def messages_of(roots: dict[str, Path]) -> list[bytes]:
    """Return the message for every trail line, interleaved as a live fleet sends them."""
    messages: list[bytes] = []
    for node, root in roots.items():
        per_file: list[tuple[int, bytes]] = []
        for cdir in sorted((root / "containers").iterdir()):
            names = sorted(p.name for p in cdir.iterdir() if p.name.startswith("audit-"))
            names.append("audit.jsonl")
            for name in names:
                offset = 0
                path = str(cdir / name)
                for line in (cdir / name).read_bytes().splitlines(keepends=True):
                    seq = json.loads(line)["seq"]
                    text = line.rstrip(b"\n").decode()
                    header = json.dumps({"file": path, "offset": offset}, separators=(",", ":"))
                    per_file.append((seq, f"{node} {header} {text}\n".encode()))
                    offset += len(line)
        per_file.sort(key=lambda item: item[0])
        messages.extend(m for _, m in per_file)
    return messages


def run_once(central: Path, spool: Path) -> tuple[float, float, int]:
    """Run ``collect --spool --once``; return (wall seconds, CPU seconds, peak RSS KiB).

    The peak is collect's own VmHWM, sampled until it exits (the kernel's
    ru_maxrss would count the pages of this process that the child shared
    before its exec).
    """
    start = time.perf_counter()
    proc = subprocess.Popen(
        [SHIELDAUDIT, "collect", "--central", str(central), "--spool", str(spool), "--once"],
        stderr=subprocess.PIPE,
    )
    status_path = Path(f"/proc/{proc.pid}/status")
    hwm = 0
    cpu = 0.0
    while proc.poll() is None:
        try:
            status = status_path.read_text()
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            break
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                hwm = max(hwm, int(line.split()[1]))
        if len(fields) > 12 and fields[0] != "Z":
            cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        time.sleep(0.01)
    proc.wait()
    elapsed = time.perf_counter() - start
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert proc.returncode == 0, err
    assert not err, err
    return elapsed, cpu, hwm


def lockstep(central: Path, messages: list[bytes]) -> float:
    """Feed messages one reply at a time, as omprog does; return seconds."""
    proc = subprocess.Popen(
        [SHIELDAUDIT, "collect", "--central", str(central)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"OK\n"
    start = time.perf_counter()
    for first in range(0, len(messages), BATCH):
        for line in (
            b"BEGIN TRANSACTION\n",
            *messages[first : first + BATCH],
            b"COMMIT TRANSACTION\n",
        ):
            proc.stdin.write(line)
            proc.stdin.flush()
            proc.stdout.readline()
    elapsed = time.perf_counter() - start
    proc.stdin.close()
    proc.wait(60)
    return elapsed


def alone(base: Path, messages: list[bytes], runs: int) -> None:
    """Part 1: ``runs`` runs of each size, each on a fresh copy; medians and every run."""
    (base / "spool-empty").mkdir()
    (base / "spool-empty" / "spool.202612021700").write_bytes(b"")
    startup = min(
        run_once(base / "central-empty", base / "spool-empty" / "spool")[0] for _ in range(3)
    )
    print(f"collect --once on an empty spool (start and stop): {startup:.2f}s")
    for count in (len(messages) // 4, len(messages)):
        # The files rsyslog writes: one per minute, spool.<UTC minute>.
        per_file = max(1, count // 4)
        files = {
            f"spool.2026120217{i // per_file:02d}": b"".join(
                b"\x1e" + m for m in messages[i : min(i + per_file, count)]
            )
            for i in range(0, count, per_file)
        }
        results = []
        for run in range(runs):
            spool_dir = base / f"spool-{count}-{run}"
            spool_dir.mkdir()
            for name, data in files.items():
                (spool_dir / name).write_bytes(data)
            os.sync()  # the node trails' and the spool's dirty pages are not collect's to write
            results.append(run_once(base / f"central-{count}-{run}", spool_dir / "spool"))
        seconds = statistics.median(r[0] for r in results)
        cpu = statistics.median(r[1] for r in results)
        rss = max(r[2] for r in results)
        each = ", ".join(f"{count / r[0]:,.0f}" for r in results)
        print(
            f"collect alone, {count} entries: median {seconds:.2f}s = "
            f"{count / seconds:,.0f} entries/s (runs: {each}), "
            f"{count / (seconds - startup):,.0f}/s without start and stop "
            f"(CPU {cpu:.2f}s = {count / cpu:,.0f} entries per CPU-second), "
            f"peak RSS {rss / 1024:.1f} MiB"
        )
    count = len(messages) // 10
    seconds = lockstep(base / "central-lockstep", messages[:count])
    print(f"omprog lockstep, {count} entries: {seconds:.2f}s = {count / seconds:,.0f} entries/s")


def spool_files(spool: Path) -> list[Path]:
    """The spool files rsyslog writes, ``<spool>.<12 digits>`` (one per UTC minute)."""
    pattern = re.compile(re.escape(spool.name) + r"\.[0-9]{12}")
    return sorted(p for p in spool.parent.iterdir() if pattern.fullmatch(p.name))


def spool_records(spool: Path) -> int:
    """Count the records in the spool files."""
    total = 0
    for path in spool_files(spool):
        with path.open("rb") as f:
            total += sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    return total


def stored(metrics: Path) -> int:
    """Return collect's stored-entries counter (0 before the file exists)."""
    try:
        text = metrics.read_text()
    except FileNotFoundError:
        return 0
    for line in text.splitlines():
        if line.startswith('shieldaudit_collect_entries_total{outcome="stored"}'):
            return int(line.rsplit(" ", 1)[1])
    return 0


def through_rsyslog(
    base: Path, roots: dict[str, Path], entries: int, *, with_collect: bool
) -> float:
    """Ship every trail line through real rsyslog; return seconds until all arrived."""
    run = base / f"run-{time.monotonic_ns()}"
    spool = run / "spool" / "spool"
    spool.parent.mkdir(parents=True)
    port = free_port()
    collector = Rsyslogd(
        "collector", run / "col", collector_config(spool, run / "col" / "work", port)
    )
    nodes = [
        Rsyslogd(node, run / node, node_config(root, run / node / "work", node, port))
        for node, root in roots.items()
    ]
    collect = CollectProcess(SHIELDAUDIT, run / "central", spool, run / "collect.prom")
    try:
        collector.start()
        if with_collect:
            collect.start()
        time.sleep(1.0)  # both listening
        start = time.perf_counter()
        for node in nodes:
            node.start()
        if with_collect:
            assert collect.metrics is not None
            wait_for(lambda: stored(collect.metrics) >= entries, 900, "every entry", 0.01)
        else:
            wait_for(lambda: spool_records(spool) >= entries, 900, "every record", 0.01)
        return time.perf_counter() - start
    finally:
        collect.kill()
        for node in nodes:
            node.kill_group()
        collector.kill_group()


def throughput(base: Path, roots: dict[str, Path], entries: int, runs: int) -> None:
    """Part 2."""
    results: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(runs):
        for with_collect in (False, True):
            os.sync()
            seconds = through_rsyslog(base, roots, entries, with_collect=with_collect)
            results[with_collect].append(entries / seconds)
    base_rate = statistics.median(results[False])
    full_rate = statistics.median(results[True])
    for name, rates in (
        ("rsyslog forwarding alone (spool)", results[False]),
        ("rsyslog + collect (central copies)", results[True]),
    ):
        shown = ", ".join(f"{r:,.0f}" for r in rates)
        print(
            f"through rsyslog, {entries} entries, {name}: median "
            f"{statistics.median(rates):,.0f} entries/s ({shown})"
        )
    print(f"through rsyslog: full path / forwarding alone = {full_rate / base_rate:.2f}")


def delay(entries: int, rate: float) -> None:
    """Part 3."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root = base / "node-root"
        root.mkdir(mode=0o700)
        central = base / "central"
        spool = base / "spool" / "spool"
        spool.parent.mkdir()
        port = free_port()
        collector = Rsyslogd(
            "collector", base / "col", collector_config(spool, base / "col" / "work", port)
        )
        collect = CollectProcess(SHIELDAUDIT, central, spool)
        node = Rsyslogd(
            "node", base / "node", node_config(root, base / "node" / "work", "node-a", port)
        )
        cid = b"e2e".hex().ljust(64, "0")
        written: dict[int, float] = {}
        in_trail: dict[int, float] = {}
        in_spool: dict[int, float] = {}
        settings = StoreSettings(root, max_segment_bytes=256 * 1024 * 1024, fsync="always")
        try:
            collector.start()
            collect.start()
            node.start()
            with TrailWriter(settings) as writer:
                writer.append(cid, {"source": "cli", "action": "warmup"})
                trail = central / "node-a" / "containers" / cid / "audit.jsonl"
                wait_for(trail.exists, 60, "the first line centrally")
                done = threading.Event()
                poller = threading.Thread(
                    target=poll, args=(trail, spool, in_trail, in_spool, done)
                )
                poller.start()
                interval = 1.0 / rate
                next_at = time.monotonic()
                for _ in range(entries):
                    now = time.monotonic()
                    if now < next_at:
                        time.sleep(next_at - now)
                    w = writer.append(cid, {"source": "cli", "action": "test"})
                    written[w.seq] = time.monotonic()
                    next_at += interval
                last = max(written)
                wait_for(lambda: last in in_trail and last in in_spool, 120, "every line")
                done.set()
                poller.join()
        finally:
            collect.kill()
            node.kill_group()
            collector.kill_group()
        for name, seen in (
            ("central trail (rsyslog + collect)", in_trail),
            ("spool (rsyslog forwarding alone)", in_spool),
        ):
            delays = [(seen[s] - t) * 1000 for s, t in written.items()]
            print(
                f"node write -> {name}: p50 {percentile(delays, 0.5):.1f} ms, "
                f"p99 {percentile(delays, 0.99):.1f} ms, max {max(delays):.1f} ms "
                f"({len(delays)} entries at {rate:g}/s)"
            )


def poll(
    trail: Path,
    spool: Path,
    in_trail: dict[int, float],
    in_spool: dict[int, float],
    done: threading.Event,
) -> None:
    """Record when each seq first appears in the central trail and in the spool."""
    offsets: dict[Path, int] = {}
    partial: dict[Path, bytes] = {}
    while not done.is_set():
        for path in [trail, *spool_files(spool)]:
            seen = in_trail if path is trail else in_spool
            try:
                with path.open("rb") as f:
                    f.seek(offsets.get(path, 0))
                    data = f.read()
            except FileNotFoundError:
                continue  # a spool file collect removed
            if not data:
                continue
            now = time.monotonic()
            offsets[path] = offsets.get(path, 0) + len(data)
            data = partial.get(path, b"") + data
            *lines, partial[path] = data.split(b"\n")
            for line in lines:
                text = line if path is trail else line[line.index(b"} {") + 2 :]
                seen.setdefault(json.loads(text)["seq"], now)
        time.sleep(0.001)


def main() -> None:
    """Run the three parts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--e2e", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--skip", default="", help="comma-separated parts to skip: alone,rsyslog,delay"
    )
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        t0 = time.perf_counter()
        roots = write_trails(base / "nodes", args.entries)
        messages = messages_of(roots)
        print(f"prepared {len(messages)} entries in {time.perf_counter() - t0:.1f}s")
        if "alone" not in skip:
            alone(base, messages, args.runs)
        if "rsyslog" not in skip:
            for count in (len(messages) // 4, len(messages)):
                part = roots if count == len(messages) else write_trails(base / f"n{count}", count)
                throughput(base, part, count, args.runs)
    if "delay" not in skip:
        delay(args.e2e, args.rate)
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
