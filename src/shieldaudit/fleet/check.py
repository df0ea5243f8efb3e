"""Checking collected copies: the fleet layout, conflicts kept aside, two histories compared.

A central directory written by ``shieldaudit collect`` holds one node copy per
host name plus the marker file :data:`~shieldaudit.fleet.collect.FLEET_MARKER`;
each node copy has the node layout, so every read-side command works on it
with ``--root <central>/<node>``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from shieldaudit.fleet.collect import CONFLICTS_DIR, FLEET_MARKER, SEALS_STREAM, is_node_name
from shieldaudit.store import layout
from shieldaudit.store.reader import TrailDir, iter_lines, list_container_ids

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

CONFLICTS_FILE: Final = "conflicts.jsonl"
#: Conflict lines printed per node copy; the rest are counted.
MAX_SHOWN: Final = 20


def is_fleet(root: Path) -> bool:
    """Return whether ``root`` is a central directory that ``collect`` writes."""
    return (root / FLEET_MARKER).is_file() and not (root / layout.CONTAINERS_DIR).exists()


def node_names(central: Path) -> list[str]:
    """Return the node copies under a central directory (only valid host names)."""
    try:
        names = [p.name for p in central.iterdir()]
    except OSError:
        return []
    return sorted(n for n in names if is_node_name(n) and (central / n).is_dir())


def conflict_lines(root: Path) -> tuple[list[str], int]:
    """Return one problem line per conflict kept under ``root`` (the first few) and the count."""
    path = root / CONFLICTS_DIR / CONFLICTS_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return [], 0
    except OSError as exc:
        return [f"conflicts: cannot read {path}: {exc.strerror}"], 1
    shown: list[str] = []
    count = 0
    try:
        for raw in iter_lines(fd):
            count += 1
            if len(shown) >= MAX_SHOWN:
                continue
            try:
                record = json.loads(raw.data)
                stream, seq = str(record["stream"]), int(record["seq"])
                held, reason = record.get("held_mac"), str(record.get("reason"))
            except (ValueError, KeyError, TypeError):
                shown.append(f"conflicts: unreadable line {raw.lineno} in {path}")
                continue
            what = "seal" if stream == SEALS_STREAM else "seq"
            where = "seals" if stream == SEALS_STREAM else stream[:12]
            detail = f" (held mac {str(held)[:16]}…)" if held else ""
            shown.append(
                f"{where} {what} {seq}: CONFLICT: the node shipped a different history after this "
                f"copy was made: {reason}{detail}; kept in {path}"
            )
    finally:
        os.close(fd)
    return shown, count


@dataclass(frozen=True, slots=True)
class Parting:
    """Where one container's history differs between two roots."""

    container_id: str
    seq: int | None
    message: str
    failure: bool

    def render(self) -> str:
        """Return the parting as one line."""
        where = f"seq {self.seq}" if self.seq is not None else "seq ?"
        return f"{self.container_id[:12]} {where}: {self.message}"


def _entries(root: Path, container_id: str) -> Iterator[tuple[int, str]]:
    with TrailDir(root, container_id) as trail:
        for record in trail.records():
            if record.entry is not None:
                yield record.entry.seq, record.entry.mac


def compare(here: Path, there: Path) -> list[Parting]:
    """Compare every container's entries (seq, mac) under two roots (streamed, seq order)."""
    partings: list[Parting] = []
    ids = sorted(set(list_container_ids(here)) | set(list_container_ids(there)))
    for container_id in ids:
        partings.extend(_compare_one(here, there, container_id))
    return partings


def _compare_one(  # noqa: C901, PLR0911 -- one return per way two histories relate
    here: Path, there: Path, container_id: str
) -> list[Parting]:
    mine = _maybe(here, container_id)
    theirs = _maybe(there, container_id)
    if mine is None and theirs is None:
        return []
    if mine is None:
        return [
            Parting(container_id, None, f"trail missing here, present under {there}", failure=True)
        ]
    if theirs is None:
        return [Parting(container_id, None, f"trail not (yet) under {there}", failure=False)]
    a, b = next(mine, None), next(theirs, None)
    # Skip what one side no longer keeps (retention) before comparing.
    while a is not None and b is not None and a[0] != b[0]:
        if a[0] < b[0]:
            a = next(mine, None)
        else:
            b = next(theirs, None)
    while a is not None and b is not None:
        if a[0] != b[0] or a[1] != b[1]:
            return [
                Parting(
                    container_id,
                    a[0],
                    f"histories part here: mac {a[1][:16]}… here, {b[1][:16]}… under {there} "
                    "(one of them was rewritten)",
                    failure=True,
                )
            ]
        a, b = next(mine, None), next(theirs, None)
    if b is not None:
        last = b[0]
        for item in theirs:
            last = item[0]
        return [
            Parting(
                container_id,
                b[0],
                f"seq {b[0]} to {last} are under {there} but no longer here "
                "(truncated or deleted after they were shipped)",
                failure=True,
            )
        ]
    if a is not None:
        last = a[0]
        for item in mine:
            last = item[0]
        return [
            Parting(
                container_id, a[0], f"seq {a[0]} to {last} not (yet) under {there}", failure=False
            )
        ]
    return []


def _maybe(root: Path, container_id: str) -> Iterator[tuple[int, str]] | None:
    if not (layout.trail_dir(root, container_id)).is_dir():
        return None
    return _entries(root, container_id)
