"""Append throughput of the store, in one process, against a bare write loop on the same disk.

Usage: ``python bench/store_append.py [--runs 5] [--entries N] [--fsync-entries N] [--dir D]``

* ``fsync=never``: entries/s of ``TrailWriter.append`` (target >= 20,000/s).
* ``fsync=always``: entries/s of ``TrailWriter.append`` divided by entries/s of a
  bare ``os.write`` + ``os.fsync`` loop writing lines of the same size to the same
  directory, runs interleaved (target ratio >= 0.8).

Medians over ``--runs`` runs; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from shieldaudit.core.settings import StoreSettings
from shieldaudit.store.writer import TrailWriter

CID = "ab" * 32
FIELDS = {
    "source": "hook",
    "action": "poststart",
    "container": "bench",
    "image": "localhost/x:1",
    "pid": 4242,
    "detail": "sh -c true",
}


def store_rate(base: Path, entries: int, fsync: str) -> tuple[float, int]:
    """Append ``entries`` entries with a fresh root; return (entries/s, line size)."""
    root = Path(tempfile.mkdtemp(dir=base)) / "root"
    settings = StoreSettings(
        root=root, fsync=fsync, max_segment_bytes=10 * 1024 * 1024, keep_segments=0
    )
    with TrailWriter(settings) as writer:
        line = writer.append(CID, FIELDS).line
        start = time.perf_counter()
        for _ in range(entries):
            writer.append(CID, FIELDS)
        elapsed = time.perf_counter() - start
    shutil.rmtree(root.parent)
    return entries / elapsed, len(line)


def bare_rate(base: Path, entries: int, size: int) -> float:
    """A bare ``os.write`` + ``os.fsync`` loop writing ``size``-byte lines: entries/s."""
    directory = Path(tempfile.mkdtemp(dir=base))
    line = b"x" * (size - 1) + b"\n"
    fd = os.open(directory / "bare.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    start = time.perf_counter()
    for _ in range(entries):
        os.write(fd, line)
        os.fsync(fd)
    elapsed = time.perf_counter() - start
    os.close(fd)
    shutil.rmtree(directory)
    return entries / elapsed


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--entries", type=int, default=20000)
    parser.add_argument("--fsync-entries", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--quick", action="store_true", help="3 runs, fewer entries")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.entries, args.fsync_entries = 3, 5000, 300
    base = Path(tempfile.mkdtemp(prefix="shieldaudit-bench-", dir=args.dir))
    base.chmod(0o700)
    try:
        never = []
        always = []
        bare = []
        size = store_rate(base, 10, "never")[1]
        for run in range(args.runs):
            never.append(store_rate(base, args.entries, "never")[0])
            # Alternate which of the pair goes first, so neither always runs on a
            # disk the other has just warmed up or left busy flushing.
            if run % 2:
                bare.append(bare_rate(base, args.fsync_entries, size))
                always.append(store_rate(base, args.fsync_entries, "always")[0])
            else:
                always.append(store_rate(base, args.fsync_entries, "always")[0])
                bare.append(bare_rate(base, args.fsync_entries, size))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    ratios = [a / b for a, b in zip(always, bare, strict=True)]
    print(f"entry size: {size} bytes; runs: {args.runs}; directory: {args.dir}")
    print()
    print("| measure | median | target |")
    print("|---|---|---|")
    print(f"| store append, fsync=never | {statistics.median(never):,.0f} entries/s | >= 20,000 |")
    print(f"| store append, fsync=always | {statistics.median(always):,.0f} entries/s | |")
    print(f"| bare os.write + os.fsync | {statistics.median(bare):,.0f} entries/s | |")
    ratio = statistics.median(ratios)
    print(f"| ratio always / bare (median of per-run ratios) | {ratio:.2f} | >= 0.8 |")


if __name__ == "__main__":
    main()
