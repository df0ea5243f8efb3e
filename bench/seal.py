"""How long a seal takes over many trails, and what the first and later seals cost.

Usage: ``python bench/seal.py [--trails N] [--entries N] [--runs N] [--evolving] [--quick]``

Builds ``--trails`` trails of ``--entries`` entries each with the real writer
(plain appends, so building is quick), then times, in one process:

* the first seal (every head is new: the seal line lists every trail);
* later seals after a few trails moved (the usual hourly case: the seals are
  folded, every head is read, only the moved ones are listed);
* ``shieldaudit verify``'s part of the seals (heads read + seals folded), not the chains;
* the floor: a bare loop doing the least a head read needs per trail (open the
  directory, list it, open ``audit.jsonl``, ``fstat``, read 4 KiB), runs interleaved.

Target: a seal over 10,000 trails <= 1 s. Medians over ``--runs``; prints Markdown.
On a loaded machine compare the seal with the floor: the ratio is what the code costs.
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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from shieldaudit.core.settings import StoreSettings
from shieldaudit.store import chain, fskey, layout, seals
from shieldaudit.store.writer import TrailWriter

FIELDS = {"source": "hook", "action": "poststart", "container": "bench", "image": "x:1"}


def build(root: Path, trails: int, entries: int) -> list[str]:
    """Write ``trails`` trails of ``entries`` entries; return their IDs."""
    ids = [f"{n:064x}" for n in range(1, trails + 1)]
    settings = StoreSettings(root=root, fsync="never")
    with TrailWriter(settings, max_open=4) as writer:
        for cid in ids:
            for _ in range(entries):
                writer.append(cid, FIELDS)
    return ids


def floor(root: Path) -> None:
    """Do the least reading every trail's head needs, with bare system calls."""
    containers = os.open(root / "containers", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in os.listdir(containers):  # noqa: PTH208 -- a descriptor, as the seal does
            directory = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=containers)
            os.listdir(directory)  # noqa: PTH208 -- a descriptor
            fd = os.open("audit.jsonl", os.O_RDONLY, dir_fd=directory)
            size = os.fstat(fd).st_size
            os.pread(fd, 4096, max(0, size - 4096))
            os.close(fd)
            os.close(directory)
    finally:
        os.close(containers)


def timed(action: Callable[[], object]) -> float:
    """Return how long ``action()`` took, in seconds."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trails", type=int, default=10_000)
    parser.add_argument("--entries", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--evolving", action="store_true", help="seal with an evolving key")
    parser.add_argument("--quick", action="store_true", help="1,000 trails, 2 runs")
    args = parser.parse_args()
    if args.quick:
        args.trails, args.runs = 1000, 2
    base = Path(tempfile.mkdtemp(prefix="shieldaudit-seal-", dir=args.dir))
    try:
        root = base / "root"
        ids = build(root, args.trails, args.entries)
        key_file = None
        if args.evolving:
            (base / "etc").mkdir(mode=0o700)
            key_file = base / "etc" / "key"
            seed = fskey.new_seed()
            fskey.write_new(
                key_file, fskey.encode(fskey.SIGNING_HEADER, fskey.kid_of(seed), 0, seed)
            )
        settings = StoreSettings(root=root, fsync="always", key_file=key_file)
        first = timed(lambda: seals.seal_now(settings))
        later, verify_side, floors = [], [], []
        with TrailWriter(StoreSettings(root=root, fsync="never", key_file=key_file)) as writer:
            for run in range(args.runs):
                for cid in ids[run * 10 : run * 10 + 10]:
                    writer.append(cid, FIELDS)
                later.append(timed(lambda: seals.seal_now(settings)))
                verify_side.append(timed(lambda: _verify_side(root, settings)))
                floors.append(timed(lambda: floor(root)))
        size = (root / seals.SEALS_DIR / seals.SEALS_FILE).stat().st_size
        print(
            f"{args.trails} trails x {args.entries} entries, key: "
            f"{'evolving' if args.evolving else 'none'}, {os.cpu_count()} CPUs\n"
        )
        print("| what | seconds |")
        print("|---|---|")
        print(f"| first seal (every head listed) | {first:.3f} |")
        median = statistics.median(later)
        print(f"| later seal, 10 trails moved (median of {args.runs}) | {median:.3f} |")
        print(
            f"| verify's seal part: heads + fold (median) | {statistics.median(verify_side):.3f} |"
        )
        bare = statistics.median(floors)
        print(f"| floor: bare system calls per trail (median) | {bare:.3f} |")
        print(f"\nlater seal / floor: {median / bare:.2f}")
        print(f"seals.jsonl after {args.runs + 1} seals: {size} bytes")
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _verify_side(root: Path, settings: StoreSettings) -> None:
    root_fd = layout.open_root(root, create=False)
    try:
        current = seals.read_heads(root_fd, root)
    finally:
        os.close(root_fd)
    fold = seals.load(root, chain.store_keys(settings), None).fold
    seals.compare(fold, current)


if __name__ == "__main__":
    main()
