"""Helpers shared by the benchmarks: a private Podman environment and percentiles."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def podman_env(tmp: Path) -> dict[str, str]:
    """Write the test containers.conf/storage.conf into ``tmp``; return the environment to use.

    The same templates as the test harness: runc, working ulimits, the file
    events logger, and storage inside ``tmp`` (nothing on the host is touched).
    """
    for name in ("containers.conf", "storage.conf"):
        text = (REPO / "tests" / f"{name}.in").read_text()
        (tmp / name).write_text(text.replace("@TMP@", str(tmp)).replace("@DRIVER@", "overlay"))
    (tmp / "hooks.d").mkdir()
    return {
        **os.environ,
        "CONTAINERS_CONF": str(tmp / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(tmp / "storage.conf"),
    }


def teardown(env: dict[str, str], tmp: Path) -> None:
    """Remove the containers and images of a private environment and unmount its storage."""
    subprocess.run(["podman", "rm", "--all", "--force"], env=env, capture_output=True, check=False)
    subprocess.run(["podman", "rmi", "--all", "--force"], env=env, capture_output=True, check=False)
    prefix = f"{tmp}/"
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(prefix)
    ]
    for mount in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mount], capture_output=True, check=False)


def percentile(values: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile of ``values`` (``fraction`` 0.9 for p90)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]
