"""Benchmark: the hook's cost when it finds a huge torn tail, and what state/torn keeps.

A trail with one entry gets a torn tail of ``--mib`` MiB (a sparse run of zero
bytes without a newline, what some filesystems leave after a power cut), then
the command ``install-hooks`` writes runs once, as Podman would run it, under
GNU time. Repeated ``--runs`` times (a new torn tail before each run). Prints,
per run, the hook's peak RSS and wall time and the size of ``state/torn/``.

Usage: .venv/bin/python bench/torn_tail.py [--mib 300] [--runs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from shieldaudit.core.settings import StoreSettings
from shieldaudit.hook import hooksd
from shieldaudit.store.writer import TrailWriter

CID = "5bd24d866977baac3c85ba1e320820397ace6dde548d405706334aacd8f4139d"
TIME = "/usr/bin/time"


def _du(path: Path) -> tuple[int, int]:
    if not path.exists():
        return 0, 0
    files = [p for p in path.iterdir() if p.is_file()]
    return len(files), sum(p.stat().st_blocks * 512 for p in files)


def main() -> None:
    """Run the hook against fresh torn tails and print what it cost."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=300)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        settings = StoreSettings(root, fsync="always")
        with TrailWriter(settings) as writer:
            writer.append(CID, {"source": "cli", "action": "seed"})
        doc = hooksd.build_hook(
            "poststart", hooksd.native_hook_path(), hooksd.settings_env(settings)
        )
        env = dict(item.split("=", 1) for item in doc["hook"]["env"])
        state = json.dumps({"ociVersion": "1.0.2", "id": CID, "status": "running", "pid": 1})
        active = root / "containers" / CID / "audit.jsonl"
        print("| run | torn tail | hook peak RSS | hook wall time | state/torn files | bytes |")
        print("|---|---|---|---|---|---|")
        for run in range(1, args.runs + 1):
            os.truncate(active, active.stat().st_size + args.mib * 1024 * 1024)
            rss_file = Path(tmp) / "rss"
            started = time.monotonic()
            result = subprocess.run(
                [
                    TIME,
                    "-f",
                    "%M",
                    "-o",
                    str(rss_file),
                    doc["hook"]["path"],
                    *doc["hook"]["args"][1:],
                ],
                input=state.encode(),
                env=env,
                capture_output=True,
                check=False,
            )
            elapsed = time.monotonic() - started
            if result.returncode != 0 or result.stderr.strip():
                raise SystemExit(f"hook failed: {result.stderr.decode().strip()}")
            rss = int(rss_file.read_text().split()[-1])
            count, size = _du(root / "state" / "torn")
            print(
                f"| {run} | {args.mib} MiB | {rss / 1024:.0f} MB | {elapsed:.2f} s "
                f"| {count} | {size / 1e6:.1f} MB |"
            )


if __name__ == "__main__":
    main()
