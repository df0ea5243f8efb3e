"""The hook's Python reference path: ``python -I -B -m shieldaudit.hook STAGE [--fail-closed]``.

The runtime runs the native ``shieldaudit-hook`` executable (``native/``). It
does the common append itself, byte for byte what :class:`TrailWriter` writes,
and hands every other case (a torn tail, a rotation, retention, a key-file
problem, an unsafe path, input it does not handle) to this module by
``exec``-ing ``$SHIELDAUDIT_HOOK_PYTHON -I -B -m shieldaudit.hook`` with the
same arguments, environment and stdin bytes. This module is therefore the
reference: one entry per call through :class:`TrailWriter`, with the same
results and failure handling:

* it never hangs: stdin is read up to 1 MiB, the lock wait is bounded (2 s);
* every failure is one line on stderr plus one line in
  ``<root>/state/hook-errors.jsonl`` (counted by the sidecar as
  ``shieldaudit_hook_errors_total``); the exit status is then 0 (fail-open,
  the default) or 1 (``--fail-closed`` / ``SHIELDAUDIT_FAIL_CLOSED=1``), which
  makes the runtime refuse to start a container it cannot audit.

An unknown STAGE is refused (recorded as a failure): the action vocabulary,
and with it the sidecar's metric labels, stays the six OCI stages.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import sys
import time
from typing import TYPE_CHECKING, Final

from shieldaudit.core.errors import (
    InvalidContainerIdError,
    ShieldAuditError,
    UnsafePathError,
    UsageError,
)
from shieldaudit.core.settings import env_fail_closed, load_store_settings
from shieldaudit.core.timefmt import format_ns
from shieldaudit.hook import ocistate
from shieldaudit.store import layout
from shieldaudit.store.writer import TrailWriter

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

MAX_STATE_BYTES: Final = 1024 * 1024
MAX_CONFIG_BYTES: Final = 1024 * 1024
MAX_STORAGE_BYTES: Final = 16 * 1024 * 1024
#: How much of containers.json one record may span when decoded on its own.
RECORD_WINDOW_BYTES: Final = 256 * 1024
MAX_ERROR_CHARS: Final = 1000
#: The failure log and its one previous generation (see :func:`record_error`).
HOOK_ERRORS: Final = layout.HOOK_ERRORS_FILE
HOOK_ERRORS_OLD: Final = "hook-errors.1.jsonl"
HOOK_ERRORS_MAX_BYTES = 1024 * 1024  # not Final: tests shrink it
ERRORS_LOCK_TIMEOUT_S: Final = 0.2
USAGE: Final = "usage: shieldaudit-hook STAGE [--fail-closed] < state.json  (or: --check)"
_FILE_FLAGS: Final = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def read_bounded(fd: int, limit: int, what: str) -> bytes:
    """Read ``fd`` to its end, refusing more than ``limit`` bytes."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = os.read(fd, min(65536, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        chunks.append(chunk)
        if total > limit:
            raise UsageError(f"{what} is larger than {limit} bytes")


def read_stdin(fd: int) -> bytes:
    """Read the OCI state from ``fd`` (at most :data:`MAX_STATE_BYTES`)."""
    try:
        return read_bounded(fd, MAX_STATE_BYTES, "OCI state on stdin")
    except OSError as exc:
        raise UsageError(f"cannot read the OCI state on stdin: {exc.strerror or exc}") from None


def read_file(path: str, limit: int) -> bytes | None:
    """Return a regular file's bytes, or None when absent, unreadable, special or over ``limit``."""
    try:
        fd = os.open(path, os.O_RDONLY | _FILE_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        os.set_blocking(fd, True)
        return read_bounded(fd, limit, path)
    except (OSError, UsageError):
        return None
    finally:
        os.close(fd)


def gather(state: ocistate.OciState) -> tuple[ocistate.ContainerInfo, ocistate.ContainerInfo]:
    """Learn what is cheap from the bundle's config.json and the storage metadata.

    Absent, huge or malformed files are ignored: they only leave fields empty.
    """
    bundle = ocistate.ContainerInfo()
    storage = ocistate.ContainerInfo()
    if not state.bundle:
        return bundle, storage
    data = read_file(state.bundle.rstrip("/") + "/config.json", MAX_CONFIG_BYTES)
    if data is not None:
        with contextlib.suppress(UsageError):  # malformed: learn nothing from it
            bundle = ocistate.bundle_info(ocistate.parse_json_object(data, "config.json"))
    meta_path = ocistate.storage_metadata_path(state.bundle, state.container_id)
    if meta_path is not None:
        data = read_file(meta_path, MAX_STORAGE_BYTES)
        if data is not None:
            storage = storage_record(data, state.container_id)
    return bundle, storage


def storage_record(data: bytes, container_id: str) -> ocistate.ContainerInfo:
    """Find one container in ``containers.json`` without parsing the whole list.

    The file lists every container on the host, so parsing it all would make
    each hook's cost grow with the host's container count. containers/storage
    writes ``id`` as each record's first key, compactly: find that, decode the record
    that starts at the brace before it, and check it. Anything unexpected falls
    back to parsing the whole file.
    """
    key = b'"id":"' + container_id.encode("ascii") + b'"'
    at = data.find(key)
    start = data.rfind(b"{", 0, at) if at >= 0 else -1
    if start >= 0 and not data[start + 1 : at].strip():
        window = data[start : start + RECORD_WINDOW_BYTES].decode("utf-8", "replace")
        try:
            record = ocistate.decode_prefix(window)
        except ValueError:
            record = None
        if isinstance(record, dict) and record.get("id") == container_id:
            return ocistate.storage_info([record], container_id)
    try:
        containers = ocistate.loads(data.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError included
        return ocistate.ContainerInfo()
    return ocistate.storage_info(containers, container_id)


def repeated_poststop(stage: str) -> Callable[[Iterable[Mapping[str, object]]], bool] | None:
    """Return the check that makes a stage idempotent, if it needs one.

    Podman can run ``poststop`` twice for one stop (once from ``podman stop``,
    once from conmon's cleanup). The check looks at the trail's last *hook*
    entry (entries newest first, through the sealed segments if need be): when
    that is already a poststop, nothing of the hook's ran since, so this one is
    the repeat and is not written. Entries of other sources (the listener's
    ``died``, say) in between do not matter.
    """
    if stage != "poststop":
        return None

    def check(newest_first: Iterable[Mapping[str, object]]) -> bool:
        for entry in newest_first:
            if entry.get("source") == "hook":
                return entry.get("action") == "poststop"
        return False

    return check


def append_entry(
    environ: Mapping[str, str],
    container_id: str,
    fields: Mapping[str, object],
    skip: Callable[[Iterable[Mapping[str, object]]], bool] | None,
    clock: Callable[[], int],
) -> None:
    """Append through the reference writer (unless ``skip`` says the entry is a repeat)."""
    with TrailWriter(load_store_settings(environ), clock=clock) as writer:
        writer.append_unless(container_id, fields, skip)


def error_root(environ: Mapping[str, str]) -> str | None:
    """Return the root to record a failure under, even when the settings do not load."""
    root = environ.get("SHIELDAUDIT_ROOT", "").strip()
    if root.startswith("/"):
        return root
    try:
        return str(load_store_settings(environ).root)
    except (ShieldAuditError, OSError, RuntimeError, KeyError):  # no HOME, no passwd entry
        return None


def self_check() -> str:
    """Describe the reference path in one line (everything it needs is imported by now)."""
    here = os.path.dirname(os.path.abspath(__file__))  # noqa: PTH100, PTH120
    version = ".".join(map(str, sys.version_info[:3]))
    return f"shieldaudit-hook: ok (python reference {version} {sys.executable}, package {here})"


def run(  # noqa: C901 -- argument parsing and the one place failures are caught
    argv: Sequence[str],
    environ: Mapping[str, str],
    stdin_fd: int = 0,
    clock: Callable[[], int] = time.time_ns,
) -> int:
    """Record one hook invocation; return the exit status (see the module docstring)."""
    stage = ""
    flag_closed = False
    problem = ""
    for arg in argv:
        if arg == "--fail-closed":
            flag_closed = True
        elif arg in {"-h", "--help"}:
            print(USAGE)
            return 0
        elif arg == "--check":
            print(self_check())
            return 0
        elif arg.startswith("-") or stage:
            problem = f"unexpected argument {ocistate.clip(arg, 64)!r}; {USAGE}"
        else:
            stage = arg
    if not stage and not problem:
        problem = f"missing STAGE; {USAGE}"
    container_id = ""
    try:
        if problem:
            raise UsageError(problem)  # noqa: TRY301 -- recorded like every failure
        state = ocistate.parse_state(read_stdin(stdin_fd))
        container_id = state.container_id
        if stage not in ocistate.STAGES:
            raise UsageError(  # noqa: TRY301 -- recorded like every failure
                f"unknown hook stage {ocistate.clip(stage, 64)!r}: expected one of "
                f"{', '.join(ocistate.STAGES)}; fix the hooks.d file (shieldaudit install-hooks)",
            )
        bundle, storage = gather(state)
        fields = ocistate.entry_fields(stage, state, bundle, storage)
        append_entry(environ, container_id, fields, repeated_poststop(stage), clock)
    except InvalidContainerIdError as exc:
        return fail(exc.message, environ, stage, exc.value, flag_closed=flag_closed, clock=clock)
    except ShieldAuditError as exc:
        return fail(exc.message, environ, stage, container_id, flag_closed=flag_closed, clock=clock)
    except Exception as exc:  # noqa: BLE001 -- a hook must report, never trace back
        message = f"internal error ({type(exc).__name__}: {exc}); please report it"
        return fail(message, environ, stage, container_id, flag_closed=flag_closed, clock=clock)
    return 0


def fail(
    message: str,
    environ: Mapping[str, str],
    stage: str,
    container_id: str,
    *,
    flag_closed: bool,
    clock: Callable[[], int],
) -> int:
    """Report a failure: one stderr line, one hook-errors line; return 1 if fail-closed."""
    message = " ".join(ocistate.clip(message, MAX_ERROR_CHARS).split())
    root = error_root(environ)
    fsync = environ.get("SHIELDAUDIT_FSYNC", "always").strip().lower() != "never"
    why_not = (
        record_error(
            root,
            ocistate.clip(stage, 64),
            ocistate.clip(container_id, 80),
            message,
            clock=clock,
            sync=fsync,
        )
        if root is not None
        else "no usable root"
    )
    closed = flag_closed or env_fail_closed(environ)
    suffix = f" [failure not recorded: {why_not}]" if why_not else ""
    verdict = "container refused (fail-closed)" if closed else "container allowed (fail-open)"
    print(f"shieldaudit-hook {stage or '?'}: {message}; {verdict}{suffix}", file=sys.stderr)
    return 1 if closed else 0


class _NotRegularError(Exception):
    """A name in the state directory that is not a plain file or directory."""


def _subdir(parent_fd: int, name: str) -> int:
    with contextlib.suppress(FileExistsError):  # the usual case: it is there already
        os.mkdir(name, layout.DIR_MODE, dir_fd=parent_fd)
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in {errno.ENOTDIR, errno.ELOOP}:  # a file or a symlink
            raise _NotRegularError from None
        raise


def _open_log(state_fd: int, shown: str) -> int:
    """Open the failure log for appending; refuse anything but a singly linked regular file.

    A hard-linked log is refused as the store refuses a hard-linked trail file:
    appending to it would write into a file outside the root.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _FILE_FLAGS
    try:
        fd = os.open(HOOK_ERRORS, flags, layout.FILE_MODE, dir_fd=state_fd)
    except OSError as exc:
        if exc.errno in {errno.ELOOP, errno.ENXIO}:  # a symlink, a FIFO without a reader
            raise _NotRegularError from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _NotRegularError  # noqa: TRY301 -- the descriptor is closed below
        layout.check_single_link(fd, shown)
    except BaseException:
        os.close(fd)
        raise
    os.set_blocking(fd, True)
    return fd


def _rotate_errors(state_fd: int, out: int, shown: str) -> int:
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
    return _open_log(state_fd, shown)


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
    anything there could have been swapped by another user. Nor is a ``state/``
    the store would refuse (group/world-writable, or owned by someone other than
    the root's owner or root), nor a log with other hard links. The log is kept
    bounded: at :data:`HOOK_ERRORS_MAX_BYTES` it becomes ``hook-errors.1.jsonl``
    (replacing the previous one), which the sidecar drains before the new file.
    """
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        try:
            os.makedirs(root, mode=layout.DIR_MODE, exist_ok=True)  # noqa: PTH103 -- root is a str
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            return f"cannot create root {root}: {exc.strerror or exc}"
    except OSError as exc:
        return f"cannot open root {root}: {exc.strerror or exc}"
    try:
        if os.fstat(fd).st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"root {root} is writable by group or others"
        record = {
            "ts": format_ns(clock()),
            "stage": stage,
            "container_id": container_id,
            "error": error,
        }
        line = json.dumps(record, ensure_ascii=True, separators=(",", ":"))
        state_fd = _subdir(fd, layout.STATE_DIR)
        try:
            layout.check_dir(state_fd, fd, f"{root}/{layout.STATE_DIR}")
            shown = f"{root}/{layout.STATE_DIR}/{HOOK_ERRORS}"
            out = _open_log(state_fd, shown)
            if os.fstat(out).st_size >= HOOK_ERRORS_MAX_BYTES:
                out = _rotate_errors(state_fd, out, shown)
        finally:
            os.close(state_fd)
        try:
            os.write(out, line.encode("ascii") + b"\n")
            if sync:
                os.fdatasync(out)
        finally:
            os.close(out)
    except (_NotRegularError, UnsafePathError) as exc:
        # UnsafePathError: a loose or foreign state/, a hard-linked log (the store's words)
        return (
            exc.message
            if isinstance(exc, UnsafePathError)
            else f"{root}/state/hook-errors.jsonl is not a regular file in a directory"
        )
    except OSError as exc:
        return f"cannot write {root}/state/hook-errors.jsonl: {exc.strerror or exc}"
    finally:
        os.close(fd)
    return None


def main() -> None:
    """Run the reference hook with this process's arguments and environment."""
    sys.exit(run(sys.argv[1:], os.environ))
