"""``shieldaudit prune --older-than AGE``: remove whole trails of containers that are gone.

A trail is removed only when all of these hold (:func:`keep_reason` decides):
its lifecycle ended (the trail says ``exited``, ``failed`` or ``removed``), its last
activity is older than AGE, and it was not modified in the last
:data:`SETTLE_S` seconds. The last activity is the later of the last entry's
recorded time and the trail's modification time (its ``audit.jsonl`` or its
directory, whichever changed last): a recorded time from a clock that was
wrong, or set back since, cannot make a trail written moments ago look old.
A trail directory without any segment file (left by an interrupted prune)
goes once it is that quiet. Before anything is removed, a tombstone is
recorded for the next seal, so ``verify`` knows the trail was pruned, not
deleted. The decision is taken again under the container's
lock, which is held while the files are deleted, so no writer appends to a
trail being removed. Files are unlinked relative to the trail's directory
descriptor (``unlink`` never follows a symlink); then the directory, its lock
file and any torn fragments set aside for it go.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

import click

from shieldaudit.cli import render
from shieldaudit.cli.context import app
from shieldaudit.cli.output import warn
from shieldaudit.cli.timeargs import parse_age, ts_bound
from shieldaudit.core.errors import EXIT_FAILURE, LockTimeoutError, ShieldAuditError, StorageError
from shieldaudit.core.timefmt import format_ns
from shieldaudit.store import layout, pending, seals
from shieldaudit.store.summary import ENDED
from shieldaudit.store.trails import Trails

if TYPE_CHECKING:
    from shieldaudit.store.summary import Summary

#: A trail whose active segment changed this recently is left alone, whatever it says.
SETTLE_S: Final = 10.0


def last_activity(summary: Summary, modified: str) -> str:
    """Return the later of the last entry's time and the trail's modification time (pure).

    Both are entry-format timestamps (one fixed format, so they compare as
    strings); an empty one is unknown.
    """
    return max(summary.last_ts, modified)


def keep_reason(summary: Summary, cutoff: str, *, settling: bool, modified: str = "") -> str | None:
    """Return why a trail must be kept, or None when it may be removed (pure).

    Args:
        summary: what the trail's head and tail say.
        cutoff: entry-format timestamp; activity at or after it is too recent.
        settling: the trail was modified within :data:`SETTLE_S`.
        modified: the trail's modification time as an entry-format timestamp
            ("" when unknown); it counts as activity, like the last entry.
    """
    if summary.segments == 0:
        # Left by a prune or a writer that crashed half-way: no history to keep.
        return "written to just now" if settling else None
    if summary.state not in ENDED:
        return f"lifecycle not ended ({summary.state})"
    if not summary.last_ts:
        return "last entry too recent"
    if last_activity(summary, modified) >= cutoff:
        return "last entry too recent" if summary.last_ts >= cutoff else "modified too recently"
    if settling:
        return "written to just now"
    return None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What prune did with one trail."""

    summary: Summary
    removed: bool
    reason: str  # why kept, or what was removed
    modified: str = ""  # the trail's modification time, entry format ("" unknown)


def _modified_ns(trails: Trails, container_id: str) -> int | None:
    """Return when the trail last changed: its active segment's or its directory's mtime.

    Whichever is later: appends change ``audit.jsonl``; rotation, retention
    and a recreated ``audit.jsonl`` change the directory. None when neither
    can be seen (the trail vanished meanwhile).
    """
    latest: int | None = None
    for name in (f"{container_id}/{layout.ACTIVE_FILE}", container_id):
        try:
            st = os.stat(name, dir_fd=trails.fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            continue
        latest = st.st_mtime_ns if latest is None else max(latest, st.st_mtime_ns)
    return latest


def _decide(trails: Trails, summary: Summary, cutoff: str, now: float) -> tuple[str | None, str]:
    """Return :func:`keep_reason` for one trail and the modification time it used."""
    modified_ns = _modified_ns(trails, summary.container_id)
    if modified_ns is None:
        return keep_reason(summary, cutoff, settling=False), ""
    modified = format_ns(modified_ns)
    settling = now - modified_ns / 1e9 < SETTLE_S
    return keep_reason(summary, cutoff, settling=settling, modified=modified), modified


def _tombstone(trails: Trails, container_id: str) -> None:
    """Record the removal for the next seal, before anything is removed.

    A crash after this and before the removal leaves a tombstone for a trail
    still there, which is harmless; the reverse would look like tampering.
    """
    head = seals.trail_head(trails.fd, container_id, trails.root)
    record = {"container_id": container_id, "seq": head.seq, "mac": head.mac}
    record["ts"] = format_ns(time.time_ns())
    pending.append(trails.root_fd, trails.root, pending.TOMBSTONES, record)


def _remove_trail(trails: Trails, container_id: str) -> int:
    """Delete a trail directory's files and the directory; return how many files went."""
    dir_fd = trails.open_dir(container_id)
    shown = layout.trail_dir(trails.root, container_id)
    try:
        names = os.listdir(dir_fd)  # noqa: PTH208 -- a descriptor, not a path
        for name in names:
            try:
                os.unlink(name, dir_fd=dir_fd)
            except IsADirectoryError:
                raise StorageError(
                    f"{shown / name} is a directory, not a trail file: remove it by hand"
                ) from None
        layout.fsync_dir(dir_fd)
    finally:
        os.close(dir_fd)
    os.rmdir(container_id, dir_fd=trails.fd)
    layout.fsync_dir(trails.fd)
    return len(names)


def _remove_state(trails: Trails, container_id: str) -> None:
    """Remove the lock file and set-aside torn fragments of a removed trail (best effort)."""
    lock_name = f"{container_id}.lock"
    for sub, prefix in ((layout.LOCKS_DIR, lock_name), (layout.TORN_DIR, f"{container_id}-")):
        try:
            state_fd = layout.open_subdir(
                trails.root_fd, layout.STATE_DIR, trails.root / layout.STATE_DIR, create=False
            )
        except FileNotFoundError:
            return
        try:
            fd = layout.open_subdir(
                state_fd, sub, trails.root / layout.STATE_DIR / sub, create=False
            )
        except FileNotFoundError:
            continue
        finally:
            os.close(state_fd)
        try:
            for name in os.listdir(fd):  # noqa: PTH208 -- a descriptor, not a path
                if name == lock_name if sub == layout.LOCKS_DIR else name.startswith(prefix):
                    os.unlink(name, dir_fd=fd)
        finally:
            os.close(fd)


def prune(
    trails: Trails,
    cutoff: str,
    *,
    dry_run: bool,
    now: float,
    lock_timeout: float = layout.LOCK_TIMEOUT_S,
) -> tuple[list[Outcome], list[str]]:
    """Remove every trail that may go; return the outcomes and the errors met."""
    outcomes: list[Outcome] = []
    errors: list[str] = []
    for container_id in trails.ids():
        summary = trails.summary(container_id)
        if summary is None:
            continue
        reason, modified = _decide(trails, summary, cutoff, now)
        if reason is not None or dry_run:
            reason = reason or "would remove"
            outcomes.append(Outcome(summary, removed=False, reason=reason, modified=modified))
            continue
        try:
            with layout.Lock(trails.root_fd, container_id, trails.root, timeout=lock_timeout):
                # Decide again: a writer may have appended between the first look and the lock.
                summary = trails.summary(container_id)
                if summary is None:
                    continue
                reason, modified = _decide(trails, summary, cutoff, now)
                if reason is not None:
                    outcomes.append(
                        Outcome(summary, removed=False, reason=reason, modified=modified)
                    )
                    continue
                _tombstone(trails, container_id)
                files = _remove_trail(trails, container_id)
                # Unlinked while held, so a writer waiting on this lock file starts afresh.
                _remove_state(trails, container_id)
        except LockTimeoutError as exc:
            errors.append(f"{container_id[:12]}: kept: {exc.message}")
            continue
        except (ShieldAuditError, OSError) as exc:
            message = exc.message if isinstance(exc, ShieldAuditError) else str(exc)
            errors.append(f"{container_id[:12]}: could not remove: {message}")
            continue
        outcomes.append(
            Outcome(summary, removed=True, reason=f"{files} file(s)", modified=modified)
        )
    return outcomes, errors


@click.command("prune")
@click.option(
    "--older-than",
    "older_than",
    required=True,
    metavar="AGE",
    help="Remove trails whose last entry is older than AGE (30s, 10m, 2h, 7d, 1w).",
)
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per removed trail.")
@click.pass_context
def prune_command(ctx: click.Context, *, older_than: str, dry_run: bool, as_json: bool) -> None:
    """Remove the trails of containers that ended more than AGE ago.

    Only trails whose lifecycle ended (exited, failed or removed) are touched;
    a running, paused, created or unknown container's trail is always kept.
    """
    age = parse_age(older_than, what="--older-than")
    root = app(ctx).settings().root
    now = time.time()
    moment = datetime.fromtimestamp(now, UTC)
    cutoff = ts_bound(moment - age)
    with Trails(Path(root)) as trails:
        trails.check_state()  # a loose state/torn/ must stop prune before it removes anything
        outcomes, errors = prune(trails, cutoff, dry_run=dry_run, now=now)
        warn(trails)
    chosen = [o for o in outcomes if o.removed or o.reason == "would remove"]
    verb = "would remove" if dry_run else "removed"
    for outcome in chosen:
        s = outcome.summary
        if as_json:
            row: dict[str, object] = {"container_id": s.container_id, "name": s.name}
            row |= {"action": verb, "state": str(s.state), "last_ts": s.last_ts}
            row |= {"modified": outcome.modified or None, "entries": s.entries}
            click.echo(json.dumps(row))
        else:
            active = render.when(last_activity(s, outcome.modified), moment, exact=False)
            click.echo(
                f"{verb} {s.container_id[:12]} {render.printable(s.name) or '-'} "
                f"({s.state}, {s.entries} entries, last active {active})"
            )
    for error in errors:
        click.echo(f"Error: {error}", err=True)
    if not as_json:
        kept = len(outcomes) - len(chosen)
        click.echo(f"{verb.capitalize()} {len(chosen)} trail(s); kept {kept}.")
    if errors:
        ctx.exit(EXIT_FAILURE)
