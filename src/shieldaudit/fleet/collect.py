"""Rebuilding shipped trails and seals under ``<central>/<node>/``, byte for byte.

The collector's rsyslog hands :class:`Collector` one message per line (see
``deploy/rsyslog/collector.conf``)::

    <node> {"file":"<path on the node>","offset":<byte offset>} <the line, as it is>

``<node>`` is the sending node's host name, ``file`` the trail or seal file the
line was read from (only its last components are used, after validation),
``offset`` where the line started in that file; after one space comes the
line itself, unescaped (trail lines are ASCII JSON without control characters,
so rsyslog carries them unchanged, and collect parses each line once).

Placement is by ``seq`` (``seal`` for seal records): a line that continues the
held chain (next ``seq``, ``prev`` equal to the held head's ``mac``) is appended;
a line read at offset 0 starts a new segment, so the central copy seals its
``audit.jsonl`` under the next number first, exactly as the node's writer did.
A line already held (same ``seq`` and ``mac``) is a redelivery and is dropped.
A line with a held ``seq`` but another ``mac``, or one that does not link to
the held chain, means the node's history changed after it was shipped: it is a
conflict, kept aside under ``<central>/<node>/conflicts/`` and never merged.
A line that arrives ahead of a missing one (rsyslog may read the renamed
segment and the new ``audit.jsonl`` in either order) waits, durably, in
``<central>/<node>/state/collect/`` until the gap is filled.

Nothing from the network becomes a path unless it passed validation: node
names are host names, container IDs 64 lower-case hex characters, file names
one of the trail or seal names.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shieldaudit.core import ids
from shieldaudit.core.errors import StorageError
from shieldaudit.store import chain, instance, layout, tailscan
from shieldaudit.store.reader import iter_lines
from shieldaudit.store.seals import SEALS_DIR, SEALS_FILE

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

#: Present in a central directory that ``collect`` writes: the CLI then treats it as a fleet.
FLEET_MARKER: Final = ".shieldaudit-fleet"
CONFLICTS_DIR: Final = "conflicts"
SEALS_STREAM: Final = "seals"
COLLECT_STATE: Final = "collect"
PENDING_SUFFIX: Final = ".pending.jsonl"
BEGIN: Final = b"BEGIN TRANSACTION"
COMMIT: Final = b"COMMIT TRANSACTION"
#: A line longer than this is refused (entries are at most 256 KiB).
MAX_LINE_BYTES: Final = 1024 * 1024
#: Lines waiting for an earlier one, per stream; past that the stream's newest are refused.
MAX_PENDING: Final = 100_000
#: The same limit in bytes, per stream and over every open stream: what waits is held in
#: memory, so memory stays bounded whatever a node sends (at most MAX_OPEN x the first).
MAX_PENDING_BYTES: Final = 8 * 1024 * 1024
MAX_PENDING_TOTAL: Final = 128 * 1024 * 1024
#: Recent (seq -> mac) pairs remembered per stream to recognise redeliveries cheaply
#: (a resent batch); older ones are looked up in the copy's files.
RECENT: Final = 256
#: Streams (one container of one node, or a node's seals) kept open at once.
MAX_OPEN: Final = 256
#: Touched files from which one syncfs replaces a sync per file.
SYNCFS_FROM: Final = 8
#: Validated message heads remembered (node and path, see _HEADS); cleared when full.
MAX_PATHS: Final = 4096
_raw_decode: Final = json.JSONDecoder().raw_decode
#: The header as the node's template writes it, up to its offset (no escape in the path but ``\/``).
_FAST_HEAD: Final = re.compile(
    rb'([A-Za-z0-9][A-Za-z0-9._-]{0,252}) \{"file":"([^"\x00-\x1f\x7f-\xff]{1,4096})'
).fullmatch
_OFFSET_KEY: Final = b'","offset":'
#: Where the offset key must be found: past the longest node name and path.
_HEAD_MAX: Final = 253 + 10 + 4096 + len(_OFFSET_KEY)
#: Validated heads (node and path) -> (node, stream, file name); cleared when full.
_HEADS: dict[bytes, tuple[str, str, str]] = {}
_NODE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
#: A MAC or chain link: lower-case hex, as long as the chain's hash makes it.
HexMac = Annotated[str, Field(pattern=r"^[0-9a-f]{16,128}$")]


class RefusedError(ValueError):
    """A message that is not a well-formed shipped line; ``reason`` is its metric label."""

    def __init__(self, reason: str, message: str) -> None:
        """Keep the label and the message."""
        super().__init__(message)
        self.reason = reason


def is_node_name(value: str) -> bool:
    """Return whether ``value`` may name a node directory (a host name, never ``.``/``..``)."""
    return _NODE.fullmatch(value) is not None


@dataclass(slots=True)
class Shipped:
    """One validated shipped line."""

    node: str
    stream: str  # a container ID, or SEALS_STREAM
    file: str  # audit.jsonl, audit-NNNNNN.jsonl or seals.jsonl
    offset: int | None
    seq: int
    mac: str
    prev: str
    line: bytes  # without the newline


def parse_message(message: bytes) -> Shipped:
    """Validate one message from the collector's rsyslog (pure); raise RefusedError.

    The header rsyslog builds (``{"file":"…","offset":N}``, slashes in the
    path escaped or not) is taken apart without a JSON parse, and what its
    node and path validate to is remembered; any other spelling takes the
    general path. The line itself is parsed once, in full: only a JSON
    object is ever written to a copy.
    """
    cut = message.find(_OFFSET_KEY, 0, _HEAD_MAX)
    if cut > 0:
        start = cut + len(_OFFSET_KEY)
        end = message.find(b"} ", start, start + 20)
        offset_b = message[start:end]
        # Digits only, no leading zero (that is not JSON): anything else takes the general path.
        if end > start and offset_b.isdigit() and (offset_b[0] != 0x30 or end == start + 1):
            head = message[:cut]
            where = _HEADS.get(head)
            if where is None:
                where = _head_of(head)
            if where is not None:
                return _shipped(where, int(offset_b), message[end + 2 :])
    return _parse_slow(message)


def _head_of(head: bytes) -> tuple[str, str, str] | None:
    """Return ``(node, stream, file name)`` for ``<node> {"file":"<path>``; None if unusual."""
    match = _FAST_HEAD(head)
    if match is None:
        return None
    node_b, path = match.groups()
    # rsyslog's JSON escaping writes "/" as "\/"; any other escape takes the general path.
    plain = path.replace(b"\\/", b"/")
    if b"\\" in plain:
        return None
    stream, name = _stream_of(plain.decode("ascii"))
    if len(_HEADS) >= MAX_PATHS:
        _HEADS.clear()
    where = _HEADS[head] = (node_b.decode("ascii"), stream, name)
    return where


def _parse_slow(message: bytes) -> Shipped:
    node_b, sep, rest = message.partition(b" ")
    if not sep:
        raise RefusedError("envelope", "no node name before the message")
    node = node_b.decode("ascii", "replace")
    if not is_node_name(node):
        raise RefusedError("node", f"bad node name {node[:80]!r}")
    try:
        text = rest.decode("utf-8").lstrip(" ")
        header, end = _raw_decode(text)
    except (ValueError, RecursionError):
        raise RefusedError("envelope", "the message does not start with a JSON object") from None
    if not isinstance(header, dict) or text[end : end + 1] != " ":
        raise RefusedError("envelope", "the message does not start with a JSON object")
    line_text = text[end + 1 :]
    path, offset = header.get("file"), header.get("offset")
    if not isinstance(path, str):
        raise RefusedError("envelope", "file missing")
    if offset is not None and (not isinstance(offset, int) or isinstance(offset, bool)):
        raise RefusedError("envelope", "offset is not an integer")
    if offset is not None and offset < 0:
        raise RefusedError("envelope", "offset is negative")
    where = _stream_of(path)
    # Entries are written ASCII-only: anything else did not come from a trail.
    if not line_text.isascii():
        raise RefusedError("entry", "the line is not one line of ASCII")
    return _shipped((node, *where), offset, line_text.encode("ascii"))


class _TrailLine(BaseModel):
    """What collect needs of a trail line; validating it parses the whole line as JSON.

    pydantic's JSON parser checks the line's syntax to its end (only an
    object, nothing after it) and builds only these fields, which costs less
    than building the whole object and checking its fields one by one.
    """

    model_config = ConfigDict(strict=True, frozen=True)

    seq: int = Field(ge=1)
    mac: HexMac
    prev: HexMac
    container_id: object = None


class _SealLine(BaseModel):
    """What collect needs of a seal record (``seal`` numbers them)."""

    model_config = ConfigDict(strict=True, frozen=True)

    seal: int = Field(ge=1)
    mac: HexMac
    prev: HexMac


# The validators themselves, without model_validate_json's wrapper around them.
_trail_line: Final = _TrailLine.__pydantic_validator__.validate_json
_seal_line: Final = _SealLine.__pydantic_validator__.validate_json


def _shipped(where: tuple[str, str, str], offset: int | None, line: bytes) -> Shipped:
    node, stream, name = where
    # Entries are written ASCII-only: anything else did not come from a trail.
    if not line.isascii() or b"\n" in line:
        raise RefusedError("entry", "the line is not one line of ASCII")
    if len(line) > MAX_LINE_BYTES:
        raise RefusedError("entry", "the line is too long")
    try:
        if stream == SEALS_STREAM:
            seal = _seal_line(line)
            return Shipped(node, stream, name, offset, seal.seal, seal.mac, seal.prev, line)
        value = _trail_line(line)
    except ValidationError as exc:
        raise RefusedError(
            "entry", _why(exc, "seal" if stream == SEALS_STREAM else "seq")
        ) from None
    if value.container_id != stream:
        raise RefusedError("entry", "container_id differs from the trail it was read from")
    return Shipped(node, stream, name, offset, value.seq, value.mac, value.prev, line)


def _why(exc: ValidationError, key: str) -> str:
    """Say in a few words why a line was refused (the first problem pydantic found)."""
    error = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    if error["type"] == "json_invalid":
        return "the line is not JSON"
    if error["type"] in {"model_type", "model_attributes_type"}:
        return "the line is not a JSON object"
    where = error["loc"][0] if error["loc"] else key
    return f"missing or invalid {where}"


def _stream_of(path: str) -> tuple[str, str]:
    """Return ``(stream, file name)`` for a trail or seal file path; refuse anything else."""
    parts = path.split("/")
    if len(parts) >= 3 and parts[-2] == SEALS_DIR and parts[-1] == SEALS_FILE:
        return SEALS_STREAM, SEALS_FILE
    if len(parts) >= 4 and parts[-3] == layout.CONTAINERS_DIR:
        container_id, name = parts[-2], parts[-1]
        if ids.is_container_id(container_id) and (
            name == layout.ACTIVE_FILE or layout.segment_number(name) is not None
        ):
            return container_id, name
    raise RefusedError("file", f"not a trail or seal file: {path[:120]!r}")


@dataclass(slots=True)
class Counts:
    """What the collector did since it started (its metrics)."""

    stored: int = 0
    duplicates: int = 0
    pending: int = 0  # lines that had to wait for an earlier one
    waiting: int = 0  # lines waiting now
    conflicts: int = 0
    torn: int = 0  # spool records torn by a crash of rsyslog (written again after it)
    backlog: int | None = None  # spool bytes not yet applied (following a spool only)
    spool_files: int = 0  # spool files present (following a spool only)
    refused: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("envelope", "node", "file", "entry", "backlog"), 0)
    )

    def render(self) -> str:
        """Return the counters in the Prometheus text format (pure)."""
        lines = [
            "# HELP shieldaudit_collect_entries_total Shipped lines by what collect did with them",
            "# TYPE shieldaudit_collect_entries_total counter",
        ]
        for outcome, value in (
            ("stored", self.stored),
            ("duplicate", self.duplicates),
            ("pending", self.pending),
        ):
            lines.append(f'shieldaudit_collect_entries_total{{outcome="{outcome}"}} {value}')
        lines += [
            (
                "# HELP shieldaudit_collect_conflicts_total Shipped lines that contradict "
                "the held history (kept under conflicts/)"
            ),
            "# TYPE shieldaudit_collect_conflicts_total counter",
            f"shieldaudit_collect_conflicts_total {self.conflicts}",
            (
                "# HELP shieldaudit_collect_waiting_entries Shipped lines waiting for an "
                "earlier line of their trail"
            ),
            "# TYPE shieldaudit_collect_waiting_entries gauge",
            f"shieldaudit_collect_waiting_entries {self.waiting}",
            "# HELP shieldaudit_collect_refused_total Messages refused as malformed or hostile",
            "# TYPE shieldaudit_collect_refused_total counter",
        ]
        lines += [
            f'shieldaudit_collect_refused_total{{reason="{reason}"}} {value}'
            for reason, value in self.refused.items()
        ]
        if self.backlog is not None:
            lines += [
                (
                    "# HELP shieldaudit_collect_spool_torn_total Spool records cut short by a "
                    "crash of rsyslog (it writes them again)"
                ),
                "# TYPE shieldaudit_collect_spool_torn_total counter",
                f"shieldaudit_collect_spool_torn_total {self.torn}",
                "# HELP shieldaudit_collect_spool_backlog_bytes Spool bytes not yet applied",
                "# TYPE shieldaudit_collect_spool_backlog_bytes gauge",
                f"shieldaudit_collect_spool_backlog_bytes {self.backlog}",
                (
                    "# HELP shieldaudit_collect_spool_files Spool files present (one per minute "
                    "written; removed once applied and closed)"
                ),
                "# TYPE shieldaudit_collect_spool_files gauge",
                f"shieldaudit_collect_spool_files {self.spool_files}",
            ]
        return "\n".join(lines) + "\n"


@dataclass(slots=True)
class _Stream:
    """One container's trail (or a node's seals) in the central copy, open for appending."""

    node: str
    stream: str
    dir_fd: int
    shown: Path
    active_fd: int = -1
    active_size: int = 0
    head_seq: int = 0
    head_mac: str = chain.GENESIS
    next_number: int = 1
    recent: dict[int, str] = field(default_factory=dict)
    pending: dict[int, Shipped] = field(default_factory=dict)
    pending_bytes: int = 0
    forks: set[str] = field(default_factory=set)
    buffer: list[bytes] = field(default_factory=list)
    dirty: bool = False

    @property
    def segmented(self) -> bool:
        return self.stream != SEALS_STREAM

    @property
    def active_name(self) -> str:
        return layout.ACTIVE_FILE if self.segmented else SEALS_FILE

    def remember(self, seq: int, mac: str) -> None:
        recent = self.recent
        recent[seq] = mac
        if len(recent) >= 2 * RECENT:
            self.trim_recent()

    def trim_recent(self) -> None:
        """Keep the newest RECENT pairs (trimmed in bulk, not one by one)."""
        self.recent = dict(list(self.recent.items())[-RECENT:])


class Collector:
    """Apply shipped lines to the central directory; flush makes them durable."""

    def __init__(self, central: Path, *, fsync: bool = True) -> None:
        """Open (creating, 0700) the central directory and take its lock."""
        self.central = central
        self.fsync = fsync
        self.counts = Counts()
        self._root_fd = layout.open_root(central, create=True)
        self._lock_fd = self._take_lock()
        self._nodes: dict[str, int] = {}
        self._streams: OrderedDict[tuple[str, str], _Stream] = OrderedDict()
        self._dirty_fds: set[int] = set()
        self._conflict_fds: dict[str, int] = {}
        self._pending_bytes = 0  # waiting lines held in memory, over the open streams
        # Lines waiting per stream, open or not (the gauge counts them all).
        self._waiting: dict[tuple[str, str], int] = {}

    def _take_lock(self) -> int:
        fd = layout.open_regular(
            self._root_fd, FLEET_MARKER, os.O_RDWR | os.O_CREAT, self.central / FLEET_MARKER
        )
        try:
            instance.take(
                fd,
                f"another shieldaudit collect is writing {self.central}",
                self.central / FLEET_MARKER,
                "stop it first",
                instance.InstanceBusyError,
                write_pid=False,
            )
        except BaseException:
            os.close(fd)
            raise
        return fd

    def reset(self) -> None:
        """Forget what is open after a failure; the next line reloads from disk."""
        for stream in self._streams.values():
            stream.buffer.clear()
            self._forget(stream)
            for fd in (stream.active_fd, stream.dir_fd):
                if fd >= 0:
                    os.close(fd)
        self._streams.clear()
        self._dirty_fds.clear()

    def close(self) -> None:
        """Flush and close everything."""
        self.flush()
        for key in list(self._streams):
            self._evict(key)
        for fd in (*self._conflict_fds.values(), *self._nodes.values()):
            os.close(fd)
        self._conflict_fds.clear()
        self._nodes.clear()
        for fd in (self._lock_fd, self._root_fd):
            if fd >= 0:
                os.close(fd)
        self._lock_fd = self._root_fd = -1

    # -- applying -------------------------------------------------------------

    def apply(self, shipped: Shipped) -> str:
        """Apply one line (durable at the next flush); return what became of it."""
        key = (shipped.node, shipped.stream)
        stream = self._streams.get(key)
        if stream is None:
            stream = self._stream(shipped.node, shipped.stream)
        elif (
            # The common case, the next line of an open trail in the same
            # segment, without the general checks below (same outcome).
            shipped.seq == stream.head_seq + 1
            and shipped.prev == stream.head_mac
            and shipped.offset != 0
            and stream.active_fd >= 0
            and stream.active_size > 0
            and not stream.pending
            and not stream.forks
        ):
            self._streams.move_to_end(key)
            data = shipped.line + b"\n"
            stream.buffer.append(data)
            stream.active_size += len(data)
            stream.head_seq = seq = shipped.seq
            stream.head_mac = mac = shipped.mac
            recent = stream.recent
            recent[seq] = mac
            if len(recent) >= 2 * RECENT:
                stream.trim_recent()
            stream.dirty = True
            self.counts.stored += 1
            return "stored"
        else:
            self._streams.move_to_end(key)
        outcome = self._apply(stream, shipped)
        if outcome == "stored":
            self._drain(stream)
        return outcome

    def _apply(self, stream: _Stream, item: Shipped) -> str:  # noqa: PLR0911 -- one per outcome
        if item.seq <= stream.head_seq:
            held = self._held_mac(stream, item.seq)
            if held == item.mac:
                self.counts.duplicates += 1
                return "duplicate"
            self._conflict(stream, item, held, "another entry with this seq was shipped before")
            return "conflict"
        if item.prev in stream.forks:
            self._conflict(stream, item, None, "continues a conflicting history")
            return "conflict"
        if item.seq > stream.head_seq + 1:
            if item.seq in stream.pending:
                if stream.pending[item.seq].mac == item.mac:
                    self.counts.duplicates += 1
                    return "duplicate"
                self._conflict(
                    stream, item, stream.pending[item.seq].mac, "two entries for one seq"
                )
                return "conflict"
            size = len(item.line)
            if (
                len(stream.pending) >= MAX_PENDING
                or stream.pending_bytes + size > MAX_PENDING_BYTES
                or self._pending_bytes + size > MAX_PENDING_TOTAL
            ):
                self.counts.refused["backlog"] += 1
                return "refused"
            self._write_pending(stream, item)
            self._wait(stream, item)
            self.counts.pending += 1
            return "pending"
        if item.prev != stream.head_mac:
            self._conflict(stream, item, None, "does not link to the held entry before it")
            return "conflict"
        self._place(stream, item)
        self.counts.stored += 1
        return "stored"

    def _place(self, stream: _Stream, item: Shipped) -> None:
        if stream.segmented:
            if item.offset == 0 and stream.active_size > 0:
                self._rotate(stream)
            if stream.active_size == 0:
                number = layout.segment_number(item.file)
                if number is not None and number > stream.next_number:
                    stream.next_number = number  # history shipped from a later segment on
        if stream.active_fd < 0:
            self._open_active(stream)
        data = item.line + b"\n"
        stream.buffer.append(data)
        stream.active_size += len(data)
        stream.head_seq, stream.head_mac = item.seq, item.mac
        stream.remember(item.seq, item.mac)
        stream.dirty = True

    def _drain(self, stream: _Stream) -> None:
        if not stream.pending:
            return
        while stream.head_seq + 1 in stream.pending:
            self._apply(stream, self._unwait(stream, stream.head_seq + 1))
        # Waiting lines that continue a fork are conflicts too.
        for seq in sorted(stream.pending):
            if stream.pending[seq].prev in stream.forks:
                item = self._unwait(stream, seq)
                self._conflict(stream, item, None, "continues a conflicting history")
        self._rewrite_pending(stream)

    def _wait(self, stream: _Stream, item: Shipped) -> None:
        stream.pending[item.seq] = item
        stream.pending_bytes += len(item.line)
        self._pending_bytes += len(item.line)
        self._count_waiting(stream)
        self.counts.waiting += 1

    def _unwait(self, stream: _Stream, seq: int) -> Shipped:
        item = stream.pending.pop(seq)
        stream.pending_bytes -= len(item.line)
        self._pending_bytes -= len(item.line)
        self._count_waiting(stream)
        self.counts.waiting -= 1
        return item

    def _count_waiting(self, stream: _Stream) -> None:
        key = (stream.node, stream.stream)
        if stream.pending:
            self._waiting[key] = len(stream.pending)
        else:
            self._waiting.pop(key, None)

    def _forget(self, stream: _Stream) -> None:
        """Drop a stream's waiting lines from memory (they stay in its pending file)."""
        self._pending_bytes -= stream.pending_bytes
        stream.pending.clear()
        stream.pending_bytes = 0

    # -- files ------------------------------------------------------------------

    def _node_fd(self, node: str) -> int:
        fd = self._nodes.get(node)
        if fd is None:
            fd = layout.open_subdir(self._root_fd, node, self.central / node, create=True)
            self._nodes[node] = fd
        return fd

    def _stream(self, node: str, name: str) -> _Stream:
        key = (node, name)
        stream = self._streams.get(key)
        if stream is not None:
            self._streams.move_to_end(key)
            return stream
        node_fd = self._node_fd(node)
        if name == SEALS_STREAM:
            shown = self.central / node / SEALS_DIR
            dir_fd = layout.open_subdir(node_fd, SEALS_DIR, shown, create=True)
        else:
            cshown = self.central / node / layout.CONTAINERS_DIR
            cfd = layout.open_subdir(node_fd, layout.CONTAINERS_DIR, cshown, create=True)
            try:
                shown = cshown / name
                dir_fd = layout.open_subdir(cfd, name, shown, create=True)
            finally:
                os.close(cfd)
        stream = _Stream(node, name, dir_fd, shown)
        self._load(stream)
        self._streams[key] = stream
        while len(self._streams) > MAX_OPEN:
            self._evict(next(iter(self._streams)))
        return stream

    def _load(self, stream: _Stream) -> None:
        """Find the held head, the active segment's size and the next segment number."""
        numbers = layout.list_segment_numbers(stream.dir_fd) if stream.segmented else []
        stream.next_number = (numbers[-1] + 1) if numbers else 1
        try:
            fd = layout.open_regular(
                stream.dir_fd,
                stream.active_name,
                os.O_RDWR | os.O_APPEND,
                stream.shown / stream.active_name,
                single_link=True,
            )
        except FileNotFoundError:
            fd = -1
        size = 0
        if fd >= 0:
            size = os.fstat(fd).st_size
            end = tailscan.complete_end(fd, size)
            if end != size:  # never left by collect: one write per batch of whole lines
                os.ftruncate(fd, end)
                size = end
            stream.active_fd = fd
        stream.active_size = size
        if stream.segmented:
            stream.head_seq, stream.head_mac = tailscan.find_head(
                stream.dir_fd, fd, size, stream.shown
            )
        elif size:
            head = _seal_head(fd, size)
            if head is not None:
                stream.head_seq, stream.head_mac = head
        for item in self._read_pending(stream):
            if item.seq > stream.head_seq and item.seq not in stream.pending:
                stream.pending[item.seq] = item
                stream.pending_bytes += len(item.line)
        self._pending_bytes += stream.pending_bytes
        self.counts.waiting += len(stream.pending) - self._waiting.get(
            (stream.node, stream.stream), 0
        )
        self._count_waiting(stream)

    def _open_active(self, stream: _Stream) -> None:
        name = stream.active_name
        stream.active_fd = layout.open_regular(
            stream.dir_fd,
            name,
            os.O_RDWR | os.O_APPEND | os.O_CREAT,
            stream.shown / name,
            single_link=True,
        )
        stream.active_size = os.fstat(stream.active_fd).st_size
        self._dirty_fds.add(stream.dir_fd)

    def _write_out(self, stream: _Stream) -> None:
        if not stream.buffer:
            return
        data = b"".join(stream.buffer)
        stream.buffer.clear()
        _write_all(stream.active_fd, data, stream.shown / stream.active_name)

    def _rotate(self, stream: _Stream) -> None:
        self._write_out(stream)
        if self.fsync:
            os.fsync(stream.active_fd)
        name = layout.segment_name(stream.next_number)
        try:
            os.stat(name, dir_fd=stream.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            raise StorageError(f"{stream.shown / name} already exists: cannot seal the copy")
        os.rename(layout.ACTIVE_FILE, name, src_dir_fd=stream.dir_fd, dst_dir_fd=stream.dir_fd)
        os.close(stream.active_fd)
        stream.active_fd = -1
        stream.active_size = 0
        stream.next_number += 1
        self._dirty_fds.add(stream.dir_fd)

    def _evict(self, key: tuple[str, str]) -> None:
        stream = self._streams.pop(key)
        self._flush_stream(stream)
        self._forget(stream)
        if self.fsync:
            for fd in (stream.dir_fd,):
                if fd in self._dirty_fds:
                    os.fsync(fd)
                    self._dirty_fds.discard(fd)
        for fd in (stream.active_fd, stream.dir_fd):
            if fd >= 0:
                os.close(fd)

    def _flush_stream(self, stream: _Stream) -> None:
        if stream.dirty:
            self._write_out(stream)
            if self.fsync:
                os.fdatasync(stream.active_fd)
            stream.dirty = False

    def flush(self) -> None:
        """Make everything applied so far durable (the point where lines are acknowledged).

        A few files are synced one by one; past :data:`SYNCFS_FROM` touched
        files, one ``syncfs`` of the central directory's filesystem costs less
        than a sync per file (a batch from a busy fleet touches hundreds).
        """
        dirty = [s for s in self._streams.values() if s.dirty]
        if not self.fsync:
            self._write_dirty()
            return
        if len(dirty) + len(self._dirty_fds) >= SYNCFS_FROM and _syncfs is not None:
            self._write_dirty()
            _syncfs(self._root_fd)
        else:
            for stream in dirty:
                self._flush_stream(stream)
            for fd in self._conflict_fds.values():
                os.fdatasync(fd)
            for fd in self._dirty_fds:
                os.fsync(fd)
        self._dirty_fds.clear()

    def write_for_sync(self) -> Callable[[], None]:
        """Write everything applied so far to its files; return the call that makes it durable.

        The call only runs ``syncfs`` on the central directory's filesystem,
        which covers every file and directory written before it starts, so it
        may run in another thread while this one applies the next lines (the
        caller waits for it before closing the collector). Without ``syncfs``
        (or without fsync) the files are made durable here, as :meth:`flush`
        does, and the call does nothing.
        """
        if not self.fsync or _syncfs is None:
            self.flush()
            return _nothing
        self._write_dirty()
        syncfs, root_fd = _syncfs, self._root_fd
        return lambda: syncfs(root_fd)

    def _write_dirty(self) -> None:
        """Write every open trail's buffer; a syncfs (or nothing) makes it and the dirs durable."""
        for stream in self._streams.values():
            if stream.dirty:
                self._write_out(stream)
                stream.dirty = False
        self._dirty_fds.clear()

    # -- conflicts and waiting lines ---------------------------------------------

    def _conflict(self, stream: _Stream, item: Shipped, held: str | None, why: str) -> None:
        stream.forks.add(item.mac)
        self.counts.conflicts += 1
        fd = self._conflict_fds.get(item.node)
        if fd is None:
            node_fd = self._node_fd(item.node)
            shown = self.central / item.node / CONFLICTS_DIR
            dfd = layout.open_subdir(node_fd, CONFLICTS_DIR, shown, create=True)
            try:
                fd = layout.open_regular(
                    dfd,
                    "conflicts.jsonl",
                    os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                    shown / "conflicts.jsonl",
                    single_link=True,
                )
            finally:
                os.close(dfd)
            self._conflict_fds[item.node] = fd
            self._dirty_fds.add(node_fd)
        record = {
            "stream": item.stream,
            "seq": item.seq,
            "mac": item.mac,
            "held_mac": held,
            "reason": why,
            "file": item.file,
            "offset": item.offset,
            "received": time.time(),
            "line": item.line.decode("ascii"),
        }
        _write_all(
            fd,
            (json.dumps(record, separators=(",", ":")) + "\n").encode(),
            shown_conf(self.central, item.node),
        )

    def _pending_dir(self, node: str, *, create: bool) -> int | None:
        node_fd = self._node_fd(node)
        try:
            state_fd = layout.open_subdir(
                node_fd, layout.STATE_DIR, self.central / node / layout.STATE_DIR, create=create
            )
        except FileNotFoundError:
            return None
        try:
            return layout.open_subdir(
                state_fd,
                COLLECT_STATE,
                self.central / node / layout.STATE_DIR / COLLECT_STATE,
                create=create,
            )
        except FileNotFoundError:
            return None
        finally:
            os.close(state_fd)

    def _write_pending(self, stream: _Stream, item: Shipped) -> None:
        dfd = self._pending_dir(stream.node, create=True)
        assert dfd is not None  # noqa: S101 -- created above
        try:
            name = stream.stream + PENDING_SUFFIX
            fd = layout.open_regular(
                dfd,
                name,
                os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                self.central / stream.node / name,
            )
            try:
                _write_all(fd, _pending_line(item), self.central / name)
                if self.fsync:
                    os.fdatasync(fd)
            finally:
                os.close(fd)
            if self.fsync:
                os.fsync(dfd)
        finally:
            os.close(dfd)

    def _rewrite_pending(self, stream: _Stream) -> None:
        """Keep the waiting-lines file equal to what still waits (removed when nothing does)."""
        dfd = self._pending_dir(stream.node, create=False)
        if dfd is None:
            return
        try:
            name = stream.stream + PENDING_SUFFIX
            if not stream.pending:
                # The drained lines are in the trail buffer: make them durable first.
                self._flush_stream(stream)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dfd)
                return
            self._flush_stream(stream)
            data = b"".join(_pending_line(i) for _, i in sorted(stream.pending.items()))
            try:
                layout.replace_file(dfd, name, data, sync=self.fsync)
            except OSError as exc:
                shown = self.central / stream.node / name
                raise StorageError(f"cannot write {shown}: {exc.strerror or exc}") from None
        finally:
            os.close(dfd)

    def _read_pending(self, stream: _Stream) -> Iterator[Shipped]:
        dfd = self._pending_dir(stream.node, create=False)
        if dfd is None:
            return
        try:
            name = stream.stream + PENDING_SUFFIX
            try:
                fd = layout.open_regular(dfd, name, os.O_RDONLY, self.central / name)
            except FileNotFoundError:
                return
            try:
                for raw in iter_lines(fd):
                    item = None
                    if raw.complete and not raw.oversized:
                        item = _pending_item(stream, raw.data)
                    if item is None:
                        # Not written by collect (it writes whole lines): counted, never placed.
                        self.counts.refused["entry"] += 1
                        continue
                    yield item
            finally:
                os.close(fd)
        finally:
            os.close(dfd)

    def _held_mac(self, stream: _Stream, seq: int) -> str | None:
        mac = stream.recent.get(seq)
        if mac is not None:
            return mac
        self._flush_stream(stream)
        names = (
            [layout.segment_name(n) for n in layout.list_segment_numbers(stream.dir_fd)]
            + [layout.ACTIVE_FILE]
            if stream.segmented
            else [SEALS_FILE]
        )
        key = "seq" if stream.segmented else "seal"
        found: str | None = None
        loaded = 0
        for name in names:
            try:
                fd = layout.open_regular(stream.dir_fd, name, os.O_RDONLY, stream.shown / name)
            except FileNotFoundError:
                continue
            try:
                for raw in iter_lines(fd):
                    try:
                        value = json.loads(raw.data)
                        this, this_mac = value[key], value["mac"]
                    except (ValueError, KeyError, TypeError):
                        continue
                    if not isinstance(this, int) or this < seq:
                        continue
                    # Later redeliveries (a file read again from its start) ask for the next ones.
                    stream.remember(this, str(this_mac))
                    if this == seq:
                        found = str(this_mac)
                    loaded += 1
                    if loaded >= RECENT // 2:
                        return found
            finally:
                os.close(fd)
        return found


def read_batches(fd: int, chunk: int = 256 * 1024) -> Iterator[list[bytes]]:
    """Yield the complete lines each read brings, holding at most one over-long line's start.

    A line longer than :data:`MAX_LINE_BYTES` (plus room for its header) is
    yielded as an empty line, which is refused like any malformed message,
    so it still gets its one answer.
    """
    limit = MAX_LINE_BYTES + 64 * 1024
    buf = b""
    skipping = False
    while True:
        data = os.read(fd, chunk)
        if not data:
            return
        if skipping and b"\n" not in data:
            continue  # still inside the over-long line: drop it as it comes
        buf += data
        *lines, buf = buf.split(b"\n")
        if skipping and lines:
            lines[0] = b""
            skipping = False
        if len(buf) > limit:
            buf = b""
            skipping = True
        if lines:
            yield lines


def message(node: str, path: str, offset: int | None, line: str) -> bytes:
    """Return the message the collector's rsyslog hands collect for one line (pure)."""
    header = json.dumps({"file": path, "offset": offset}, separators=(",", ":"))
    return f"{node} {header} {line}".encode()


def shown_conf(central: Path, node: str) -> Path:
    """Return the conflicts file of a node's central copy."""
    return central / node / CONFLICTS_DIR / "conflicts.jsonl"


def _pending_line(item: Shipped) -> bytes:
    """Return the line that keeps a waiting line in its pending file (pure)."""
    record = {"file": item.file, "offset": item.offset, "line": item.line.decode("ascii")}
    return (json.dumps(record) + "\n").encode()


def _pending_item(stream: _Stream, data: bytes) -> Shipped | None:
    """Validate a pending file's line as a shipped line of ``stream`` again; None if it is not.

    The file is on disk, so its lines are checked as strictly as what comes
    from the network.
    """
    try:
        record = json.loads(data)
        name, offset, line = record["file"], record["offset"], record["line"]
        if stream.stream == SEALS_STREAM:
            ok = name == SEALS_FILE
        else:
            ok = name == layout.ACTIVE_FILE or layout.segment_number(name) is not None
        if not ok or not (offset is None or type(offset) is int) or not isinstance(line, str):
            return None
        return _shipped((stream.node, stream.stream, name), offset, line.encode("ascii"))
    except (ValueError, KeyError, TypeError):  # RefusedError and UnicodeError among them
        return None


def _seal_head(fd: int, size: int) -> tuple[int, str] | None:
    end = tailscan.complete_end(fd, size)
    for data in tailscan.reverse_lines(fd, end):
        try:
            value = json.loads(data)
        except ValueError:
            continue
        if isinstance(value, dict) and isinstance(value.get("seal"), int):
            return int(value["seal"]), str(value.get("mac"))
    return None


def _load_syncfs() -> Callable[[int], None] | None:
    """Return ``syncfs(2)`` (Linux), raising OSError on failure; None where libc lacks it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        if function(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return syncfs


_syncfs = _load_syncfs()


def _nothing() -> None:
    """Do nothing (what is already durable needs no further call)."""


def _write_all(fd: int, data: bytes, shown: Path) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        raise StorageError(f"cannot write {shown}: {exc.strerror or exc}") from None


class Protocol:
    """omprog's side of the conversation: one reply line per input line.

    ``OK`` once ready; per message ``OK`` once it is durable (or ``DEFER_COMMIT``
    inside a transaction, made durable at ``COMMIT TRANSACTION``, answered
    ``OK``). A refused message is acknowledged too (resending cannot mend it)
    and counted; a storage failure is answered with an ``Error:`` line, so
    rsyslog keeps the message and sends it again later.
    """

    def __init__(
        self,
        collector: Collector,
        reply: Callable[[bytes], None],
        *,
        metrics_file: Path | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """Answer through ``reply``; write counters to ``metrics_file`` at most once a second."""
        self.collector = collector
        self.reply = reply
        self.metrics_file = metrics_file
        self.log = log
        self.in_transaction = False
        self.metrics = Metrics(collector.counts, metrics_file, log)
        self._failed = False

    def start(self) -> None:
        """Say ready."""
        self.write_metrics(force=True)
        self.reply(b"OK\n")

    def handle(self, raw: bytes) -> None:
        """Answer one input line."""
        line = raw.rstrip(b"\r\n")
        if line == BEGIN:
            self.in_transaction = True
            self._failed = False
            self.reply(b"OK\n")
            return
        if line == COMMIT:
            self.in_transaction = False
            self.reply(self._commit())
            return
        try:
            shipped = parse_message(line)
        except RefusedError as exc:
            self.collector.counts.refused[exc.reason] += 1
            if self.log is not None:
                self.log(f"refused: {exc}")
            self.reply(b"DEFER_COMMIT\n" if self.in_transaction else b"OK\n")
            if not self.in_transaction:
                self.write_metrics()
            return
        try:
            self.collector.apply(shipped)
            if not self.in_transaction:
                self.collector.flush()
        except (StorageError, OSError) as exc:
            self._failed = True
            self.collector.reset()
            message = getattr(exc, "message", None) or str(exc)
            if self.log is not None:
                self.log(f"cannot store: {message}")
            self.reply(f"Error: {message}\n".encode())
            return
        self.reply(b"DEFER_COMMIT\n" if self.in_transaction else b"OK\n")
        if not self.in_transaction:
            self.write_metrics()

    def _commit(self) -> bytes:
        if self._failed:
            return b"Error: a line of this transaction could not be stored\n"
        try:
            self.collector.flush()
        except (StorageError, OSError) as exc:
            self.collector.reset()
            return f"Error: {getattr(exc, 'message', None) or exc}\n".encode()
        self.write_metrics()
        return b"OK\n"

    def write_metrics(self, *, force: bool = False) -> None:
        """Replace the metrics text file (atomically), at most once a second unless forced."""
        self.metrics.write(force=force)


class Metrics:
    """Collect's counters kept current in a Prometheus text file (node_exporter's textfile)."""

    def __init__(
        self, counts: Counts, path: Path | None, log: Callable[[str], None] | None = None
    ) -> None:
        """Write ``counts`` to ``path`` (nothing when None)."""
        self.counts = counts
        self.path = path
        self.log = log
        self._at = 0.0
        self._alarms = (0, 0)

    def write(self, *, force: bool = False, within: float = 0.0) -> bool:
        """Replace the metrics text file (atomically), at most once a second unless forced.

        Forced, it is still written at most once per ``within`` seconds.
        Return whether it was written.
        """
        if self.path is None:
            return True
        now = time.monotonic()
        # What alerts watch (conflicts, refusals) is written at once, the rest once a second.
        alarms = (self.counts.conflicts, sum(self.counts.refused.values()))
        if not force and alarms == self._alarms and now - self._at < 1.0:
            return False
        if force and now - self._at < within:
            return False
        self._at = now
        self._alarms = alarms
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            tmp.write_text(self.counts.render(), encoding="ascii")
            tmp.replace(self.path)
        except OSError as exc:
            if self.log is not None:
                self.log(f"cannot write {self.path}: {exc.strerror or exc}")
        return True
