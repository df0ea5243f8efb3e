"""One process per root and role: an ``flock`` on ``<root>/state/<role>.lock``.

The events listener and the sidecar each hold their lock for their whole
lifetime, so a second one on the same root refuses to start instead of writing
the same events or counting the same entries twice. The kernel drops the lock
when the holder exits, however it exits (``kill -9`` included): there is no
stale lock to clean up. The holder's PID is written into the file and, when
another process is refused, read from the kernel's lock table
(``/proc/locks``), so the message names the process in the way. :func:`take`
does the same on any lock file (``shieldaudit collect`` locks its spool and
its central directory with it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from shieldaudit.core.errors import ShieldAuditError
from shieldaudit.store import layout

PROC_LOCKS = Path("/proc/locks")


class InstanceBusyError(ShieldAuditError):
    """Another process of the same role already holds this root."""


def holder_pid(fd: int, proc_locks: Path = PROC_LOCKS) -> int | None:
    """Return the PID holding an ``flock`` on the file open as ``fd``, if the kernel says.

    ``/proc/locks`` lines read ``1: FLOCK ADVISORY WRITE 1234 08:01:131090 0 EOF``
    (the PID as seen from this PID namespace; 0 or missing when not visible).
    """
    st = os.fstat(fd)
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with proc_locks.open(encoding="ascii", errors="replace") as table:
            for line in table:
                fields = line.split()
                # "->" marks a waiter, not a holder; this file only has holders.
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
                    pid = int(fields[4]) if fields[4].isdigit() else 0
                    if pid > 0:
                        return pid
    except OSError:
        return None
    return None


def _written_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        return int(text) if text.isdigit() and int(text) > 0 else None
    return None


def hold(root: Path, role: str, hint: str, error: type[InstanceBusyError]) -> int:
    """Take ``<root>/state/<role>.lock`` for this process; return the descriptor to keep.

    Closing the descriptor releases the lock. Opening goes through the same
    checks as every file under the root (no symlinks, a regular file).

    Args:
        root: the trail root (created if missing, like every command that writes).
        role: ``listener`` or ``sidecar``: names the file and the message.
        hint: what to do about it, the end of the message.
        error: the exception to raise when the lock is held.

    Raises:
        InstanceBusyError: (``error``) another process holds the lock.
        StorageError: the root or its state directory cannot be opened.
    """
    name = f"{role}.lock"
    shown = layout.state_path(root, name)
    root_fd = layout.open_root(root, create=True)
    try:
        state_fd = layout.open_subdir(
            root_fd, layout.STATE_DIR, layout.state_path(root), create=True
        )
    finally:
        os.close(root_fd)
    try:
        fd = layout.open_regular(state_fd, name, os.O_RDWR | os.O_CREAT, shown)
    finally:
        os.close(state_fd)
    try:
        take(fd, f"another shieldaudit {role} is running on {root}", shown, hint, error)
    except BaseException:
        os.close(fd)
        raise
    return fd


def take(
    fd: int,
    busy: str,
    shown: Path,
    hint: str,
    error: type[InstanceBusyError],
    *,
    write_pid: bool = True,
) -> None:
    """Take an exclusive ``flock`` on the file open as ``fd`` for this process, without waiting.

    The caller keeps (and eventually closes) ``fd``, also when this raises.

    Args:
        fd: the lock file, open for reading and writing.
        busy: the start of the message when it is held ("another … is running on …").
        shown: the lock file's path, for the message.
        hint: what to do about it, the end of the message.
        error: the exception to raise when the lock is held.
        write_pid: write this process's PID into the file (for a person looking at it).

    Raises:
        InstanceBusyError: (``error``) another process holds the lock.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = holder_pid(fd) or _written_pid(fd)
        who = f"pid {pid}; " if pid is not None else ""
        raise error(f"{busy} ({who}{shown} is locked): {hint}") from None
    if write_pid:
        # For a person looking at the file; the message prefers the kernel's answer.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
