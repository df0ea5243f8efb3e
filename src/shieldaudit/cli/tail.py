"""``shieldaudit tail [-n N] [-f] [CONTAINER]``: the newest entries, merged by time, then follow.

Following polls (every 0.25 s by default, slower when a poll itself takes
long): per container one ``stat`` of ``audit.jsonl``; only a trail whose size
or inode changed is opened and read from the remembered offset. A changed
inode means the writer rotated: the rest of the old segment is read from its
sealed name, then any newer sealed segments, then the new active one. Every
entry is printed at most once because only ``seq`` values above the last one
printed for that container are shown. New containers are noticed when the
``containers/`` directory changes. No descriptor stays open between polls, so
thousands of idle containers cost no file descriptors.
"""

from __future__ import annotations

import heapq
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import click

from shieldaudit.cli import render
from shieldaudit.cli.complete import container_names
from shieldaudit.cli.context import app
from shieldaudit.cli.output import colour_wanted, warn
from shieldaudit.cli.resolve import resolve_container
from shieldaudit.core.errors import ShieldAuditError
from shieldaudit.store import layout
from shieldaudit.store.reader import iter_lines, open_segment, segment_names, tail_lines, try_decode
from shieldaudit.store.tailscan import complete_end
from shieldaudit.store.trails import Trails

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from shieldaudit.core.models import Entry

#: Seconds between polls when following.
POLL_INTERVAL: Final = 0.25


@dataclass(frozen=True, slots=True)
class Item:
    """One entry to print: its sort key and the bytes as stored."""

    ts: str
    container_id: str
    seq: int
    entry: Entry
    line: bytes


def to_item(line: bytes) -> Item | None:
    """Decode a stored line into an item (None when it is not an entry)."""
    entry = try_decode(line)
    if entry is None:
        return None
    return Item(entry.ts, entry.container_id, entry.seq, entry, line)


def _key(item: Item) -> tuple[str, str, int]:
    return item.ts, item.container_id, item.seq


@dataclass(slots=True)
class Position:
    """Where following one container's trail stands."""

    ino: int  # inode of the active segment last read (0: none yet)
    offset: int  # bytes of it already read (always after a newline)
    last_seq: int  # highest seq printed or skipped


class Follower:
    """The state of ``tail``: last entries first, then what is appended (no open files kept)."""

    def __init__(self, trails: Trails, only: str | None = None) -> None:
        """Follow every container under ``trails``, or only the container ``only``."""
        self._trails = trails
        self._only = only
        self._positions: dict[str, Position] = {}
        self._dir_mtime = -1

    def start(self, count: int) -> list[Item]:
        """Return the last ``count`` entries across the followed trails, oldest first.

        Also remembers, per trail, where following must continue: just after
        what this snapshot covered.
        """
        newest: list[_Ordered] = []
        for container_id in self._ids():
            items = self._snapshot(container_id, count)
            for item in items:
                if len(newest) < count:
                    heapq.heappush(newest, _Ordered(item))
                else:
                    heapq.heappushpop(newest, _Ordered(item))
        self._dir_mtime = self._mtime()
        return sorted((o.item for o in newest), key=_key)

    def poll(self) -> list[Item]:
        """Return the entries appended since the last call, ordered by time."""
        if not self._trails.reopen():
            return []  # nothing recorded yet
        if self._only is None:
            mtime = self._mtime()
            if mtime != self._dir_mtime:
                self._dir_mtime = mtime
                for container_id in self._ids():
                    self._positions.setdefault(container_id, Position(0, 0, 0))
        found: list[Item] = []
        for container_id, position in list(self._positions.items()):
            found.extend(self._advance(container_id, position))
        found.sort(key=_key)
        return found

    def _ids(self) -> list[str]:
        return [self._only] if self._only is not None else self._trails.ids()

    def _mtime(self) -> int:
        if self._trails.fd < 0:
            return -1
        return os.fstat(self._trails.fd).st_mtime_ns

    def _snapshot(self, container_id: str, count: int) -> list[Item]:
        try:
            return self._snapshot_dir(container_id, count)
        except FileNotFoundError:
            return []
        except ShieldAuditError as exc:
            self._trails.problems.append(f"skipped {container_id[:12]}: {exc.message}")
            return []

    def _snapshot_dir(self, container_id: str, count: int) -> list[Item]:
        dir_fd = self._trails.open_dir(container_id)
        try:
            names = segment_names(dir_fd)
            ino, end = 0, 0
            if names and names[-1] == layout.ACTIVE_FILE:
                fd = open_segment(dir_fd, layout.ACTIVE_FILE)
                if fd is not None:
                    try:
                        ino = os.fstat(fd).st_ino
                        end = complete_end(fd, os.fstat(fd).st_size)
                    finally:
                        os.close(fd)
            # Read the tail no further than the snapshot's end, so what is
            # appended meanwhile is printed once, by the first poll.
            lines = tail_lines(dir_fd, names, max(count, 1), active_end=end)
        finally:
            os.close(dir_fd)
        items = [i for i in map(to_item, lines) if i is not None]
        last_seq = items[-1].seq if items else 0
        self._positions[container_id] = Position(ino, end, last_seq)
        return items[-count:] if count > 0 else []

    def _advance(self, container_id: str, position: Position) -> list[Item]:
        try:
            st = os.stat(
                f"{container_id}/{layout.ACTIVE_FILE}",
                dir_fd=self._trails.fd,
                follow_symlinks=False,
            )
        except FileNotFoundError:
            st = None
        except NotADirectoryError:
            return []
        if st is not None and st.st_ino == position.ino and st.st_size == position.offset:
            return []  # the common case: nothing new, one stat
        try:
            dir_fd = self._trails.open_dir(container_id)
            try:
                return list(self._read_new(dir_fd, position))
            finally:
                os.close(dir_fd)
        except FileNotFoundError:
            self._positions.pop(container_id, None)  # pruned
        except ShieldAuditError as exc:
            self._positions.pop(container_id, None)
            self._trails.problems.append(f"stopped following {container_id[:12]}: {exc.message}")
        return []

    def _read_new(self, dir_fd: int, position: Position) -> Iterator[Item]:
        names = segment_names(dir_fd)
        active_ino = _ino(dir_fd, layout.ACTIVE_FILE)
        plan: list[tuple[str, int]] = []  # (segment, start offset)
        if active_ino is not None and active_ino == position.ino:
            plan.append((layout.ACTIVE_FILE, position.offset))
        else:
            plan = self._catch_up(dir_fd, [n for n in names if n != layout.ACTIVE_FILE], position)
            if active_ino is not None:
                plan.append((layout.ACTIVE_FILE, 0))
        for name, start in plan:
            fd = open_segment(dir_fd, name)
            if fd is None:
                continue
            try:
                st = os.fstat(fd)
                begin = start if st.st_size >= start else 0  # truncated: re-read, seq filters
                offset = begin
                for raw in iter_lines(fd, begin):
                    if not raw.complete:
                        break
                    offset = raw.offset + len(raw.data) + 1
                    item = None if raw.oversized else to_item(raw.data)
                    if item is not None and item.seq > position.last_seq:
                        position.last_seq = item.seq
                        yield item
                if name == layout.ACTIVE_FILE:
                    position.ino, position.offset = st.st_ino, offset
            finally:
                os.close(fd)

    @staticmethod
    def _catch_up(dir_fd: int, sealed: list[str], position: Position) -> list[tuple[str, int]]:
        """Return the sealed segments to read after a rotation, with where to start in each."""
        for index in range(len(sealed) - 1, -1, -1):
            name = sealed[index]
            if position.ino and _ino(dir_fd, name) == position.ino:
                return [(name, position.offset)] + [(n, 0) for n in sealed[index + 1 :]]
            first = _first_seq(dir_fd, name)
            if first is not None and first <= position.last_seq + 1:
                return [(n, 0) for n in sealed[index:]]
        return [(n, 0) for n in sealed]


@dataclass(frozen=True, slots=True)
class _Ordered:
    """Heap wrapper: orders items by time, so the heap keeps the newest ``count``."""

    item: Item

    def __lt__(self, other: _Ordered) -> bool:
        return _key(self.item) < _key(other.item)


def _ino(dir_fd: int, name: str) -> int | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino
    except FileNotFoundError:
        return None


def _first_seq(dir_fd: int, name: str) -> int | None:
    fd = open_segment(dir_fd, name)
    if fd is None:
        return None
    try:
        for raw in iter_lines(fd):
            item = to_item(raw.data) if raw.complete and not raw.oversized else None
            if item is not None:
                return item.seq
    finally:
        os.close(fd)
    return None


def follow(
    follower: Follower,
    emit: Callable[[list[Item]], None],
    *,
    interval: float = POLL_INTERVAL,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    polls: int | None = None,
) -> None:
    """Poll and emit until interrupted (or ``polls`` times, for tests).

    The pause grows to twice the time a poll took, so following thousands of
    trails cannot eat a whole core.
    """
    done = 0
    while polls is None or done < polls:
        began = clock()
        items = follower.poll()
        if items:
            emit(items)
        done += 1
        sleep(max(interval, 2 * (clock() - began)))


@click.command("tail")
@click.argument("container", required=False, shell_complete=container_names)
@click.option(
    "-n",
    "--lines",
    "count",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="How many of the newest entries to show first.",
)
@click.option("-f", "--follow", "following", is_flag=True, help="Keep printing new entries.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, as stored.")
@click.option("--no-trunc", is_flag=True, help="Exact times and full details.")
@click.option("--interval", type=click.FloatRange(min=0.01), default=POLL_INTERVAL, hidden=True)
@click.pass_context
def tail_command(
    ctx: click.Context,
    *,
    container: str | None,
    count: int,
    following: bool,
    as_json: bool,
    no_trunc: bool,
    interval: float,
) -> None:
    """Show the newest entries of every container (or of CONTAINER), merged by time.

    With -f, keep following: across rotations, and containers that appear later.
    """
    root = app(ctx).settings().root
    only = resolve_container(root, container) if container else None
    colour = False if as_json else colour_wanted()
    binary = sys.stdout.buffer
    text = sys.stdout

    names: dict[str, str] = {}

    def emit(items: list[Item]) -> None:
        warn(trails)
        for item in items:
            if item.entry.container:
                names[item.container_id] = item.entry.container
            if as_json:
                binary.write(item.line + b"\n")
            else:
                text.write(
                    render.entry_line(
                        item.entry,
                        exact=no_trunc,
                        colour=colour,
                        label=None
                        if only
                        else names.get(item.container_id, item.container_id[:12]),
                    )
                    + "\n"
                )
        (binary if as_json else text).flush()

    with Trails(Path(root)) as trails:
        follower = Follower(trails, only)
        emit(follower.start(count))
        warn(trails)
        if following:
            follow(follower, emit, interval=interval)
