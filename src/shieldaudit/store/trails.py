"""Every trail of a root, read cheaply: ``ls``, name resolution, ``prune`` and ``tail``.

These look at thousands of trails, so each costs a directory listing and a
small backward read of its end (plus, for a long trail, a small read of its
start), whatever the trail's size. Every open is relative to a directory
descriptor with ``O_NOFOLLOW`` (:mod:`.layout`); the lines come from the
store's reader (:mod:`.reader`), and each line is decoded at most once, for
the summary and the reconciliation alike.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Self

from shieldaudit.core import ids
from shieldaudit.core.errors import ShieldAuditError, StorageError
from shieldaudit.store import layout
from shieldaudit.store.reader import first_entry, head_lines, segment_names, tail_lines, try_decode
from shieldaudit.store.reconcile import Audit, audit_entries, ts_us
from shieldaudit.store.summary import Summary, summarise

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

    from shieldaudit.core.models import Entry

#: Entries read from a trail's end for ``ls``: enough to find the latest name
#: and lifecycle action and to check a few chain links.
TAIL_ENTRIES: Final = 8
#: Entries ``ls`` reconciles (unaudited starts): the last ones and the first ones.
#: Nearly every trail is shorter than this and is judged whole.
AUDIT_TAIL_ENTRIES: Final = 512
AUDIT_HEAD_ENTRIES: Final = 64
#: Actions reconciliation looks at; lines with others are not even decoded.
_AUDIT_ACTIONS: Final = frozenset({b"start", b"init", b"createRuntime", b"poststart"})
_ACTION_KEY: Final = b'"action":"'
_FAR_FUTURE_US: Final = 1 << 62
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Trails:
    """The ``containers/`` directory of a root, opened once (a context manager).

    A root or ``containers/`` directory that does not exist yet is simply empty:
    nothing has been recorded.
    """

    def __init__(self, root: Path) -> None:
        """Open the root (refusing an unsafe one) and its ``containers/`` directory."""
        self.root = root
        self.root_fd = -1
        self.fd = -1
        #: Trails skipped because they are unsafe or unreadable (one line each).
        self.problems: list[str] = []
        self._open()

    def _open(self) -> None:
        try:
            self.root_fd = layout.open_root(self.root, create=False)
        except StorageError:
            if os.path.lexists(self.root):
                raise
            return
        try:
            self.fd = layout.open_subdir(
                self.root_fd, layout.CONTAINERS_DIR, layout.containers_path(self.root), create=False
            )
        except FileNotFoundError:
            self.fd = -1

    def check_state(self) -> None:
        """Refuse a ``state/`` (or its ``locks/``, ``torn/``) that writers would refuse."""
        if self.root_fd >= 0:
            layout.check_state(self.root_fd, self.root)

    def reopen(self) -> bool:
        """Try again to open a root or ``containers/`` that did not exist; return whether open."""
        if self.fd < 0:
            self.close()
            self._open()
        return self.fd >= 0

    def close(self) -> None:
        """Close the descriptors."""
        for fd in (self.fd, self.root_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.root_fd = -1

    def __enter__(self) -> Self:
        """Use as a context manager."""
        return self

    def __exit__(self, *_exc: object) -> None:
        """Close on exit."""
        self.close()

    def ids(self) -> list[str]:
        """Return the container IDs with a trail directory, sorted."""
        if self.fd < 0:
            return []
        return sorted(n for n in os.listdir(self.fd) if ids.is_container_id(n))

    def open_dir(self, container_id: str) -> int:
        """Open one trail directory (no symlinks); raise FileNotFoundError when gone."""
        if self.fd < 0:
            raise FileNotFoundError(container_id)
        if ids.is_container_id(container_id):
            # Fast path (ls reads thousands): the same open and checks as open_subdir,
            # no Path built.
            try:
                fd = os.open(container_id, _DIR_FLAGS, dir_fd=self.fd)
            except OSError:
                pass
            else:
                try:
                    layout.check_dir(fd, self.fd, f"{self.root}/containers/{container_id}")
                except BaseException:
                    os.close(fd)
                    raise
                return fd
        return layout.open_subdir(
            self.fd,
            ids.check_container_id(container_id),
            layout.trail_dir(self.root, container_id),
            create=False,
        )

    def summary(
        self,
        container_id: str,
        tail: int = TAIL_ENTRIES,
        *,
        audit_at: tuple[int, int] | None = None,
    ) -> Summary | None:
        """Summarise one trail from its head and tail.

        With ``audit_at`` (now and the grace period, in µs) the summary also
        says whether the container had unaudited starts (:func:`audit_window`).

        Returns None when the trail vanished meanwhile (pruned), or when it is
        unsafe or unreadable: that is noted in :attr:`problems` and the other
        trails are still listed, so one planted symlink cannot hide them all.
        """
        try:
            dir_fd = self.open_dir(container_id)
        except FileNotFoundError:
            return None
        except ShieldAuditError as exc:
            self.problems.append(f"skipped {container_id[:12]}: {exc.message}")
            return None
        try:
            return summarise_dir(dir_fd, container_id, tail, audit_at=audit_at)
        except ShieldAuditError as exc:
            self.problems.append(f"skipped {container_id[:12]}: {exc.message}")
            return None
        finally:
            os.close(dir_fd)


def summarise_dir(
    dir_fd: int,
    container_id: str,
    tail: int = TAIL_ENTRIES,
    *,
    audit_at: tuple[int, int] | None = None,
) -> Summary:
    """Summarise the trail in ``dir_fd`` (see :meth:`Trails.summary`), reading it once.

    One backward read gives the last lines, for the summary and, with
    ``audit_at``, the reconciliation; when that read holds the whole trail
    (nearly always) it gives the first entry too. Each line is decoded once.
    """
    names = segment_names(dir_fd)
    wanted = tail if audit_at is None else max(tail, AUDIT_TAIL_ENTRIES)
    window = Window(tail_lines(dir_fd, names, wanted))
    whole = len(window.lines) < wanted  # every line of the trail is in the window
    first = window.first_entry() if whole else first_entry(dir_fd, names)
    audit = None
    if audit_at is not None:
        head = None
        if not whole and not window.starts_with(first):
            head = Window(head_lines(dir_fd, names, AUDIT_HEAD_ENTRIES))
        audit = audit_window(window, head, now_us=audit_at[0], grace_us=audit_at[1])
    last = window.pairs(len(window.lines) - tail) if tail > 0 else []
    return summarise(container_id, first, last, len(names), datetime.now(UTC), audit=audit)


class Window:
    """Lines read from a trail, each decoded on first use and only once."""

    def __init__(self, lines: list[bytes]) -> None:
        """Hold ``lines`` (oldest first), none decoded yet."""
        self.lines = lines
        self._entries: list[Entry | bool | None] = [False] * len(lines)  # False: not yet

    def entry(self, index: int) -> Entry | None:
        """Return the entry of line ``index`` (None: the line is not one)."""
        found = self._entries[index]
        if found is False:
            found = self._entries[index] = try_decode(self.lines[index])
        assert found is not True  # noqa: S101 -- only False marks "not decoded"
        return found

    def pairs(self, start: int = 0) -> list[tuple[bytes, Entry | None]]:
        """Return ``(line, entry)`` from line ``start`` on."""
        start = max(start, 0)
        return [(self.lines[i], self.entry(i)) for i in range(start, len(self.lines))]

    def first_entry(self) -> Entry | None:
        """Return the first line that is an entry."""
        for index in range(len(self.lines)):
            entry = self.entry(index)
            if entry is not None:
                return entry
        return None

    def starts_with(self, first: Entry | None) -> bool:
        """Return whether the window begins with the trail's first entry (it is the whole trail)."""
        if first is None or not self.lines:
            return True
        entry = self.entry(0)
        return entry is not None and entry.seq == first.seq

    def relevant(self) -> list[Entry]:
        """Return the entries reconciliation looks at (a substring test per line first)."""
        found = []
        for index, line in enumerate(self.lines):
            at = line.find(_ACTION_KEY)
            if at < 0:
                continue
            at += len(_ACTION_KEY)
            if line[at : line.find(b'"', at)] in _AUDIT_ACTIONS:
                entry = self.entry(index)
                if entry is not None:
                    found.append(entry)
        return found


def audit_window(tail: Window, head: Window | None, *, now_us: int, grace_us: int) -> Audit:
    """Reconcile what ``ls`` read of a trail: all of it, or its first and last entries.

    ``head`` is None when ``tail`` holds the whole trail: then the result is
    exact. Otherwise the first entries are judged as a trail of their own (their
    hook runs whose start event lies further on are not "events missing"), and
    the last ones with a floor at their first hook entry: a hookless start in
    them counts only after a start whose hook entries are in the window too (its
    own may lie before the window).
    """
    if head is None:
        return audit_entries(tail.relevant(), now_us=now_us, grace_us=grace_us)
    first_part = audit_entries(head.relevant(), now_us=now_us, grace_us=grace_us)
    entries = tail.relevant()
    floor = next(_hook_times(entries), _FAR_FUTURE_US)
    last_part = audit_entries(entries, now_us=now_us, grace_us=grace_us, floor_us=floor)
    return Audit(
        starts=first_part.starts + last_part.starts,
        unaudited=first_part.unaudited + last_part.unaudited,
        pending=last_part.pending,
        unknown=first_part.unknown + last_part.unknown,
        events_missing=last_part.events_missing,
    )


def _hook_times(entries: Iterable[Entry]) -> Iterator[int]:
    for entry in entries:
        if entry.source == "hook" and entry.action in {"createRuntime", "poststart"}:
            us = ts_us(entry.ts)
            if us is not None:
                yield us
