"""The sidecar seals on its own, every SHIELDAUDIT_SEAL_INTERVAL and once more on SIGTERM.

Its metrics say when it last sealed and what the seals found (a real process
over real HTTP).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from cli_helpers import cid, write_trail
from sidecar_helpers import SidecarProc

if TYPE_CHECKING:
    from pathlib import Path

A, B = cid("a"), cid("b")


def _seal_count(root: Path) -> int:
    path = root / "seals" / "seals.jsonl"
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def _two_more_seals(sidecar: SidecarProc, root: Path) -> None:
    before = _seal_count(root)
    sidecar.wait_for(lambda _: _seal_count(root) >= before + 2, "two more seals")


def test_sidecar_seals_periodically_counts_tampering_once_and_seals_on_sigterm(tmp_path):
    """Seals every second; a truncated trail is counted once; SIGTERM seals once more, exit 0."""
    root = tmp_path / "root"
    write_trail(root, A, ["create", "start", "died"])
    write_trail(root, B, ["create", "start"])
    sidecar = SidecarProc(root, env={"SHIELDAUDIT_SEAL_INTERVAL": "1s"})
    try:
        values = sidecar.wait_for(lambda v: "shieldaudit_last_seal_timestamp_seconds" in v, "up")
        values = sidecar.wait_for(
            lambda v: v["shieldaudit_last_seal_timestamp_seconds"] > 0, "a seal"
        )
        assert abs(values["shieldaudit_last_seal_timestamp_seconds"] - time.time()) < 3600
        assert values["shieldaudit_integrity_failures_total"] == 0
        active = root / "containers" / A / "audit.jsonl"
        active.write_bytes(active.read_bytes().splitlines(keepends=True)[0])
        sidecar.wait_for(
            lambda v: v["shieldaudit_integrity_failures_total"] >= 1, "the truncation counted"
        )
        # The watcher, tailing the trail, may count the truncation too; the seals
        # count it once, however many seals find it again.
        for _ in range(2):
            _two_more_seals(sidecar, root)
            counted = sidecar.metrics()["shieldaudit_integrity_failures_total"]
        assert counted in {1, 2}
        _two_more_seals(sidecar, root)
        assert sidecar.metrics()["shieldaudit_integrity_failures_total"] == counted
        sealed = _seal_count(root)
        assert sidecar.terminate() == 0
        assert _seal_count(root) >= sealed + 1
        assert "tail truncated" in sidecar.stderr()
    finally:
        sidecar.close()
