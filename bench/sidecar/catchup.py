"""Sidecar catch-up, two source trees compared on the same backlog in one run.

``python bench/sidecar/catchup.py --tree before=/path/a/src --tree after=src``

Writes one backlog (real chain format, as ``run.py`` does: N trails, 64 KiB
segments, so sealed segments too), then for each round starts a ``shieldaudit
sidecar --no-listen`` from each tree in turn (``PYTHONPATH=<tree>``), with no
checkpoint, and times process start until ``shieldaudit_events_total`` reaches
the backlog, also taking the sidecar's CPU time then (user + system, from
``/proc``): on a loaded machine, entries per CPU second compare two trees far
more steadily than wall time. The order of the trees alternates round by
round; the report is each tree's medians and the median of the per-round
ratios to the first tree. Prints a Markdown table.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import Sidecar, generate  # the sibling script's sidecar and backlog writer

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """Return a process's user + system CPU time so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def catch_up(tree: Path, root: Path, total: int) -> tuple[float, float]:
    """Return entries/s, wall and per CPU second of the sidecar, until every entry is counted."""
    shutil.rmtree(root / "state", ignore_errors=True)
    (root / "state").mkdir(mode=0o700)
    sidecar = Sidecar(root, env={"PYTHONPATH": str(tree), "SHIELDAUDIT_SEAL_INTERVAL": "0"})
    try:
        sidecar.wait_until(
            lambda: sidecar.events() >= total, f"the catch-up from {tree}", interval=0.005
        )
        elapsed = time.monotonic() - sidecar.started
        cpu = cpu_seconds(sidecar.proc.pid)
    finally:
        sidecar.stop()
    return total / elapsed, total / cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=SRC")
    parser.add_argument("--containers", type=int, default=2_000)
    parser.add_argument("--backlog", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    trees = [(name, Path(path).resolve()) for name, path in (t.split("=", 1) for t in args.tree)]
    with tempfile.TemporaryDirectory(prefix="sa-catchup-") as tmp:
        root = Path(tmp) / "root"
        total = generate(root, args.containers, args.backlog // args.containers)
        rates: dict[str, list[float]] = {name: [] for name, _ in trees}
        per_cpu: dict[str, list[float]] = {name: [] for name, _ in trees}
        for n in range(args.rounds):
            order = trees if n % 2 == 0 else list(reversed(trees))
            for name, tree in order:
                wall, cpu = catch_up(tree, root, total)
                rates[name].append(wall)
                per_cpu[name].append(cpu)
    first = trees[0][0]
    print(f"catch-up, {total:,} entries in {args.containers:,} trails, {args.rounds} rounds")
    print()
    print(
        "| tree | entries/s (wall), median | min to max | ratio to " + first + " | "
        "entries per CPU second, median | ratio to " + first + " |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, values in rates.items():
        ratio = statistics.median(a / b for a, b in zip(values, rates[first], strict=True))
        cpu = per_cpu[name]
        cpu_ratio = statistics.median(a / b for a, b in zip(cpu, per_cpu[first], strict=True))
        print(
            f"| {name} | {statistics.median(values):,.0f} | {min(values):,.0f} to "
            f"{max(values):,.0f} | {ratio:.2f} | {statistics.median(cpu):,.0f} | {cpu_ratio:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
