"""Reading trails: the one place that opens segments and splits them into lines.

Forward, :func:`scan_lines` streams a segment with bounded memory (``show``,
``verify``, ``tail -f``, the fleet checks); backward, :func:`tail_lines` (over
:func:`.tailscan.reverse_lines`) reads only a trail's end (``ls``, ``tail``).
Lines become :class:`~shieldaudit.core.models.Entry` values through
:func:`decode`, the one entry decoder of every reader.

Readers never crash on what they find: a malformed, oversized or incomplete
line becomes a :class:`Record` with an ``error`` (or is passed over), and the
caller decides.
"""

from __future__ import annotations

import itertools
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Self

from pydantic import ValidationError

from shieldaudit.core import ids
from shieldaudit.core.errors import ContainerNotFoundError, StorageError
from shieldaudit.core.models import Entry
from shieldaudit.store import chain, layout
from shieldaudit.store.tailscan import complete_end, reverse_lines

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

#: A line longer than this is reported and skipped without being held in memory.
MAX_LINE_BYTES: Final = 1024 * 1024
#: How far into a segment its first entry is looked for.
HEAD_SCAN_BYTES: Final = 2 * MAX_LINE_BYTES
#: Kinds of line :func:`scan_lines` yields.
COMPLETE: Final = 0
OVERSIZED: Final = 1
INCOMPLETE: Final = 2
_CHUNK: Final = 256 * 1024
_HEAD_CHUNK: Final = 4096
_HEAD_BYTES: Final = 256  # what is kept of an oversized line
#: O_NONBLOCK: a FIFO planted as a segment must not hang the open.
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


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
    entry: Entry | None
    error: str | None

    @property
    def seq(self) -> int | None:
        """Return the entry's seq, if the line parsed."""
        return None if self.entry is None else self.entry.seq


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

    def last_entries(self, count: int) -> list[Entry]:
        """Return up to ``count`` last valid entries, newest last, reading tails only."""
        found: list[Entry] = []
        for segment in reversed(self.segments()):
            try:
                fd = self.open_segment(segment)
            except FileNotFoundError:
                continue
            try:
                end = complete_end(fd, os.fstat(fd).st_size)
                for data in reverse_lines(fd, end, max_line=MAX_LINE_BYTES):
                    entry = try_decode(data)
                    if entry is not None:
                        found.append(entry)
                        if len(found) >= count:
                            break
            finally:
                os.close(fd)
            if len(found) >= count:
                break
        found.reverse()
        return found


def scan_lines(
    fd: int,
    start: int = 0,
    max_line: int = MAX_LINE_BYTES,
    *,
    first_chunk: int | None = None,
) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(kind, offset, data)`` for each line of an open file from ``start``.

    The one forward line splitter of the store. ``kind`` is :data:`COMPLETE`
    (``data`` without its newline; empty lines too), :data:`OVERSIZED` (longer
    than ``max_line``: yielded once, as its first 256 bytes, when it is found;
    the rest is skipped, never held) or :data:`INCOMPLETE` (the last line has
    no newline yet). ``offset`` is where the line starts in the file. Whole
    chunks are split at once: cheaper per line than searching line by line.
    ``first_chunk`` makes the first read small (a trail's first entry).
    """
    pos = start
    carry = b""
    at = start  # file offset of the first byte not yet yielded or skipped
    skipping = False  # inside an oversized line whose newline is not read yet
    size = first_chunk or _CHUNK
    while block := os.pread(fd, size, pos):
        pos += len(block)
        size = _CHUNK
        parts = (carry + block).split(b"\n") if carry else block.split(b"\n")
        carry = parts.pop()
        if skipping and parts:  # parts[0] ends the oversized line
            skipping = False
            at += len(parts[0]) + 1
            del parts[0]
        for part in parts:
            length = len(part)
            if length > max_line:
                yield OVERSIZED, at, part[:_HEAD_BYTES]
            else:
                yield COMPLETE, at, part
            at += length + 1
        if len(carry) > max_line and not skipping:
            yield OVERSIZED, at, carry[:_HEAD_BYTES]
            skipping = True
        if skipping:
            at += len(carry)
            carry = b""
    if carry:
        yield INCOMPLETE, at, carry


def decoded_lines(fd: int) -> Iterator[tuple[int, bytes, Entry | None]]:
    """Yield ``(kind, line, entry)`` for each non-empty line of a file (see :func:`scan_lines`).

    ``entry`` is None when the line is not an entry (or not complete).
    """
    for kind, _, line in scan_lines(fd):
        if kind != COMPLETE:
            yield kind, line, None
        elif line:
            yield kind, line, try_decode(line)


def iter_lines(fd: int, start: int = 0, max_line: int = MAX_LINE_BYTES) -> Iterator[RawLine]:
    """Yield the lines of an open file from ``start`` as :class:`RawLine` (see :func:`scan_lines`).

    Line numbers count from ``start``.
    """
    for lineno, (kind, offset, data) in enumerate(scan_lines(fd, start, max_line), 1):
        yield RawLine(
            lineno, offset, data, complete=kind != INCOMPLETE, oversized=kind == OVERSIZED
        )


def to_record(segment: Segment, raw: RawLine) -> Record:
    """Parse one raw line into a record (pure)."""
    if raw.oversized:
        return Record(segment, raw, None, f"line longer than {MAX_LINE_BYTES} bytes")
    if not raw.complete:
        return Record(segment, raw, None, "incomplete last line (no newline)")
    try:
        return Record(segment, raw, decode(raw.data), None)
    except ValueError as exc:
        return Record(segment, raw, None, str(exc))


def decode(line: bytes) -> Entry:
    """Decode one stored line into an :class:`Entry`; raise ValueError saying what is wrong.

    Validated JSON decoding is the fast path. A line it refuses is worded as
    :func:`chain.parse_line` words it (not UTF-8, not JSON, not an object, no
    valid ``seq``); a JSON object the fast decoder refuses but Python's reads
    (a lone surrogate escaped in a hostile name) is validated from that; one
    that still does not fit the entry format is "not an entry (…)".
    """
    try:
        return _validate_json(line)
    except ValidationError:
        pass
    value = chain.parse_line(line)
    try:
        return Entry.model_validate(value)
    except ValidationError as exc:
        raise ValueError(f"not an entry ({_first_error(exc)})") from None


def try_decode(line: bytes) -> Entry | None:
    """Return the line's entry, or None when it is not one (see :func:`decode`)."""
    try:
        return _validate_json(line)
    except ValidationError:
        pass
    try:
        return decode(line)
    except ValueError:
        return None


#: ``Entry.model_validate_json`` without its Python wrapper (a sixth of a line's cost).
_validate_json: Final[Callable[[bytes], Entry]] = Entry.__pydantic_validator__.validate_json


def _first_error(exc: ValidationError) -> str:
    error = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]


# --- a trail directory read cheaply: its segments, first entry and last lines ---------


def segment_names(dir_fd: int) -> list[str]:
    """Return a trail directory's segment file names, oldest first, the active one last."""
    listing = os.listdir(dir_fd)
    numbers = sorted(n for n in map(layout.segment_number, listing) if n is not None)
    names = [layout.segment_name(n) for n in numbers]
    if layout.ACTIVE_FILE in listing:
        names.append(layout.ACTIVE_FILE)
    return names


def open_segment(dir_fd: int, name: str) -> int | None:
    """Open a segment read-only: no symlinks, regular files only; None when it is gone.

    The common case costs one ``open`` and one ``fstat``; anything unusual is
    left to :func:`layout.open_regular`, which raises its precise error.
    """
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None  # removed by retention or prune since the listing
    except OSError:
        fd = -1
    if fd >= 0 and stat.S_ISREG(os.fstat(fd).st_mode):
        os.set_blocking(fd, True)
        return fd
    if fd >= 0:
        os.close(fd)
    try:
        return layout.open_regular(dir_fd, name, os.O_RDONLY, Path(name))
    except FileNotFoundError:
        return None


def head_lines(dir_fd: int, names: list[str], count: int) -> list[bytes]:
    """Return up to ``count`` first complete lines of the oldest segment that has any.

    Reads at most :data:`HEAD_SCAN_BYTES` of each segment, in small chunks first.
    """
    for name in names:
        fd = open_segment(dir_fd, name)
        if fd is None:
            continue
        try:
            lines = list(itertools.islice(_head(fd), count))
        finally:
            os.close(fd)
        if lines:
            return lines
    return []


def first_entry(dir_fd: int, names: list[str]) -> Entry | None:
    """Return the first valid entry of the oldest segment that has one."""
    for name in names:
        fd = open_segment(dir_fd, name)
        if fd is None:
            continue
        try:
            for line in _head(fd):
                entry = try_decode(line)
                if entry is not None:
                    return entry
        finally:
            os.close(fd)
    return None


def _head(fd: int) -> Iterator[bytes]:
    """Yield the complete, non-empty lines among a file's first :data:`HEAD_SCAN_BYTES`."""
    for kind, offset, data in scan_lines(fd, first_chunk=_HEAD_CHUNK):
        if offset >= HEAD_SCAN_BYTES or kind == INCOMPLETE:
            return
        if kind == COMPLETE and data:
            yield data


def tail_lines(
    dir_fd: int, names: list[str], count: int, *, active_end: int | None = None
) -> list[bytes]:
    """Return up to ``count`` last complete lines of the trail, oldest first.

    Reads the newest segment backwards in small chunks, going to older
    segments only when the newer ones hold too few lines (just after a
    rotation). An incomplete last line (a write in progress or a torn tail) is
    left out; so are empty and oversized lines. ``active_end`` bounds what is
    read of the active segment (a snapshot).
    """
    found: list[bytes] = []
    for name in reversed(names):
        if len(found) >= count:
            break
        fd = open_segment(dir_fd, name)
        if fd is None:
            continue
        try:
            end = active_end if name == layout.ACTIVE_FILE else None
            if end is None:
                end = complete_end(fd, os.fstat(fd).st_size)
            lines = reverse_lines(fd, end, max_line=MAX_LINE_BYTES)
            found[:0] = reversed(list(itertools.islice(lines, count - len(found))))
        finally:
            os.close(fd)
    return found
