"""Shared helpers for store tests: a safe root, quick writers, raw access to trail files."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shieldaudit.core.settings import StoreSettings
from shieldaudit.store.writer import TrailWriter

if TYPE_CHECKING:
    from pathlib import Path

CID_A = "a" * 64
CID_B = "b" * 64


def make_root(tmp_path: Path) -> Path:
    """Return a fresh root below tmp_path (created 0700 by the writer)."""
    return tmp_path / "root"


def settings(root: Path, **overrides: object) -> StoreSettings:
    """Store settings for tests: fsync off (tests that need it turn it on), small segments."""
    values: dict[str, object] = {
        "root": root,
        "fsync": "never",
        "max_segment_bytes": 10 * 1024 * 1024,
    }
    values.update(overrides)
    return StoreSettings(**values)  # type: ignore[arg-type]


def write(root: Path, container_id: str, count: int, **overrides: object) -> list[int]:
    """Append ``count`` cli entries; return their seqs."""
    with TrailWriter(settings(root, **overrides)) as writer:
        return [
            writer.append(container_id, {"source": "cli", "action": "test", "detail": f"n{i}"}).seq
            for i in range(count)
        ]


def trail(root: Path, container_id: str) -> Path:
    """Return the trail directory."""
    return root / "containers" / container_id


def all_lines(root: Path, container_id: str) -> list[bytes]:
    """Return every line of every segment, in order (sealed by number, then active)."""
    directory = trail(root, container_id)
    sealed = sorted(p for p in directory.iterdir() if p.name.startswith("audit-"))
    files = [*sealed, directory / "audit.jsonl"]
    lines: list[bytes] = []
    for path in files:
        if path.exists():
            lines.extend(path.read_bytes().splitlines())
    return lines
