"""The sidecar's checkpoint: what has been counted, per container, saved atomically.

It is a directory, ``<root>/state/sidecar-checkpoint/``, of 16 shard files
(``0.json`` … ``f.json``, by the first hex digit of the container ID) plus
``hook.json``::

    {"version": 1, "containers": {"<id>": [last_seq, last_mac, segment, inode, offset,
                                           rotated, skipping, ledger]}}
    {"version": 1, "hook_errors": [inode, offset]}

``last_seq``/``last_mac`` identify the last entry counted; they are the truth.
``segment`` (0 = the active ``audit.jsonl``), ``inode`` and ``offset`` are only
a hint of where that entry ended, validated against the chain on restart.
``rotated`` is the highest sealed segment number already counted in
``shieldaudit_rotations_total``; ``skipping`` marks an oversized line being skipped.
``ledger`` is the container's reconciliation state
(:class:`~shieldaudit.store.reconcile.Ledger`: last judged start, hook entries
and start events waiting), saved with the position it belongs to; records
written before it existed have seven fields and load without one.

Why shards: a save rewrites only the shards whose containers moved, so a
trickle of entries on a host with 10,000 trails rewrites ~1/16 of the records,
not all of them; each shard is still replaced whole (temp file, fsync,
rename, fsync of the directory). Each record is serialised once when it
changes and kept as text, so writing a shard is a join.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from shieldaudit.core import ids
from shieldaudit.store import layout
from shieldaudit.store.reconcile import Ledger

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

CHECKPOINT_DIR: Final = "sidecar-checkpoint"
HOOK_SHARD: Final = "hook"
SHARDS: Final = (*"0123456789abcdef", HOOK_SHARD)
VERSION: Final = 1
_FIELDS: Final = 7
_FIELDS_WITH_LEDGER: Final = 8


@dataclass(slots=True)
class Mark:
    """Where one container's counting stands (see the module docstring)."""

    last_seq: int = 0
    last_mac: str = ""
    segment: int = 0
    inode: int = 0
    offset: int = 0
    rotated: int = 0
    skipping: bool = False
    audit: Ledger | None = None

    def to_json(self) -> str:
        """Return the record as compact JSON text."""
        record: list[object] = [
            self.last_seq,
            self.last_mac,
            self.segment,
            self.inode,
            self.offset,
            self.rotated,
            self.skipping,
        ]
        if self.audit is not None:
            record.append(self.audit.to_json())
        return json.dumps(record, separators=(",", ":"))

    @classmethod
    def from_json(cls, value: object) -> Mark | None:
        """Rebuild a record; None when it is not one this version wrote."""
        if not isinstance(value, list) or len(value) not in {_FIELDS, _FIELDS_WITH_LEDGER}:
            return None
        seq, mac, segment, inode, offset, rotated, skipping = value[:_FIELDS]
        ints = (seq, segment, inode, offset, rotated)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
            return None
        if not isinstance(mac, str) or not isinstance(skipping, bool):
            return None
        ledger = None
        if len(value) == _FIELDS_WITH_LEDGER:
            ledger = Ledger.from_json(value[_FIELDS])
            if ledger is None:
                return None
        return cls(seq, mac, segment, inode, offset, rotated, skipping, ledger)


def checkpoint_path(root: Path) -> Path:
    """Return the directory where the sidecar keeps its checkpoint."""
    return layout.state_path(root, CHECKPOINT_DIR)


def shard_of(container_id: str) -> str:
    """Return the shard a container's record lives in."""
    return container_id[0]


@dataclass(slots=True)
class Loaded:
    """What a checkpoint held."""

    marks: dict[str, Mark]
    hook_errors: tuple[int, int] | None


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        return None
    return data


def load(directory: Path) -> Loaded | None:
    """Read a checkpoint; None when there is none.

    A shard that is unreadable or corrupt is skipped (its containers are then
    read again from their start): shards are only ever replaced whole, so
    corruption means someone else wrote them, and re-reading is the safe
    direction for a log reader.
    """
    if not directory.is_dir():
        return None
    marks: dict[str, Mark] = {}
    for shard in SHARDS[:-1]:
        data = _read_json(directory / f"{shard}.json")
        containers = data.get("containers") if data else None
        if not isinstance(containers, dict):
            continue
        for cid, raw in containers.items():
            mark = Mark.from_json(raw)
            if mark is not None and ids.is_container_id(cid) and shard_of(cid) == shard:
                marks[cid] = mark
    hook_errors = None
    data = _read_json(directory / f"{HOOK_SHARD}.json")
    hook = data.get("hook_errors") if data else None
    if isinstance(hook, list) and len(hook) == 2 and all(type(v) is int for v in hook):
        hook_errors = (hook[0], hook[1])
    return Loaded(marks, hook_errors)


class CheckpointWriter:
    """Keeps the serialised records and writes the shards that changed, atomically."""

    def __init__(self, directory: Path) -> None:
        """Write shards into ``directory`` (created 0700 when missing)."""
        self.path = directory
        self._texts: dict[str, dict[str, str]] = {shard: {} for shard in SHARDS[:-1]}
        self._hook = (0, 0)
        self.dirty: set[str] = set()
        self.saves = 0

    def update(self, container_id: str, mark: Mark) -> None:
        """Record a container's new mark (serialised now, written by :meth:`save`)."""
        shard = shard_of(container_id)
        self._texts[shard][container_id] = mark.to_json()
        self.dirty.add(shard)

    def forget(self, container_id: str) -> None:
        """Drop a container whose trail is gone."""
        shard = shard_of(container_id)
        if self._texts[shard].pop(container_id, None) is not None:
            self.dirty.add(shard)

    def set_hook_errors(self, position: tuple[int, int]) -> None:
        """Record the position in the hook's error file."""
        if position != self._hook:
            self._hook = position
            self.dirty.add(HOOK_SHARD)

    def mark_all_dirty(self) -> None:
        """Write every shard on the next save (a first save, or a replaced directory)."""
        self.dirty.update(SHARDS)

    def render(self, shard: str) -> bytes:
        """Return a shard file's content."""
        if shard == HOOK_SHARD:
            text = f'{{"version":{VERSION},"hook_errors":[{self._hook[0]},{self._hook[1]}]}}\n'
            return text.encode("ascii")
        body = ",".join(f'"{cid}":{text}' for cid, text in self._texts[shard].items())
        return f'{{"version":{VERSION},"containers":{{{body}}}}}\n'.encode("ascii")

    def save(self) -> Iterator[str]:
        """Write each dirty shard; yield its name once it is durable.

        The caller publishes that shard's counts right then, so after a crash
        between two shards every shard's counts are either saved and published,
        or neither. On an error the unsaved shards stay dirty for the next try.
        """
        self.path.mkdir(mode=layout.DIR_MODE, parents=True, exist_ok=True)
        dfd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for shard in sorted(self.dirty):
                layout.replace_file(dfd, f"{shard}.json", self.render(shard))
                os.fsync(dfd)  # the rename is durable before anything is published
                self.dirty.discard(shard)
                self.saves += 1
                yield shard
        finally:
            os.close(dfd)
