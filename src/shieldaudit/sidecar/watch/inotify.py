"""A minimal ctypes wrapper around Linux inotify: one descriptor for every watched directory.

Why not a library: ``inotify_simple`` is well kept but is one more dependency
for about sixty lines; the three system calls and the event layout are stable
ABI. The descriptor is non-blocking and is what the sidecar hands to
``selectors``: unlike a regular file, it is readable only when events are queued,
so an idle sidecar sleeps instead of spinning.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from dataclasses import dataclass
from typing import Final, Self

IN_MODIFY: Final = 0x00000002
IN_CLOSE_WRITE: Final = 0x00000008
IN_MOVED_FROM: Final = 0x00000040
IN_MOVED_TO: Final = 0x00000080
IN_CREATE: Final = 0x00000100
IN_DELETE: Final = 0x00000200
IN_DELETE_SELF: Final = 0x00000400
IN_MOVE_SELF: Final = 0x00000800
IN_UNMOUNT: Final = 0x00002000
IN_Q_OVERFLOW: Final = 0x00004000
IN_IGNORED: Final = 0x00008000
IN_ONLYDIR: Final = 0x01000000
IN_DONT_FOLLOW: Final = 0x02000000
IN_ISDIR: Final = 0x40000000
IN_NONBLOCK: Final = os.O_NONBLOCK
IN_CLOEXEC: Final = os.O_CLOEXEC

_EVENT: Final = struct.Struct("iIII")  # wd, mask, cookie, len
_READ_SIZE: Final = 256 * 1024


@dataclass(frozen=True, slots=True)
class Event:
    """One inotify event: the watch it came from, what happened, and the entry name."""

    wd: int
    mask: int
    cookie: int
    name: str


def parse_events(data: bytes) -> list[Event]:
    """Decode a buffer returned by ``read()`` on an inotify descriptor (pure)."""
    events = []
    pos = 0
    end = len(data)
    size = _EVENT.size
    while pos + size <= end:
        wd, mask, cookie, length = _EVENT.unpack_from(data, pos)
        pos += size
        raw = data[pos : pos + length].split(b"\0", 1)[0]
        pos += length
        events.append(Event(wd, mask, cookie, os.fsdecode(raw)))
    return events


class _Libc:
    """The three inotify calls, bound once with errno support."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.init1 = libc.inotify_init1
        self.init1.argtypes = [ctypes.c_int]
        self.init1.restype = ctypes.c_int
        self.add_watch = libc.inotify_add_watch
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.add_watch.restype = ctypes.c_int
        self.rm_watch = libc.inotify_rm_watch
        self.rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        self.rm_watch.restype = ctypes.c_int


_libc: _Libc | None = None


def _get_libc() -> _Libc:
    global _libc  # noqa: PLW0603 -- bound lazily once; loading libc is not free
    if _libc is None:
        try:
            _libc = _Libc()
        except (OSError, AttributeError) as exc:
            raise OSError(errno.ENOSYS, f"inotify is not available: {exc}") from None
    return _libc


def _raise_errno(what: str) -> None:
    code = ctypes.get_errno()
    raise OSError(code, f"{what}: {os.strerror(code)}")


class Inotify:
    """An inotify instance (a context manager); ``fileno()`` goes to ``selectors``."""

    def __init__(self) -> None:
        """Create the instance, non-blocking and close-on-exec.

        Raises:
            OSError: inotify is unavailable (ENOSYS) or its instance limit is hit (EMFILE).
        """
        self._libc = _get_libc()
        fd = int(self._libc.init1(IN_NONBLOCK | IN_CLOEXEC))
        if fd < 0:
            _raise_errno("inotify_init1")
        self._fd = fd

    def fileno(self) -> int:
        """Return the descriptor to select on."""
        return self._fd

    def add_watch(self, path: str | os.PathLike[str], mask: int) -> int:
        """Watch ``path`` for the events in ``mask``; return the watch descriptor.

        Raises:
            OSError: ENOSPC when ``fs.inotify.max_user_watches`` is reached, ENOENT
                when the path is gone, ENOTDIR with IN_ONLYDIR on a non-directory.
        """
        wd = self._libc.add_watch(self._fd, os.fsencode(path), mask)
        if wd < 0:
            _raise_errno(f"inotify_add_watch {os.fspath(path)}")
        return int(wd)

    def rm_watch(self, wd: int) -> None:
        """Stop a watch; a watch the kernel already dropped is not an error."""
        if self._libc.rm_watch(self._fd, wd) < 0 and ctypes.get_errno() != errno.EINVAL:
            _raise_errno("inotify_rm_watch")

    def read_events(self) -> list[Event]:
        """Return the queued events, or an empty list when none are queued."""
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return []
        return parse_events(data)

    def close(self) -> None:
        """Close the descriptor; the kernel drops every watch with it."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        """Use as a context manager."""
        return self

    def __exit__(self, *_exc: object) -> None:
        """Close on exit."""
        self.close()
