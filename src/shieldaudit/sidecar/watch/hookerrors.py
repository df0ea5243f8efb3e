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
#: The hook renames a full log to this name (shieldaudit.hook.HOOK_ERRORS_OLD).
PREVIOUS_NAME: Final = "hook-errors.1.jsonl"


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
        """Return how many new complete lines appeared since the last call.

        When the hook has rotated the log (a new inode under the name), the rest
        of the previous generation, now ``hook-errors.1.jsonl``, is counted first.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return 0
        count = 0
        try:
            st = os.fstat(fd)
            if st.st_ino != self.inode:
                if self.inode:
                    count += self._drain_previous()
                self.inode, self.offset = st.st_ino, 0
            elif st.st_size < self.offset:
                self.offset = 0  # truncated in place
            lines, self.offset = _count_lines(fd, self.offset)
            count += lines
        finally:
            os.close(fd)
        return count

    def _drain_previous(self) -> int:
        """Count what is left after our offset in the rotated file, if it is ours."""
        old = self.path.with_name(PREVIOUS_NAME)
        try:
            fd = os.open(old, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return 0
        try:
            st = os.fstat(fd)
            if st.st_ino != self.inode:
                return 0  # rotated twice while we were away: that generation is gone
            return _count_lines(fd, min(self.offset, st.st_size))[0]
        finally:
            os.close(fd)


def _count_lines(fd: int, offset: int) -> tuple[int, int]:
    """Count complete non-empty lines from ``offset``; return (count, offset after them)."""
    count = 0
    while True:
        data = os.pread(fd, _CHUNK, offset)
        if not data:
            break
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) == _CHUNK:  # an endless line: skip it, bounded memory
                offset += len(data)
                continue
            break  # a partial line: wait for its newline
        count += sum(1 for line in data[:end].split(b"\n") if line.strip())
        offset += end + 1
    return count, offset
