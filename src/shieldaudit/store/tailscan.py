"""Reading a segment from its end: lines last-first, the last complete line, the chain head.

Writers need the chain head (the last valid entry) on every cold append, and
readers need the newest entries (``ls``, ``tail``, the listener's dedup): all of
it is found by reading backwards in small chunks, never the whole file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Final

from shieldaudit.store import chain, layout

if TYPE_CHECKING:
    from collections.abc import Iterator

_CHUNK: Final = 64 * 1024
_FIRST_CHUNK: Final = 8 * 1024
_NL: Final = b"\n"


def reverse_lines(fd: int, end: int, *, max_line: int | None = None) -> Iterator[bytes]:
    """Yield the lines of ``fd[:end]`` last first, without newlines; ``end`` follows a newline.

    The one backward line splitter of the store. Empty lines are skipped.
    Reads backwards, a small chunk first, so finding the last entry costs one
    small read. With ``max_line`` (readers), a line longer than that is not
    held: it is dropped, and what is read of its start comes out as a
    fragment that is no entry; writers (None) keep every line whole.
    """
    pos = end
    carry = b""
    step = _FIRST_CHUNK
    while pos > 0:
        step = min(step, pos)
        pos -= step
        parts = (os.pread(fd, step, pos) + carry).split(_NL)
        carry = parts[0]  # may continue before ``pos``: completed by the next chunk
        for part in reversed(parts[1:]):
            if part:
                yield part
        if max_line is not None and len(carry) > max_line:
            carry = b""
        step = _CHUNK
    if carry:
        yield carry


def complete_end(fd: int, size: int) -> int:
    """Return the offset just after the last newline in ``fd[:size]`` (0 when there is none).

    Everything after it is an incomplete line: a write in progress or a torn tail.
    """
    if size and os.pread(fd, 1, size - 1) == _NL:
        return size
    pos = size
    while pos > 0:
        step = min(_CHUNK, pos)
        pos -= step
        nl = os.pread(fd, step, pos).rfind(_NL)
        if nl >= 0:
            return pos + nl + 1
    return 0


def head_in(fd: int, end: int) -> tuple[int, str] | None:
    """Return ``(seq, mac)`` of the last valid entry in ``fd[:end]``, if any."""
    for line in reverse_lines(fd, end):
        head = chain.head_of((line,))
        if head is not None:
            return head
    return None


def entries_newest_first(
    dir_fd: int, active_fd: int, active_end: int, shown_dir: Path | None = None
) -> Iterator[dict[str, object]]:
    """Yield the trail's entries newest first: the active segment's, then each sealed one's.

    Lines that do not parse as entries are passed over. Lazy: a caller that
    stops at the first entry it looks for reads one small chunk. Sealed
    segments are opened as :func:`find_head` opens them.
    """
    yield from _entries(reverse_lines(active_fd, active_end))
    for number in reversed(layout.list_segment_numbers(dir_fd)):
        name = layout.segment_name(number)
        shown = shown_dir / name if shown_dir is not None else Path(name)
        fd = layout.open_regular(dir_fd, name, os.O_RDONLY, shown, single_link=True)
        try:
            yield from _entries(reverse_lines(fd, complete_end(fd, os.fstat(fd).st_size)))
        finally:
            os.close(fd)


def _entries(lines: Iterator[bytes]) -> Iterator[dict[str, object]]:
    for line in lines:
        try:
            entry = chain.parse_line(line)
        except ValueError:
            continue
        yield entry


def find_head(
    dir_fd: int, active_fd: int, active_end: int, shown_dir: Path | None = None
) -> tuple[int, str]:
    """Return the trail's chain head: the active segment's, else the newest sealed one's.

    ``(0, GENESIS)`` for a trail with no valid entry yet. A sealed segment with
    other hard links is refused, as the writer refuses such an ``audit.jsonl``.
    ``shown_dir`` is the trail directory, for messages.
    """
    if active_end:
        head = head_in(active_fd, active_end)
        if head is not None:
            return head
    for number in reversed(layout.list_segment_numbers(dir_fd)):
        name = layout.segment_name(number)
        shown = shown_dir / name if shown_dir is not None else Path(name)
        fd = layout.open_regular(dir_fd, name, os.O_RDONLY, shown, single_link=True)
        try:
            head = head_in(fd, complete_end(fd, os.fstat(fd).st_size))
        finally:
            os.close(fd)
        if head is not None:
            return head
    return 0, chain.GENESIS
