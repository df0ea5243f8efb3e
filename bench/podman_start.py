"""Benchmark: ``podman run --rm`` with the shieldaudit hooks installed against no hooks.

Uses a private Podman storage and config (rendered from tests/*.conf.in, as the
test harness does) and the local busybox test image. Interleaves, per round:

* no hooks (an empty ``--hooks-dir``): the baseline;
* three ``/bin/true`` hooks (createRuntime, poststart, poststop): what the
  runtime's own hook machinery costs, whatever the hook does — the floor;
* three hooks that only start the interpreter (``python -I -S -c pass``): the
  floor for any hook written in Python, for comparison;
* the default shieldaudit hooks, written by ``shieldaudit install-hooks``: the
  native ``shieldaudit-hook``;
* the same three hooks run through the Python reference path
  (``python -I -B -m shieldaudit.hook STAGE``, what a hand-over costs), from a
  byte-compiled copy of the package as a (non-editable) pip install leaves it:
  an editable install has no bytecode in ``src/`` and ``-B`` writes none, so
  there every hand-over compiles the modules again (shown separately below).

Then a lifecycle workload on the default hooks (``run -d``, ``stop``,
``start``, ``stop``, ``rm``: Podman's double poststop included) and a count
of the hand-overs to the reference path over everything the default hooks
did. The count comes from an instrumented ``SHIELDAUDIT_HOOK_PYTHON``: a
wrapper that appends one line to a file and ``exec``s the real interpreter.
The native hook runs it only when it hands over, so the fast path is
untouched.

Prints Markdown tables of medians and ratios. Target: the default hooks at most
1.08x the baseline median.

Usage: .venv/bin/python bench/podman_start.py [--runs N] [--lifecycles N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import shieldaudit
from common import percentile, podman_env, teardown
from shieldaudit.hook import hooksd

REPO = Path(__file__).resolve().parent.parent
IMAGE = "localhost/shieldaudit-test:latest"
TARGET = 1.08
STAGES = ("createRuntime", "poststart", "poststop")
DEFAULT = "3 shieldaudit hooks (native, install-hooks default)"
REFERENCE = "3 shieldaudit hooks through the Python reference path"


def fixed_hooks(directory: Path, argv: list[str], env: list[str] | None = None) -> None:
    """Write hooks.d files running ``argv`` (plus the stage when ``env`` is given)."""
    directory.mkdir()
    for stage in STAGES:
        args = [*argv, stage] if env is not None else argv
        doc = {
            "version": "1.0.0",
            "hook": {"path": argv[0], "args": args, "env": env or []},
            "when": {"always": True},
            "stages": [stage],
        }
        (directory / f"fixed-{stage}.json").write_text(json.dumps(doc))


def counting_python(directory: Path, log: Path) -> Path:
    """Write an interpreter wrapper that logs each hand-over, then execs the real one."""
    wrapper = directory / "python-counting"
    wrapper.write_text(
        f"#!/bin/sh\necho \"$*\" >> '{log}'\nexec '{sys.executable}' \"$@\"\n",
    )
    wrapper.chmod(0o755)
    return wrapper


def compiled_python(tmp: Path) -> Path:
    """Return the python of a throwaway venv importing a byte-compiled copy of the package."""
    package = tmp / "compiled" / "shieldaudit"
    shutil.copytree(
        Path(shieldaudit.__file__).resolve().parent,
        package,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True)
    venv = tmp / "compiled-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(sysconfig.get_path("purelib")).relative_to(sysconfig.get_path("data"))
    (venv / purelib / "shieldaudit-copy.pth").write_text(f"{package.parent}\n")
    return venv / "bin" / "python"


def install_default_hooks(directory: Path, root: Path, python: Path) -> list[str]:
    """Run install-hooks, then point SHIELDAUDIT_HOOK_PYTHON at ``python``; return the env."""
    subprocess.run(
        [
            str(Path(sys.executable).parent / "shieldaudit"),
            "--root",
            str(root),
            "install-hooks",
            "--hooks-dir",
            str(directory),
        ],
        check=True,
        capture_output=True,
    )
    env: list[str] = []
    for path in directory.glob("shieldaudit-*.json"):
        doc = json.loads(path.read_text())
        env = [
            f"{hooksd.PYTHON_ENV}={python}" if item.startswith(f"{hooksd.PYTHON_ENV}=") else item
            for item in doc["hook"]["env"]
        ]
        doc["hook"]["env"] = env
        path.write_text(json.dumps(doc))
    return env


def podman(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(["podman", *args], env=env, capture_output=True, check=False)
    if result.returncode != 0:
        sys.exit(f"podman {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
    return result


def timed_run(env: dict[str, str], hooks_dir: Path) -> float:
    start = time.perf_counter()
    podman(env, "--hooks-dir", str(hooks_dir), "run", "--rm", IMAGE, "true")
    return time.perf_counter() - start


def lifecycles(env: dict[str, str], hooks_dir: Path, count: int) -> None:
    """Run, stop, start, stop and remove ``count`` containers through the default hooks."""
    hooks = ("--hooks-dir", str(hooks_dir))
    for i in range(count):
        name = f"bench-lifecycle-{i}"
        podman(env, *hooks, "run", "-d", "--name", name, IMAGE, "sleep", "600")
        podman(env, *hooks, "stop", "-t", "0", name)
        podman(env, *hooks, "start", name)
        podman(env, *hooks, "stop", "-t", "0", name)
        podman(env, *hooks, "rm", name)


def hook_entries(root: Path) -> int:
    """Count the source=hook entries in every trail under ``root``."""
    total = 0
    for trail in (root / "containers").iterdir():
        for segment in trail.glob("audit*.jsonl"):
            total += segment.read_bytes().count(b'"source":"hook"')
    return total


def reference_cost(
    tmp: Path, env_items: list[str], python: Path, runs: int
) -> dict[str, list[float]]:
    """Time one invocation of the native hook and of the reference path, interleaved."""
    env = dict(item.split("=", 1) for item in env_items)
    env["SHIELDAUDIT_ROOT"] = str(tmp / "direct-root")
    env[hooksd.PYTHON_ENV] = str(python)
    state = json.dumps(
        {"ociVersion": "1.0.2", "id": "c" * 64, "status": "created", "pid": 4242}
    ).encode()
    cases = {
        "native hook": [hooksd.native_hook_path(), "poststart"],
        "Python reference path (byte-compiled)": [str(python), *hooksd.REFERENCE_ARGS, "poststart"],
        "Python reference path (editable install, no bytecode)": [
            sys.executable,
            *hooksd.REFERENCE_ARGS,
            "poststart",
        ],
        "python -I -c pass": [sys.executable, "-I", "-c", "pass"],
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, argv in cases.items():
            start = time.perf_counter()
            subprocess.run(argv, input=state, env=env, capture_output=True, check=True)
            times[name].append(time.perf_counter() - start)
    return times


def table(times: dict[str, list[float]], baseline_name: str) -> None:
    baseline = statistics.median(times[baseline_name])
    print("| case | median ms | p90 ms | ratio to baseline | added ms |")
    print("|---|---:|---:|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        p90 = percentile(values, 0.9)
        print(
            f"| {name} | {median * 1000:.1f} | {p90 * 1000:.1f} | {median / baseline:.3f}x "
            f"| {(median - baseline) * 1000:+.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="runs per case (default 30)")
    parser.add_argument("--lifecycles", type=int, default=10, help="stop/start lifecycles")
    parser.add_argument("--quick", action="store_true", help="5 runs per case, 2 lifecycles")
    args = parser.parse_args()
    runs = 5 if args.quick else args.runs
    count = 2 if args.quick else args.lifecycles
    tmp = Path(tempfile.mkdtemp(prefix="podman-bench-"))
    env = podman_env(tmp)
    try:
        subprocess.run([str(REPO / "scripts" / "build-test-image.sh"), IMAGE], env=env, check=True)
        none_dir = tmp / "hooks-none"
        none_dir.mkdir()
        noop_dir = tmp / "hooks-noop"
        fixed_hooks(noop_dir, ["/bin/true"])
        bare_dir = tmp / "hooks-bare-python"
        fixed_hooks(bare_dir, [os.path.realpath(sys.executable), "-I", "-S", "-c", "pass"])
        handovers = tmp / "handovers.log"
        handovers.touch()
        audit_dir = tmp / "hooks-shieldaudit"
        root = tmp / "root"
        hook_env = install_default_hooks(audit_dir, root, counting_python(tmp, handovers))
        reference_dir = tmp / "hooks-reference"
        reference_env = [
            *(i for i in hook_env if not i.startswith("SHIELDAUDIT_ROOT=")),
            f"SHIELDAUDIT_ROOT={tmp / 'reference-root'}",
        ]
        python = compiled_python(tmp)
        fixed_hooks(reference_dir, [str(python), *hooksd.REFERENCE_ARGS], reference_env)
        cases = {
            "no hooks (baseline)": none_dir,
            "3 /bin/true hooks (the floor)": noop_dir,
            "3 bare interpreter hooks (python -I -S -c pass)": bare_dir,
            DEFAULT: audit_dir,
            REFERENCE: reference_dir,
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for directory in cases.values():  # warm up: image layers, page cache
            timed_run(env, directory)
        for _ in range(runs):
            for name, directory in cases.items():
                times[name].append(timed_run(env, directory))
        lifecycles(env, audit_dir, count)
        entries = hook_entries(root)
        handed = handovers.read_text().splitlines()
        direct = reference_cost(tmp, hook_env, python, max(runs, 20))
    finally:
        teardown(env, tmp)
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"podman_start: `podman run --rm {IMAGE} true`, {runs} interleaved runs per case, "
        f"runc, {os.cpu_count()} CPUs"
    )
    print()
    table(times, "no hooks (baseline)")
    ratio = statistics.median(times[DEFAULT]) / statistics.median(times["no hooks (baseline)"])
    per_handover = (statistics.median(times[REFERENCE]) - statistics.median(times[DEFAULT])) / 3
    print()
    print(f"target <= {TARGET}x: {'met' if ratio <= TARGET else 'NOT met'} ({ratio:.3f}x)")
    print()
    print(
        f"reference path: {len(handed)} hand-overs for {entries} hook entries written by the "
        f"default hooks ({runs + 1} `run --rm` and {count} run/stop/start/stop/rm lifecycles); "
        f"a hand-over adds {per_handover * 1000:.1f} ms per invocation inside `podman run`"
    )
    for line in sorted(set(handed)):
        print(f"  handed over: {line} (x{handed.count(line)})")
    print()
    print("One invocation outside Podman (same trail, interleaved):")
    print()
    table(direct, "native hook")


if __name__ == "__main__":
    main()
