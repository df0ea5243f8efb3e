"""The inspection commands on trails written by the real hook under Podman (runc)."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from shieldaudit.cli import cli

pytestmark = pytest.mark.podman

SHIELDAUDIT = str(Path(sys.executable).parent / "shieldaudit")
DEADLINE_S = 30.0


def _install(tmp_path: Path) -> tuple[Path, Path]:
    """Install the hooks into a temp hooks dir writing to a temp root."""
    hooks_dir, root = tmp_path / "hooks.d", tmp_path / "root"
    result = CliRunner().invoke(
        cli, ["--root", str(root), "install-hooks", "--hooks-dir", str(hooks_dir)]
    )
    assert result.exit_code == 0, result.output
    return hooks_dir, root


def _sa(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHIELDAUDIT, "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _wait_for(check, what: str):
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_name_reused_by_two_podman_containers(podman_env, tmp_path):
    """Two containers run one after the other with one name: ls, show, show --all, tail -f agree."""
    hooks_dir, root = _install(tmp_path)
    name = f"cli-web-{uuid.uuid4().hex[:8]}"

    def run_once() -> str:
        created = podman_env.run(
            "--hooks-dir", str(hooks_dir), "create", "--name", name, podman_env.image, "true"
        )
        container_id = created.stdout.strip().splitlines()[-1]
        podman_env.run("--hooks-dir", str(hooks_dir), "start", "--attach", name)
        podman_env.run("--hooks-dir", str(hooks_dir), "rm", name)
        return container_id

    first = run_once()
    _wait_for(lambda: "poststop" in _sa(root, "show", first, "--json").stdout, "first poststop")
    follower = subprocess.Popen(
        [SHIELDAUDIT, "--root", str(root), "tail", "-f", "-n", "1", "--json", "--interval", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert follower.stdout is not None
        lines: queue.Queue[bytes] = queue.Queue()
        stream = follower.stdout
        threading.Thread(target=lambda: [lines.put(x) for x in stream], daemon=True).start()
        # The snapshot (-n 1) is the first container's poststop: the follower is ready.
        ready = json.loads(lines.get(timeout=DEADLINE_S))
        assert (ready["container_id"], ready["action"]) == (first, "poststop")
        second = run_once()
        seen: list[dict[str, object]] = []
        deadline = time.monotonic() + DEADLINE_S
        while [e["action"] for e in seen] != ["createRuntime", "poststart", "poststop"]:
            left = deadline - time.monotonic()
            if left <= 0:
                listing = _sa(root, "tail", "-n", "20").stdout
                pytest.fail(f"tail -f saw {seen}; the trails hold:\n{listing}")
            with contextlib.suppress(queue.Empty):
                seen.append(json.loads(lines.get(timeout=min(left, 1.0))))
        assert {e["container_id"] for e in seen} == {second}
    finally:
        follower.kill()
        follower.communicate(timeout=30)

    shown = _sa(root, "show", name, "--json")
    assert shown.returncode == 0, shown.stderr
    assert {json.loads(x)["container_id"] for x in shown.stdout.splitlines()} == {second}
    every = _sa(root, "show", name, "--all", "--json")
    ids = [json.loads(x)["container_id"] for x in every.stdout.splitlines()]
    assert ids == [first] * 3 + [second] * 3
    rows = [json.loads(x) for x in _sa(root, "ls", "--json").stdout.splitlines()]
    assert [(r["container_id"], r["name"], r["state"]) for r in rows] == [
        (second, name, "exited"),
        (first, name, "exited"),
    ]
    assert _sa(root, "verify").returncode == 0


def _listen(root: Path, url: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start `shieldaudit listen` on the service; return once it saved its first cursor."""
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [SHIELDAUDIT, "--root", str(root), "listen", "--url", url],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    cursor = root / "state" / "listener-cursor.json"
    try:
        _wait_for(cursor.exists, "the listener's first cursor")
    except BaseException:
        proc.kill()
        proc.wait(timeout=30)
        raise
    return proc


def _states(root: Path) -> dict[str, str]:
    """Return ls's state per container name."""
    listing = _sa(root, "ls", "--json")
    assert listing.returncode == 0, listing.stderr
    return {row["name"]: row["state"] for row in map(json.loads, listing.stdout.splitlines())}


def test_failed_create_and_paused_container_states(podman_service, tmp_path):
    """Real Podman + runc, hooks and listener: a missing command is 'failed', a pause 'paused'.

    `podman run … /no/such/command` fails in `runc create` (exit 127): the
    trail holds the hook's createRuntime and the events create and cleanup,
    never a start, and ls and show say 'failed'. `podman pause` is recorded
    by the listener only (no OCI hook runs on a pause): 'paused', then
    'running' after `podman unpause`.
    """
    podman = podman_service.podman
    hooks_dir, root = _install(tmp_path)
    hooks = ("--hooks-dir", str(hooks_dir))
    failing, pausing = f"cli-bad-{uuid.uuid4().hex[:8]}", f"cli-pause-{uuid.uuid4().hex[:8]}"
    env = {**podman.env, "SHIELDAUDIT_FSYNC": "never"}
    listener = _listen(root, podman_service.url, env, tmp_path / "listen.log")
    try:
        bad = podman.run(
            *hooks, "run", "--name", failing, podman.image, "/no/such/command", check=False
        )
        assert bad.returncode != 0
        assert "/no/such/command" in bad.stderr
        podman.run(*hooks, "run", "-d", "--name", pausing, podman.image, "sleep", "1000")
        podman.run(*hooks, "pause", pausing)
        _wait_for(
            lambda: _states(root) == {failing: "failed", pausing: "paused"},
            "ls to show failed and paused",
        )
        shown = _sa(root, "show", failing)
        assert shown.stdout.splitlines()[-1] == "state: failed"
        actions = [
            json.loads(x)["action"] for x in _sa(root, "show", failing, "--json").stdout.split()
        ]
        assert "createRuntime" in actions
        assert not {"poststart", "start", "init"} & set(actions)
        assert _sa(root, "show", pausing).stdout.splitlines()[-1] == "state: paused"
        podman.run(*hooks, "unpause", pausing)
        _wait_for(lambda: _states(root)[pausing] == "running", "ls to show running again")
    finally:
        podman.run(*hooks, "rm", "--force", "--time", "0", failing, pausing, check=False)
        listener.terminate()
        listener.wait(timeout=30)
    assert _sa(root, "verify").returncode == 0
