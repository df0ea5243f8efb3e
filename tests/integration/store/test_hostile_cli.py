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


_PEAK_RSS = """
import os, sys
out = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
actions = [(os.POSIX_SPAWN_DUP2, out, 1), (os.POSIX_SPAWN_CLOSE, out)]
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ, file_actions=actions)
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def _peak_rss(argv: list[str], root: Path, out: Path) -> tuple[int, int]:
    """Run ``argv`` (stdout to ``out``) from a small Python parent; return (exit, peak RSS KiB).

    The peak comes from ``wait4`` in that parent, which is tiny: a child
    spawned straight from pytest would inherit pytest's own peak in ru_maxrss.
    """
    env = {
        "PATH": os.environ.get("PATH", ""),
        "SHIELDAUDIT_ROOT": str(root),
        "SHIELDAUDIT_CONFIG": os.devnull,
    }
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, str(out), *argv],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=300,
    )
    code, rss = result.stdout.split()
    return int(code), int(rss)


def test_verify_memory_is_bounded_whatever_the_trail_holds(tmp_path):
    """Verify stays far below its input in memory: garbage lines, a huge line, a huge tail.

    Every kind of hostile bulk at once: lines that are each a problem (the
    report keeps only the first few), an over-limit line (reported, not
    loaded) and an unterminated tail of 64 MiB. Input about 130 MiB; the
    whole command must stay under 48 MiB, interpreter included.
    """
    root = tmp_path / "root"
    write(root, CID_A, 3)
    active = root / "containers" / CID_A / "audit.jsonl"
    garbage = 400_000
    with active.open("ab") as handle:
        handle.write((b"g" * 127 + b"\n") * garbage)
        handle.write(b"{" * (16 << 20) + b"\n")
        block = b"t" * (1 << 20)
        for _ in range(64):
            handle.write(block)
    size_kib = active.stat().st_size // 1024
    code, rss_kib = _peak_rss([str(BIN / "shieldaudit"), "verify"], root, tmp_path / "out")
    lines = (tmp_path / "out").read_text().splitlines()
    assert code == 1
    assert lines[-1] == (
        f"FAILED: 1 container(s), 3 entries, {garbage + 2} problem(s) in 1 container(s)"
    )
    assert size_kib > 100 * 1024
    assert rss_kib < 48 * 1024, f"peak RSS {rss_kib} KiB for a {size_kib} KiB trail"
