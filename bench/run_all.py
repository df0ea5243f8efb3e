"""Run every benchmark and print their Markdown tables: ``python bench/run_all.py [--quick]``.

Each benchmark measures its own baseline in the same run (ratios, medians);
see docs/benchmarks.md for the results and what each one compares against.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = (
    ("store append", HERE / "store_append.py"),
    ("hook latency", HERE / "hook_latency.py"),
    ("podman start with hooks", HERE / "podman_start.py"),
    ("listener lag", HERE / "listener_lag.py"),
    ("sidecar", HERE / "sidecar" / "run.py"),
    ("metrics http", HERE / "metrics_http.py"),
    ("cli", HERE / "cli" / "run.py"),
    ("unaudited latency", HERE / "unaudited_latency.py"),
    ("seal", HERE / "seal.py"),
)


def main() -> int:
    """Run the benchmarks; return 1 if any of them failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs of every benchmark")
    parser.add_argument("only", nargs="*", help="run only benchmarks whose name contains this")
    args = parser.parse_args()
    failed = []
    for name, script in BENCHMARKS:
        if args.only and not any(word in name for word in args.only):
            continue
        print(f"\n## {name}\n", flush=True)
        command = [sys.executable, str(script), *(["--quick"] if args.quick else [])]
        started = time.monotonic()
        result = subprocess.run(command, check=False)
        print(f"\n({' '.join(command[1:])}: {time.monotonic() - started:.0f} s)", flush=True)
        if result.returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
