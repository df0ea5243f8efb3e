"""Fleet collection: collect's ingest rate and memory, and node-to-central delay with rsyslog.

Usage: python bench/collect.py [--entries N] [--e2e N] [--rate R]

1. Ingest: node trails are written (TrailWriter, 1 MiB segments, 200
   containers over 2 nodes), turned into the messages the collector's rsyslog
   hands ``shieldaudit collect`` (one per line, in transactions of 1024 as
   omprog sends them) and fed to a real collect process, once with N/4 and
   once with N entries. Reported: entries/s from the first byte sent to the
   last commit's OK, and collect's peak RSS (VmHWM) for both sizes (bounded
   memory: the two peaks are close). The replies are read by a second thread
   while the input is written (pipelined); a lockstep run (each line sent
   after the previous reply, as rsyslog does) is measured on N/10 entries.
2. End to end: a node rsyslogd (deploy/rsyslog/node.conf) ships one trail
   written at R entries/s (fsync always) to a collector rsyslogd
   (deploy/rsyslog/collector.conf) whose input also goes, in the same run, to
   a plain omfile. The delay from the node's append returning to the line
   being in the central trail, and to the line being in the omfile
   (rsyslog's forwarding alone), is measured by polling both files every
   millisecond: p50, p99 and max.
"""

from __future__ import annotations

import argparse
import json
import os
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
BATCH = 1024


def make_messages(base: Path, entries: int) -> list[bytes]:
    """Write node trails and return the collector-side messages for every line."""
    messages: list[bytes] = []
    for node in ("node-a", "node-b"):
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
                    header = json.dumps({"file": path, "offset": offset})
                    per_file.append((seq, f"{node} {header} {text}\n".encode()))
                    offset += len(line)
        # Interleave containers as a live node would: by seq, then container.
        per_file.sort(key=lambda item: item[0])
        messages.extend(m for _, m in per_file)
    return messages


def feed(central: Path, messages: list[bytes]) -> tuple[float, int, float]:
    """Feed messages in transactions, pipelined; return (seconds, peak RSS KiB, CPU seconds)."""
    proc = subprocess.Popen(
        [SHIELDAUDIT, "collect", "--central", str(central)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"OK\n"
    chunks = []
    for start in range(0, len(messages), BATCH):
        batch = messages[start : start + BATCH]
        chunks.append(b"BEGIN TRANSACTION\n" + b"".join(batch) + b"COMMIT TRANSACTION\n")
    expected = len(messages) + 2 * len(chunks)
    bad = []

    def read() -> None:
        assert proc.stdout is not None
        seen = 0
        while seen < expected:
            line = proc.stdout.readline()
            if not line:
                break
            if line not in {b"OK\n", b"DEFER_COMMIT\n"}:
                bad.append(line)
            seen += 1

    reader = threading.Thread(target=read)
    start = time.perf_counter()
    reader.start()
    for chunk in chunks:
        proc.stdin.write(chunk)
    proc.stdin.flush()
    reader.join()
    elapsed = time.perf_counter() - start
    status = Path(f"/proc/{proc.pid}/status").read_text()
    hwm = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    proc.stdin.close()
    proc.wait(60)
    assert not bad, bad[:3]
    return elapsed, hwm, cpu


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


def ingest(entries: int) -> None:
    """Part 1."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        t0 = time.perf_counter()
        messages = make_messages(base / "nodes", entries)
        print(f"prepared {len(messages)} messages in {time.perf_counter() - t0:.1f}s")
        for count in (len(messages) // 4, len(messages)):
            central = base / f"central-{count}"
            os.sync()  # the node trails' dirty pages are not collect's to write back
            seconds, hwm, cpu = feed(central, messages[:count])
            print(
                f"ingest {count} entries: {seconds:.2f}s = {count / seconds:,.0f} entries/s "
                f"(collect CPU {cpu:.2f}s = {count / cpu:,.0f} entries per CPU-second), "
                f"peak RSS {hwm / 1024:.1f} MiB"
            )
        count = len(messages) // 10
        seconds = lockstep(base / "central-lockstep", messages[:count])
        print(f"lockstep {count} entries: {seconds:.2f}s = {count / seconds:,.0f} entries/s")


def end_to_end(entries: int, rate: float) -> None:
    """Part 2."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root = base / "node-root"
        root.mkdir(mode=0o700)
        central = base / "central"
        plain = base / "plain.log"
        port = free_port()
        config = collector_config(central, base / "col" / "work", port, SHIELDAUDIT)
        config = config.replace(
            'ruleset="shieldaudit_collect" maxDataSize', 'ruleset="bench_in" maxDataSize'
        )
        config += (
            'ruleset(name="bench_in") {\n'
            f'    action(type="omfile" file="{plain}" template="shieldaudit_collect")\n'
            "    call shieldaudit_collect\n"
            "}\n"
        )
        collector = Rsyslogd("collector", base / "col", config)
        node = Rsyslogd(
            "node", base / "node", node_config(root, base / "node" / "work", "node-a", port)
        )
        cid = b"e2e".hex().ljust(64, "0")
        written: dict[int, float] = {}
        in_trail: dict[int, float] = {}
        in_plain: dict[int, float] = {}
        settings = StoreSettings(root, max_segment_bytes=256 * 1024 * 1024, fsync="always")
        try:
            collector.start()
            node.start()
            with TrailWriter(settings) as writer:
                writer.append(cid, {"source": "cli", "action": "warmup"})
                trail = central / "node-a" / "containers" / cid / "audit.jsonl"
                wait_for(trail.exists, 60, "the first line centrally")
                wait_for(plain.exists, 60, "the first line in the omfile")
                done = threading.Event()
                poller = threading.Thread(
                    target=poll, args=(trail, plain, in_trail, in_plain, done)
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
                wait_for(lambda: last in in_trail and last in in_plain, 120, "every line")
                done.set()
                poller.join()
        finally:
            node.kill_group()
            collector.kill_group()
        for name, seen in (
            ("central trail (collect)", in_trail),
            ("rsyslog omfile alone", in_plain),
        ):
            delays = [(seen[s] - t) * 1000 for s, t in written.items()]
            print(
                f"node write -> {name}: p50 {percentile(delays, 0.5):.1f} ms, "
                f"p99 {percentile(delays, 0.99):.1f} ms, max {max(delays):.1f} ms "
                f"({len(delays)} entries at {rate:g}/s)"
            )


def poll(
    trail: Path,
    plain: Path,
    in_trail: dict[int, float],
    in_plain: dict[int, float],
    done: threading.Event,
) -> None:
    """Record when each seq first appears in the central trail and in the omfile."""
    offsets = {trail: 0, plain: 0}
    partial = {trail: b"", plain: b""}
    while not done.is_set():
        for path, seen in ((trail, in_trail), (plain, in_plain)):
            with path.open("rb") as f:
                f.seek(offsets[path])
                data = f.read()
            if not data:
                continue
            now = time.monotonic()
            offsets[path] += len(data)
            data = partial[path] + data
            *lines, partial[path] = data.split(b"\n")
            for line in lines:
                text = line if path is trail else line[line.index(b"} {") + 2 :]
                seen.setdefault(json.loads(text)["seq"], now)
        time.sleep(0.001)


def main() -> None:
    """Run both parts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--e2e", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0)
    args = parser.parse_args()
    ingest(args.entries)
    end_to_end(args.e2e, args.rate)


if __name__ == "__main__":
    main()
