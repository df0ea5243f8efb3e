"""Unaudited starts against real Podman: hooks bypassed, and every lifecycle that must not alarm.

The sidecar runs as a real process with its events listener connected to a
real ``podman system service``; the hooks are installed by the real
``shieldaudit install-hooks`` into a private hooks.d, and each ``podman``
command names it with ``--hooks-dir`` (a bypass names an empty one). A test
waits for a *judged* state — every start event of the trails is judged in the
sidecar's saved ledger (the checkpoint) — before it reads the counter, so no
assertion depends on timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

from http_helpers import wait_for
from shieldaudit.sidecar.watch.checkpoint import load
from shieldaudit.store.reconcile import ts_us
from sidecar_helpers import RUN_CLI, SidecarProc

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from podman_harness import PodmanEnv

pytestmark = pytest.mark.podman

DEADLINE_S = 180.0
GRACE_S = "1"
#: Containers started in the parallel test, and how many ``podman run`` at once. At 40 at
#: once on 2 loaded cores a hook ran past the runtime's 10 s timeout: the runtime then
#: refuses the container, which is the hook's problem, not reconciliation's.
PARALLEL = 100
AT_ONCE = 8


class Sidecar(SidecarProc):
    """``shieldaudit sidecar --emit`` with its listener; output goes to files (never blocks)."""

    def __init__(self, root: Path, logs: Path, url: str, grace: str = GRACE_S) -> None:
        """Start it on a free port."""
        super().__init__(
            root,
            "--emit",
            "--unaudited-grace",
            grace,
            listen=True,
            env={"SHIELDAUDIT_PODMAN_URL": url, "SHIELDAUDIT_FSYNC": "never"},
            logs=logs,
            deadline_s=DEADLINE_S,
        )

    def emitted(self, action: str) -> list[dict[str, object]]:
        """Return the --emit lines with this action."""
        assert self.out is not None
        lines = self.out.read_text().splitlines()
        return [e for e in map(json.loads, lines) if e.get("action") == action]


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds; fail saying what was awaited."""
    wait_for(condition, what, lambda: "", deadline_s=DEADLINE_S)


def trail_entries(root: Path, container_id: str) -> list[dict[str, object]]:
    """Every entry of a trail (its active segment: these trails never rotate)."""
    path = root / "containers" / container_id / "audit.jsonl"
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.endswith(b"}")]


def start_times(root: Path) -> dict[str, list[int]]:
    """Return each trail's Podman start event times (µs)."""
    found: dict[str, list[int]] = {}
    for container_id in os.listdir(root / "containers"):
        times = [
            us
            for e in trail_entries(root, container_id)
            if e.get("source") == "events" and e.get("action") == "start"
            for us in [ts_us(e.get("ts"))]
            if us is not None
        ]
        found[container_id] = times
    return found


def all_judged(root: Path) -> bool:
    """Return whether the sidecar's saved ledgers have judged every start event of every trail."""
    loaded = load(root / "state" / "sidecar-checkpoint")
    if loaded is None:
        return False
    for container_id, times in start_times(root).items():
        if not times:
            continue
        mark = loaded.marks.get(container_id)
        if mark is None or mark.audit is None:
            return False
        if mark.audit.pending or mark.audit.last_start < max(times):
            return False
    return True


def fence(podman: PodmanEnv, hooks: Path, root: Path) -> None:
    """Run one last hooked container and wait for its remove event: events before it are in."""
    result = podman.run("--hooks-dir", str(hooks), "run", "-d", "--rm", podman.image, "true")
    container_id = result.stdout.strip()

    def removed() -> bool:
        try:
            entries = trail_entries(root, container_id)
        except FileNotFoundError:
            return False
        return any(e.get("action") == "remove" for e in entries)

    wait_until(removed, "the fence container's remove event")


def install(root: Path, hooks: Path) -> None:
    """Run the real ``shieldaudit install-hooks`` for ``root`` into ``hooks``."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            RUN_CLI,
            "--root",
            str(root),
            "install-hooks",
            "--hooks-dir",
            str(hooks),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "SHIELDAUDIT_CONFIG": os.devnull, "SHIELDAUDIT_FSYNC": "never"},
    )
    assert result.returncode == 0, result.stderr


def ls_json(root: Path) -> dict[str, dict[str, object]]:
    """``shieldaudit ls --json`` by container ID."""
    result = subprocess.run(
        [sys.executable, "-c", RUN_CLI, "--root", str(root), "ls", "--json"],
        capture_output=True,
        text=True,
        check=True,
        env={
            **os.environ,
            "SHIELDAUDIT_CONFIG": os.devnull,
            "SHIELDAUDIT_UNAUDITED_GRACE": GRACE_S,
        },
    )
    return {row["container_id"]: row for row in map(json.loads, result.stdout.splitlines())}


@pytest.fixture
def setup(tmp_path, podman_service):
    """A root with hooks installed, an empty hooks dir for bypasses, and a ready sidecar."""
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    hooks = tmp_path / "hooks.d"
    install(root, hooks)
    empty = tmp_path / "empty.d"
    empty.mkdir()
    started: list[Sidecar] = []

    def start(grace: str = GRACE_S) -> Sidecar:
        sidecar = Sidecar(root, tmp_path / f"sidecar{len(started)}", podman_service.url, grace)
        started.append(sidecar)
        sidecar.wait_ready()
        return sidecar

    yield root, hooks, empty, start
    for sidecar in started:
        sidecar.close()


def test_bypassed_start_is_flagged_once_and_a_normal_restart_is_not(setup, podman_env):
    """A start with the hooks bypassed counts once; starting it again normally adds nothing.

    Counted in the metric, on --emit and in ls; the hooks.d files are watched
    (1, then 0 once one is deleted).
    """
    root, hooks, empty, start = setup
    sidecar = start()
    assert sidecar.metrics()["shieldaudit_hooks_installed"] == 1
    assert sidecar.metrics()["shieldaudit_unaudited_starts_total"] == 0

    run = podman_env.run(
        "--hooks-dir", str(empty), "run", "--name", "bypass", podman_env.image, "true"
    )
    assert run.returncode == 0
    sidecar.wait_for(lambda v: v["shieldaudit_unaudited_starts_total"] == 1, "the alarm")
    podman_env.run("--hooks-dir", str(hooks), "start", "--attach", "bypass")
    fence(podman_env, hooks, root)
    wait_until(lambda: all_judged(root), "every start judged")

    assert sidecar.metrics()["shieldaudit_unaudited_starts_total"] == 1
    (event,) = sidecar.emitted("unaudited_start")
    assert event["container"] == "bypass"
    assert event["source"] == "sidecar"
    container_id = str(event["container_id"])
    entries = trail_entries(root, container_id)
    assert [e["action"] for e in entries if e["source"] == "hook"][:2] == [
        "createRuntime",
        "poststart",
    ]
    first_start = next(e for e in entries if e["action"] == "start")
    assert event["seq"] == first_start["seq"]
    rows = ls_json(root)
    assert rows[container_id]["unaudited"] is True
    assert rows[container_id]["unaudited_starts"] == [first_start["seq"]]
    assert [r["unaudited"] for cid, r in rows.items() if cid != container_id] == [False]

    (hooks / "shieldaudit-poststart.json").unlink()
    assert sidecar.metrics()["shieldaudit_hooks_installed"] == 0


KUBE_YAML = """\
apiVersion: v1
kind: Pod
metadata:
  name: kubepod
spec:
  restartPolicy: Never
  containers:
    - name: app
      image: {image}
      imagePullPolicy: Never
      command: ["sleep", "30"]
"""


def test_no_false_positives_across_lifecycles(setup, podman_env, tmp_path):
    """No lifecycle with the hooks in place is an unaudited start, and ls agrees.

    Parallel starts, --rm, restarts, exec, a pod with its infra container,
    kube play and a failed start (/no/such/command).
    """
    root, hooks, _empty, start = setup
    sidecar = start()

    def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return podman_env.run("--hooks-dir", str(hooks), *args, check=check, timeout=300)

    with ThreadPoolExecutor(max_workers=AT_ONCE) as pool:
        runs = list(
            pool.map(lambda _: podman("run", "--rm", podman_env.image, "true"), range(PARALLEL))
        )
    assert all(r.returncode == 0 for r in runs)
    podman("run", "-d", "--name", "long", podman_env.image, "sleep", "60")
    podman("restart", "-t", "0", "long")
    podman("exec", "long", "true")
    podman("stop", "-t", "0", "long")
    podman("start", "long")
    podman("pod", "create", "--name", "pod1")
    podman("run", "-d", "--pod", "pod1", "--name", "inpod", podman_env.image, "sleep", "60")
    podman("pod", "restart", "pod1")
    kube = tmp_path / "kube.yaml"
    kube.write_text(KUBE_YAML.format(image=podman_env.image))
    podman("kube", "play", str(kube))
    failed = podman("run", "--name", "failed", podman_env.image, "/no/such/command", check=False)
    assert failed.returncode != 0
    fence(podman_env, hooks, root)
    wait_until(lambda: all_judged(root), "every start judged")

    starts = start_times(root)
    assert sum(len(t) for t in starts.values()) >= PARALLEL + 7  # every lifecycle was seen
    assert sidecar.metrics()["shieldaudit_unaudited_starts_total"] == 0
    assert sidecar.emitted("unaudited_start") == []
    rows = ls_json(root)
    assert len(rows) == len(starts)
    assert [cid for cid, r in rows.items() if r["unaudited"]] == []
    podman("pod", "rm", "-f", "-t", "0", "pod1", "kubepod", check=False)
    podman("rm", "-f", "-t", "0", "long", check=False)


def test_listener_down_then_catching_up_and_sidecar_kill9(setup, podman_env, podman_service):
    """Starts made while the listener is down are judged on replay; kill -9 loses and repeats none.

    A sidecar killed while a bypassed start is pending is replaced by one that
    counts it once, and an alarm already published is never counted again.
    """
    root, hooks, empty, start = setup
    first = start()
    hooked = ("--hooks-dir", str(hooks))
    bypass = ("--hooks-dir", str(empty))

    podman_service.stop()  # the listener loses Podman: hooks still write, events wait
    first.wait_for(lambda v: v["shieldaudit_listener_connected"] == 0, "disconnect")
    for _ in range(3):
        podman_env.run(*hooked, "run", "--rm", podman_env.image, "true")
    podman_env.run(*bypass, "run", "--rm", "--name", "while-down", podman_env.image, "true")
    podman_service.start()
    first.wait_for(lambda v: v["shieldaudit_unaudited_starts_total"] == 1, "the replay")
    fence(podman_env, hooks, root)
    wait_until(lambda: all_judged(root), "every start judged")
    assert first.metrics()["shieldaudit_unaudited_starts_total"] == 1

    first.kill9()

    # A sidecar with a long grace period sees a bypassed start, pending, and is killed.
    second = start(grace="600")
    podman_env.run(*bypass, "run", "--rm", "--name", "pending", podman_env.image, "true")
    wait_until(lambda: pending_in_checkpoint(root, "pending"), "the start saved as pending")
    assert second.metrics()["shieldaudit_unaudited_starts_total"] == 0
    second.kill9()
    podman_env.run(*bypass, "run", "--rm", "--name", "while-dead", podman_env.image, "true")
    podman_env.run(*hooked, "run", "--rm", podman_env.image, "true")

    third = start()
    fence(podman_env, hooks, root)
    wait_until(lambda: all_judged(root), "every start judged")
    # A count is published just after the checkpoint that judged it is saved.
    third.wait_for(
        lambda v: v["shieldaudit_unaudited_starts_total"] >= 2,
        "the two judged starts to be published",
    )
    assert third.metrics()["shieldaudit_unaudited_starts_total"] == 2
    alarms = [e["container"] for e in third.emitted("unaudited_start")]
    assert sorted(alarms) == ["pending", "while-dead"]  # not "while-down" again
    rows = ls_json(root)
    assert sum(1 for r in rows.values() if r["unaudited"]) == 3


def pending_in_checkpoint(root: Path, name: str) -> bool:
    """Return whether the saved ledger of the container called ``name`` holds a pending start."""
    loaded = load(root / "state" / "sidecar-checkpoint")
    if loaded is None:
        return False
    for container_id, mark in loaded.marks.items():
        if mark.audit is not None and any(p[2] == name for p in mark.audit.pending):
            return container_id != ""
    return False
