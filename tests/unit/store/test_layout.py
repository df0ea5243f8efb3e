"""``layout.replace_file``: a file replaced whole, through a temporary file in its directory."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from shieldaudit.store import layout

if TYPE_CHECKING:
    from pathlib import Path


def test_replace_file_swaps_the_whole_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    """The new content replaces the old, mode 0600, and nothing else is left in the directory."""
    (tmp_path / "state.json").write_bytes(b"old and longer\n")
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        layout.replace_file(dfd, "state.json", b"new\n")
        layout.replace_file(dfd, "other.json", b"", sync=False)
    finally:
        os.close(dfd)
    assert (tmp_path / "state.json").read_bytes() == b"new\n"
    assert (tmp_path / "state.json").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json", "state.json"]


def test_replace_file_never_writes_through_a_symlinked_temporary(tmp_path: Path) -> None:
    """A symlink planted at the temporary name is refused, and its target is left alone."""
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep\n")
    (tmp_path / f".state.json.{os.getpid()}.tmp").symlink_to(target)
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError):
            layout.replace_file(dfd, "state.json", b"new\n")
    finally:
        os.close(dfd)
    assert target.read_bytes() == b"keep\n"
    assert not (tmp_path / "state.json").exists()
