r"""Following the spool that the collector's rsyslog writes, in batches, with a durable checkpoint.

The collector's rsyslog (``deploy/rsyslog/collector.conf``) appends every
message to one spool file with ``omfile`` and syncs it at the end of each of
its batches; only then does it drop the batch from its disk queue. A record
is::

    \x1e<node> {"file":"<path on the node>","offset":<byte offset>} <the line>\n

The leading record separator (``\x1e``) cannot occur inside a record: rsyslog
escapes control characters in what it receives. It marks where a record
starts, so a record torn by a ``kill -9`` of rsyslog mid-write (rsyslog then
writes the unfinished batch again after it) is recognised and dropped: the
part of a line before its last separator is such a fragment.

When the spool reaches ``rotation.sizeLimit``, rsyslog closes it and runs
``shieldaudit-spool-rotate``, which renames it ``<spool>.NNNNNNNNNN`` (one more
than the highest number present); the next message creates a new spool. A
numbered file is therefore complete and never written again. ``collect``
reads the numbered files (lowest number first), then the spool, as one stream
of records: a record may start in one file and end in the next.

What ``collect`` has made durable is recorded in ``<spool>.checkpoint``: the
inode of the file and the offset just after the last record it applied
(always a record boundary). The checkpoint is written, and synced, only after
the records before it are durable in the central copy; a numbered file is
removed only once the checkpoint has moved past it. After a crash, collect
starts again from the checkpoint: what it had applied since is read again
and dropped as redelivered.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from shieldaudit.core.errors import StorageError
from shieldaudit.fleet.collect import MAX_LINE_BYTES, RefusedError, parse_message

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from shieldaudit.fleet.collect import Collector, Metrics

SEPARATOR: Final = b"\x1e"
CHECKPOINT_SUFFIX: Final = ".checkpoint"
#: The checkpoint is rewritten in place at this fixed size (one sector: never torn).
CHECKPOINT_BYTES: Final = 128
#: A record longer than this (a line of at most MAX_LINE_BYTES plus its header) is dropped.
MAX_RECORD_BYTES: Final = MAX_LINE_BYTES + 64 * 1024
_NUMBERED: Final = re.compile(r"\.([0-9]{1,18})")


@dataclass(frozen=True, slots=True)
class Position:
    """A place in the spool: a file (by inode) and a byte offset in it."""

    inode: int
    offset: int


@dataclass(slots=True)
class Batch:
    """Records read in one go, and where the spool stands after the last of them."""

    records: list[bytes]
    torn: int  # fragments of torn records dropped
    oversized: int  # over-long records dropped
    end: Position | None


class Spool:
    """The spool files of one collector's rsyslog, read in order from a durable checkpoint."""

    def __init__(
        self, path: Path, *, fsync: bool = True, log: Callable[[str], None] | None = None
    ) -> None:
        """Open the spool's directory (it must exist) and the checkpoint (created if missing)."""
        self.path = path
        self.name = path.name
        self.fsync = fsync
        self.log = log
        try:
            self.dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise StorageError(f"cannot open {path.parent}: {exc.strerror or exc}") from None
        checkpoint = self.name + CHECKPOINT_SUFFIX
        try:
            self._checkpoint_fd = os.open(
                checkpoint,
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=self.dir_fd,
            )
        except OSError as exc:
            os.close(self.dir_fd)
            raise StorageError(
                f"cannot open {path.parent / checkpoint}: {exc.strerror or exc}"
            ) from None
        self.committed: Position | None = self._load_checkpoint()
        self._fd = -1
        self._inode = -1
        self._offset = 0  # where the next read from _fd starts
        self._partial = b""  # bytes read after the last complete record
        self._boundary: Position | None = self.committed  # just after the last complete record
        self._skipping = False  # inside an over-long record
        self._renamed = False  # the open file was seen renamed away by rsyslog

    # -- the checkpoint ---------------------------------------------------------

    def _load_checkpoint(self) -> Position | None:
        data = os.pread(self._checkpoint_fd, CHECKPOINT_BYTES, 0).rstrip(b" \n\0")
        if not data:
            return None
        try:
            value = json.loads(data)
            position = Position(int(value["inode"]), int(value["offset"]))
        except (ValueError, KeyError, TypeError):
            self._say(
                f"{self.path}{CHECKPOINT_SUFFIX} is unreadable: reading the spool from its "
                "oldest file (lines already held are dropped)"
            )
            return None
        return position

    def commit(self) -> None:
        """Record (durably) that everything read so far is applied; remove files read past."""
        end = self._boundary
        if end is None or end == self.committed:
            return
        text = json.dumps({"inode": end.inode, "offset": end.offset}).encode()
        record = text.ljust(CHECKPOINT_BYTES - 1) + b"\n"
        try:
            os.pwrite(self._checkpoint_fd, record, 0)
            if self.fsync:
                os.fdatasync(self._checkpoint_fd)
        except OSError as exc:
            raise StorageError(
                f"cannot write {self.path}{CHECKPOINT_SUFFIX}: {exc.strerror or exc}"
            ) from None
        self.committed = end
        self._remove_before(end.inode)

    def _remove_before(self, inode: int) -> None:
        """Remove the numbered files that come before ``inode``'s (read and checkpointed)."""
        files = self.files()
        inodes = [ino for _, ino in files]
        if inode not in inodes:
            return
        removed = False
        for name, ino in files[: inodes.index(inode)]:
            if name == self.name:
                break  # the spool itself is rsyslog's: never removed
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=self.dir_fd)
                removed = True
            if ino == self._inode:
                os.close(self._fd)
                self._fd, self._inode = -1, -1
        if removed and self.fsync:
            os.fsync(self.dir_fd)

    def rewind(self) -> None:
        """Forget what was read after the checkpoint (after a failure); read it again."""
        self._close()
        self._partial = b""
        self._skipping = False
        self._boundary = self.committed

    def close(self) -> None:
        """Close the files (the checkpoint stays as last committed)."""
        self._close()
        for fd in (self._checkpoint_fd, self.dir_fd):
            if fd >= 0:
                os.close(fd)
        self._checkpoint_fd = self.dir_fd = -1

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._inode, self._offset = -1, -1, 0
        self._renamed = False

    # -- the files ---------------------------------------------------------------

    def files(self) -> list[tuple[str, int]]:
        """Return ``(name, inode)`` of the spool's files in the order they were written."""
        numbered: list[tuple[int, str, int]] = []
        active: list[tuple[str, int]] = []
        prefix = self.name
        with os.scandir(self.dir_fd) as entries:
            for entry in entries:
                name = entry.name
                if not name.startswith(prefix):
                    continue
                if name == prefix:
                    if entry.is_file(follow_symlinks=False):
                        active.append((name, entry.inode()))
                    continue
                match = _NUMBERED.fullmatch(name, len(prefix))
                if match is not None and entry.is_file(follow_symlinks=False):
                    numbered.append((int(match.group(1)), name, entry.inode()))
        numbered.sort()
        return [(name, ino) for _, name, ino in numbered] + active

    def _open(self, name: str, inode: int) -> bool:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(f"cannot open {self.path.parent / name}: {exc.strerror}") from None
        if os.fstat(fd).st_ino != inode:  # replaced since it was listed: list again
            os.close(fd)
            return False
        self._close()
        self._fd, self._inode, self._offset = fd, inode, 0
        self._renamed = False
        return True

    def _start(self) -> bool:
        """Open the file to read first: the checkpoint's, else the oldest one."""
        files = self.files()
        if not files:
            return False
        start = self._boundary
        if start is not None:
            for name, ino in files:
                if ino == start.inode:
                    if not self._open(name, ino):
                        return False
                    size = os.fstat(self._fd).st_size
                    if start.offset <= size:
                        self._offset = start.offset
                        return True
                    self._say(
                        f"the checkpoint is past the end of {name} ({start.offset} > {size}): "
                        "reading the spool from its oldest file (lines already held are dropped)"
                    )
                    break
            else:
                self._say(
                    "the file of the checkpoint is gone: reading the spool from its oldest file "
                    "(lines already held are dropped)"
                )
            self._boundary = None
        name, ino = files[0]
        if not self._open(name, ino):
            return False
        self._boundary = Position(ino, 0)
        return True

    # -- reading -------------------------------------------------------------------

    def read(self, limit: int = 4 * 1024 * 1024) -> Batch:
        """Return the complete records that follow what was read, about ``limit`` bytes of them."""
        batch = Batch([], 0, 0, None)
        if self._fd < 0 and not self._start():
            return batch
        budget = limit
        while budget > 0:
            data = os.pread(self._fd, min(budget, 1024 * 1024), self._offset)
            if data:
                start = self._offset
                self._offset += len(data)
                budget -= len(data)
                self._take(data, start, batch)
                continue
            if self._renamed:
                # Renamed away before this read returned nothing: it is complete.
                if not self._open_next():
                    break
                continue
            if not self._has_successor():
                break
            # rsyslog closed it before renaming it: one more read gets all it wrote.
            self._renamed = True
        batch.end = self._boundary
        return batch

    def _has_successor(self) -> bool:
        files = self.files()
        inodes = [ino for _, ino in files]
        if self._inode not in inodes:
            return False  # removed under us: the checkpoint says where to go on
        index = inodes.index(self._inode)
        return files[index][0] != self.name and index + 1 < len(files)

    def _open_next(self) -> bool:
        files = self.files()
        inodes = [ino for _, ino in files]
        if self._inode not in inodes:
            return False
        index = inodes.index(self._inode)
        if index + 1 >= len(files):
            return False
        return self._open(*files[index + 1])

    def _take(self, data: bytes, start: int, batch: Batch) -> None:
        """Split ``data`` (read at ``start`` of the open file) into records."""
        buf = self._partial + data
        cut = buf.rfind(b"\n")
        if cut < 0:
            if self._skipping:
                self._partial = b""
                return
            self._partial = buf
            if len(buf) > MAX_RECORD_BYTES:
                self._partial = b""
                self._skipping = True
            return
        self._partial = buf[cut + 1 :]
        lines = buf[:cut].split(b"\n")
        if self._skipping:
            self._skipping = False
            batch.oversized += 1
            del lines[0]  # the end of the over-long record
        for line in lines:
            first = line.rfind(SEPARATOR)
            if first > 0:
                batch.torn += 1  # a fragment, then the record written again
            if first < 0:
                batch.records.append(line)  # refused as malformed by the caller
            else:
                batch.records.append(line[first + 1 :])
        # The boundary is in the open file: just after the last newline.
        self._boundary = Position(self._inode, start + len(data) - len(self._partial))
        if len(self._partial) > MAX_RECORD_BYTES:
            self._partial = b""
            self._skipping = True

    def backlog(self) -> tuple[int, int]:
        """Return the bytes after the checkpoint and the spool file's size (for the metrics)."""
        total = 0
        active = 0
        seen = self.committed is None
        for name, ino in self.files():
            try:
                size = os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
            if name == self.name:
                active = size
            if not seen and self.committed is not None and ino == self.committed.inode:
                seen = True
                total += max(0, size - self.committed.offset)
            elif seen:
                total += size
        return total, active

    def _say(self, message: str) -> None:
        if self.log is not None:
            self.log(message)


#: Sleep between looks at an idle spool: short right after activity, longer when quiet.
POLL_BUSY: Final = 0.002
POLL_IDLE: Final = 0.05
#: How long after the last record the short sleep is kept.
BUSY_FOR: Final = 1.0
#: Wait before trying again after a storage failure.
RETRY_AFTER: Final = 1.0


def follow(
    collector: Collector,
    spool: Spool,
    metrics: Metrics,
    *,
    once: bool = False,
    stop: Callable[[], bool] = lambda: False,
    log: Callable[[str], None] | None = None,
) -> None:
    """Apply the spool's records batch by batch until ``stop()`` (or its end, with ``once``).

    Each batch is applied, made durable (``Collector.flush``) and only then
    checkpointed. A storage failure rewinds to the checkpoint and tries again
    a second later: nothing is skipped.
    """
    counts = collector.counts
    busy_until = 0.0
    backlog_at = 0.0
    caught_up = True
    while not stop():
        try:
            read = _apply_batch(collector, spool, log)
        except (StorageError, OSError) as exc:
            message = getattr(exc, "message", None) or getattr(exc, "strerror", None) or str(exc)
            collector.reset()
            spool.rewind()
            metrics.write(force=True)
            if once:
                raise StorageError(message) from None
            if log is not None:
                log(f"cannot store: {message}; reading again from the checkpoint in 1 s")
            time.sleep(RETRY_AFTER)
            continue
        now = time.monotonic()
        if now - backlog_at >= 1.0:
            counts.backlog, counts.spool_size = spool.backlog()
            backlog_at = now
        if read:
            metrics.write()
            busy_until = now + BUSY_FOR
            caught_up = False
            continue
        # The spool is read to its end: the metrics say so (at most ten times a second).
        if not caught_up:
            counts.backlog, counts.spool_size = spool.backlog()
            caught_up = metrics.write(force=True, within=0.1)
        if once:
            break
        time.sleep(POLL_BUSY if now < busy_until else POLL_IDLE)
    counts.backlog, counts.spool_size = spool.backlog()
    metrics.write(force=True)


def _apply_batch(collector: Collector, spool: Spool, log: Callable[[str], None] | None) -> bool:
    """Read, apply, sync and checkpoint one batch; return whether there was anything."""
    batch = spool.read()
    if not (batch.records or batch.torn or batch.oversized):
        return False
    counts = collector.counts
    refused = counts.refused
    for record in batch.records:
        try:
            shipped = parse_message(record)
        except RefusedError as exc:
            refused[exc.reason] += 1
            if log is not None:
                log(f"refused: {exc}")
            continue
        collector.apply(shipped)
    counts.torn += batch.torn
    refused["entry"] += batch.oversized
    collector.flush()
    spool.commit()
    return True
