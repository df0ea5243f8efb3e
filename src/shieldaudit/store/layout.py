"""Where things live under the root, and how to open them without being tricked.

Only 64-hex container IDs become path components. Below the root, directories
and trail files are opened relative to a directory descriptor with
``O_NOFOLLOW``, so a symlink planted anywhere in a trail's path is refused
rather than followed outside the root.

Every directory opened below the root must be as private as the root: not
writable by group or others, and owned by the owner of the directory above it
(or by root). Otherwise another local user could remove or replace whole
trails. Nothing is repaired: shieldaudit only ever creates ``0700``
directories, so a looser mode or another owner was set by someone else, and
fixing it silently would hide that.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from typing import TYPE_CHECKING, Final, Self

from shieldaudit.core.errors import (
    LockTimeoutError,
    StorageError,
    UnsafePathError,
)
from shieldaudit.core.ids import check_container_id

if TYPE_CHECKING:
    from pathlib import Path

CONTAINERS_DIR: Final = "containers"
STATE_DIR: Final = "state"
LOCKS_DIR: Final = "locks"
TORN_DIR: Final = "torn"
ACTIVE_FILE: Final = "audit.jsonl"
SEGMENT_PREFIX: Final = "audit-"
SEGMENT_SUFFIX: Final = ".jsonl"
SEGMENT_DIGITS: Final = 6
HOOK_ERRORS_FILE: Final = "hook-errors.jsonl"
DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600
LOCK_TIMEOUT_S: Final = 2.0
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def segment_name(number: int) -> str:
    """Return the file name of sealed segment ``number`` (``audit-000001.jsonl``)."""
    return f"{SEGMENT_PREFIX}{number:0{SEGMENT_DIGITS}d}{SEGMENT_SUFFIX}"


def segment_number(name: str) -> int | None:
    """Return the number of a sealed segment file name, or None for any other name."""
    if not (name.startswith(SEGMENT_PREFIX) and name.endswith(SEGMENT_SUFFIX)):
        return None
    digits = name[len(SEGMENT_PREFIX) : -len(SEGMENT_SUFFIX)]
    if len(digits) != SEGMENT_DIGITS or not digits.isdigit():
        return None
    return int(digits)


def containers_path(root: Path) -> Path:
    """Return ``<root>/containers``."""
    return root / CONTAINERS_DIR


def trail_dir(root: Path, container_id: str) -> Path:
    """Return ``<root>/containers/<id>`` for a validated ID."""
    return root / CONTAINERS_DIR / check_container_id(container_id)


def state_path(root: Path, *parts: str) -> Path:
    """Return a path under ``<root>/state`` (locks, cursors, checkpoints, error logs)."""
    return root.joinpath(STATE_DIR, *parts)


def hook_errors_path(root: Path) -> Path:
    """Return the file where the hook records its failures for the sidecar to count."""
    return state_path(root, HOOK_ERRORS_FILE)


def _os_error(action: str, path: Path | str, exc: OSError) -> StorageError | UnsafePathError:
    if exc.errno == errno.ELOOP:
        return UnsafePathError(f"refusing to follow a symlink at {path}: remove it")
    if exc.errno == errno.ENOTDIR:
        return UnsafePathError(f"{path} is not a directory: remove or move it")
    reason = exc.strerror or str(exc)
    return StorageError(f"cannot {action} {path}: {reason}")


def open_root(root: Path, *, create: bool) -> int:
    """Open the root directory, creating it (0700) when asked; refuse an unsafe one.

    The root itself may be reached through symlinks (``/var/lib`` often is); it
    must not be writable by group or others, since anyone who can write it could
    swap a trail directory for a symlink.
    """
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        if not create:
            raise StorageError(f"trail root {root} does not exist: nothing recorded yet") from None
        try:
            os.makedirs(root, mode=DIR_MODE, exist_ok=True)
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise _os_error("create trail root", root, exc) from None
    except OSError as exc:
        raise _os_error("open trail root", root, exc) from None
    st = os.fstat(fd)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        os.close(fd)
        raise UnsafePathError(
            f"trail root {root} is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}): run 'chmod go-w {root}'",
        )
    euid = os.geteuid()
    if create and st.st_uid not in {0, euid}:
        # A writer's entries would belong to whoever owns the root: they could
        # remove or rewrite them at will.
        os.close(fd)
        raise UnsafePathError(
            f"trail root {root} belongs to uid {st.st_uid}, not to this user (uid {euid}) "
            f"or root: use a root of your own, or run 'chown {euid} {root}' if it is yours",
        )
    return fd


def check_dir(fd: int, parent_fd: int, shown: Path | str) -> None:
    """Refuse a directory others could change: group/other-writable, or someone else's.

    ``fd`` is the directory, ``parent_fd`` the one above it. Its owner must be
    the parent's owner or root; anyone else owning it could empty it.
    """
    st = os.fstat(fd)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafePathError(
            f"{shown} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}), "
            "so other users could remove or replace what it holds: check its content, "
            f"then run 'chmod go-w {shown}'",
        )
    if st.st_uid != 0:
        owner = os.fstat(parent_fd).st_uid
        if st.st_uid != owner:
            raise UnsafePathError(
                f"{shown} belongs to uid {st.st_uid}, not to the owner of the directory above "
                f"it (uid {owner}) or root, so that user could remove or replace what it "
                f"holds: check its content, then run 'chown {owner} {shown}'",
            )


def _is_symlink(parent_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_subdir(parent_fd: int, name: str, shown: Path, *, create: bool) -> int:
    """Open directory ``name`` below ``parent_fd`` without following symlinks.

    The directory is checked with :func:`check_dir` (refused if others could
    change it).
    """
    fd = _open_subdir(parent_fd, name, shown, create=create)
    try:
        check_dir(fd, parent_fd, shown)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_subdir(parent_fd: int, name: str, shown: Path, *, create: bool) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as exc:
        if exc.errno == errno.ENOTDIR and _is_symlink(parent_fd, name):
            # O_DIRECTORY reports a symlink as "not a directory": name the real problem.
            raise UnsafePathError(f"refusing to follow a symlink at {shown}: remove it") from None
        raise _os_error("open", shown, exc) from None
    try:
        os.mkdir(name, DIR_MODE, dir_fd=parent_fd)
    except FileExistsError:
        pass  # another writer created it first
    except OSError as exc:
        raise _os_error("create directory", shown, exc) from None
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        raise _os_error("open", shown, exc) from None


def open_regular(
    dir_fd: int,
    name: str,
    flags: int,
    shown: Path,
    mode: int = FILE_MODE,
    *,
    single_link: bool = False,
) -> int:
    """Open a regular file below ``dir_fd`` without following symlinks.

    ``O_NONBLOCK`` keeps a planted FIFO from hanging the open; anything that is
    not a regular file is refused. With ``single_link`` (trail files a writer
    touches), a file with other hard links is refused too: writing to it would
    change a file outside the trail.
    """
    try:
        fd = os.open(
            name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode, dir_fd=dir_fd
        )
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _os_error("open", shown, exc) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafePathError(f"{shown} is not a regular file: remove it")
    if single_link:
        try:
            check_single_link(fd, shown)
        except BaseException:
            os.close(fd)
            raise
    os.set_blocking(fd, True)
    return fd


def check_single_link(fd: int, shown: Path | str) -> None:
    """Refuse a file with other hard links: writing to it would change a file elsewhere."""
    links = os.fstat(fd).st_nlink
    if links > 1:
        raise UnsafePathError(
            f"{shown} has {links} hard links, so writing to it would also change a file "
            f"outside the trail: find them with 'find / -xdev -samefile {shown}'; if it holds "
            f"this trail, give it its own copy ('cp -p {shown} {shown}.new && "
            f"mv {shown}.new {shown}'), else move it away",
        )


def check_state(root_fd: int, root: Path) -> None:
    """Check ``state/`` and its ``locks/`` and ``torn/`` as :func:`open_subdir` does, if present.

    Readers call it to report what writers would refuse: whoever can change
    ``state/`` can remove the locks that keep writers from interleaving.
    """
    try:
        state_fd = open_subdir(root_fd, STATE_DIR, root / STATE_DIR, create=False)
    except FileNotFoundError:
        return
    try:
        for name in (LOCKS_DIR, TORN_DIR):
            try:
                os.close(open_subdir(state_fd, name, root / STATE_DIR / name, create=False))
            except FileNotFoundError:
                continue
    finally:
        os.close(state_fd)


def list_segment_numbers(dir_fd: int) -> list[int]:
    """Return the sealed segment numbers present in a trail directory, ascending."""
    numbers = []
    for name in os.listdir(dir_fd):
        number = segment_number(name)
        if number is not None:
            numbers.append(number)
    numbers.sort()
    return numbers


def replace_file(dir_fd: int, name: str, data: bytes, *, sync: bool = True) -> None:
    """Replace ``name`` in the directory with ``data``: a temporary file, synced, renamed.

    A reader sees the old file or the new one, never a mix or an empty file.
    The rename is made durable by the caller (:func:`fsync_dir`), which may
    sync several changes at once; without ``sync`` nothing is synced. Raises
    OSError.
    """
    tmp = f".{name}.{os.getpid()}.tmp"
    fd = os.open(
        tmp,
        os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
        FILE_MODE,
        dir_fd=dir_fd,
    )
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.close(fd)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def fsync_dir(dir_fd: int) -> None:
    """Make directory changes (creates, renames, unlinks) durable."""
    os.fsync(dir_fd)


def open_lock_file(root_fd: int, root: Path, container_id: str) -> int:
    """Open (creating) ``<root>/state/locks/<id>.lock`` without following symlinks."""
    check_container_id(container_id)
    state_fd = open_subdir(root_fd, STATE_DIR, root / STATE_DIR, create=True)
    try:
        locks_fd = open_subdir(state_fd, LOCKS_DIR, root / STATE_DIR / LOCKS_DIR, create=True)
    finally:
        os.close(state_fd)
    try:
        shown = root / STATE_DIR / LOCKS_DIR / f"{container_id}.lock"
        return open_regular(locks_fd, f"{container_id}.lock", os.O_RDWR | os.O_CREAT, shown)
    finally:
        os.close(locks_fd)


def flock_bounded(
    fd: int, container_id: str, *, shared: bool = False, timeout: float = LOCK_TIMEOUT_S
) -> None:
    """Take an flock on ``fd``, polling with a growing back-off until ``timeout``.

    Polling (not a blocking flock with an alarm) keeps the wait bounded without
    signals, which a hook or a threaded sidecar cannot rely on.
    """
    operation = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        try:
            fcntl.flock(fd, operation)
        except BlockingIOError:
            now = time.monotonic()
            if now >= deadline:
                raise LockTimeoutError(
                    f"timed out after {timeout:g}s waiting for the lock of container "
                    f"{container_id[:12]}: another writer holds it; retry, or look for a stuck "
                    "shieldaudit process",
                ) from None
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, 0.02)
        else:
            return


class Lock:
    """An exclusive (or shared) ``flock`` on ``<root>/state/locks/<id>.lock``, bounded wait.

    Locks live outside ``containers/`` so trail files carry only entries and
    rotation never moves a lock.
    """

    def __init__(
        self,
        root_fd: int,
        container_id: str,
        root: Path,
        *,
        shared: bool = False,
        timeout: float = LOCK_TIMEOUT_S,
    ) -> None:
        """Remember what to lock; nothing happens until :meth:`acquire`."""
        self._root_fd = root_fd
        self._id = check_container_id(container_id)
        self._root = root
        self._shared = shared
        self._timeout = timeout
        self._fd = -1

    def acquire(self) -> None:
        """Open the lock file and take the lock within the timeout."""
        self._fd = open_lock_file(self._root_fd, self._root, self._id)
        try:
            flock_bounded(self._fd, self._id, shared=self._shared, timeout=self._timeout)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases the flock)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        """Acquire on entering a ``with`` block."""
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        """Release on leaving a ``with`` block."""
        self.release()
