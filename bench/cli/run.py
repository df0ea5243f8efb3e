"""CLI read paths against ``cat`` and ``tail`` of the same files, in the same run.

Usage: ``python bench/cli/run.py [--quick] [--runs N] [--entries N] [--containers N] [--dir D]``

* ``show`` on one container with ``--entries`` entries (default 1,000,000) over
  100 segments: time to first line (target <= 0.5 s) against ``cat`` of the
  first segment and ``tail -n 1`` of the active one; a full ``show --json`` to
  a pipe against ``cat`` of every segment (wall time); peak RSS of ``show``
  on this trail and on one a tenth its size (flat: ratio ~1).
* ``ls`` over ``--containers`` trails (default 10,000; target <= 2 s) against
  ``tail -q -n 8`` of every active segment (what ``ls`` reads).

Every command runs as a fresh process (``/usr/bin/time`` gives its peak RSS
and CPU time); commands are interleaved and each figure is a median of
``--runs``. CPU times are the figures to compare on a busy machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from shieldaudit.core.timefmt import format_ns
from shieldaudit.store import chain, layout

if TYPE_CHECKING:
    from collections.abc import Sequence

BIN = Path(sys.executable).parent
SHIELDAUDIT = str(BIN / "shieldaudit")
TIME = "/usr/bin/time"  # GNU time, for peak RSS
T0 = 1_795_341_600 * 10**9
ACTIONS = ("createRuntime", "poststart", "exec", "health_status", "died", "poststop")


def write_trail(
    root: Path, container_id: str, entries: int, segments: int, name: str
) -> list[Path]:
    """Write a valid chained trail directly (fast), split into ``segments`` files."""
    directory = layout.trail_dir(root, container_id)
    directory.mkdir(parents=True, mode=0o700)
    per = max(1, -(-entries // segments))
    prev = chain.GENESIS
    files = []
    seq = 0
    for number in range(1, segments + 1):
        name_on_disk = layout.ACTIVE_FILE if number == segments else layout.segment_name(number)
        lines = []
        for _ in range(min(per, entries - seq)):
            seq += 1
            fields = {
                "seq": seq,
                "ts": format_ns(T0 + seq * 1_000_000),
                "source": "hook",
                "action": ACTIONS[seq % len(ACTIONS)],
                "container": name,
                "container_id": container_id,
                "image": "localhost/bench:1",
                "pid": 4242,
                "detail": f"entry {seq}",
            }
            line, prev = chain.seal(chain.build_body(fields, prev, None), None)
            lines.append(line)
        path = directory / name_on_disk
        path.write_bytes(b"".join(lines))
        files.append(path)
    return files


def run_measured(argv: list[str], *, first_line: bool = False) -> tuple[float, float, int, float]:
    """Run a command; return (s to first stdout line, s to exit, peak RSS in KiB, CPU s).

    CPU seconds (user + system, from ``/usr/bin/time``) say what a command
    costs even on a busy machine, where wall times wander.

    With ``first_line`` stdout is closed once the first line arrived, as
    ``| head -1`` would. Peak RSS comes from ``/usr/bin/time -f %M``: the
    ``ru_maxrss`` of a child forked from this (large) Python process would
    count the parent's pages.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [TIME, "-f", "%M %U %S", "-o", rss_file.name, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        first = None
        if first_line:
            proc.stdout.readline()
            first = time.perf_counter() - start
            proc.stdout.close()
        else:
            while chunk := proc.stdout.read1(1 << 20):  # type: ignore[attr-defined]
                if first is None and b"\n" in chunk:
                    first = time.perf_counter() - start
            proc.stdout.close()
        code = proc.wait()
        total = time.perf_counter() - start
        if code != 0 and not first_line:
            raise SystemExit(f"{argv[:4]} failed with {code}")
        rss_text, user, system = rss_file.read().split()[-3:]
    return first if first is not None else total, total, int(rss_text), float(user) + float(system)


def median(values: Sequence[float]) -> float:
    """Return the median."""
    return statistics.median(values)


def main() -> int:
    """Build the trails, run every measurement interleaved, print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 entries, 1,000 containers")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--entries", type=int, default=None)
    parser.add_argument("--containers", type=int, default=None)
    parser.add_argument("--dir", type=Path, default=None, help="where to build the trails")
    args = parser.parse_args()
    entries = args.entries or (100_000 if args.quick else 1_000_000)
    containers = args.containers or (1_000 if args.quick else 10_000)
    runs = args.runs or (3 if args.quick else 5)
    base = Path(tempfile.mkdtemp(prefix="shieldaudit-bench-cli-", dir=args.dir))
    try:
        return measure(base, entries, containers, runs)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def measure(base: Path, entries: int, containers: int, runs: int) -> int:
    """Set up, measure, print."""
    base.chmod(0o700)
    big_root, small_root, many_root = base / "big", base / "small", base / "many"
    for root in (big_root, small_root, many_root):
        root.mkdir(mode=0o700)
    started = time.perf_counter()
    big_id, small_id = "b" * 64, "c" * 64
    big_files = write_trail(big_root, big_id, entries, 100, "big")
    write_trail(small_root, small_id, entries // 10, 100, "small")
    actives = []
    for i in range(containers):
        container_id = f"{i:064x}"
        actives += write_trail(many_root, container_id, 6, 1, f"c{i}")[-1:]
    size = sum(p.stat().st_size for p in big_files)
    print(
        f"<!-- setup: {entries:,} entries ({size / 2**20:.0f} MiB) in 100 segments; "
        f"{containers:,} small trails; {time.perf_counter() - started:.0f} s -->",
        file=sys.stderr,
    )
    list_file = base / "actives.txt"
    list_file.write_bytes(b"\0".join(bytes(p) for p in actives))

    def sa(root: Path, *args: str) -> list[str]:
        return [SHIELDAUDIT, "--root", str(root), *args]

    first_show, first_json, first_cat, first_tail = [], [], [], []
    full_show, full_cat = [], []
    rss_big, rss_small, rss_cat = [], [], []
    ls_times, ls_json_times, ls_tail = [], [], []
    cpu_show, cpu_ls, cpu_ls_json = [], [], []
    cat_all = ["cat", *map(str, big_files)]
    for _ in range(runs):
        first_show.append(run_measured(sa(big_root, "show", "big"), first_line=True)[0])
        first_cat.append(run_measured(["cat", str(big_files[0])], first_line=True)[0])
        first_json.append(run_measured(sa(big_root, "show", "big", "--json"), first_line=True)[0])
        first_tail.append(run_measured(["tail", "-n", "1", str(big_files[-1])])[0])
        _, total, rss, cpu = run_measured(sa(big_root, "show", big_id[:12], "--json"))
        full_show.append(total)
        rss_big.append(rss)
        cpu_show.append(cpu)
        _, total, rss, _ = run_measured(cat_all)
        full_cat.append(total)
        rss_cat.append(rss)
        rss_small.append(run_measured(sa(small_root, "show", small_id[:12], "--json"))[2])
        _, total, _, cpu = run_measured(sa(many_root, "ls"))
        ls_times.append(total)
        cpu_ls.append(cpu)
        _, total, _, cpu = run_measured(sa(many_root, "ls", "--json"))
        ls_json_times.append(total)
        cpu_ls_json.append(cpu)
        ls_tail.append(run_measured(["sh", "-c", f"xargs -0 tail -q -n 8 < {list_file}"])[1])

    rows = [
        ("`show` time to first line (human)", median(first_show), median(first_cat), "s", 0.5),
        ("`show --json` time to first line", median(first_json), median(first_cat), "s", 0.5),
        ("`tail -n 1` of the active segment (reference)", median(first_tail), None, "s", None),
        (
            f"`show --json` all {entries:,} entries to a pipe",
            median(full_show),
            median(full_cat),
            "s",
            None,
        ),
        (f"`ls` over {containers:,} trails", median(ls_times), median(ls_tail), "s", 2.0),
        (
            f"`ls --json` over {containers:,} trails",
            median(ls_json_times),
            median(ls_tail),
            "s",
            2.0,
        ),
    ]
    print(f"Runs: {runs} (medians), {os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n")
    print("| measurement | shieldaudit | baseline (`cat` / `tail`) | ratio | target |")
    print("|---|---:|---:|---:|---|")
    for label, ours, theirs, unit, target in rows:
        base_text = f"{theirs:.3f} {unit}" if theirs is not None else "-"
        ratio = f"{ours / theirs:.1f}x" if theirs else "-"
        goal = (
            "-"
            if target is None
            else f"<= {target} {unit} " + ("(met)" if ours <= target else "(MISSED)")
        )
        print(f"| {label} | {ours:.3f} {unit} | {base_text} | {ratio} | {goal} |")
    print()
    print("| peak RSS | KiB |")
    print("|---|---:|")
    print(f"| `show --json`, {entries:,} entries | {median(rss_big):,.0f} |")
    print(f"| `show --json`, {entries // 10:,} entries | {median(rss_small):,.0f} |")
    print(f"| ratio (flat = 1.0) | {median(rss_big) / median(rss_small):.2f} |")
    print(f"| `cat` of the {entries:,}-entry trail | {median(rss_cat):,.0f} |")
    print()
    print("| CPU time (user + system) | s |")
    print("|---|---:|")
    print(f"| `show --json`, {entries:,} entries | {median(cpu_show):.3f} |")
    print(f"| `ls` over {containers:,} trails | {median(cpu_ls):.3f} |")
    print(f"| `ls --json` over {containers:,} trails | {median(cpu_ls_json):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
