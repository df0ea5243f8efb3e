"""The CLI as real processes: pipes closed early, Ctrl-C, ``tail -f`` against hook processes."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cli_helpers import cid, write_trail

BIN = Path(sys.executable).parent
SHIELDAUDIT = str(BIN / "shieldaudit")
HOOK = str(BIN / "shieldaudit-hook")
DEADLINE_S = 30.0


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIELDAUDIT_")}
    env.update({"SHIELDAUDIT_ROOT": str(root), "SHIELDAUDIT_FSYNC": "never"}, **extra)
    return env


def _hook(root: Path, stage: str, container_id: str, bundle: Path, **extra: str) -> None:
    """Run the OCI hook as the runtime would: state JSON on stdin, settings in the environment."""
    state = {
        "ociVersion": "1.0.2",
        "id": container_id,
        "status": "running",
        "pid": 4242,
        "bundle": str(bundle),
    }
    done = subprocess.run(
        [HOOK, stage],
        input=json.dumps(state).encode(),
        env=_env(root, **extra),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == b"", done.stderr


def _bundle(tmp_path: Path, name: str) -> Path:
    """A bundle whose config.json names the container (as CRI-O's annotations do)."""
    bundle = tmp_path / f"bundle-{name}"
    bundle.mkdir(exist_ok=True)
    config = {"annotations": {"io.kubernetes.cri-o.ContainerName": name}}
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


class Lines:
    """Read a process's stdout lines in a thread, so tests can wait with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        """Start reading ``proc``'s stdout."""
        self.queue: queue.Queue[bytes] = queue.Queue()
        assert proc.stdout is not None
        stream = proc.stdout
        threading.Thread(target=lambda: [self.queue.put(x) for x in stream], daemon=True).start()

    def until(self, predicate, what: str) -> list[dict[str, object]]:
        """Collect JSON lines until ``predicate(collected)`` holds, or fail at the deadline."""
        got: list[dict[str, object]] = []
        deadline = time.monotonic() + DEADLINE_S
        while not predicate(got):
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"timed out waiting for {what}; got {got}")
            try:
                got.append(json.loads(self.queue.get(timeout=left)))
            except queue.Empty:
                continue
        return got


@pytest.fixture
def follower(tmp_path):
    """Start ``shieldaudit tail -f --json`` on a fresh root; stop it with SIGINT afterwards."""
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    procs = []

    def start(*args: str) -> tuple[subprocess.Popen[bytes], Lines]:
        proc = subprocess.Popen(
            [SHIELDAUDIT, "tail", "-f", "--json", "--interval", "0.05", *args],
            env=_env(root),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        procs.append(proc)
        return proc, Lines(proc)

    yield root, start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_show_piped_into_head_exits_quietly(tmp_path):
    """``show … | head -1``: the reader goes away early; no traceback, exit 0."""
    root = tmp_path / "root"
    write_trail(root, cid("a"), [f"x{i}" for i in range(3000)], name="big")
    for args in (["show", "big"], ["show", "big", "--json"], ["tail", "-n", "3000"]):
        proc = subprocess.Popen(
            [SHIELDAUDIT, *args], env=_env(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()
        proc.stdout.close()  # what head does after its first line
        _, err = proc.communicate(timeout=60)
        assert first
        assert err == b"", err
        assert proc.returncode == 0


def test_tail_follow_sees_hook_entries_and_rotations_and_stops_quietly(follower, tmp_path):
    """`tail -f` prints entries written by separate hook processes across rotations; ^C is quiet."""
    root, start = follower
    web = cid("a")
    bundle = _bundle(tmp_path, "web")
    _hook(root, "createRuntime", web, bundle)
    proc, lines = start()
    first = lines.until(lambda got: len(got) >= 1, "the snapshot")
    assert first[0]["action"] == "createRuntime"
    # Each entry rotates: 256-byte segments (the smallest allowed).
    for _ in range(6):
        _hook(root, "poststart", web, bundle, SHIELDAUDIT_MAX_SEGMENT_BYTES="256")
    got = lines.until(lambda got: len(got) >= 6, "six hook entries")
    assert [e["seq"] for e in got] == list(range(2, 8))
    assert {e["container"] for e in got} == {"web"}
    assert len(list((root / "containers" / web).glob("audit-*.jsonl"))) >= 6
    # A container that appears after tail started.
    _hook(root, "createRuntime", cid("b"), _bundle(tmp_path, "db"))
    (new,) = lines.until(lambda got: len(got) >= 1, "the new container's entry")
    assert (new["container_id"], new["container"]) == (cid("b"), "db")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert err == b"", err
    assert proc.returncode == 130


def test_tail_follow_of_one_container_by_name(follower, tmp_path):
    """`tail -f NAME` follows that container only."""
    root, start = follower
    _hook(root, "createRuntime", cid("a"), _bundle(tmp_path, "web"))
    _hook(root, "createRuntime", cid("b"), _bundle(tmp_path, "db"))
    _, lines = start("db")
    lines.until(lambda got: len(got) >= 1, "the snapshot")
    _hook(root, "poststart", cid("a"), _bundle(tmp_path, "web"))
    _hook(root, "poststart", cid("b"), _bundle(tmp_path, "db"))
    (entry,) = lines.until(lambda got: len(got) >= 1, "db's poststart")
    assert (entry["container"], entry["action"]) == ("db", "poststart")


def test_name_reused_by_two_containers(tmp_path):
    """Two containers named 'web' one after the other: show picks the newer, --all shows both."""
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    bundle = _bundle(tmp_path, "web")
    for container_id in (cid("1"), cid("2")):
        for stage in ("createRuntime", "poststart", "poststop"):
            _hook(root, stage, container_id, bundle)

    def show(*args: str) -> list[dict[str, object]]:
        done = subprocess.run(
            [SHIELDAUDIT, "show", "web", "--json", *args],
            env=_env(root),
            capture_output=True,
            timeout=60,
            check=True,
        )
        return [json.loads(x) for x in done.stdout.splitlines()]

    assert {e["container_id"] for e in show()} == {cid("2")}
    assert [e["container_id"] for e in show("--all")] == [cid("1")] * 3 + [cid("2")] * 3
    listing = subprocess.run(
        [SHIELDAUDIT, "ls"], env=_env(root), capture_output=True, timeout=60, check=True, text=True
    )
    rows = listing.stdout.splitlines()[1:]
    assert [r.split()[1] for r in rows] == ["web", "web"]
    assert all(" exited " in r for r in rows)
    ambiguous = subprocess.run(
        [SHIELDAUDIT, "show", "x"],
        env=_env(root),
        capture_output=True,
        timeout=60,
        check=False,
        text=True,
    )
    assert ambiguous.returncode == 2
    assert ambiguous.stderr.startswith("Error: no trail matches 'x'")
