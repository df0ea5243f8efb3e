"""Hostile roots and IDs through the real commands: one clear error line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from store_helpers import CID_A, write

BIN = Path(sys.executable).parent


def _run(*args: str, root: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "SHIELDAUDIT_ROOT": str(root),
        "SHIELDAUDIT_CONFIG": os.devnull,
    }
    return subprocess.run(
        args, input=stdin, capture_output=True, text=True, env=env, check=False, timeout=60
    )


def test_world_writable_root_is_one_error_line(tmp_path):
    """Verify on a world-writable root: exit 1, one 'Error:' line naming the fix."""
    root = tmp_path / "root"
    write(root, CID_A, 1)
    root.chmod(0o777)
    result = _run(str(BIN / "shieldaudit"), "verify", root=root)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: trail root")
    assert "chmod go-w" in lines[0]
    assert "Traceback" not in result.stderr


def test_hostile_id_in_hook_state_writes_nothing_anywhere(tmp_path):
    """A hook state whose id tries to escape the root creates nothing, inside or outside."""
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    hostile = '{"id": "../../../../tmp/evil", "pid": 1, "bundle": "/nonexistent"}'
    result = _run(str(BIN / "shieldaudit-hook"), "poststart", root=root, stdin=hostile)
    assert "Traceback" not in result.stderr
    assert "invalid container ID" in result.stderr
    assert not (root / "containers").exists() or not any((root / "containers").iterdir())
    assert not Path("/tmp/evil").exists()


def test_show_with_path_like_argument_is_a_usage_error(tmp_path):
    """Show '../..' is not a path: it is an unknown container (exit 2), nothing is read outside."""
    root = tmp_path / "root"
    write(root, CID_A, 1)
    result = _run(str(BIN / "shieldaudit"), "show", "../..", root=root)
    assert result.returncode == 2
    assert result.stderr.startswith("Error: ")
    assert "Traceback" not in result.stderr


def test_config_with_bad_value_is_one_error_line(tmp_path):
    """A bad setting from the environment: exit 2, the setting and its source named."""
    root = tmp_path / "root"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "SHIELDAUDIT_ROOT": str(root),
        "SHIELDAUDIT_FSYNC": "sometimes",
        "SHIELDAUDIT_CONFIG": os.devnull,
    }
    result = subprocess.run(
        [str(BIN / "shieldaudit"), "verify"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "Error: invalid setting fsync (from SHIELDAUDIT_FSYNC): expected 'always' or 'never', "
        "got 'sometimes'"
    )
