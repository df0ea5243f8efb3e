"""Every trail read cheaply: one backward read per trail, each line decoded once."""

from __future__ import annotations

import os

import pytest

from cli_helpers import SECOND, T0, cid, write_trail
from shieldaudit.store import reader, trails
from shieldaudit.store.reconcile import audit_entries
from shieldaudit.store.summary import State
from shieldaudit.store.trails import AUDIT_TAIL_ENTRIES, Trails, Window
from store_helpers import all_lines

NOW_US = (T0 + 3600 * SECOND) // 1000
GRACE_US = 5_000_000


@pytest.fixture
def decodes(monkeypatch):
    """Count the lines the summary decodes, by line."""
    seen: list[bytes] = []

    def counting(line: bytes):
        seen.append(line)
        return reader.try_decode(line)

    monkeypatch.setattr(trails, "try_decode", counting)
    return seen


def test_a_short_trail_is_read_once_and_each_line_decoded_once(tmp_path, monkeypatch, decodes):
    """Ls on a trail shorter than its window: no second read of its head, one decode per line."""
    root = tmp_path / "root"
    actions = ["create", "createRuntime", "poststart", "init", "start", "died"]
    write_trail(root, cid("a"), actions, name="web", source="events")

    def no_head_read(*_args: object) -> None:
        raise AssertionError("the window holds the whole trail: its head is not read again")

    monkeypatch.setattr(trails, "first_entry", no_head_read)
    monkeypatch.setattr(trails, "head_lines", no_head_read)
    with Trails(root) as opened:
        summary = opened.summary(cid("a"), audit_at=(NOW_US, GRACE_US))
    assert summary is not None
    assert (summary.first_seq, summary.last_seq, summary.entries) == (1, 6, 6)
    assert summary.name == "web"
    assert summary.tail_ok is True
    assert summary.audit is not None
    assert sorted(decodes) == sorted(all_lines(root, cid("a")))  # each line once


def test_a_long_trail_reads_its_head_too(tmp_path):
    """Past the window, the first entry comes from the head; the audit sees both ends."""
    root = tmp_path / "root"
    write_trail(root, cid("b"), ["create", "init", "start"], source="events")
    write_trail(root, cid("b"), ["exec"] * AUDIT_TAIL_ENTRIES, start_ns=T0 + 10 * SECOND)
    write_trail(root, cid("b"), ["died"], start_ns=T0 + 2000 * SECOND)
    with Trails(root) as opened:
        summary = opened.summary(cid("b"), audit_at=(NOW_US, GRACE_US))
    assert summary is not None
    assert (summary.first_seq, summary.last_seq) == (1, AUDIT_TAIL_ENTRIES + 4)
    assert summary.state is State.EXITED
    assert summary.audit is not None
    assert summary.audit.starts == 1  # the start in the head, judged


def test_window_decodes_lazily_and_once(tmp_path, decodes):
    """Only lines asked for (or with an action reconciliation reads) are decoded, once each."""
    root = tmp_path / "root"
    write_trail(root, cid("c"), ["exec", "start", "exec", "poststart"])
    lines = all_lines(root, cid("c"))
    window = Window([*lines, b"garbage"])
    relevant = window.relevant()
    assert [e.action for e in relevant] == ["start", "poststart"]
    assert decodes == [lines[1], lines[3]]
    assert [e is None for _, e in window.pairs(3)] == [False, True]
    assert window.first_entry() is not None
    assert window.starts_with(window.entry(0))
    assert decodes == [lines[1], lines[3], b"garbage", lines[0]]
    entries = [e for _, e in window.pairs() if e is not None]
    assert audit_entries(entries, now_us=NOW_US, grace_us=GRACE_US).starts == 1


def test_an_unreadable_trail_is_skipped_with_a_problem(tmp_path):
    """A planted symlink for a trail is noted, not followed, and the others are still read."""
    root = tmp_path / "root"
    write_trail(root, cid("d"), ["create"])
    write_trail(root, cid("e"), ["create"])
    trail_e = root / "containers" / cid("e")
    os.rename(trail_e, tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", trail_e)
    with Trails(root) as opened:
        found = [opened.summary(i) for i in opened.ids()]
        problems = list(opened.problems)
    assert [s.container_id for s in found if s is not None] == [cid("d")]
    assert len(problems) == 1
    assert problems[0].startswith(f"skipped {cid('e')[:12]}: ")
