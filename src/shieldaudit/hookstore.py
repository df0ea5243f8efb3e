"""The hook's fast append: the common case of ``TrailWriter.append``, without its imports.

:class:`shieldaudit.store.writer.TrailWriter` is the reference writer; its
imports (``json``, ``pathlib``, ``dataclasses``, ``typing``, OpenSSL's
``hashlib``) cost the hook about four interpreter start-ups, on the start path
of every container. This module handles only the common case, with exactly the
same on-disk result (same lock file, same bytes), and raises :class:`Unusual`
for everything else, so the caller hands the append to ``TrailWriter``:

* no or an empty trail (the first entry), or an active segment whose last line
  is complete and holds a valid ``seq`` and ``mac``;
* no rotation due after this write; the entry under the writer's size limit;
* a key file that is a readable, private, regular file.

Torn tails, rotation, retention, unreadable keys and unsafe roots all take the
reference path, which also words their errors. Lock timeouts and failed writes
are raised here (retrying would double the bounded wait).
"""

# pathlib costs the hook ~2 ms per container start; os.path is free.
# ruff: noqa: PTH103

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

from shieldaudit import hookchain, leanjson
from shieldaudit.errors import LockTimeoutError, StorageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from shieldaudit import hooksettings

# Mirrors of store.layout / store.chain / store.writer constants;
# tests/unit/test_hook_store.py pins that they stay equal.
LOCK_TIMEOUT_S = 2.0
#: The hook's failure log and its one previous generation (see record_error).
HOOK_ERRORS = "hook-errors.jsonl"
HOOK_ERRORS_OLD = "hook-errors.1.jsonl"
HOOK_ERRORS_MAX_BYTES = 1024 * 1024
ERRORS_LOCK_TIMEOUT_S = 0.2
MAX_ENTRY_BYTES = 256 * 1024
MAX_KEY_FILE_BYTES = 64 * 1024
MIN_KEY_BYTES = 16
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_TAIL_CHUNK = 64 * 1024
_HEX = frozenset("0123456789abcdef")


class Unusual(Exception):  # noqa: N818 -- a signal to take the reference path, not an error
    """The fast path does not handle this state: use TrailWriter."""


def signing_key(path: str | None) -> tuple[bytes, str] | None:
    """Return ``(secret, chain name)`` of the signing key, None when unkeyed.

    Raises:
        Unusual: any problem with the key file (the reference loader words it).
    """
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | _FILE_FLAGS)
    except OSError:
        raise Unusual from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
            raise Unusual
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    secrets = [
        line.strip() for line in data.splitlines() if line.strip() and not line.startswith(b"#")
    ]
    if len(data) > MAX_KEY_FILE_BYTES or not secrets or min(map(len, secrets)) < MIN_KEY_BYTES:
        raise Unusual
    return secrets[0], "hmac-sha256:" + hookchain.key_id(secrets[0])


def _open_root(root: str) -> int:
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        try:
            os.makedirs(root, mode=0o700, exist_ok=True)
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            raise Unusual from None
    except OSError:
        raise Unusual from None
    if os.fstat(fd).st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        os.close(fd)
        raise Unusual
    return fd


def _subdir(parent_fd: int, name: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        pass
    except OSError:
        raise Unusual from None
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    except FileExistsError:
        pass  # another writer created it first
    except OSError:
        raise Unusual from None
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError:
        raise Unusual from None


def _regular(dir_fd: int, name: str, flags: int) -> int:
    try:
        fd = os.open(name, flags | _FILE_FLAGS, 0o600, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError:
        raise Unusual from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Unusual
    os.set_blocking(fd, True)
    return fd


def _lock(root_fd: int, container_id: str, timeout: float) -> int:
    """Take ``<root>/state/locks/<id>.lock`` exclusively, as store.layout.Lock does."""
    state_fd = _subdir(root_fd, "state")
    try:
        locks_fd = _subdir(state_fd, "locks")
    finally:
        os.close(state_fd)
    try:
        fd = _regular(locks_fd, container_id + ".lock", os.O_RDWR | os.O_CREAT)
    finally:
        os.close(locks_fd)
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            now = time.monotonic()
            if now >= deadline:
                os.close(fd)
                raise LockTimeoutError(
                    f"timed out after {timeout:g}s waiting for the lock of container "
                    f"{container_id[:12]}: another writer holds it; retry, or look for a stuck "
                    "shieldaudit process",
                ) from None
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, 0.02)
        else:
            return fd


def _has_segments(dir_fd: int) -> bool:
    return any(name.startswith("audit-") for name in os.listdir(dir_fd))


def _last_entry(fd: int, size: int) -> dict[str, object]:
    """Return the last line of the active segment as an entry, or raise Unusual."""
    length = min(size, _TAIL_CHUNK)
    tail = os.pread(fd, length, size - length)
    if not tail.endswith(b"\n"):
        raise Unusual  # a torn tail: the reference writer sets it aside
    start = tail.rfind(b"\n", 0, len(tail) - 1) + 1
    if start == 0 and length < size:
        raise Unusual  # a last line longer than one chunk
    try:
        entry = leanjson.loads(tail[start:-1].decode("utf-8"))
    except ValueError:
        raise Unusual from None
    if not isinstance(entry, dict):
        raise Unusual
    seq, mac = entry.get("seq"), entry.get("mac")
    if not (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 1):
        raise Unusual
    if not (isinstance(mac, str) and len(mac) == 64):
        raise Unusual
    return entry


def append(
    settings: hooksettings.LeanSettings,
    container_id: str,
    fields: Mapping[str, object],
    *,
    clock: Callable[[], int] = time.time_ns,
    lock_timeout: float = LOCK_TIMEOUT_S,
    skip: Callable[[Mapping[str, object]], bool] | None = None,
) -> int | None:
    """Append one entry for a validated ``container_id``; return its seq.

    Args:
        settings: where and how to write.
        container_id: a full 64-hex ID (the caller validated it).
        fields: the entry's fields (as for ``TrailWriter.append``).
        clock: ns since the epoch, for ``ts``.
        lock_timeout: the bounded lock wait.
        skip: called under the lock with the trail's last entry; when it returns
            True nothing is written and None is returned (idempotent stages).

    Raises:
        Unusual: the reference writer must handle this append.
        LockTimeoutError: the lock was not obtained in time.
        StorageError: the write failed (it was undone).
    """
    key = signing_key(settings.key_file)
    root_fd = _open_root(settings.root)
    try:
        containers_fd = _subdir(root_fd, "containers")
        try:
            dir_fd = _subdir(containers_fd, container_id)
        finally:
            os.close(containers_fd)
        try:
            lock_fd = _lock(root_fd, container_id, lock_timeout)
            try:
                return _append_locked(settings, dir_fd, container_id, fields, key, clock, skip)
            finally:
                os.close(lock_fd)
        finally:
            os.close(dir_fd)
    finally:
        os.close(root_fd)


def _append_locked(  # noqa: PLR0917 -- private helper of append()
    settings: hooksettings.LeanSettings,
    dir_fd: int,
    container_id: str,
    fields: Mapping[str, object],
    key: tuple[bytes, str] | None,
    clock: Callable[[], int],
    skip: Callable[[Mapping[str, object]], bool] | None,
) -> int | None:
    created = False
    try:
        fd = _regular(dir_fd, "audit.jsonl", os.O_RDWR | os.O_APPEND)
    except FileNotFoundError:
        if _has_segments(dir_fd):
            raise Unusual from None
        fd = _regular(dir_fd, "audit.jsonl", os.O_RDWR | os.O_APPEND | os.O_CREAT)
        created = True
    try:
        if created:
            os.fsync(dir_fd)
        size = os.fstat(fd).st_size
        if size:
            last = _last_entry(fd, size)
            if skip is not None and skip(last):
                return None
            seq, prev = last["seq"], last["mac"]
            assert isinstance(seq, int)  # noqa: S101 -- _last_entry checked both
            assert isinstance(prev, str)  # noqa: S101
        elif _has_segments(dir_fd):
            raise Unusual  # just rotated: the head is in the newest sealed segment
        else:
            seq, prev = 0, hookchain.GENESIS
        body = dict(fields)
        body.setdefault("ts", hookchain.format_ns(clock()))
        body["container_id"] = container_id
        line, _mac = hookchain.seal(body, seq + 1, prev, key)
        if len(line) > MAX_ENTRY_BYTES or size + len(line) >= settings.max_segment_bytes:
            raise Unusual  # an error to word, or a rotation to do
        _write(fd, line, size, settings.fsync == "always", container_id)
        return seq + 1
    finally:
        os.close(fd)


def _write(fd: int, line: bytes, size: int, sync: bool, container_id: str) -> None:
    shown = f"the trail of container {container_id[:12]}"
    try:
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(errno.ENOSPC, f"short write ({written} of {len(line)} bytes)")  # noqa: TRY301
    except OSError as exc:
        try:  # noqa: SIM105 -- contextlib is too heavy an import for the hook
            os.ftruncate(fd, size)
        except OSError:
            pass  # the next writer sets the torn tail aside
        raise StorageError(
            f"cannot write {shown}: {exc.strerror or exc} (free space or raise the file size "
            "limit, then retry); the partial entry was removed",
        ) from None
    if sync:
        try:
            os.fdatasync(fd)
        except OSError as exc:
            raise StorageError(f"cannot write {shown}: {exc.strerror or exc}") from None


def _rotate_errors(state_fd: int, out: int) -> int:
    """Move a full error log to ``hook-errors.1.jsonl`` (replacing it); return the new log's fd.

    Under an exclusive ``flock`` of the full file, so of several failing hooks
    exactly one rotates and the others reopen the new file. If the lock is busy
    past a short bound, the line simply goes into the full file.
    """
    deadline = time.monotonic() + ERRORS_LOCK_TIMEOUT_S
    while True:
        try:
            fcntl.flock(out, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return out
            time.sleep(0.002)
    try:
        mine = os.fstat(out)
        try:
            named = os.stat(HOOK_ERRORS, dir_fd=state_fd, follow_symlinks=False)
        except FileNotFoundError:
            named = None
        if named is not None and named.st_ino == mine.st_ino:
            if mine.st_size < HOOK_ERRORS_MAX_BYTES:
                return out  # another hook rotated and this is already the new file
            os.rename(HOOK_ERRORS, HOOK_ERRORS_OLD, src_dir_fd=state_fd, dst_dir_fd=state_fd)
    except BaseException:
        os.close(out)
        raise
    os.close(out)  # releases the lock; the full file is now HOOK_ERRORS_OLD
    return _regular(state_fd, HOOK_ERRORS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)


def record_error(
    root: str,
    stage: str,
    container_id: str,
    error: str,
    *,
    clock: Callable[[], int] = time.time_ns,
    sync: bool = True,
) -> str | None:
    """Append one failure to ``<root>/state/hook-errors.jsonl``; return why not, or None.

    The sidecar counts these lines as ``shieldaudit_hook_errors_total``. A root
    that is not a safe directory (group/world-writable, a file) is not written:
    anything there could have been swapped by another user. The log is kept
    bounded: at :data:`HOOK_ERRORS_MAX_BYTES` it becomes ``hook-errors.1.jsonl``
    (replacing the previous one), which the sidecar drains before the new file.
    """
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        try:
            os.makedirs(root, mode=0o700, exist_ok=True)
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            return f"cannot create root {root}: {exc.strerror or exc}"
    except OSError as exc:
        return f"cannot open root {root}: {exc.strerror or exc}"
    try:
        if os.fstat(fd).st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"root {root} is writable by group or others"
        line = leanjson.dumps(
            {
                "ts": hookchain.format_ns(clock()),
                "stage": stage,
                "container_id": container_id,
                "error": error,
            }
        )
        state_fd = _subdir(fd, "state")
        try:
            out = _regular(state_fd, HOOK_ERRORS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            if os.fstat(out).st_size >= HOOK_ERRORS_MAX_BYTES:
                out = _rotate_errors(state_fd, out)
        finally:
            os.close(state_fd)
        try:
            os.write(out, line.encode("ascii") + b"\n")
            if sync:
                os.fdatasync(out)
        finally:
            os.close(out)
    except Unusual:
        return f"{root}/state/hook-errors.jsonl is not a regular file in a directory"
    except OSError as exc:
        return f"cannot write {root}/state/hook-errors.jsonl: {exc.strerror or exc}"
    finally:
        os.close(fd)
    return None
