"""Benchmark: wall time of one OCI hook invocation against a bare interpreter start.

Runs, interleaved, on the same interpreter:

* ``python -c pass`` with the virtualenv's interpreter (the baseline the
  target is stated against);
* the command ``install-hooks`` writes (the native ``shieldaudit-hook STAGE``),
  a real process with the OCI state on stdin, fsync at the default (always),
  appending to one container's trail next to a Podman-like bundle (config.json
  and containers.json are read as in production);
* for reference: ``python -I -S -c pass`` and the Python reference path
  (``python -I -B -m shieldaudit.hook STAGE``).

Prints a Markdown table of medians and ratios to the baseline. Target: the
installed command at most 1.5x the baseline.

Usage: .venv/bin/python bench/hook_latency.py [--runs N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import percentile
from shieldaudit import hooksd
from shieldaudit.settings import StoreSettings

CID = "5bd24d866977baac3c85ba1e320820397ace6dde548d405706334aacd8f4139d"
TARGET = 1.5


def podman_like_bundle(base: Path) -> Path:
    """Write a bundle with a realistic config.json and a containers.json of 50 containers."""
    containers = base / "storage" / "overlay-containers"
    bundle = containers / CID / "userdata"
    bundle.mkdir(parents=True)
    config = {
        "ociVersion": "1.0.2-dev",
        "process": {
            "args": ["nginx", "-g", "daemon off;"],
            "env": [f"V{i}=x" * 3 for i in range(20)],
        },
        "mounts": [
            {"destination": f"/m{i}", "type": "bind", "source": f"/s{i}"} for i in range(30)
        ],
        "annotations": {
            "io.container.manager": "libpod",
            "org.opencontainers.image.stopSignal": "15",
        },
    }
    (bundle / "config.json").write_text(json.dumps(config))
    records = [
        {
            "id": f"{i:064x}",
            "names": [f"c{i}"],
            "image": "ab" * 32,
            "metadata": json.dumps({"image-name": "localhost/app:1", "name": f"c{i}"}),
        }
        for i in range(49)
    ]
    records.append(
        {
            "id": CID,
            "names": ["web"],
            "image": "ab" * 32,
            "metadata": json.dumps({"image-name": "localhost/app:1"}),
        }
    )
    (containers / "containers.json").write_text(json.dumps(records))
    return bundle


def timed(argv: list[str], data: bytes | None, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, input=data, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0 or result.stderr:
        sys.exit(f"{argv[-1]} failed: {result.stderr.decode(errors='replace')}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=300, help="runs per command (default 300)")
    parser.add_argument("--quick", action="store_true", help="30 runs per command")
    args = parser.parse_args()
    runs = 30 if args.quick else args.runs

    with tempfile.TemporaryDirectory(prefix="hook-bench-") as tmp:
        base = Path(tmp)
        bundle = podman_like_bundle(base)
        settings = StoreSettings(base / "root", fsync="always")
        command = [hooksd.native_hook_path()]
        doc = hooksd.build_hook("poststart", command[0], hooksd.settings_env(settings))
        hook = doc["hook"]
        assert isinstance(hook, dict)
        hook_env = dict(item.split("=", 1) for item in hook["env"])
        state = json.dumps(
            {
                "ociVersion": "1.0.2-dev",
                "id": CID,
                "status": "created",
                "pid": 4242,
                "bundle": str(bundle),
            }
        ).encode()
        # The baseline is the interpreter people run (the venv's), with its site
        # processing; the hook command runs the same binary, resolved, with -I -S.
        python = sys.executable
        reference = [python, *hooksd.REFERENCE_ARGS, "poststart"]
        cases = {
            "python -c pass (baseline)": ([python, "-c", "pass"], None, {}),
            "python -I -S -c pass": ([python, "-I", "-S", "-c", "pass"], None, {}),
            "hook, installed command (native)": ([*command, "poststart"], state, hook_env),
            "hook, Python reference path": (reference, state, hook_env),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for argv, data, env in cases.values():  # warm the page cache
            timed(argv, data, env)
        for _ in range(runs):
            for name, (argv, data, env) in cases.items():
                times[name].append(timed(argv, data, env))
        written = (base / "root" / "containers" / CID / "audit.jsonl").read_bytes().count(b"\n")

    baseline = statistics.median(times["python -c pass (baseline)"])
    print(
        f"hook_latency: {runs} interleaved runs each, hook interpreter {command[0]} "
        f"(Python {sys.version.split()[0]}), {os.cpu_count()} CPUs, fsync=always; "
        f"{written} entries written"
    )
    print()
    print("| command | median ms | p90 ms | ratio to baseline |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        values.sort()
        median = statistics.median(values)
        p90 = percentile(values, 0.9)
        print(f"| {name} | {median * 1000:.2f} | {p90 * 1000:.2f} | {median / baseline:.2f}x |")
    ratio = statistics.median(times["hook, installed command (native)"]) / baseline
    print()
    print(f"target <= {TARGET}x: {'met' if ratio <= TARGET else 'NOT met'} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
