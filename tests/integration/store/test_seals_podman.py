"""A day compressed into minutes under real Podman: verify stays 0 until something is tampered with.

Hooks installed by ``install-hooks`` with an evolving key, tiny segments and
retention (so rotation and retention run all the time), a sidecar sealing
every second, containers starting, restarting and stopping, ``prune`` removing
the ended ones: after every "hour" both ``verify`` on the host and ``verify
--verification-key`` exit 0. Then a trail's tail is cut and verify names it.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import TYPE_CHECKING

import pytest

from cli_helpers import invoke
from http_helpers import wait_for
from sidecar_helpers import SidecarProc

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

pytestmark = pytest.mark.podman

HOURS = 6


def _last(root: Path, cid: str) -> tuple[int, str]:
    """Return the seq and action of the trail's newest entry (retention drops the oldest)."""
    directory = root / "containers" / cid
    lines: list[bytes] = []
    for path in [*sorted(directory.glob("audit-*.jsonl")), directory / "audit.jsonl"]:
        if path.exists():
            lines += path.read_bytes().splitlines()
    if not lines:
        return 0, ""
    entry = json.loads(lines[-1])
    return entry["seq"], entry["action"]


def _wait(sidecar: SidecarProc, condition: Callable[[], bool], what: str) -> None:
    wait_for(condition, what, sidecar.stderr, alive=lambda: sidecar.proc.poll() is None)


def _seals(root: Path) -> int:
    path = root / "seals" / "seals.jsonl"
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def test_a_day_of_containers_prune_and_rotation_verifies_until_tampered(podman_env, tmp_path):
    """Six rounds of starts, restarts, stops, prunes and seals: verify 0 throughout, 1 once cut."""
    keys = tmp_path / "etc"
    keys.mkdir(mode=0o700)
    root = tmp_path / "root"
    env = {
        "SHIELDAUDIT_KEY_FILE": str(keys / "key"),
        "SHIELDAUDIT_MAX_SEGMENT_BYTES": "2000",
        "SHIELDAUDIT_KEEP_SEGMENTS": "2",
    }
    verification = tmp_path / "verify.key"
    assert invoke(root, "keys", "init", "--verification-key", str(verification), env=env).code == 0
    hooks_dir = tmp_path / "hooks.d"
    installed = invoke(root, "install-hooks", "--hooks-dir", str(hooks_dir), env=env)
    assert installed.code == 0, installed.err
    sidecar = SidecarProc(
        root, env={**env, "SHIELDAUDIT_SEAL_INTERVAL": "1"}, logs=tmp_path / "sidecar"
    )
    hooks = ("--hooks-dir", str(hooks_dir))
    kept: list[str] = []
    try:
        for hour in range(HOURS):
            name = f"day-{hour}-{uuid.uuid4().hex[:8]}"
            podman_env.run(*hooks, "run", "--name", name, podman_env.image, "true")
            cid = podman_env.run("inspect", "--format", "{{.Id}}", name).stdout.strip()
            podman_env.run(*hooks, "start", "--attach", name)  # a restart: a second lifecycle
            # Two lifecycles of three hook entries each.
            _wait(sidecar, lambda cid=cid: _last(root, cid) == (6, "poststop"), f"{name}'s entries")
            podman_env.run("rm", name)
            kept.append(cid)
            if hour % 2:
                # Prune the trail of two "hours" ago (ended; files dated back past settling).
                old = kept.pop(0)
                directory = root / "containers" / old
                for path in [*directory.iterdir(), directory]:
                    os.utime(path, (time.time() - 3600, time.time() - 3600))
                pruned = invoke(root, "prune", "--older-than", "1s", env=env)
                assert pruned.code == 0, pruned.out + pruned.err
                assert not directory.exists()
            sealed = _seals(root)
            _wait(sidecar, lambda sealed=sealed: _seals(root) > sealed, "the sidecar's next seal")
            on_host = invoke(root, "verify", env=env)
            assert on_host.code == 0, on_host.out + on_host.err
            full = invoke(root, "verify", "--verification-key", str(verification), env=env)
            assert full.code == 0, full.out + full.err
        assert any((root / "containers" / cid).glob("audit-*.jsonl") for cid in kept)
    finally:
        try:
            status = sidecar.terminate(timeout=60)
        finally:
            sidecar.close()
    assert status == 0, sidecar.stderr()
    assert invoke(root, "verify", "--verification-key", str(verification), env=env).code == 0
    # Cut the newest entries: the newest file that holds any (audit.jsonl may have just rotated).
    directory = root / "containers" / kept[-1]
    files = [*sorted(directory.glob("audit-*.jsonl")), directory / "audit.jsonl"]
    victim = [path for path in files if path.stat().st_size][-1]
    victim.unlink()
    result = invoke(root, "verify", "--verification-key", str(verification), env=env)
    assert result.code == 1
    assert any(line.startswith(f"{kept[-1][:12]} seals: tail truncated") for line in result.lines)
