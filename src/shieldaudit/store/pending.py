"""What happens between two seals that the next seal must record, and the seal lock.

Two small files under ``<root>/state/``, one JSON object per line:

* ``retired.jsonl``: a sealed segment that retention is about to remove
  (``{"container_id": …, "segment": N, "ts": …}``), written by the writer under
  the container's lock *before* it unlinks the segment;
* ``tombstones.jsonl``: a trail that ``prune`` is about to remove
  (``{"container_id": …, "seq": N, "mac": …, "ts": …}``), written under the
  container's lock *before* anything is deleted.

A crash between the record and the removal leaves a record of a removal that
did not happen, which is harmless. Appenders hold an exclusive ``flock`` on the
file while they append; the next seal holds it while it reads the records and,
once the seal is written, empties the file. Standard library only: the hook's
writer uses it.

``state/seal.lock`` orders appends signed with an evolving key against the
key step: such writers hold it shared from reading the key to the end of the
write, a seal holds it exclusively while it reads the heads, writes the seal
and advances the key. Both waits are bounded like the container locks. A
busy writer would always find some other writer holding the lock shared, so
everyone passes ``state/seal.turnstile`` first (held exclusively for an
instant by writers, for the whole seal by the sealer): once a seal is
waiting, no new writer gets in, and the seal waits only for the appends
already under way.
"""

from __future__ import annotations

import fcntl
import json
import os
from typing import TYPE_CHECKING, Final, Self

from shieldaudit.core import ids
from shieldaudit.core.errors import LockTimeoutError, StorageError
from shieldaudit.store import layout

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

RETIRED: Final = "retired.jsonl"
TOMBSTONES: Final = "tombstones.jsonl"
SEAL_LOCK: Final = "seal.lock"
TURNSTILE: Final = "seal.turnstile"
_MAX_BYTES: Final = 64 * 1024 * 1024


def open_state_file(root_fd: int, root: Path, name: str) -> int:
    """Open (creating, ``0600``) ``<root>/state/<name>`` for reading and appending."""
    state_fd = layout.open_subdir(root_fd, layout.STATE_DIR, root / layout.STATE_DIR, create=True)
    try:
        return layout.open_regular(
            state_fd, name, os.O_RDWR | os.O_APPEND | os.O_CREAT, root / layout.STATE_DIR / name
        )
    finally:
        os.close(state_fd)


def append(root_fd: int, root: Path, name: str, record: Mapping[str, object]) -> None:
    """Append one record durably, under the file's exclusive lock (bounded wait)."""
    line = json.dumps(record, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"
    fd = open_state_file(root_fd, root, name)
    try:
        lock(fd, f"state/{name}")
        os.write(fd, line)
        os.fdatasync(fd)
    except OSError as exc:
        raise StorageError(
            f"cannot record in {root / layout.STATE_DIR / name}: {exc.strerror or exc}"
        ) from None
    finally:
        os.close(fd)  # releases the lock


def lock(fd: int, what: str, *, shared: bool = False) -> None:
    """Take an flock within the bounded wait; the error names ``what`` is locked."""
    try:
        layout.flock_bounded(fd, "0" * 64, shared=shared)
    except LockTimeoutError:
        raise LockTimeoutError(
            f"timed out after {layout.LOCK_TIMEOUT_S:g}s waiting for the lock of {what}: "
            "a seal or another writer holds it; retry, or look for a stuck shieldaudit process",
        ) from None


class SealLock:
    """``state/seal.lock``: shared (evolving-key writers) or exclusive (a seal)."""

    def __init__(self, root_fd: int, root: Path, *, shared: bool) -> None:
        """Take the lock, each wait bounded; release with :meth:`release` (or ``with``)."""
        self._fds: list[int] = []
        try:
            turnstile = open_state_file(root_fd, root, TURNSTILE)
            self._fds.append(turnstile)
            lock(turnstile, "state/seal.turnstile")
            fd = open_state_file(root_fd, root, SEAL_LOCK)
            self._fds.append(fd)
            lock(fd, "state/seal.lock", shared=shared)
            if shared:  # in: let the next one (maybe a seal) through the turnstile
                self._fds.remove(turnstile)
                os.close(turnstile)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Drop the locks (closing the descriptors releases the flocks)."""
        while self._fds:
            os.close(self._fds.pop())

    def __enter__(self) -> Self:
        """Use as a context manager."""
        return self

    def __exit__(self, *_exc: object) -> None:
        """Release on leaving the block."""
        self.release()


def unlock(fd: int) -> None:
    """Release an flock taken with :func:`lock`."""
    fcntl.flock(fd, fcntl.LOCK_UN)


def read_records(fd: int) -> list[dict[str, object]]:
    """Return the complete, parseable records of a locked pending file (others are skipped)."""
    size = os.fstat(fd).st_size
    data = os.pread(fd, min(size, _MAX_BYTES), 0)
    records = []
    for line in data.split(b"\n")[:-1]:
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and ids.is_container_id(str(value.get("container_id"))):
            records.append(value)
    return records


def peek(root_fd: int, root: Path, name: str) -> list[dict[str, object]]:
    """Return a pending file's records without consuming them (readers: ``verify``)."""
    try:
        state_fd = layout.open_subdir(
            root_fd, layout.STATE_DIR, root / layout.STATE_DIR, create=False
        )
    except FileNotFoundError:
        return []
    try:
        fd = layout.open_regular(state_fd, name, os.O_RDONLY, root / layout.STATE_DIR / name)
    except FileNotFoundError:
        return []
    finally:
        os.close(state_fd)
    try:
        lock(fd, f"state/{name}", shared=True)
        return read_records(fd)
    finally:
        os.close(fd)
