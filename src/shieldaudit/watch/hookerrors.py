"""Counting the hook's failure records (``<root>/state/hook-errors.jsonl``), once each.

The hook appends one JSON line per failure; the sidecar counts complete lines.
Position is (inode, offset): a replaced or truncated file is counted from its start.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from pathlib import Path

_CHUNK: Final = 1024 * 1024


class HookErrorsTail:
    """Counts new complete lines of the hook's error file."""

    def __init__(self, path: Path, position: tuple[int, int] | None = None) -> None:
        """Continue from ``position`` (inode, offset), or from the start of the file."""
        self.path = path
        self.inode, self.offset = position or (0, 0)

    @property
    def position(self) -> tuple[int, int]:
        """Return (inode, offset) for the checkpoint."""
        return self.inode, self.offset

    def skip_to_end(self) -> None:
        """Start counting only what is appended from now on (``--from-end``)."""
        try:
            st = self.path.stat(follow_symlinks=False)
        except OSError:
            return
        self.inode, self.offset = st.st_ino, st.st_size

    def advance(self) -> int:
        """Return how many new complete lines appeared since the last call."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return 0
        try:
            st = os.fstat(fd)
            if st.st_ino != self.inode or st.st_size < self.offset:
                self.inode, self.offset = st.st_ino, 0  # a new or truncated file
            count = 0
            while True:
                data = os.pread(fd, _CHUNK, self.offset)
                if not data:
                    break
                end = data.rfind(b"\n")
                if end < 0:
                    if len(data) == _CHUNK:  # an endless line: skip it, bounded memory
                        self.offset += len(data)
                        continue
                    break  # a partial line: wait for its newline
                count += sum(1 for line in data[:end].split(b"\n") if line.strip())
                self.offset += end + 1
        finally:
            os.close(fd)
        return count
