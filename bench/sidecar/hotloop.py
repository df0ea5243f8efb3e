"""The sidecar's hot loop alone: one trail read by ``Tail.advance``, trees compared in one run.

``python bench/sidecar/hotloop.py --tree before=/path/a/src --tree after=src``

Writes one 100,000-entry trail (real chain format), then for each round runs,
for each tree in turn (``PYTHONPATH=<tree>``, the order alternating), a child
that reads the whole trail three times with a fresh ``Tail`` and reports the
median entries per CPU second (``time.process_time``: steadier than wall time
on a loaded machine). Two modes: ``links`` (keys=None: decoding, links and
counting only) and ``macs`` (every entry's SHA-256 mac recomputed too, as the
sidecar does by default). Prints each tree's median and the median of the
per-round ratios to the first tree, as a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import os, statistics, sys, time
from shieldaudit.sidecar.watch.checkpoint import Mark
from shieldaudit.sidecar.watch.tailer import Tail
from shieldaudit.sidecar.watch.tally import Tally
from shieldaudit.store.chain import NO_KEYS
directory, cid, total, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
rates = []
for _ in range(3):
    tail = Tail(cid, Mark(), Tally(), trusted=True, keys=None if mode == "links" else NO_KEYS)
    started = time.process_time()
    tail.advance(fd)
    rates.append(total / (time.process_time() - started))
    assert sum(tail._tally.events.values()) == total
print(statistics.median(rates))
"""


def write_trail(directory: Path, cid: str, total: int) -> None:
    from shieldaudit.store import chain  # noqa: PLC0415 -- this tree's chain format

    prev = chain.GENESIS
    lines = []
    for seq in range(1, total + 1):
        body = chain.build_body(
            {
                "seq": seq,
                "ts": "2026-11-23T10:00:00.000000Z",
                "source": "hook" if seq % 2 else "events",
                "action": "poststart" if seq % 2 else "start",
                "container_id": cid,
                "container": "c1",
            },
            prev,
            None,
        )
        line, prev = chain.seal(body, None)
        lines.append(line)
    (directory / "audit.jsonl").write_bytes(b"".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=SRC")
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    trees = [(name, Path(path).resolve()) for name, path in (t.split("=", 1) for t in args.tree)]
    cid = "a" * 64
    rates = {(name, mode): [] for name, _ in trees for mode in ("links", "macs")}
    with tempfile.TemporaryDirectory(prefix="sa-hotloop-") as tmp:
        write_trail(Path(tmp), cid, args.entries)
        for n in range(args.rounds):
            order = trees if n % 2 == 0 else list(reversed(trees))
            for mode in ("links", "macs"):
                for name, tree in order:
                    out = subprocess.run(
                        [sys.executable, "-c", CHILD, tmp, cid, str(args.entries), mode],
                        env={**os.environ, "PYTHONPATH": str(tree)},
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    rates[name, mode].append(float(out.stdout))
    first = trees[0][0]
    print(f"hot loop, {args.entries:,} entries, {args.rounds} rounds, entries per CPU second")
    print()
    print(f"| tree | mode | median | min to max | median ratio to {first} |")
    print("|---|---|---:|---:|---:|")
    for (name, mode), values in rates.items():
        base = rates[first, mode]
        ratio = statistics.median(a / b for a, b in zip(values, base, strict=True))
        print(
            f"| {name} | {mode} | {statistics.median(values):,.0f} | "
            f"{min(values):,.0f} to {max(values):,.0f} | {ratio:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
