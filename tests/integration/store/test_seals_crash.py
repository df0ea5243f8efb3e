"""``kill -9`` at random points of seals and key steps, with writers appending meanwhile.

Real processes: one seals in a loop while another appends a batch (rotating
and retaining); the sealer is killed at a random moment, many times. After every
kill the host must still write (an append and a seal succeed) and verify
(exit 0 on the host and with the verification key): no half-done seal or key
step is ever mistaken for tampering, and no entry is signed with a key whose
epoch a seal already closed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import invoke
from shieldaudit.core.settings import StoreSettings
from shieldaudit.store import fskey, seals
from shieldaudit.store.writer import TrailWriter

WORKER = Path(__file__).resolve().parents[2] / "seal_worker.py"
KILLS = 30


def _start(mode: str, root: Path, key: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, str(WORKER), mode, str(root), str(key)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    return process


def _read(process: subprocess.Popen[str], expected: str) -> None:
    """Wait for the worker's next line: one seal done ("ack"), or a batch appended ("idle")."""
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line == expected, f"worker ended: {line!r}, status {process.poll()}"


def _go(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.write("go\n")
    process.stdin.flush()


def _kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()


@pytest.mark.parametrize("evolving", [True, False], ids=["evolving-key", "static-key"])
def test_kill_9_during_seals_never_leaves_a_host_that_cannot_write_or_verify(tmp_path, evolving):
    """After each of many random kills of a sealer (a writer busy): append, seal, verify work."""
    keydir = tmp_path / "etc"
    keydir.mkdir(mode=0o700)
    key = keydir / "key"
    verification = tmp_path / "verify.key"
    root = tmp_path / "root"
    env = {"SHIELDAUDIT_KEY_FILE": str(key), "SHIELDAUDIT_KEEP_SEGMENTS": "3"}
    if evolving:
        assert (
            invoke(root, "keys", "init", "--verification-key", str(verification), env=env).code == 0
        )
    else:
        key.write_text("0123456789abcdef0123456789abcdef\n")
        key.chmod(0o600)
    rng = random.Random(os.getpid())
    writer = _start("append", root, key)
    try:
        for _ in range(KILLS):
            sealer = _start("seal", root, key)
            _go(writer)  # appends while the sealer seals
            if rng.random() < 0.5:
                _read(sealer, "ack\n")  # past its first seal: the kill lands in a later one
            # The random point of the kill (not a wait for anything):
            time.sleep(rng.uniform(0, 0.05))
            _kill(sealer)
            _read(writer, "idle\n")  # the batch is done: the trails hold still for the checks
            _check_host(root, key, verification if evolving else None, env)
    finally:
        _kill(writer)
    _check_host(root, key, verification if evolving else None, env)
    if evolving:
        assert fskey.decode(key.read_bytes(), key)[1].epoch >= KILLS  # a step per check at least


def _check_host(root: Path, key: Path, verification: Path | None, env: dict[str, str]) -> None:
    settings = StoreSettings(
        root=root, fsync="always", key_file=key, keep_segments=3, max_segment_bytes=2048
    )
    with TrailWriter(settings) as writer:
        writer.append("d" * 64, {"source": "cli", "action": "probe"})
    outcome = seals.seal_now(settings)
    assert not outcome.problems
    assert not outcome.seal_problems
    result = invoke(root, "verify", env=env)
    assert result.code == 0, result.out + result.err
    if verification is not None:
        full = invoke(root, "verify", "--verification-key", str(verification), env=env)
        assert full.code == 0, full.out + full.err
