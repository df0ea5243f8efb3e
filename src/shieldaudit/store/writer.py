"""Appending entries: lock, find the head, recover a torn tail, write once, rotate, retain.

Every writer (the hook, the listener, the CLI) goes through :class:`TrailWriter`.
``seq`` and ``prev`` are derived from the trail itself under the container's
exclusive lock, so there is no separate counter that could drift from the data,
and a crash at any point leaves a state the next writer continues correctly.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Self

from shieldaudit.core import ids
from shieldaudit.core.errors import StorageError
from shieldaudit.core.timefmt import format_ns
from shieldaudit.store import chain, layout, pending, tailscan

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from pathlib import Path

    from shieldaudit.core.settings import StoreSettings

#: Largest entry a writer accepts; readers refuse lines over 1 MiB.
MAX_ENTRY_BYTES: Final = 256 * 1024
#: The most of one torn tail kept in ``state/torn/``. A torn tail left by a crash
#: is the start of one entry, so a genuine one is always kept whole; anything
#: longer was not written by shieldaudit and only its start is kept.
TORN_KEEP_BYTES: Final = MAX_ENTRY_BYTES
#: Bounds of ``state/torn/`` as a whole: the newest fragments are kept within
#: both, everything older is removed.
TORN_MAX_FILES: Final = 64
TORN_MAX_BYTES: Final = 16 * 1024 * 1024
TORN_SUFFIX: Final = ".fragment"
_COPY_CHUNK: Final = 1024 * 1024
_NL: Final = b"\n"


@dataclass(frozen=True, slots=True)
class Written:
    """What one append wrote."""

    container_id: str
    seq: int
    mac: str
    line: bytes
    rotated_to: str | None
    torn_bytes: int


@dataclass(frozen=True, slots=True)
class _Torn:
    """A torn tail that was cut from the active segment."""

    size: int  # bytes cut
    sha256: str  # digest of all of them (only the first TORN_KEEP_BYTES are kept)
    lines_end: int  # where the complete lines end (the segment's new size)


@dataclass(slots=True)
class _Head:
    """The chain head as of a known state of the active segment."""

    ino: int
    size: int
    seq: int
    mac: str


@dataclass(slots=True)
class _Handle:
    """Descriptors kept open for one container between appends (validated under the lock)."""

    dir_fd: int
    lock_fd: int
    active_fd: int = -1
    active_ino: int = 0
    head: _Head | None = None

    def close(self) -> None:
        for fd in (self.active_fd, self.lock_fd, self.dir_fd):
            if fd >= 0:
                os.close(fd)
        self.active_fd = self.lock_fd = self.dir_fd = -1


class TrailWriter:
    """Append entries to per-container trails under one root.

    A writer keeps the root open and, for the containers it wrote to recently,
    the trail directory, lock file and active segment, plus the chain head. All
    of it is re-validated under the lock (the directory still linked, the lock
    file still the one on disk, the active segment's inode and size unchanged),
    so other writers, rotation and pruning are always seen, and steady-state
    appends cost one lock, one ``stat``, one ``write`` (and the fsync).
    """

    def __init__(
        self,
        settings: StoreSettings,
        *,
        keys: chain.KeyRing | None = None,
        clock: Callable[[], int] = time.time_ns,
        lock_timeout: float = layout.LOCK_TIMEOUT_S,
        max_open: int = 64,
    ) -> None:
        """Open nothing yet; the root is opened (and checked) on first use."""
        self._settings = settings
        self._root = settings.root
        self._keys = keys if keys is not None else chain.store_keys(settings)
        self._clock = clock
        self._lock_timeout = lock_timeout
        self._max_open = max_open
        self._root_fd = -1
        self._containers_fd = -1
        self._handles: OrderedDict[str, _Handle] = OrderedDict()

    def _open(self) -> None:
        if self._containers_fd >= 0:
            return
        self._root_fd = layout.open_root(self._root, create=True)
        self._containers_fd = layout.open_subdir(
            self._root_fd,
            layout.CONTAINERS_DIR,
            layout.containers_path(self._root),
            create=True,
        )

    def close(self) -> None:
        """Close every descriptor."""
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        for fd in (self._containers_fd, self._root_fd):
            if fd >= 0:
                os.close(fd)
        self._root_fd = self._containers_fd = -1

    def __enter__(self) -> Self:
        """Use as a context manager."""
        return self

    def __exit__(self, *_exc: object) -> None:
        """Close on exit."""
        self.close()

    def append(self, container_id: str, fields: Mapping[str, object]) -> Written:
        """Append one entry; return what was written once it is durable per the fsync policy.

        Args:
            container_id: the full 64-hex ID (anything else is refused).
            fields: ``source``, ``action`` and whatever else is known; ``seq``,
                ``ts`` (unless given), ``container_id`` and the chain keys are set here.
        """
        written = self.append_unless(container_id, fields, None)
        assert written is not None  # noqa: S101 -- only a skip check returns None
        return written

    def append_unless(
        self,
        container_id: str,
        fields: Mapping[str, object],
        skip: Callable[[Iterable[Mapping[str, object]]], bool] | None,
    ) -> Written | None:
        """Append one entry as :meth:`append` does, unless ``skip`` says it is a repeat.

        ``skip`` is called under the container's lock with the trail's entries,
        newest first (read backwards lazily, through the sealed segments when it
        asks for more); when it returns True nothing is written (a torn tail
        is left for the next writer too) and None is returned.
        """
        ids.check_container_id(container_id)
        self._open()
        if self._keys.series is None:
            return self._append_once(container_id, fields, skip)
        # An evolving key changes with every seal: read it under the seal lock,
        # held shared until the entry is written, so no seal closes the epoch
        # between reading the key and the write.
        with pending.SealLock(self._root_fd, self._root, shared=True):
            if self._settings.key_file is not None:
                self._keys = chain.store_keys(self._settings)
            return self._append_once(container_id, fields, skip)

    def _append_once(
        self,
        container_id: str,
        fields: Mapping[str, object],
        skip: Callable[[Iterable[Mapping[str, object]]], bool] | None,
    ) -> Written | None:
        handle = self._handle(container_id)
        try:
            self._lock(handle, container_id)
            try:
                return self._append_locked(handle, container_id, fields, skip)
            finally:
                fcntl.flock(handle.lock_fd, fcntl.LOCK_UN)
        except BaseException:
            self._handles.pop(container_id, None)
            handle.close()
            raise

    def _handle(self, container_id: str) -> _Handle:
        handle = self._handles.get(container_id)
        if handle is not None:
            self._handles.move_to_end(container_id)
            return handle
        shown_dir = layout.trail_dir(self._root, container_id)
        dir_fd = layout.open_subdir(self._containers_fd, container_id, shown_dir, create=True)
        try:
            lock_fd = layout.open_lock_file(self._root_fd, self._root, container_id)
        except BaseException:
            os.close(dir_fd)
            raise
        handle = _Handle(dir_fd, lock_fd)
        self._handles[container_id] = handle
        while len(self._handles) > self._max_open:
            _, old = self._handles.popitem(last=False)
            old.close()
        return handle

    def _lock(self, handle: _Handle, container_id: str) -> None:
        """Lock; then make sure the lock file and directory are still the ones on disk.

        ``prune`` removes a trail and its lock file while holding the lock; a
        writer that opened them before must notice and start over, or it would
        lock an orphaned inode and write into a deleted directory.
        """
        for _ in range(3):
            layout.flock_bounded(handle.lock_fd, container_id, timeout=self._lock_timeout)
            if os.fstat(handle.lock_fd).st_nlink and os.fstat(handle.dir_fd).st_nlink:
                return
            fcntl.flock(handle.lock_fd, fcntl.LOCK_UN)
            handle.close()
            fresh = self._handles.pop(container_id, None)
            del fresh
            replacement = self._handle(container_id)
            handle.dir_fd, handle.lock_fd = replacement.dir_fd, replacement.lock_fd
            handle.active_fd, handle.head = -1, None
            replacement.dir_fd = replacement.lock_fd = -1
            self._handles[container_id] = handle
        raise StorageError(
            f"the trail of container {container_id[:12]} keeps being removed while writing",
        )

    def _active(self, handle: _Handle, container_id: str) -> tuple[int, int]:
        """Return the active segment's descriptor and size, reopening it if it was replaced.

        One ``stat`` of the name answers all three questions: whether another
        writer rotated (or someone replaced) the file, whether it gained a hard
        link, and how long it is now.
        """
        if handle.active_fd >= 0:
            try:
                on_disk = os.stat(layout.ACTIVE_FILE, dir_fd=handle.dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                on_disk = None
            # A second hard link made since it was opened: reopening refuses it.
            if (
                on_disk is not None
                and on_disk.st_ino == handle.active_ino
                and on_disk.st_nlink == 1
            ):
                return handle.active_fd, on_disk.st_size
            self._close_active(handle)
        return self._open_active(handle, container_id)

    @staticmethod
    def _close_active(handle: _Handle) -> None:
        os.close(handle.active_fd)
        handle.active_fd = -1

    def _open_active(self, handle: _Handle, container_id: str) -> tuple[int, int]:
        """Open (creating) ``audit.jsonl``: a regular file with no other hard link."""
        shown = layout.trail_dir(self._root, container_id) / layout.ACTIVE_FILE
        flags = os.O_RDWR | os.O_APPEND
        try:
            fd = layout.open_regular(
                handle.dir_fd, layout.ACTIVE_FILE, flags, shown, single_link=True
            )
        except FileNotFoundError:
            fd = layout.open_regular(
                handle.dir_fd, layout.ACTIVE_FILE, flags | os.O_CREAT, shown, single_link=True
            )
            layout.fsync_dir(handle.dir_fd)
        handle.active_fd = fd
        st = os.fstat(fd)
        handle.active_ino = st.st_ino
        return fd, st.st_size

    def _append_locked(
        self,
        handle: _Handle,
        container_id: str,
        fields: Mapping[str, object],
        skip: Callable[[Iterable[Mapping[str, object]]], bool] | None = None,
    ) -> Written | None:
        fd, size = self._active(handle, container_id)
        if skip is not None and skip(
            tailscan.entries_newest_first(
                handle.dir_fd,
                fd,
                tailscan.complete_end(fd, size),
                layout.trail_dir(self._root, container_id),
            )
        ):
            return None
        torn = None
        head = handle.head
        if head is not None and head.ino == handle.active_ino and head.size == size:
            seq, prev = head.seq, head.mac  # nothing changed since our own last append
        else:
            if size and os.pread(fd, 1, size - 1) != _NL:
                torn = self._set_aside_torn_tail(fd, size, container_id)
                size = torn.lines_end
            seq, prev = tailscan.find_head(
                handle.dir_fd, fd, size, layout.trail_dir(self._root, container_id)
            )
        body = dict(fields)
        body["seq"] = seq + 1
        body.setdefault("ts", format_ns(self._clock()))
        body["container_id"] = container_id
        if torn is not None:
            body["torn_tail_bytes"] = torn.size
            body["torn_tail_sha256"] = torn.sha256
        signer = self._keys.signer
        if signer is not None and signer.epoch is not None:
            body["epoch"] = signer.epoch
        line, mac = chain.seal(chain.build_body(body, prev, signer), signer)
        _check_size(line, container_id)
        handle.head = None  # until the write is known to be complete
        self._write(fd, line, size, container_id)
        new_size = size + len(line)
        rotated_to = None
        if new_size >= self._settings.max_segment_bytes:
            rotated_to = self._rotate(handle, container_id)
            new_size = 0
        handle.head = _Head(handle.active_ino, new_size, seq + 1, mac)
        return Written(container_id, seq + 1, mac, line, rotated_to, torn.size if torn else 0)

    def _write(self, fd: int, line: bytes, size: int, container_id: str) -> None:
        """Write the line with one ``write()``; on a short or failed write, undo it."""
        # Paths are built only for messages: building one costs more than the write.
        try:
            written = os.write(fd, line)
        except OSError as exc:
            self._undo(fd, size)
            raise _storage_error(self._active_path(container_id), exc) from None
        if written != len(line):
            self._undo(fd, size)
            raise StorageError(
                f"short write to {self._active_path(container_id)} ({written} of {len(line)} "
                "bytes, disk full or file size limit): free space; the partial entry was removed",
            )
        if self._settings.fsync == "always":
            try:
                os.fdatasync(fd)
            except OSError as exc:
                raise _storage_error(self._active_path(container_id), exc) from None

    def _active_path(self, container_id: str) -> Path:
        return self._root / layout.CONTAINERS_DIR / container_id / layout.ACTIVE_FILE

    @staticmethod
    def _undo(fd: int, size: int) -> None:
        # If even this fails, the next writer detects and sets aside the torn tail.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)

    def _set_aside_torn_tail(self, fd: int, size: int, container_id: str) -> _Torn:
        """Move an incomplete last line (a crash mid-write) out of the trail.

        The fragment is never glued to the next entry: its start (at most
        :data:`TORN_KEEP_BYTES`) is saved under ``state/torn/`` for inspection,
        it is cut from the segment, and the next entry records how many bytes
        were cut and their SHA-256 (``torn_tail_bytes``, ``torn_tail_sha256``).
        The fragment is streamed, so a torn tail of any size costs bounded memory.
        """
        lines_end = tailscan.complete_end(fd, size)
        digest = self._save_fragment(container_id, fd, lines_end, size)
        os.ftruncate(fd, lines_end)
        if self._settings.fsync == "always":
            os.fsync(fd)
        return _Torn(size - lines_end, digest, lines_end)

    def _open_torn_dir(self) -> int:
        state_fd = layout.open_subdir(
            self._root_fd,
            layout.STATE_DIR,
            self._root / layout.STATE_DIR,
            create=True,
        )
        try:
            return layout.open_subdir(
                state_fd,
                layout.TORN_DIR,
                self._root / layout.STATE_DIR / layout.TORN_DIR,
                create=True,
            )
        finally:
            os.close(state_fd)

    def _save_fragment(self, container_id: str, fd: int, start: int, end: int) -> str:
        """Copy the start of ``fd[start:end]`` to a new fragment file; return the SHA-256 of all.

        Then bound ``state/torn/`` (see :func:`bound_torn_dir`). If the fragment
        cannot be saved, nothing is cut and the error says so.
        """
        torn_fd = self._open_torn_dir()
        try:
            name = f"{container_id}-{self._clock()}{TORN_SUFFIX}"
            shown = self._root / layout.STATE_DIR / layout.TORN_DIR / name
            out = layout.open_regular(torn_fd, name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, shown)
            try:
                digest = _copy_fragment(fd, start, end, out)
                if self._settings.fsync == "always":
                    os.fsync(out)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=torn_fd)
                raise StorageError(
                    f"cannot set aside the torn tail of {self._active_path(container_id)} "
                    f"in {shown}: {exc.strerror or exc} (free space, then retry)",
                ) from None
            finally:
                os.close(out)
            bound_torn_dir(torn_fd, keep=name)
        finally:
            os.close(torn_fd)
        return digest

    def _rotate(self, handle: _Handle, container_id: str) -> str:
        """Seal the active segment under the next number, start a new one, apply retention."""
        dir_fd = handle.dir_fd
        os.fsync(handle.active_fd)
        numbers = layout.list_segment_numbers(dir_fd)
        number = (numbers[-1] if numbers else 0) + 1
        name = layout.segment_name(number)
        shown_dir = layout.trail_dir(self._root, container_id)
        try:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:  # sealed segments are never overwritten
            raise StorageError(f"{shown_dir / name} already exists: cannot seal the active segment")
        os.rename(layout.ACTIVE_FILE, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.close(handle.active_fd)
        handle.active_fd = -1
        new_fd = layout.open_regular(
            dir_fd,
            layout.ACTIVE_FILE,
            os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL,
            shown_dir / layout.ACTIVE_FILE,
        )
        handle.active_fd = new_fd
        handle.active_ino = os.fstat(new_fd).st_ino
        keep = self._settings.keep_segments
        numbers.append(number)
        if keep and len(numbers) > keep:
            for old in numbers[: len(numbers) - keep]:
                # Recorded before it goes, for the next seal: retention is not tampering.
                pending.append(
                    self._root_fd,
                    self._root,
                    pending.RETIRED,
                    {"container_id": container_id, "segment": old, "ts": format_ns(self._clock())},
                )
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(layout.segment_name(old), dir_fd=dir_fd)
        layout.fsync_dir(dir_fd)
        return name


def _copy_fragment(fd: int, start: int, end: int, out: int) -> str:
    """Write the first TORN_KEEP_BYTES of ``fd[start:end]`` to ``out``; hash all of it."""
    hasher = hashlib.sha256()
    pos = start
    kept = 0
    while pos < end:
        data = os.pread(fd, min(_COPY_CHUNK, end - pos), pos)
        if not data:
            break
        pos += len(data)
        hasher.update(data)
        if kept < TORN_KEEP_BYTES:
            view = memoryview(data)[: TORN_KEEP_BYTES - kept]
            while view:
                view = view[os.write(out, view) :]
            kept += min(len(data), TORN_KEEP_BYTES - kept)
    return hasher.hexdigest()


def bound_torn_dir(torn_fd: int, keep: str = "") -> None:
    """Keep the newest fragments of ``state/torn/`` within both bounds; remove the older ones.

    Newest first by modification time, fragments are kept while at most
    :data:`TORN_MAX_FILES` of them add up to at most :data:`TORN_MAX_BYTES`;
    the first one over either bound and every older one are removed. ``keep``
    (the fragment just saved) is never removed. Only regular ``*.fragment``
    files are counted or touched.
    """
    found: list[tuple[int, str, int]] = []
    for name in os.listdir(torn_fd):
        if not name.endswith(TORN_SUFFIX):
            continue
        try:
            st = os.stat(name, dir_fd=torn_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue  # another writer removed it
        if stat.S_ISREG(st.st_mode):
            found.append((st.st_mtime_ns, name, st.st_size))
    found.sort(reverse=True)
    count = total = 0
    full = False
    for _, name, size in found:
        if name != keep:
            full = full or count + 1 > TORN_MAX_FILES or total + size > TORN_MAX_BYTES
            if full:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=torn_fd)
                continue
        count += 1
        total += size


def _check_size(line: bytes, container_id: str) -> None:
    if len(line) > MAX_ENTRY_BYTES:
        raise StorageError(
            f"entry for container {container_id[:12]} is {len(line)} bytes, over the "
            f"{MAX_ENTRY_BYTES}-byte limit: shorten its detail",
        )


def _storage_error(shown: Path, exc: OSError) -> StorageError:
    if exc.errno in {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}:
        return StorageError(f"cannot write {shown}: {exc.strerror} (free space, then retry)")
    return StorageError(f"cannot write {shown}: {exc.strerror or exc}")
