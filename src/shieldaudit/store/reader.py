"""Reading trails: listing containers and segments, streaming lines with bounded memory.

Readers never crash on what they find: a malformed, oversized or incomplete
line becomes a :class:`Record` with an ``error``, and the caller decides.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Self

from shieldaudit.core import ids
from shieldaudit.core.errors import ContainerNotFoundError, StorageError
from shieldaudit.store import chain, layout
from shieldaudit.store.tailscan import complete_end, reverse_lines

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

#: A line longer than this is reported and skipped without being held in memory.
MAX_LINE_BYTES: Final = 1024 * 1024
_CHUNK: Final = 256 * 1024


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment file of a trail; ``number`` is None for the active ``audit.jsonl``."""

    name: str
    number: int | None

    @property
    def sealed(self) -> bool:
        """Return whether this is a sealed (numbered) segment."""
        return self.number is not None


@dataclass(frozen=True, slots=True)
class RawLine:
    """One line as found on disk."""

    lineno: int
    offset: int
    data: bytes  # without the newline; cut to 256 bytes when oversized
    complete: bool  # False: the segment ends without a newline after it
    oversized: bool


@dataclass(frozen=True, slots=True)
class Record:
    """One line of a trail, parsed or not."""

    segment: Segment
    line: RawLine
    entry: dict[str, object] | None
    error: str | None

    @property
    def seq(self) -> int | None:
        """Return the entry's seq, if the line parsed."""
        if self.entry is None:
            return None
        seq = self.entry.get("seq")
        return seq if isinstance(seq, int) else None


def list_container_ids(root: Path) -> list[str]:
    """Return the IDs of every trail directory under the root (other names are ignored)."""
    try:
        names = os.listdir(layout.containers_path(root))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StorageError(f"cannot list {layout.containers_path(root)}: {exc.strerror}") from None
    return sorted(name for name in names if ids.is_container_id(name))


class TrailDir:
    """A container's trail directory, opened safely for reading (a context manager)."""

    def __init__(self, root: Path, container_id: str) -> None:
        """Open ``<root>/containers/<id>`` without following symlinks below the root."""
        self.root = root
        self.container_id = ids.check_container_id(container_id)
        self.path = layout.trail_dir(root, container_id)
        self.root_fd = layout.open_root(root, create=False)
        try:
            cfd = layout.open_subdir(
                self.root_fd,
                layout.CONTAINERS_DIR,
                layout.containers_path(root),
                create=False,
            )
            try:
                self.fd = layout.open_subdir(cfd, container_id, self.path, create=False)
            finally:
                os.close(cfd)
        except FileNotFoundError:
            os.close(self.root_fd)
            raise ContainerNotFoundError(
                f"no trail for container {container_id[:12]} under {root}",
            ) from None
        except BaseException:
            os.close(self.root_fd)
            raise

    def close(self) -> None:
        """Close the directory descriptors."""
        if self.fd >= 0:
            os.close(self.fd)
            os.close(self.root_fd)
            self.fd = self.root_fd = -1

    def __enter__(self) -> Self:
        """Use as a context manager."""
        return self

    def __exit__(self, *_exc: object) -> None:
        """Close on exit."""
        self.close()

    def segments(self) -> list[Segment]:
        """Return the segments in order: sealed ones by number, then the active one."""
        found = [Segment(layout.segment_name(n), n) for n in layout.list_segment_numbers(self.fd)]
        try:
            os.stat(layout.ACTIVE_FILE, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            found.append(Segment(layout.ACTIVE_FILE, None))
        return found

    def open_segment(self, segment: Segment) -> int:
        """Open a segment read-only (regular files only, no symlinks)."""
        return layout.open_regular(self.fd, segment.name, os.O_RDONLY, self.path / segment.name)

    def lines(self, segment: Segment, start: int = 0) -> Iterator[RawLine]:
        """Stream a segment's lines from byte offset ``start``."""
        try:
            fd = self.open_segment(segment)
        except FileNotFoundError:
            return  # removed by retention or prune while we were reading
        try:
            yield from iter_lines(fd, start)
        finally:
            os.close(fd)

    def records(self, segments: list[Segment] | None = None) -> Iterator[Record]:
        """Stream every line of the trail in order, parsed."""
        for segment in self.segments() if segments is None else segments:
            for raw in self.lines(segment):
                yield to_record(segment, raw)

    def last_entries(self, count: int) -> list[dict[str, object]]:
        """Return up to ``count`` last valid entries, newest last, reading tails only."""
        found: list[dict[str, object]] = []
        for segment in reversed(self.segments()):
            try:
                fd = self.open_segment(segment)
            except FileNotFoundError:
                continue
            try:
                end = complete_end(fd, os.fstat(fd).st_size)
                for data in reverse_lines(fd, end):
                    try:
                        found.append(chain.parse_line(data))
                    except ValueError:
                        continue
                    if len(found) >= count:
                        break
            finally:
                os.close(fd)
            if len(found) >= count:
                break
        found.reverse()
        return found


def iter_lines(fd: int, start: int = 0, max_line: int = MAX_LINE_BYTES) -> Iterator[RawLine]:
    """Yield the lines of an open file from ``start``, holding at most ``max_line`` bytes.

    A line longer than ``max_line`` is yielded once as ``oversized`` (its first
    256 bytes only) and the rest of it is skipped. Lines are cut from each
    chunk by index, so reading costs one copy per line, not one per chunk.
    """
    lineno = 0
    buf = b""  # the unfinished line carried over from the previous chunk
    buf_offset = start  # file offset of buf[0]
    skipping = False
    pos = start
    while True:
        chunk = os.pread(fd, _CHUNK, pos)
        if not chunk:
            break
        pos += len(chunk)
        data = buf + chunk if buf else chunk
        cut = 0
        while True:
            nl = data.find(b"\n", cut)
            if nl < 0:
                break
            lineno += 1
            if skipping:
                skipping = False
            elif nl - cut > max_line:
                head = data[cut : cut + 256]
                yield RawLine(lineno, buf_offset + cut, head, complete=True, oversized=True)
            else:
                line = data[cut:nl]
                yield RawLine(lineno, buf_offset + cut, line, complete=True, oversized=False)
            cut = nl + 1
        buf_offset += cut
        buf = data[cut:]
        if len(buf) > max_line and not skipping:
            yield RawLine(lineno + 1, buf_offset, buf[:256], complete=True, oversized=True)
            skipping = True
        if skipping:
            buf_offset += len(buf)
            buf = b""
    if buf and not skipping:
        yield RawLine(lineno + 1, buf_offset, buf, complete=False, oversized=False)


def to_record(segment: Segment, raw: RawLine) -> Record:
    """Parse one raw line into a record (pure)."""
    if raw.oversized:
        return Record(segment, raw, None, f"line longer than {MAX_LINE_BYTES} bytes")
    if not raw.complete:
        return Record(segment, raw, None, "incomplete last line (no newline)")
    try:
        return Record(segment, raw, chain.parse_line(raw.data), None)
    except ValueError as exc:
        return Record(segment, raw, None, str(exc))
