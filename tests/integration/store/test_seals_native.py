"""The native hook never signs with an evolving key: it hands such a key file to the reference."""

from __future__ import annotations

import json
import sys

from native_hook import CID, NO_PYTHON, entries, env_for, native_hook, podman_bundle, run, state
from shieldaudit.store import fskey


def _evolving_key(path):
    seed = fskey.new_seed()
    path.write_bytes(fskey.encode(fskey.SIGNING_HEADER, fskey.kid_of(seed), 0, seed))
    path.chmod(0o600)
    return fskey.kid_of(seed)


def test_native_hook_hands_an_evolving_key_to_the_reference(tmp_path):
    """With an evolving key the reference writes (epoch and all); without it, a clean failure."""
    assert native_hook().is_file()
    key_dir = tmp_path / "etc"
    key_dir.mkdir(mode=0o700)
    key = key_dir / "key"
    kid = _evolving_key(key)
    bundle = podman_bundle(tmp_path)
    root = tmp_path / "root"
    proc = run(
        "createRuntime", state(bundle), env_for(root, sys.executable, SHIELDAUDIT_KEY_FILE=str(key))
    )
    assert (proc.returncode, proc.stderr) == (0, b"")
    (entry,) = entries(root)
    assert entry["epoch"] == 0
    assert entry["chain"] == f"hmac-sha256-fs:{kid}"
    assert entry["container_id"] == CID
    proc = run(
        "poststart",
        state(bundle, "running"),
        env_for(root, NO_PYTHON, SHIELDAUDIT_KEY_FILE=str(key)),
        "--fail-closed",
    )
    assert proc.returncode == 1
    assert b"(handing over because the key file holds an evolving key)" in proc.stderr
    assert len(entries(root)) == 1
    record = json.loads((root / "state" / "hook-errors.jsonl").read_text())
    assert "cannot run the Python reference path" in record["error"]
