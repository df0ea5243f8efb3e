"""Benchmark: ``podman run --rm`` with the shieldaudit hooks installed against no hooks.

Uses a private Podman storage and config (rendered from tests/*.conf.in, as the
test harness does) and the local busybox test image. Interleaves, per round:

* no hooks (an empty ``--hooks-dir``): the baseline;
* three no-op hooks (``/bin/true`` at createRuntime, poststart, poststop): what
  the runtime's own hook machinery costs, whatever the hook does;
* three hooks that only start the interpreter (``python -I -S -c pass``): the
  floor for any hook written in Python;
* the default shieldaudit hooks, written by ``shieldaudit install-hooks``.

Prints a Markdown table of medians and ratios. Target: shieldaudit hooks at most
1.15x the baseline median.

Usage: .venv/bin/python bench/podman_start.py [--runs N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import percentile, podman_env, teardown

REPO = Path(__file__).resolve().parent.parent
IMAGE = "localhost/shieldaudit-test:latest"
TARGET = 1.15
STAGES = ("createRuntime", "poststart", "poststop")


def fixed_hooks(directory: Path, argv: list[str]) -> None:
    """Write hooks.d files running ``argv`` (ignoring stdin) at the default stages."""
    directory.mkdir()
    for stage in STAGES:
        doc = {
            "version": "1.0.0",
            "hook": {"path": argv[0], "args": argv},
            "when": {"always": True},
            "stages": [stage],
        }
        (directory / f"fixed-{stage}.json").write_text(json.dumps(doc))


def timed_run(env: dict[str, str], hooks_dir: Path) -> float:
    argv = ["podman", "--hooks-dir", str(hooks_dir), "run", "--rm", IMAGE, "true"]
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"podman run failed: {result.stderr.decode(errors='replace')}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="runs per case (default 30)")
    parser.add_argument("--quick", action="store_true", help="5 runs per case")
    args = parser.parse_args()
    runs = 5 if args.quick else args.runs
    tmp = Path(tempfile.mkdtemp(prefix="podman-bench-"))
    env = podman_env(tmp)
    try:
        subprocess.run([str(REPO / "scripts" / "build-test-image.sh"), IMAGE], env=env, check=True)
        none_dir = tmp / "hooks-none"
        none_dir.mkdir()
        noop_dir = tmp / "hooks-noop"
        fixed_hooks(noop_dir, ["/bin/true"])
        python = os.path.realpath(sys.executable)
        bare_dir = tmp / "hooks-bare-python"
        fixed_hooks(bare_dir, [python, "-I", "-S", "-c", "pass"])
        audit_dir = tmp / "hooks-shieldaudit"
        root = tmp / "root"
        subprocess.run(
            [
                str(Path(sys.executable).parent / "shieldaudit"),
                "--root",
                str(root),
                "install-hooks",
                "--hooks-dir",
                str(audit_dir),
            ],
            check=True,
            capture_output=True,
        )
        cases = {
            "no hooks (baseline)": none_dir,
            "3 no-op hooks (/bin/true)": noop_dir,
            "3 bare interpreter hooks (python -I -S -c pass)": bare_dir,
            "3 shieldaudit hooks (install-hooks default)": audit_dir,
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for directory in cases.values():  # warm up: image layers, page cache
            timed_run(env, directory)
        for _ in range(runs):
            for name, directory in cases.items():
                times[name].append(timed_run(env, directory))
        trails = list((root / "containers").iterdir())
        entries = sum((t / "audit.jsonl").read_bytes().count(b"\n") for t in trails)
    finally:
        teardown(env, tmp)
        shutil.rmtree(tmp, ignore_errors=True)

    baseline = statistics.median(times["no hooks (baseline)"])
    print(
        f"podman_start: `podman run --rm {IMAGE} true`, {runs} interleaved runs per case, "
        f"runc, {os.cpu_count()} CPUs; shieldaudit wrote {entries} entries "
        f"for {len(trails)} containers"
    )
    print()
    print("| case | median ms | p90 ms | ratio to baseline | added ms |")
    print("|---|---:|---:|---:|---:|")
    for name, values in times.items():
        values.sort()
        median = statistics.median(values)
        p90 = percentile(values, 0.9)
        print(
            f"| {name} | {median * 1000:.0f} | {p90 * 1000:.0f} | {median / baseline:.3f}x "
            f"| {(median - baseline) * 1000:+.0f} |"
        )
    ratio = statistics.median(times["3 shieldaudit hooks (install-hooks default)"]) / baseline
    print()
    print(f"target <= {TARGET}x: {'met' if ratio <= TARGET else 'NOT met'} ({ratio:.3f}x)")


if __name__ == "__main__":
    main()
