"""The sidecar's checkpoint: what has been counted, per container, saved atomically.

Layout (``<root>/state/sidecar-checkpoint.json``)::

    {"version": 1,
     "hook_errors": [inode, offset],
     "containers": {"<id>": [last_seq, last_mac, segment, inode, offset, rotated, skipping]}}

``last_seq``/``last_mac`` identify the last entry counted; they are the truth.
``segment`` (0 = the active ``audit.jsonl``), ``inode`` and ``offset`` are only
a hint of where that entry ended, validated against ``seq`` on restart.
``rotated`` is the highest sealed segment number already counted in
``shieldaudit_rotations_total``; ``skipping`` marks an oversized line being skipped.

Each container's record is serialised once when it changes and kept as text, so
writing the whole file for 10,000 containers is a join, not 10,000 encodings.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from shieldaudit.store import layout

if TYPE_CHECKING:
    from pathlib import Path

CHECKPOINT_FILE: Final = "sidecar-checkpoint.json"
VERSION: Final = 1
_FIELDS: Final = 7


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

    def to_json(self) -> str:
        """Return the record as compact JSON text."""
        return json.dumps(
            [
                self.last_seq,
                self.last_mac,
                self.segment,
                self.inode,
                self.offset,
                self.rotated,
                self.skipping,
            ],
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, value: object) -> Mark | None:
        """Rebuild a record; None when it is not one this version wrote."""
        if not isinstance(value, list) or len(value) != _FIELDS:
            return None
        seq, mac, segment, inode, offset, rotated, skipping = value
        ints = (seq, segment, inode, offset, rotated)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
            return None
        if not isinstance(mac, str) or not isinstance(skipping, bool):
            return None
        return cls(seq, mac, segment, inode, offset, rotated, skipping)


def checkpoint_path(root: Path) -> Path:
    """Return where the sidecar keeps its checkpoint."""
    return layout.state_path(root, CHECKPOINT_FILE)


@dataclass(slots=True)
class Loaded:
    """What a checkpoint file held."""

    marks: dict[str, Mark]
    hook_errors: tuple[int, int] | None


def load(path: Path) -> Loaded | None:
    """Read a checkpoint; None when there is none.

    An unreadable or corrupt file also yields None (with history read again from
    the start): the file is only ever replaced whole, so corruption means
    someone else wrote it, and re-reading is the safe direction for a log reader.
    """
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        return None
    marks: dict[str, Mark] = {}
    containers = data.get("containers")
    if isinstance(containers, dict):
        for cid, raw in containers.items():
            mark = Mark.from_json(raw)
            if mark is not None and layout.is_container_id(cid):
                marks[cid] = mark
    hook = data.get("hook_errors")
    hook_errors = None
    if isinstance(hook, list) and len(hook) == 2 and all(isinstance(v, int) for v in hook):
        hook_errors = (hook[0], hook[1])
    return Loaded(marks, hook_errors)


class CheckpointWriter:
    """Keeps the serialised records and writes the file atomically."""

    def __init__(self, path: Path) -> None:
        """Write to ``path`` (its directory is created 0700 when missing)."""
        self.path = path
        self._texts: dict[str, str] = {}
        self.saves = 0

    def update(self, container_id: str, mark: Mark) -> None:
        """Record a container's new mark (serialised now, written on :meth:`save`)."""
        self._texts[container_id] = mark.to_json()

    def forget(self, container_id: str) -> None:
        """Drop a container whose trail is gone."""
        self._texts.pop(container_id, None)

    def render(self, hook_errors: tuple[int, int]) -> bytes:
        """Return the file's content."""
        body = ",".join(f'"{cid}":{text}' for cid, text in self._texts.items())
        head = f'{{"version":{VERSION},"hook_errors":[{hook_errors[0]},{hook_errors[1]}],'
        return (head + '"containers":{' + body + "}}\n").encode("ascii")

    def save(self, hook_errors: tuple[int, int]) -> None:
        """Replace the checkpoint: temp file, fsync, rename, fsync the directory.

        A crash at any point leaves either the old or the new checkpoint whole,
        never a mix, and the rename is durable before metrics are published.
        """
        data = self.render(hook_errors)
        directory = self.path.parent
        directory.mkdir(mode=layout.DIR_MODE, parents=True, exist_ok=True)
        tmp = directory / f".{self.path.name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, layout.FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        os.close(fd)
        tmp.replace(self.path)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self.saves += 1
