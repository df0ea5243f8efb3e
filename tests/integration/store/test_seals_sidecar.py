"""The sidecar seals on its own, every SHIELDAUDIT_SEAL_INTERVAL and once more on SIGTERM.

Its metrics say when it last sealed and what the seals found (a real process
over real HTTP).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import TYPE_CHECKING

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cli_helpers import cid, write_trail

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

DEADLINE_S = 60.0
RUN_CLI = "import sys; from shieldaudit.cli import main; sys.argv[0] = 'shieldaudit'; main()"
A, B = cid("a"), cid("b")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(root: Path, interval: str) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            RUN_CLI,
            "--root",
            str(root),
            "sidecar",
            "--no-listen",
            "--metrics-port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "SHIELDAUDIT_CONFIG": os.devnull, "SHIELDAUDIT_SEAL_INTERVAL": interval},
    )
    return process, port


def _metrics(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _wait(
    process: subprocess.Popen[bytes],
    port: int,
    condition: Callable[[dict[str, float]], bool],
    what: str,
) -> dict[str, float]:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
        values = _metrics(port)
        if values and condition(values):
            return values
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; last metrics: {values}")
        time.sleep(0.05)


def _seal_count(root: Path) -> int:
    path = root / "seals" / "seals.jsonl"
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def _two_more_seals(process: subprocess.Popen[bytes], port: int, root: Path) -> None:
    before = _seal_count(root)
    _wait(process, port, lambda _: _seal_count(root) >= before + 2, "two more seals")


def test_sidecar_seals_periodically_counts_tampering_once_and_seals_on_sigterm(tmp_path):
    """Seals every second; a truncated trail is counted once; SIGTERM seals once more, exit 0."""
    root = tmp_path / "root"
    write_trail(root, A, ["create", "start", "died"])
    write_trail(root, B, ["create", "start"])
    process, port = _start(root, "1s")
    try:
        values = _wait(
            process, port, lambda v: "shieldaudit_last_seal_timestamp_seconds" in v, "up"
        )
        values = _wait(
            process, port, lambda v: v["shieldaudit_last_seal_timestamp_seconds"] > 0, "a seal"
        )
        assert abs(values["shieldaudit_last_seal_timestamp_seconds"] - time.time()) < 3600
        assert values["shieldaudit_integrity_failures_total"] == 0
        active = root / "containers" / A / "audit.jsonl"
        active.write_bytes(active.read_bytes().splitlines(keepends=True)[0])
        _wait(
            process,
            port,
            lambda v: v["shieldaudit_integrity_failures_total"] >= 1,
            "the truncation counted",
        )
        # The watcher, tailing the trail, may count the truncation too; the seals
        # count it once, however many seals find it again.
        for _ in range(2):
            _two_more_seals(process, port, root)
            counted = _metrics(port)["shieldaudit_integrity_failures_total"]
        assert counted in {1, 2}
        _two_more_seals(process, port, root)
        assert _metrics(port)["shieldaudit_integrity_failures_total"] == counted
        sealed = _seal_count(root)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert _seal_count(root) >= sealed + 1
        assert b"tail truncated" in process.stderr.read()  # type: ignore[union-attr]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        process.stderr.close()  # type: ignore[union-attr]


def test_sealing_off_and_a_bad_interval(tmp_path):
    """An interval of 0 writes no seal (the gauge stays 0); a bad value is one Error line."""
    root = tmp_path / "root"
    write_trail(root, A, ["create"])
    process, port = _start(root, "0")
    try:
        values = _wait(
            process, port, lambda v: "shieldaudit_last_seal_timestamp_seconds" in v, "up"
        )
        assert values["shieldaudit_last_seal_timestamp_seconds"] == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert not (root / "seals").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        process.stderr.close()  # type: ignore[union-attr]
    bad, _ = _start(root, "soon")
    _, err = bad.communicate(timeout=60)
    assert bad.returncode == 2
    expected = (
        "Error: invalid setting seal_interval (from SHIELDAUDIT_SEAL_INTERVAL): expected a "
        "duration such as 1h, 10m or 30s (0 turns sealing off), got 'soon'"
    )
    assert err.decode().splitlines() == [expected]
