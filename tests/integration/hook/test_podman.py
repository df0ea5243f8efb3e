"""The OCI hook under real Podman (runc), installed by ``install-hooks`` into a temp hooks dir.

Podman 4.3 silently skips a hook it cannot run, so every test asserts that
entries (or recorded failures) appear, never only that a container ran.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner

from shieldaudit.cli import cli
from shieldaudit.store import chain
from shieldaudit.store.verify import verify_container

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.podman

DEADLINE_S = 30.0
LIFECYCLE = ["createRuntime", "poststart", "poststop"]


def install(tmp_path: Path, *options: str) -> tuple[Path, Path]:
    """Run `shieldaudit install-hooks` into tmp; return (hooks dir, root)."""
    hooks_dir = tmp_path / "hooks.d"
    root = tmp_path / "root"
    result = CliRunner().invoke(
        cli, ["--root", str(root), "install-hooks", "--hooks-dir", str(hooks_dir), *options]
    )
    assert result.exit_code == 0, result.output
    return hooks_dir, root


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def container_id(podman_env, name: str) -> str:
    return podman_env.run("inspect", "--format", "{{.Id}}", name).stdout.strip()


def entries(root: Path, cid: str) -> list[dict]:
    path = root / "containers" / cid / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def hook_errors(root: Path) -> list[dict]:
    path = root / "state" / "hook-errors.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def wait_for_actions(root: Path, cid: str, expected: list[str]) -> list[dict]:
    """Poll until the trail's actions are ``expected`` (poststop may run after podman returns)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        found = entries(root, cid)
        if [e["action"] for e in found] == expected or time.monotonic() > deadline:
            assert [e["action"] for e in found] == expected
            return found
        time.sleep(0.1)


def test_run_records_the_lifecycle_with_name_and_image(podman_env, tmp_path):
    """`podman run --name X` gives createRuntime, poststart and poststop entries naming X."""
    hooks_dir, root = install(tmp_path)
    name = unique("hook-run")

    result = podman_env.run(
        "--hooks-dir", str(hooks_dir), "run", "--name", name, podman_env.image, "echo", "hi"
    )
    cid = container_id(podman_env, name)
    found = wait_for_actions(root, cid, LIFECYCLE)
    podman_env.run("rm", name)

    assert result.stdout == "hi\n"
    assert {(e["container"], e["image"], e["source"]) for e in found} == {
        (name, podman_env.image, "hook")
    }
    assert all(e["detail"] == "echo hi" for e in found)
    assert found[0]["pid"] > 0
    assert found[2]["pid"] is None
    assert verify_container(root, cid, chain.NO_KEYS).ok
    assert hook_errors(root) == []


def test_stop_and_start_record_both_lifecycles(podman_env, tmp_path):
    """`run -d`, `stop`, `start`, `stop`: both lifecycles in the one trail, chain intact."""
    hooks_dir, root = install(tmp_path)
    name = unique("hook-restart")
    hooks = ("--hooks-dir", str(hooks_dir))

    podman_env.run(*hooks, "run", "-d", "--name", name, podman_env.image, "sleep", "1000")
    cid = container_id(podman_env, name)
    podman_env.run(*hooks, "stop", "-t", "0", name)
    wait_for_actions(root, cid, LIFECYCLE)
    podman_env.run(*hooks, "start", name)
    podman_env.run(*hooks, "stop", "-t", "0", name)
    found = wait_for_actions(root, cid, LIFECYCLE * 2)
    podman_env.run("rm", "-f", name)

    assert [e["seq"] for e in found] == [1, 2, 3, 4, 5, 6]
    assert found[0]["pid"] != found[3]["pid"]
    assert all(e["container"] == name for e in found)
    assert verify_container(root, cid, chain.NO_KEYS).ok


def test_annotation_selects_the_audited_containers(podman_env, tmp_path):
    """With --annotation, only containers carrying the annotation get a trail."""
    hooks_dir, root = install(tmp_path, "--annotation", r"io\.shieldaudit\.audit=yes")
    plain, marked = unique("hook-plain"), unique("hook-marked")
    hooks = ("--hooks-dir", str(hooks_dir))

    podman_env.run(*hooks, "run", "--name", plain, podman_env.image, "true")
    podman_env.run(
        *hooks,
        "run",
        "--name",
        marked,
        "--annotation",
        "io.shieldaudit.audit=yes",
        podman_env.image,
        "true",
    )
    plain_id, marked_id = container_id(podman_env, plain), container_id(podman_env, marked)
    found = wait_for_actions(root, marked_id, LIFECYCLE)
    podman_env.run("rm", plain, marked)

    assert found[0]["annotations"]["io.shieldaudit.audit"] == "yes"
    assert not (root / "containers" / plain_id).exists()


def test_fail_closed_unwritable_root_refuses_the_container(podman_env, tmp_path):
    """Fail-closed and a root that is a regular file: Podman refuses to start, naming the hook."""
    hooks_dir, root = install(tmp_path, "--fail-closed")
    shutil.rmtree(root)  # install-hooks keeps its manifest under state/
    root.write_text("not a directory\n")
    name = unique("hook-closed")

    result = podman_env.run(
        "--hooks-dir",
        str(hooks_dir),
        "run",
        "--name",
        name,
        podman_env.image,
        "echo",
        "RAN",
        check=False,
    )
    podman_env.run("rm", "-f", name, check=False)

    assert result.returncode != 0
    assert "RAN" not in result.stdout
    assert "error running hook" in result.stderr
    assert "shieldaudit-hook createRuntime" in result.stderr
    assert "fail-closed" in result.stderr


def test_fail_open_starts_the_container_and_records_the_failure(podman_env, tmp_path):
    """Fail-open, trail dir swapped for a symlink: the container runs, each failure is recorded."""
    hooks_dir, root = install(tmp_path)
    name = unique("hook-open")
    hooks = ("--hooks-dir", str(hooks_dir))
    podman_env.run(*hooks, "create", "--name", name, podman_env.image, "echo", "RAN")
    cid = container_id(podman_env, name)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "containers").mkdir(exist_ok=True)
    (root / "containers" / cid).symlink_to(elsewhere)

    result = podman_env.run(*hooks, "start", "--attach", name)
    deadline = time.monotonic() + DEADLINE_S
    while len(hook_errors(root)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    podman_env.run("rm", name)

    assert "RAN" in result.stdout
    errors = hook_errors(root)
    assert [e["stage"] for e in errors] == LIFECYCLE
    assert all(e["container_id"] == cid and "symlink" in e["error"] for e in errors)
    assert list(elsewhere.iterdir()) == []


def test_poststop_run_twice_leaves_a_consistent_trail(podman_env, tmp_path):
    """The poststop hook run twice at once for one stop (a Podman bug) records it once."""
    hooks_dir, root = install(tmp_path)
    name = unique("hook-twice")
    hooks = ("--hooks-dir", str(hooks_dir))
    podman_env.run(*hooks, "run", "--name", name, podman_env.image, "true")
    cid = container_id(podman_env, name)
    first = wait_for_actions(root, cid, LIFECYCLE)
    hook = json.loads((hooks_dir / "shieldaudit-poststop.json").read_text())["hook"]
    env = dict(item.split("=", 1) for item in hook["env"])
    poststop_state = json.dumps(
        {"ociVersion": "1.0.2-dev", "id": cid, "status": "stopped", "bundle": first[0]["bundle"]}
    ).encode()

    procs = [
        subprocess.Popen([hook["path"], *hook["args"][1:]], stdin=subprocess.PIPE, env=env)
        for _ in range(2)
    ]
    for proc in procs:
        proc.communicate(poststop_state, timeout=60)
    podman_env.run(*hooks, "start", "--attach", name)
    found = wait_for_actions(root, cid, LIFECYCLE * 2)
    podman_env.run("rm", name)

    assert [p.returncode for p in procs] == [0, 0]
    assert [e["seq"] for e in found] == list(range(1, 7))
    assert verify_container(root, cid, chain.NO_KEYS).ok
