r"""Following the spool files that the collector's rsyslog writes, in batches, with a checkpoint.

The collector's rsyslog (``deploy/rsyslog/collector.conf``) appends every
message to a spool file named after the UTC minute it was written in,
``<spool>.YYYYMMDDhhmm`` (omfile ``dynaFile``), and keeps only that file open;
at the next minute it closes it and starts the next one. A record is::

    \x1e<node> {"file":"<path on the node>","offset":<byte offset>} <the line>\n

The leading record separator (``\x1e``) cannot occur inside a record: rsyslog
escapes control characters in what it receives. It marks where a record
starts, so a record torn by a ``kill -9`` of rsyslog mid-write (rsyslog then
writes the unfinished batch again after it) is recognised and dropped: the
part of a line before its last separator is such a fragment. Records never
span files.

``collect`` reads every ``<spool>.<12 digits>`` file (other names are
ignored), each on its own from where it left it, oldest name first. What it
has made durable is recorded in ``<spool>.checkpoint``: for each file it has
begun, its name, inode and the offset just after the last record applied (always a
record boundary). The checkpoint is replaced atomically (a temporary file,
synced, renamed, the directory synced) and only after the records before it
are durable in the central copy. After a crash, collect starts again from the
checkpoint: what it had applied since is read again and dropped as
redelivered.

A file is removed only once all of these hold: the checkpoint says it was
read to its end; a file with a later name exists; no process has it open for
writing (a read lease, ``F_SETLEASE``, is refused while one does; without
leases the file must instead be unmodified for :data:`NO_LEASE_GRACE`); and
it was last modified more than :data:`GRACE` ago (a writer that had resolved
the name just before its minute ended). A partial record at the end of such a
file is a torn record (rsyslog was killed mid-write and writes the record
again into a later file): it is counted and dropped.

``<spool>.lock`` is held (``flock``) for collect's lifetime: a second collect
on the same spool refuses to start and names the first.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Self

from shieldaudit.core.errors import StorageError
from shieldaudit.fleet.collect import MAX_LINE_BYTES, RefusedError, parse_message
from shieldaudit.store import instance, layout

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from shieldaudit.fleet.collect import Collector, Metrics

SEPARATOR: Final = b"\x1e"
CHECKPOINT_SUFFIX: Final = ".checkpoint"
LOCK_SUFFIX: Final = ".lock"
#: A record longer than this (a line of at most MAX_LINE_BYTES plus its header) is dropped.
MAX_RECORD_BYTES: Final = MAX_LINE_BYTES + 64 * 1024
#: How much is read from a file at a time (more than a record: an over-long one is seen).
CHUNK_BYTES: Final = MAX_RECORD_BYTES + 1
#: A finished file is removed only once unmodified for this long (seconds).
GRACE: Final = 5.0
#: Without file leases, a file must be unmodified this long instead (rsyslog closes
#: a spool file within three minutes of its last write: closeTimeout plus the janitor).
NO_LEASE_GRACE: Final = 600.0
_TIMED: Final = re.compile(r"\.[0-9]{12}")


class SpoolBusyError(instance.InstanceBusyError):
    """Another collect already follows this spool."""


@dataclass(slots=True)
class _File:
    """Where collect stands in one spool file."""

    inode: int
    committed: int = 0  # as the checkpoint says (a record boundary)
    boundary: int = 0  # just after the last complete record read
    position: int = 0  # where the next read starts (past boundary inside an over-long record)
    skipping: bool = False  # inside an over-long record
    finished: int = -1  # the size at which it was seen no longer written (its end)


@dataclass(slots=True)
class Batch:
    """Records read in one go."""

    records: list[bytes] = field(default_factory=list)
    torn: int = 0  # fragments of torn records dropped
    oversized: int = 0  # over-long records dropped


class Spool:
    """The spool files of one collector's rsyslog, each read from a durable checkpoint."""

    def __init__(
        self, path: Path, *, fsync: bool = True, log: Callable[[str], None] | None = None
    ) -> None:
        """Open the spool's directory (it must exist), take its lock, load the checkpoint.

        Raises:
            SpoolBusyError: another collect holds ``<spool>.lock``.
            StorageError: the directory or the lock cannot be opened.
        """
        self.path = path
        self.name = path.name
        self.fsync = fsync
        self.log = log
        self._leases = True
        self._first_run = False
        try:
            self.dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise StorageError(f"cannot open {path.parent}: {exc.strerror or exc}") from None
        try:
            self._lock_fd = self._take_lock()
        except BaseException:
            os.close(self.dir_fd)
            raise
        # A writer opening a file while collect holds its lease makes the kernel
        # signal SIGIO (by default fatal); the lease is released at once anyway.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGIO, signal.SIG_IGN)
        self._files: dict[str, _File] = {}
        self._dirty = False
        self._load_checkpoint()

    def _take_lock(self) -> int:
        name = self.name + LOCK_SUFFIX
        shown = self.path.parent / name
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            try:
                fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=self.dir_fd)
                self._first_run = True  # no collect followed this spool before
            except FileExistsError:
                fd = os.open(name, flags, dir_fd=self.dir_fd)
        except OSError as exc:
            raise StorageError(f"cannot open {shown}: {exc.strerror or exc}") from None
        try:
            instance.take(
                fd,
                f"another shieldaudit collect is following {self.path}",
                shown,
                "stop it first",
                SpoolBusyError,
            )
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- the checkpoint ---------------------------------------------------------

    def _load_checkpoint(self) -> None:
        name = self.name + CHECKPOINT_SUFFIX
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dir_fd)
        except FileNotFoundError:
            if not self._first_run and self.files():
                self._say(
                    f"{self.path}{CHECKPOINT_SUFFIX} is missing: reading every spool file from "
                    "its start (lines already held are dropped)"
                )
            # From now on a missing checkpoint means a lost one.
            self._dirty = True
            self.commit()
            return
        except OSError as exc:
            raise StorageError(
                f"cannot open {self.path}{CHECKPOINT_SUFFIX}: {exc.strerror}"
            ) from None
        try:
            with os.fdopen(fd, "rb") as f:
                data = f.read(16 * 1024 * 1024)
            entries = json.loads(data)["files"]
            loaded = {
                str(e["name"]): _File(int(e["inode"]), int(e["offset"]))
                for e in entries
                if _TIMED.fullmatch(str(e["name"]), len(self.name))
                and str(e["name"]).startswith(self.name)
                and int(e["offset"]) >= 0
            }
        except (OSError, ValueError, KeyError, TypeError):
            self._say(
                f"{self.path}{CHECKPOINT_SUFFIX} is unreadable: reading every spool file from "
                "its start (lines already held are dropped)"
            )
            return
        for state in loaded.values():
            state.boundary = state.position = state.committed
        self._files = loaded

    def mark(self) -> dict[str, int]:
        """Return where every file stands now (its last complete record), for :meth:`commit`."""
        return {name: state.boundary for name, state in self._files.items()}

    def commit(self, mark: dict[str, int] | None = None) -> None:
        """Record (durably, atomically) that what was read up to ``mark`` is applied.

        Without ``mark``, everything read so far. A file that was removed
        since the mark is left out.
        """
        changed = self._dirty
        for name, state in self._files.items():
            end = state.boundary if mark is None else mark.get(name, state.committed)
            if state.committed != end:
                state.committed = end
                changed = True
        if not changed:
            return
        # A file not named is read from its start: with a backlog of many
        # files, the checkpoint names only the few begun.
        entries = [
            {"name": name, "inode": state.inode, "offset": state.committed}
            for name, state in sorted(self._files.items())
            if state.committed > 0
        ]
        data = json.dumps({"files": entries}, separators=(",", ":")).encode() + b"\n"
        try:
            layout.replace_file(self.dir_fd, self.name + CHECKPOINT_SUFFIX, data, sync=self.fsync)
            if self.fsync:
                layout.fsync_dir(self.dir_fd)
        except OSError as exc:
            raise StorageError(
                f"cannot write {self.path}{CHECKPOINT_SUFFIX}: {exc.strerror or exc}"
            ) from None
        self._dirty = False

    def rewind(self) -> None:
        """Forget what was read after the checkpoint (after a failure); read it again."""
        for state in self._files.values():
            state.boundary = state.position = state.committed
            state.skipping = False
            state.finished = -1

    def close(self) -> None:
        """Close the directory and release the lock (the checkpoint stays as last committed)."""
        for fd in (self._lock_fd, self.dir_fd):
            if fd >= 0:
                os.close(fd)
        self._lock_fd = self.dir_fd = -1

    # -- the files ---------------------------------------------------------------

    def files(self) -> list[tuple[str, os.stat_result]]:
        """Return ``(name, stat)`` of the spool's files, oldest name first."""
        found: list[tuple[str, os.stat_result]] = []
        prefix = self.name
        with os.scandir(self.dir_fd) as entries:
            for entry in entries:
                name = entry.name
                if not name.startswith(prefix) or not _TIMED.fullmatch(name, len(prefix)):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if entry.is_file(follow_symlinks=False):
                        found.append((name, entry.stat(follow_symlinks=False)))
        found.sort(key=lambda item: item[0])
        return found

    def _state(self, name: str, st: os.stat_result) -> _File:
        state = self._files.get(name)
        if state is None or state.inode != st.st_ino:
            # New, or the name was removed and created again: a new file.
            state = self._files[name] = _File(st.st_ino)
            self._dirty = True
        elif state.committed > st.st_size:
            self._say(
                f"the checkpoint is past the end of {self.path.parent / name} "
                f"({state.committed} > {st.st_size}): reading it from its start "
                "(lines already held are dropped)"
            )
            state = self._files[name] = _File(st.st_ino)
            self._dirty = True
        return state

    # -- reading -------------------------------------------------------------------

    def read(self, limit: int = 4 * 1024 * 1024) -> Batch:
        """Return complete records not read yet, about ``limit`` bytes of them.

        Files read to their end, checkpointed and no longer written are removed
        on the way.
        """
        batch = Batch()
        files = self.files()
        present = {name for name, _ in files}
        for name in [n for n in self._files if n not in present]:
            del self._files[name]  # removed (by collect, or by hand)
            self._dirty = True
        budget = limit
        removed = False
        now = time.time()
        for index, (name, st) in enumerate(files):
            state = self._state(name, st)
            if budget > 0 and state.position < st.st_size:
                budget -= self._read_file(name, state, budget, batch)
            if index == len(files) - 1:
                break  # the newest: rsyslog's current file
            if state.position < st.st_size and budget <= 0:
                continue  # not read to its end yet
            if self._finish(name, st, state, now, batch) and self._remove(name, state):
                removed = True
        if removed:
            if batch.records or batch.torn or batch.oversized:
                if self.fsync:
                    os.fsync(self.dir_fd)  # the checkpoint follows once the batch is durable
            else:
                # Nothing new read: the checkpoint forgets the removed files and
                # moves nothing on (a batch read before may still be syncing).
                self.commit({})
        return batch

    def _finish(
        self, name: str, st: os.stat_result, state: _File, now: float, batch: Batch
    ) -> bool:
        """Whether a file read as far as it goes is finished and checkpointed (removable).

        A file is finished when no process writes it any more: what follows its
        last record then is a torn record, counted and dropped.
        """
        if state.finished != st.st_size:
            if not self._unwritten(name, st, now):
                return False
            state.finished = st.st_size
            if state.boundary < st.st_size:
                batch.torn += 1
                state.boundary = state.position = st.st_size
                state.skipping = False
        return state.committed == st.st_size

    def _unwritten(self, name: str, st: os.stat_result, now: float) -> bool:
        """Whether nothing writes a file any more: no writer, and unmodified a while."""
        age = now - st.st_mtime
        if age < GRACE:
            return False
        if not self._leases:
            return age >= NO_LEASE_GRACE
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(f"cannot open {self.path.parent / name}: {exc.strerror}") from None
        try:
            if os.fstat(fd).st_ino != st.st_ino:
                return False
            writer = self._has_writer(fd, name)
            if writer is None:
                return age >= NO_LEASE_GRACE
            # Unchanged since it was listed: everything in it has been read.
            return not writer and os.fstat(fd).st_size == st.st_size
        finally:
            os.close(fd)

    def _has_writer(self, fd: int, name: str) -> bool | None:
        """Whether a process has the file open for writing (None: unknown, no leases)."""
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return True
            if exc.errno in (errno.EACCES, errno.EINVAL, errno.ENOLCK, errno.EPERM):
                self._leases = False
                self._say(
                    f"cannot take a file lease on {self.path.parent / name} "
                    f"({exc.strerror}): a spool file is removed only once unmodified for "
                    f"{NO_LEASE_GRACE:g} s (give collect's user the spool files: omfile fileOwner)"
                )
                return None
            raise StorageError(
                f"cannot take a file lease on {self.path.parent / name}: {exc.strerror}"
            ) from None
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False

    def _remove(self, name: str, state: _File) -> bool:
        try:
            st = os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if st.st_ino != state.inode or st.st_size != state.committed:
            return False  # written again (a late writer): read on
        try:
            os.unlink(name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(f"cannot remove {self.path.parent / name}: {exc.strerror}") from None
        del self._files[name]
        self._dirty = True
        return True

    def _read_file(self, name: str, state: _File, budget: int, batch: Batch) -> int:
        """Read records from one file into ``batch``; return how many bytes were consumed."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise StorageError(f"cannot open {self.path.parent / name}: {exc.strerror}") from None
        used = 0
        try:
            if os.fstat(fd).st_ino != state.inode:
                return 0  # replaced since it was listed: the next read sees it
            while used < budget:
                data = os.pread(fd, CHUNK_BYTES, state.position)
                taken = _take(data, state, batch)
                if taken == 0:
                    break  # at the end, or the start of a record not yet complete
                used += taken
                if len(data) < CHUNK_BYTES and taken == len(data):
                    break  # read to the end
        finally:
            os.close(fd)
        return used

    def backlog(self) -> tuple[int, int]:
        """Return the bytes past the checkpoint over all files, and how many files there are."""
        total = 0
        files = self.files()
        for name, st in files:
            state = self._files.get(name)
            committed = state.committed if state is not None and state.inode == st.st_ino else 0
            total += max(0, st.st_size - committed)
        return total, len(files)

    def _say(self, message: str) -> None:
        if self.log is not None:
            self.log(message)


def _take(data: bytes, state: _File, batch: Batch) -> int:
    """Split ``data`` (read at ``state.position``) into records; return the bytes consumed."""
    cut = data.rfind(b"\n")
    if cut < 0:
        if data and (state.skipping or len(data) >= CHUNK_BYTES):
            state.skipping = True  # over-long: dropped up to its end
            state.position += len(data)
            return len(data)
        return 0
    state.position += cut + 1
    lines = data[:cut].split(b"\n")
    if state.skipping:
        state.skipping = False
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
    state.boundary = state.position
    return cut + 1


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

    Each batch is applied and written, made durable and only then
    checkpointed (:class:`_Batches`). A storage failure rewinds to the
    checkpoint and tries again a second later: nothing is skipped.
    """
    counts = collector.counts
    busy_until = 0.0
    backlog_at = 0.0
    caught_up = True
    with _Batches(collector, spool, log) as batches:
        while not stop():
            try:
                read = batches.step()
            except (StorageError, OSError) as exc:
                message = (
                    getattr(exc, "message", None) or getattr(exc, "strerror", None) or str(exc)
                )
                batches.abandon()
                metrics.write(force=True)
                if once:
                    raise StorageError(message) from None
                if log is not None:
                    log(f"cannot store: {message}; reading again from the checkpoint in 1 s")
                time.sleep(RETRY_AFTER)
                continue
            now = time.monotonic()
            if now - backlog_at >= 1.0:
                counts.backlog, counts.spool_files = spool.backlog()
                backlog_at = now
            if read:
                metrics.write()
                busy_until = now + BUSY_FOR
                caught_up = False
                continue
            # The spool is read to its end and all of it checkpointed: the metrics
            # say so (at most ten times a second).
            if not caught_up:
                counts.backlog, counts.spool_files = spool.backlog()
                caught_up = metrics.write(force=True, within=0.1)
            if once:
                break
            time.sleep(POLL_BUSY if now < busy_until else POLL_IDLE)
        batches.settle()  # stopped: what was applied is made durable and checkpointed
    counts.backlog, counts.spool_files = spool.backlog()
    metrics.write(force=True)


class _Batches:
    """Batches applied one after the other, each made durable while the next is applied.

    Making a batch durable (``Collector.write_for_sync``: a ``syncfs`` of the
    central copy's filesystem) runs in a second thread while the next batch
    is read, parsed and applied, so the disk and the parsing overlap; a
    batch's checkpoint is written once its sync has returned, and the next
    sync starts only after that.
    """

    def __init__(
        self, collector: Collector, spool: Spool, log: Callable[[str], None] | None
    ) -> None:
        """Apply to ``collector`` what ``spool`` holds."""
        self.collector = collector
        self.spool = spool
        self.log = log
        self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collect-sync")
        self._syncing: tuple[Future[None], dict[str, int]] | None = None

    def __enter__(self) -> Self:
        """Use as a context: the sync thread ends with it."""
        return self

    def __exit__(self, *_: object) -> None:
        """Wait for the sync thread (without checkpointing: see :meth:`settle`)."""
        with contextlib.suppress(StorageError, OSError):
            self._wait()
        self._syncer.shutdown(wait=True)

    def step(self) -> bool:
        """Apply the next batch and checkpoint the one before; return whether either happened.

        (A checkpoint moved on lets the next read remove the files it passed.)
        """
        durable = _apply_batch(self.collector, self.spool, self.log)
        settled = self.settle()
        if durable is not None:
            self._syncing = (self._syncer.submit(durable), self.spool.mark())
        return durable is not None or settled

    def settle(self) -> bool:
        """Wait until the batch being synced is durable, then checkpoint it; return if one was."""
        mark = self._wait()
        if mark is None:
            return False
        self.spool.commit(mark)
        return True

    def abandon(self) -> None:
        """After a failure: forget what is not checkpointed; it is read and applied again."""
        with contextlib.suppress(StorageError, OSError):
            self._wait()
        self.collector.reset()
        self.spool.rewind()

    def _wait(self) -> dict[str, int] | None:
        syncing, self._syncing = self._syncing, None
        if syncing is None:
            return None
        syncing[0].result()
        return syncing[1]


def _apply_batch(
    collector: Collector, spool: Spool, log: Callable[[str], None] | None
) -> Callable[[], None] | None:
    """Read, apply and write one batch; return what makes it durable (None: nothing read)."""
    batch = spool.read()
    if not (batch.records or batch.torn or batch.oversized):
        return None
    counts = collector.counts
    refused = counts.refused
    parse, apply = parse_message, collector.apply
    for record in batch.records:
        try:
            shipped = parse(record)
        except RefusedError as exc:
            refused[exc.reason] += 1
            if log is not None:
                log(f"refused: {exc}")
            continue
        apply(shipped)
    counts.torn += batch.torn
    refused["entry"] += batch.oversized
    return collector.write_for_sync()
