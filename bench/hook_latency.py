"""Benchmark: one native hook invocation next to ``/bin/true`` and a bare interpreter start.

Runs, interleaved (one of each per round, so load affects them alike):

* ``/bin/true``: the floor, what starting any process costs here;
* the command ``install-hooks`` writes (the native ``shieldaudit-hook
  poststart``), a real process with the OCI state on stdin, fsync at the
  default (always), appending to one container's trail next to a Podman-like
  bundle (config.json and containers.json are read as in production);
* the same native hook with ``SHIELDAUDIT_FSYNC=never``, and with neither fsync
  nor a bundle (nothing to read): the differences say where the remaining
  milliseconds above ``/bin/true`` go;
* ``python -I -S -c pass``: the floor of any hook written in Python;
* ``python -c pass``: the historical baseline of the hook latency target (≤ 1.5x);
* the Python reference path (``python -I -B -m shieldaudit.hook poststart``):
  what a hand-over costs (on top of the native start).

Prints a Markdown table of medians and ratios to ``/bin/true`` and to
``python -I -S -c pass``, and each command's mean CPU time (user + system, from
``RUSAGE_CHILDREN``; it includes the fork from this process, the same for all),
which a loaded machine disturbs far less than wall time.

Usage: .venv/bin/python bench/hook_latency.py [--runs N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import percentile
from shieldaudit.core.settings import StoreSettings
from shieldaudit.hook import hooksd

CID = "5bd24d866977baac3c85ba1e320820397ace6dde548d405706334aacd8f4139d"
TARGET = 1.5
TRUE = "/bin/true (floor)"
NATIVE = "native hook, installed command (fsync always)"
NATIVE_NOSYNC = "native hook, fsync never"
NATIVE_BARE = "native hook, fsync never, no bundle files"
PY_BARE = "python -I -S -c pass"
PY_BASE = "python -c pass (old target's baseline)"
REFERENCE = "Python reference path (hand-over)"


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
    (containers / "containers.json").write_text(json.dumps(records, separators=(",", ":")))
    return bundle


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], data: bytes | None, env: dict[str, str]) -> tuple[float, float]:
    """Return the wall time and the CPU time (user + system) of one run of ``argv``."""
    cpu = _children_cpu()
    start = time.perf_counter()
    result = subprocess.run(argv, input=data, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0 or result.stderr:
        sys.exit(f"{argv[-1]} failed: {result.stderr.decode(errors='replace')}")
    return elapsed, _children_cpu() - cpu


def state(bundle: Path | None, container_id: str = CID) -> bytes:
    doc: dict[str, object] = {
        "ociVersion": "1.0.2-dev",
        "id": container_id,
        "status": "created",
        "pid": 4242,
    }
    if bundle is not None:
        doc["bundle"] = str(bundle)
    return json.dumps(doc).encode()


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
        native = hooksd.native_hook_path()
        doc = hooksd.build_hook("poststart", native, hooksd.settings_env(settings))
        hook = doc["hook"]
        assert isinstance(hook, dict)
        env = dict(item.split("=", 1) for item in hook["env"])
        nosync = {**env, "SHIELDAUDIT_FSYNC": "never"}
        python = sys.executable
        other = "0" * 63 + "1"  # its own trail, so the rows do not share one
        cases = {
            TRUE: (["/bin/true"], None, {}),
            NATIVE: ([native, "poststart"], state(bundle), env),
            NATIVE_NOSYNC: ([native, "poststart"], state(bundle), nosync),
            NATIVE_BARE: ([native, "poststart"], state(None, other), nosync),
            PY_BARE: ([python, "-I", "-S", "-c", "pass"], None, {}),
            PY_BASE: ([python, "-c", "pass"], None, {}),
            REFERENCE: ([python, *hooksd.REFERENCE_ARGS, "poststart"], state(bundle), env),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        cpu: dict[str, list[float]] = {name: [] for name in cases}
        for argv, data, case_env in cases.values():  # warm the page cache
            timed(argv, data, case_env)
        for _ in range(runs):
            for name, (argv, data, case_env) in cases.items():
                wall, used = timed(argv, data, case_env)
                times[name].append(wall)
                cpu[name].append(used)
        written = (base / "root" / "containers" / CID / "audit.jsonl").read_bytes().count(b"\n")
        size = Path(native).stat().st_size

    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"hook_latency: {runs} interleaved runs each; native hook {native} ({size} bytes); "
        f"Python {sys.version.split()[0]}; {os.cpu_count()} CPUs; "
        f"load average {os.getloadavg()[0]:.1f}; {written} entries written"
    )
    print()
    print("| command | median ms | p90 ms | vs /bin/true | vs python -I -S | CPU ms (mean) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, values in times.items():
        values.sort()
        median = medians[name]
        print(
            f"| {name} | {median * 1000:.2f} | {percentile(values, 0.9) * 1000:.2f} | "
            f"{median / medians[TRUE]:.2f}x | {median / medians[PY_BARE]:.2f}x | "
            f"{statistics.fmean(cpu[name]) * 1000:.2f} |"
        )
    ms = {name: value * 1000 for name, value in medians.items()}
    print()
    print(
        f"native above /bin/true: {ms[NATIVE] - ms[TRUE]:+.2f} ms = "
        f"start and empty run {ms[NATIVE_BARE] - ms[TRUE]:+.2f} ms (loading the binary, "
        f"reading the state, lock, head, write), "
        f"reading config.json and containers.json {ms[NATIVE_NOSYNC] - ms[NATIVE_BARE]:+.2f} ms, "
        f"fdatasync {ms[NATIVE] - ms[NATIVE_NOSYNC]:+.2f} ms"
    )
    ratio = medians[NATIVE] / medians[PY_BASE]
    print(
        f"target <= {TARGET}x python -c pass: {'met' if ratio <= TARGET else 'NOT met'} "
        f"({ratio:.2f}x)"
    )


if __name__ == "__main__":
    main()
