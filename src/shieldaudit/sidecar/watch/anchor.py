"""Finding things in segment files: the anchor's line end, and a trail's last entry.

An entry's line always ends with ``"mac":"<64 hex>"}`` and a newline, and a
mac is unique, so the bytes ``anchor_bytes(mac)`` locate the end of that
entry's line exactly: before a checkpointed offset (a cheap validation), or
anywhere in a segment (a search, after rotations, truncation or inode reuse).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from shieldaudit.core.errors import ShieldAuditError
from shieldaudit.sidecar.watch.checkpoint import Mark
from shieldaudit.store import chain, layout
from shieldaudit.store.tailscan import complete_end, reverse_lines

CHUNK: Final = 1024 * 1024
MAX_LINE_BYTES: Final = 1024 * 1024
ACTIVE_SEGMENT: Final = 0  # the segment number used for audit.jsonl in marks
_NL: Final = b"\n"


def anchor_bytes(mac: str) -> bytes:
    """Return how the line of the entry with ``mac`` ends, newline included."""
    return b'"mac":"' + mac.encode("ascii", "replace") + b'"}\n'


def segment_file(number: int) -> str:
    """Return the file name of a segment number (0: the active ``audit.jsonl``)."""
    return layout.ACTIVE_FILE if number == ACTIVE_SEGMENT else layout.segment_name(number)


def find_pattern(dir_fd: int, name: str, pattern: bytes) -> tuple[int, int, int] | None:
    """Return ``(inode, offset after pattern, size)`` of the first match in a file."""
    try:
        fd = layout.open_regular(dir_fd, name, os.O_RDONLY, Path(name))
    except (FileNotFoundError, ShieldAuditError):
        return None
    try:
        st = os.fstat(fd)
        pos = 0
        keep = len(pattern) - 1
        tail = b""
        while True:
            chunk = os.pread(fd, CHUNK, pos)
            if not chunk:
                return None
            data = tail + chunk
            hit = data.find(pattern)
            if hit >= 0:
                return st.st_ino, pos - len(tail) + hit + len(pattern), st.st_size
            tail = data[-keep:]
            pos += len(chunk)
    finally:
        os.close(fd)


def mark_at_end(dir_fd: int) -> Mark:
    """Return a mark that skips all history: after the last entry, every segment counted."""
    numbers = layout.list_segment_numbers(dir_fd)
    mark = Mark(rotated=numbers[-1] if numbers else 0)
    for number in [ACTIVE_SEGMENT, *reversed(numbers)]:
        name = segment_file(number)
        try:
            fd = layout.open_regular(dir_fd, name, os.O_RDONLY, Path(name))
        except (FileNotFoundError, ShieldAuditError):
            continue
        try:
            st = os.fstat(fd)
            end = complete_end(fd, st.st_size)
            for line in reverse_lines(fd, end):
                head = chain.head_of((line,))
                if head is not None:
                    mark.last_seq, mark.last_mac = head
                    mark.segment, mark.inode = number, st.st_ino
                    mark.offset = _line_end_of(fd, end, head[1])
                    return mark
        finally:
            os.close(fd)
    return mark


def _line_end_of(fd: int, end: int, mac: str) -> int:
    """Return the offset just after the line carrying ``mac``, searching back from ``end``."""
    pattern = anchor_bytes(mac)
    start = max(0, end - 2 * MAX_LINE_BYTES)
    hit = os.pread(fd, end - start, start).rfind(pattern)
    return start + hit + len(pattern) if hit >= 0 else end
