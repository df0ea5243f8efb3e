"""A huge torn tail met by the hook as the runtime runs it: bounded memory, bounded state/torn."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from shieldaudit.core.settings import StoreSettings
from shieldaudit.hook import hooksd
from shieldaudit.store.verify import verify_container
from shieldaudit.store.writer import TORN_KEEP_BYTES
from store_helpers import CID_A, all_lines, trail, write

PROBE = str(Path(__file__).resolve().parents[2] / "rss_probe.py")
TAIL = 300 * 1024 * 1024


def _run_hook(root: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess[bytes], int]:
    """Run the hooks.d command install-hooks writes; return the result and its peak RSS (KiB)."""
    settings = StoreSettings(root, fsync="always")
    doc = hooksd.build_hook("poststart", hooksd.native_hook_path(), hooksd.settings_env(settings))
    env = dict(item.split("=", 1) for item in doc["hook"]["env"])
    state = {"ociVersion": "1.0.2", "id": CID_A, "status": "running", "pid": 1}
    rss_file = tmp_path / "rss"
    result = subprocess.run(
        [sys.executable, PROBE, str(rss_file), doc["hook"]["path"], *doc["hook"]["args"][1:]],
        input=json.dumps(state).encode(),
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    return result, int(rss_file.read_text())


def _zeros_sha256(size: int) -> str:
    hasher = hashlib.sha256()
    block = bytes(1024 * 1024)
    for _ in range(size // len(block)):
        hasher.update(block)
    return hasher.hexdigest()


def test_huge_torn_tail_costs_the_hook_bounded_memory(tmp_path):
    """A 300 MiB torn tail: the hook's peak RSS stays far below it, and only its start is kept.

    The tail is a sparse run of zero bytes without a newline (what a power cut
    can leave). The entry the hook writes records all the bytes cut and their
    SHA-256; state/torn keeps the first TORN_KEEP_BYTES of them; the chain verifies.
    Run twice: state/torn holds two bounded fragments, not two copies of the tail.
    """
    root = tmp_path / "root"
    write(root, CID_A, 1)
    active = trail(root, CID_A) / "audit.jsonl"
    for run in (1, 2):
        os.truncate(active, active.stat().st_size + TAIL)
        result, rss_kib = _run_hook(root, tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stderr == b""
        assert rss_kib * 1024 < TAIL // 4, f"hook peak RSS {rss_kib} KiB for a {TAIL}-byte tail"
        entries = [json.loads(line) for line in all_lines(root, CID_A)]
        assert [e["seq"] for e in entries] == list(range(1, run + 2))
        assert entries[-1]["torn_tail_bytes"] == TAIL
        saved = sorted((root / "state" / "torn").iterdir())
        assert len(saved) == run
        assert all(p.stat().st_size == TORN_KEEP_BYTES for p in saved)
        assert saved[-1].read_bytes() == bytes(TORN_KEEP_BYTES)
    assert entries[-1]["torn_tail_sha256"] == _zeros_sha256(TAIL)
    report = verify_container(root, CID_A)
    assert report.ok, [p.render() for p in report.problems]
