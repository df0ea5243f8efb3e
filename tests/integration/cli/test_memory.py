"""``show`` streams: its peak memory does not grow with the number of entries it prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cli_helpers import T0, store
from shieldaudit.core.timefmt import format_ns
from shieldaudit.store.writer import TrailWriter

PROBE = str(Path(__file__).resolve().parents[2] / "rss_probe.py")
SHIELDAUDIT = str(Path(sys.executable).parent / "shieldaudit")
CID = "5" * 64
#: A run's hook entries and the events the listener adds: everything reconciliation reads.
CYCLE = (
    ("hook", "createRuntime"),
    ("hook", "poststart"),
    ("events", "start"),
    ("events", "died"),
    ("hook", "poststop"),
)


def _trail(root: Path, entries: int) -> None:
    with TrailWriter(store(root, max_segment_bytes=8 << 20)) as writer:
        for i in range(entries):
            source, action = CYCLE[i % len(CYCLE)]
            fields = {"source": source, "action": action, "container": "web", "image": "alpine"}
            writer.append(CID, fields | {"ts": format_ns(T0 + i * 1_000_000)})


def _show_peak_rss(root: Path, tmp_path: Path) -> int:
    rss_file = tmp_path / "rss"
    command = [SHIELDAUDIT, "--root", str(root), "show", "web", "--json"]
    result = subprocess.run(
        [sys.executable, PROBE, str(rss_file), *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return int(rss_file.read_text())


def test_show_peak_memory_is_flat_in_the_trail_length(tmp_path):
    """Peak RSS of ``show --json`` on 100,000 entries is within 25 % of that on 5,000.

    Every entry reconciliation reads (hook runs, start events) is fed to it as
    it streams by; none is kept, so a long trail costs no more memory than a
    short one.
    """
    small, large = tmp_path / "small", tmp_path / "large"
    _trail(small, 5_000)
    _trail(large, 100_000)
    small_rss = _show_peak_rss(small, tmp_path)
    large_rss = _show_peak_rss(large, tmp_path)
    assert large_rss <= small_rss * 1.25, (small_rss, large_rss)
