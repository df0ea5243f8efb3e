"""The suite's children start with SIGINT and SIGTERM at their defaults, however pytest was started.

An inner pytest session is started the way a background job, ``nohup``-style
wrapper or CI runner would leave it (SIGINT and SIGTERM ignored, or blocked);
its one test reads the dispositions of a child it starts from
``/proc/<pid>/status``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parents[1]

INNER_TEST = '''
import signal
import subprocess


def test_child_gets_default_sigint_and_sigterm():
    """A child started by a test neither ignores nor blocks SIGINT or SIGTERM."""
    status = subprocess.run(
        ["cat", "/proc/self/status"], capture_output=True, text=True, check=True
    ).stdout
    fields = dict(line.split(":", 1) for line in status.splitlines())
    for sig in (signal.SIGINT, signal.SIGTERM):
        bit = 1 << (sig - 1)
        assert not int(fields["SigIgn"], 16) & bit, f"{sig.name} ignored"
        assert not int(fields["SigBlk"], 16) & bit, f"{sig.name} blocked"
'''


def run_inner(tmp_path: Path, wrapper: str, *plugins: str) -> subprocess.CompletedProcess[str]:
    """Run INNER_TEST in its own pytest session under ``env WRAPPER`` (coreutils' env)."""
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    return subprocess.run(
        [
            "env",
            wrapper,
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *[arg for plugin in plugins for arg in ("-p", plugin)],
            "--rootdir",
            str(tmp_path),
            "-c",
            str(tmp_path / "pytest.ini"),
            str(tmp_path / "test_inner.py"),
        ],
        env={**os.environ, "PYTHONPATH": str(TESTS_DIR)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("wrapper", ["--ignore-signal=INT,TERM", "--block-signal=INT,TERM"])
def test_children_get_default_signals_from_a_session_that_ignores_them(tmp_path, wrapper):
    """With the suite's plugin, an inherited ignore or block stops at pytest: children get defaults.

    Without the plugin, the same inner test fails: the check has teeth.
    """
    fixed = run_inner(tmp_path, wrapper, "child_signals")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    bare = run_inner(tmp_path, wrapper)
    assert bare.returncode == 1, bare.stdout + bare.stderr
    assert "SIGINT" in bare.stdout
