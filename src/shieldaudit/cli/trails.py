"""Cheap reads of trails for the CLI: a trail's first entry and its last lines.

``ls``, name resolution and ``prune`` look at thousands of trails, so each
costs a directory listing and two small ``pread`` calls (the head of the
oldest segment, the end of the newest), whatever the trail's size. Every open
is relative to a directory descriptor with ``O_NOFOLLOW`` (:mod:`.store.layout`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, Self

from shieldaudit.core import ids
from shieldaudit.core.errors import ShieldAuditError, StorageError
from shieldaudit.store import chain, layout
from shieldaudit.store.reader import MAX_LINE_BYTES
from shieldaudit.store.reconcile import Audit, audit_entries, ts_us
from shieldaudit.store.summary import Summary, summarise

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

#: Entries read from a trail's end for ``ls``: enough to find the latest name
#: and lifecycle action and to check a few chain links.
TAIL_ENTRIES: Final = 8
#: Entries ``ls`` reconciles (unaudited starts): the last ones and the first ones.
#: Nearly every trail is shorter than this and is judged whole.
AUDIT_TAIL_ENTRIES: Final = 512
AUDIT_HEAD_ENTRIES: Final = 64
#: Actions reconciliation looks at; lines with others are not even parsed.
_AUDIT_ACTIONS: Final = frozenset({b"start", b"init", b"createRuntime", b"poststart"})
_ACTION_KEY: Final = b'"action":"'

_FAR_FUTURE_US: Final = 1 << 62
_HEAD_CHUNK: Final = 4096
_STREAM_CHUNK: Final = 256 * 1024
#: Kinds of line :func:`stream_lines` yields.
COMPLETE: Final = 0
OVERSIZED: Final = 1
INCOMPLETE: Final = 2
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: O_NONBLOCK: a FIFO planted as a segment must not hang the open.
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_TAIL_CHUNK: Final = 8192


class Trails:
    """The ``containers/`` directory of a root, opened once (a context manager).

    A root or ``containers/`` directory that does not exist yet is simply empty:
    nothing has been recorded.
    """

    def __init__(self, root: Path) -> None:
        """Open the root (refusing an unsafe one) and its ``containers/`` directory."""
        self.root = root
        self.root_fd = -1
        self.fd = -1
        #: Trails skipped because they are unsafe or unreadable (one line each).
        self.problems: list[str] = []
        self._open()

    def _open(self) -> None:
        try:
            self.root_fd = layout.open_root(self.root, create=False)
        except StorageError:
            if os.path.lexists(self.root):
                raise
            return
        try:
            self.fd = layout.open_subdir(
                self.root_fd, layout.CONTAINERS_DIR, layout.containers_path(self.root), create=False
            )
        except FileNotFoundError:
            self.fd = -1

    def check_state(self) -> None:
        """Refuse a ``state/`` (or its ``locks/``, ``torn/``) that writers would refuse."""
        if self.root_fd >= 0:
            layout.check_state(self.root_fd, self.root)

    def reopen(self) -> bool:
        """Try again to open a root or ``containers/`` that did not exist; return whether open."""
        if self.fd < 0:
            self.close()
            self._open()
        return self.fd >= 0

    def close(self) -> None:
        """Close the descriptors."""
        for fd in (self.fd, self.root_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.root_fd = -1

    def __enter__(self) -> Self:
        """Use as a context manager."""
        return self

    def __exit__(self, *_exc: object) -> None:
        """Close on exit."""
        self.close()

    def ids(self) -> list[str]:
        """Return the container IDs with a trail directory, sorted."""
        if self.fd < 0:
            return []
        return sorted(n for n in os.listdir(self.fd) if ids.is_container_id(n))  # noqa: PTH208 -- a descriptor

    def open_dir(self, container_id: str) -> int:
        """Open one trail directory (no symlinks); raise FileNotFoundError when gone."""
        if self.fd < 0:
            raise FileNotFoundError(container_id)
        if ids.is_container_id(container_id):
            # Fast path (ls reads thousands): the same open and checks as open_subdir,
            # no Path built.
            try:
                fd = os.open(container_id, _DIR_FLAGS, dir_fd=self.fd)
            except OSError:
                pass
            else:
                try:
                    layout.check_dir(fd, self.fd, f"{self.root}/containers/{container_id}")
                except BaseException:
                    os.close(fd)
                    raise
                return fd
        return layout.open_subdir(
            self.fd,
            ids.check_container_id(container_id),
            layout.trail_dir(self.root, container_id),
            create=False,
        )

    def summary(
        self,
        container_id: str,
        tail: int = TAIL_ENTRIES,
        *,
        audit_at: tuple[int, int] | None = None,
    ) -> Summary | None:
        """Summarise one trail from its head and tail.

        With ``audit_at`` (now and the grace period, in µs) the summary also
        says whether the container had unaudited starts (:func:`audit_window`).

        Returns None when the trail vanished meanwhile (pruned), or when it is
        unsafe or unreadable: that is noted in :attr:`problems` and the other
        trails are still listed, so one planted symlink cannot hide them all.
        """
        try:
            dir_fd = self.open_dir(container_id)
        except FileNotFoundError:
            return None
        except ShieldAuditError as exc:
            self.problems.append(f"skipped {container_id[:12]}: {exc.message}")
            return None
        try:
            names = segment_names(dir_fd)
            first = _first_entry(dir_fd, names)
            if audit_at is None:
                lines = tail_lines(dir_fd, names, tail)
                audit = None
            else:
                window = tail_lines(dir_fd, names, max(tail, AUDIT_TAIL_ENTRIES))
                lines = window[-tail:] if tail > 0 else []
                head = None
                if len(window) >= AUDIT_TAIL_ENTRIES and not _starts_trail(window, first):
                    head = _head_window(dir_fd, names, AUDIT_HEAD_ENTRIES)
                audit = audit_window(window, head, now_us=audit_at[0], grace_us=audit_at[1])
        except ShieldAuditError as exc:
            self.problems.append(f"skipped {container_id[:12]}: {exc.message}")
            return None
        finally:
            os.close(dir_fd)
        return summarise(container_id, first, lines, len(names), datetime.now(UTC), audit=audit)


def _relevant(lines: Iterable[bytes]) -> list[dict[str, object]]:
    """Parse only the lines reconciliation looks at (cheap: a substring test per line)."""
    found = []
    for line in lines:
        at = line.find(_ACTION_KEY)
        if at < 0:
            continue
        at += len(_ACTION_KEY)
        if line[at : line.find(b'"', at)] in _AUDIT_ACTIONS:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    found.append(entry)
    return found


def _starts_trail(window: list[bytes], first: dict[str, object] | None) -> bool:
    """Return whether ``window`` begins with the trail's first entry (it is the whole trail)."""
    if first is None or not window:
        return True
    try:
        return chain.parse_line(window[0]).get("seq") == first.get("seq")
    except ValueError:
        return False


def audit_window(
    tail: list[bytes], head: list[bytes] | None, *, now_us: int, grace_us: int
) -> Audit:
    """Reconcile what ``ls`` read of a trail: all of it, or its first and last entries.

    ``head`` is None when ``tail`` holds the whole trail: then the result is
    exact. Otherwise the first entries are judged as a trail of their own (their
    hook runs whose start event lies further on are not "events missing"), and
    the last ones with a floor at their first hook entry: a hookless start in
    them counts only after a start whose hook entries are in the window too (its
    own may lie before the window).
    """
    if head is None:
        return audit_entries(_relevant(tail), now_us=now_us, grace_us=grace_us)
    first_part = audit_entries(_relevant(head), now_us=now_us, grace_us=grace_us)
    entries = _relevant(tail)
    hook_times = [
        ts_us(e.get("ts"))
        for e in entries
        if e.get("source") == "hook" and e.get("action") in {"createRuntime", "poststart"}
    ]
    floor = next((us for us in hook_times if us is not None), _FAR_FUTURE_US)
    last_part = audit_entries(entries, now_us=now_us, grace_us=grace_us, floor_us=floor)
    return Audit(
        starts=first_part.starts + last_part.starts,
        unaudited=first_part.unaudited + last_part.unaudited,
        pending=last_part.pending,
        unknown=first_part.unknown + last_part.unknown,
        events_missing=last_part.events_missing,
    )


def _head_window(dir_fd: int, names: list[str], count: int) -> list[bytes]:
    """Return up to ``count`` first complete lines of the oldest segment that has any."""
    for name in names:
        fd = _open(dir_fd, name)
        if fd is None:
            continue
        try:
            lines = list(itertools.islice(_head_lines(fd), count))
        finally:
            os.close(fd)
        if lines:
            return lines
    return []


def segment_names(dir_fd: int) -> list[str]:
    """Return a trail directory's segment file names, oldest first, the active one last."""
    listing = os.listdir(dir_fd)
    numbers = sorted(n for n in map(layout.segment_number, listing) if n is not None)
    names = [layout.segment_name(n) for n in numbers]
    if layout.ACTIVE_FILE in listing:
        names.append(layout.ACTIVE_FILE)
    return names


def _open(dir_fd: int, name: str) -> int | None:
    """Open a segment read-only: no symlinks, regular files only (as ``layout.open_regular``)."""
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
    # Not the common case: let the store's own function raise its precise error.
    try:
        return layout.open_regular(dir_fd, name, os.O_RDONLY, Path(name))
    except FileNotFoundError:
        return None


def _first_entry(dir_fd: int, names: list[str]) -> dict[str, object] | None:
    """Return the first valid entry of the oldest segment that has one."""
    for name in names:
        fd = _open(dir_fd, name)
        if fd is None:
            continue
        try:
            for line in _head_lines(fd):
                with contextlib.suppress(ValueError):
                    return chain.parse_line(line)
        finally:
            os.close(fd)
    return None


def _head_lines(fd: int) -> Iterator[bytes]:
    """Yield complete lines from the start of a file, reading small chunks."""
    pos = 0
    buf = b""
    while pos < MAX_LINE_BYTES * 2:
        chunk = os.pread(fd, _HEAD_CHUNK if pos == 0 else 65536, pos)
        if not chunk:
            return
        pos += len(chunk)
        buf += chunk
        *complete, buf = buf.split(b"\n")
        yield from (line for line in complete if line)


def tail_lines(
    dir_fd: int, names: list[str], count: int, *, active_end: int | None = None
) -> list[bytes]:
    """Return up to ``count`` last complete lines of the trail, oldest first.

    Reads the newest segment backwards in small chunks, going to older
    segments only when the newer ones hold too few lines (just after a rotation).
    An incomplete last line (a write in progress or a torn tail) is left out.
    ``active_end`` bounds what is read of the active segment (a snapshot).
    """
    found: list[bytes] = []
    for name in reversed(names):
        fd = _open(dir_fd, name)
        if fd is None:
            continue
        try:
            end = active_end if name == layout.ACTIVE_FILE else None
            found[:0] = _last_lines(fd, count - len(found), end)
        finally:
            os.close(fd)
        if len(found) >= count:
            break
    return found


def _last_lines(fd: int, count: int, end: int | None = None) -> list[bytes]:
    if end is None:
        end = complete_end(fd, os.fstat(fd).st_size)
    pos = end
    carry = b""
    lines: list[bytes] = []
    step = _TAIL_CHUNK
    while pos > 0 and len(lines) < count:
        step = min(step, pos)
        pos -= step
        parts = (os.pread(fd, step, pos) + carry).split(b"\n")
        carry = parts[0]  # may continue before ``pos``: completed by the next chunk
        lines[:0] = [p for p in parts[1:] if p]
        if len(carry) > MAX_LINE_BYTES:
            carry = b""  # an oversized line is no entry; do not hold it
        step = 65536
    if pos == 0 and carry and len(lines) < count:
        lines.insert(0, carry)
    return lines[-count:] if count > 0 else []


def complete_end(fd: int, size: int) -> int:
    """Return the offset just after the last newline (0 when there is none)."""
    pos = size
    while pos > 0:
        step = min(_TAIL_CHUNK, pos)
        pos -= step
        nl = os.pread(fd, step, pos).rfind(b"\n")
        if nl >= 0:
            return pos + nl + 1
    return 0


def stream_lines(fd: int, max_line: int = MAX_LINE_BYTES) -> Iterator[tuple[bytes, int]]:
    """Yield ``(line, kind)`` for each line of a file, holding at most one chunk and one line.

    ``kind`` is :data:`COMPLETE`, :data:`OVERSIZED` (longer than ``max_line``:
    yielded once, empty, the rest skipped) or :data:`INCOMPLETE` (the last
    line has no newline yet). Splits whole chunks at once: cheaper per line
    than searching and re-slicing a buffer line by line.
    """
    pos = 0
    carry = b""
    skipping = False
    while chunk := os.pread(fd, _STREAM_CHUNK, pos):
        pos += len(chunk)
        parts = (carry + chunk).split(b"\n")
        carry = parts.pop()
        if parts and skipping:  # parts[0] ends the oversized line
            skipping = False
            yield b"", OVERSIZED
            parts = parts[1:]
        for part in parts:
            if len(part) > max_line:
                yield b"", OVERSIZED
            elif part:
                yield part, COMPLETE
        if len(carry) > max_line and not skipping:
            skipping = True
        if skipping:
            carry = b""
    if carry and not skipping:
        yield carry, INCOMPLETE
    elif skipping:
        yield b"", OVERSIZED
