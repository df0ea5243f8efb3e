"""Hostile local state met by the real commands: one clear line, the right exit status.

Directories loosened or handed to another user, bad key files: ``verify``,
the hook as the runtime runs it, and ``install-hooks``, each a real process.
The tests run as root (like the Podman tests) so they can hand a directory to
another uid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shieldaudit.core.settings import StoreSettings
from shieldaudit.hook import hooksd
from shieldaudit.store.writer import TrailWriter
from store_helpers import CID_A, all_lines, trail, write

BIN = Path(sys.executable).parent
OTHER_UID = 4242
SECRET = b"a-secret-of-at-least-sixteen-bytes\n"


def _run(*args: str, root: Path, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        "PATH": os.environ.get("PATH", ""),
        "SHIELDAUDIT_ROOT": str(root),
        "SHIELDAUDIT_CONFIG": os.devnull,
        **env,
    }
    return subprocess.run(
        args, input=stdin, capture_output=True, text=True, env=environ, check=False, timeout=120
    )


@pytest.mark.parametrize("which", ["containers", "state"])
def test_verify_refuses_a_directory_others_can_write(tmp_path, which):
    """Verify with containers/ or state/ group-writable: exit 1, one Error line with the fix."""
    root = tmp_path / "root"
    write(root, CID_A, 2)
    target = root / which
    target.chmod(0o770)
    result = _run(str(BIN / "shieldaudit"), "verify", root=root)
    assert result.returncode == 1, result.stdout
    assert result.stderr.strip() == (
        f"Error: {target} is writable by group or others (mode 0770), so other users could "
        f"remove or replace what it holds: check its content, then run 'chmod go-w {target}'"
    )


def test_verify_reports_a_trail_directory_owned_by_another_user(tmp_path):
    """A trail directory handed to another uid is a problem of that trail (exit 1), not skipped."""
    root = tmp_path / "root"
    write(root, CID_A, 2)
    os.chown(trail(root, CID_A), OTHER_UID, -1)
    result = _run(str(BIN / "shieldaudit"), "verify", root=root)
    assert result.returncode == 1
    assert f"{trail(root, CID_A)} belongs to uid {OTHER_UID}" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("FAILED: 1 container(s)")


def _hook(root: Path, stage: str = "poststart", **env: str) -> subprocess.CompletedProcess[str]:
    state = json.dumps({"ociVersion": "1.0.2", "id": CID_A, "status": "running", "pid": 1})
    return _run(str(BIN / "shieldaudit-hook"), stage, root=root, stdin=state, **env)


def test_hook_refuses_a_trail_directory_owned_by_another_user(tmp_path):
    """The hook (fail-open) writes nothing into a trail another uid owns, and says why."""
    root = tmp_path / "root"
    write(root, CID_A, 1)
    os.chown(trail(root, CID_A), OTHER_UID, -1)
    before = all_lines(root, CID_A)
    result = _hook(root, SHIELDAUDIT_FSYNC="never", SHIELDAUDIT_MAX_SEGMENT_BYTES="1MiB")
    assert result.returncode == 0  # fail-open
    assert f"belongs to uid {OTHER_UID}" in result.stderr
    assert "container allowed (fail-open)" in result.stderr
    assert all_lines(root, CID_A) == before


@pytest.mark.parametrize("where", ["env", "config"])
def test_missing_key_file_is_a_bad_setting_naming_its_source(tmp_path, where):
    """A key file that does not exist: exit 2, one line naming key_file and where it was set."""
    root = tmp_path / "root"
    write(root, CID_A, 1)
    missing = tmp_path / "no-such-key"
    if where == "env":
        env = {"SHIELDAUDIT_KEY_FILE": str(missing)}
        source = "SHIELDAUDIT_KEY_FILE"
    else:
        config = tmp_path / "config.toml"
        config.write_text(f'key_file = "{missing}"\n')
        env = {"SHIELDAUDIT_CONFIG": str(config)}
        source = f"{config} key key_file"
    result = _run(str(BIN / "shieldaudit"), "verify", root=root, **env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"Error: invalid setting key_file (from {source}): {missing}")
    assert "does not exist" in lines[0]


def test_install_hooks_refuses_a_key_file_inside_the_root(tmp_path):
    """install-hooks checks the key file now, not on the next container start: exit 2."""
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    key_file = root / "key"
    key_file.write_bytes(SECRET)
    key_file.chmod(0o600)
    hooks_dir = tmp_path / "hooks.d"
    hooks_dir.mkdir()
    result = _run(
        str(BIN / "shieldaudit"),
        "install-hooks",
        "--hooks-dir",
        str(hooks_dir),
        root=root,
        SHIELDAUDIT_KEY_FILE=str(key_file),
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"Error: invalid setting key_file (from SHIELDAUDIT_KEY_FILE): {key_file} is inside the "
        f"trail root {root}, where whoever can read or copy the trails gets the key: move it out "
        "(for example to /etc/shieldaudit/key)"
    )
    assert list(hooks_dir.iterdir()) == []


def test_hook_with_a_foreign_key_file_fails_closed_naming_the_setting(tmp_path):
    """A key file another uid owns: the hook records nothing and, fail-closed, refuses (exit 1)."""
    root = tmp_path / "root"
    key_file = tmp_path / "key"
    key_file.write_bytes(SECRET)
    key_file.chmod(0o600)
    os.chown(key_file, OTHER_UID, -1)
    result = _run(
        str(BIN / "shieldaudit-hook"),
        "--fail-closed",
        "createRuntime",
        root=root,
        stdin=json.dumps({"ociVersion": "1.0.2", "id": CID_A, "status": "creating", "pid": 1}),
        SHIELDAUDIT_KEY_FILE=str(key_file),
    )
    assert result.returncode == 1
    assert "invalid setting key_file (from SHIELDAUDIT_KEY_FILE)" in result.stderr
    assert f"belongs to uid {OTHER_UID}" in result.stderr
    assert not trail(root, CID_A).exists()


def _installed_hook(root: Path, stage: str = "poststart") -> subprocess.CompletedProcess[str]:
    """Run the hooks.d command install-hooks writes (every setting in its environment)."""
    doc = hooksd.build_hook(
        stage, hooksd.native_hook_path(), hooksd.settings_env(StoreSettings(root))
    )
    env = dict(item.split("=", 1) for item in doc["hook"]["env"])
    state = json.dumps({"ociVersion": "1.0.2", "id": CID_A, "status": "running", "pid": 1})
    return subprocess.run(
        [doc["hook"]["path"], *doc["hook"]["args"][1:]],
        input=state,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_installed_hook_never_appends_to_a_hard_linked_trail_file(tmp_path):
    """audit.jsonl hard-linked to a file outside the root: the hook refuses, that file unchanged."""
    root = tmp_path / "root"
    write(root, CID_A, 1)
    active = trail(root, CID_A) / "audit.jsonl"
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious\n")
    active.unlink()
    os.link(outside, active)
    result = _installed_hook(root)
    assert result.returncode == 0  # fail-open
    assert f"{active} has 2 hard links" in result.stderr
    assert outside.read_bytes() == b"precious\n"


def test_installed_hook_refuses_a_group_writable_trail_directory(tmp_path):
    """A trail directory loosened to 0770: the hook writes nothing there and names the fix."""
    root = tmp_path / "root"
    write(root, CID_A, 1)
    trail(root, CID_A).chmod(0o770)
    before = all_lines(root, CID_A)
    result = _installed_hook(root)
    assert result.returncode == 0  # fail-open
    assert f"chmod go-w {trail(root, CID_A)}" in result.stderr
    assert all_lines(root, CID_A) == before


def test_prune_refuses_a_loose_torn_directory_before_removing_anything(tmp_path):
    """Prune with state/torn/ world-writable: exit 1, one Error line, the ended trail kept."""
    root = tmp_path / "root"
    with TrailWriter(StoreSettings(root, fsync="never"), clock=lambda: 10**18) as writer:
        writer.append(CID_A, {"source": "events", "action": "died"})
        writer.append(CID_A, {"source": "events", "action": "remove"})
    old = 10**9  # 2001: long ended, by the entries and by the file times
    for path in (trail(root, CID_A), trail(root, CID_A) / "audit.jsonl"):
        os.utime(path, (old, old))
    torn = root / "state" / "torn"
    torn.mkdir(mode=0o700)
    torn.chmod(0o777)
    result = _run(str(BIN / "shieldaudit"), "prune", "--older-than", "1d", root=root)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error: {torn} is writable by group or others (mode 0777), so other users could "
        f"remove or replace what it holds: check its content, then run 'chmod go-w {torn}'"
    )
    assert len(all_lines(root, CID_A)) == 2
    torn.chmod(0o700)
    result = _run(str(BIN / "shieldaudit"), "prune", "--older-than", "1d", root=root)
    assert result.returncode == 0, result.stderr
    assert not trail(root, CID_A).exists()
