"""``shieldaudit ls`` through the real CLI entry point (in-process)."""

from __future__ import annotations

import json
import os

import pytest

from cli_helpers import (
    DB,
    SECOND,
    T0,
    WEB_NEW,
    WEB_OLD,
    cid,
    invoke,
    podman_run,
    three_containers,
    write_trail,
)
from shieldaudit.cli import ls
from shieldaudit.core.timefmt import format_ns


@pytest.fixture
def root(tmp_path):
    """A root with three containers: 'web' used twice over time, and 'db' still running."""
    return three_containers(tmp_path / "root")


def test_ls_table_has_one_aligned_row_per_container_newest_first(root):
    """`ls` prints a header and one aligned row per container, most recent activity first."""
    result = invoke(root, "ls")
    assert result.code == 0
    header, *rows = result.lines
    assert header.split()[:3] == ["CONTAINER", "ID", "NAME"]
    assert [r.split()[0] for r in rows] == [WEB_NEW[:12], DB[:12], WEB_OLD[:12]]
    state_col = header.index("STATE")
    assert [r[state_col:].split()[0] for r in rows] == ["exited", "running", "removed"]
    assert all("tail ok" in r for r in rows)
    assert "\x1b[" not in result.out  # not a terminal: no colour


def test_ls_json_gives_every_field_per_line(root):
    """`ls --json` prints one object per container with state, counts, times and the tail check."""
    result = invoke(root, "ls", "--json")
    rows = [json.loads(line) for line in result.lines]
    by_id = {r["container_id"]: r for r in rows}
    old = by_id[WEB_OLD]
    assert old["name"] == "web"
    assert old["image"] == "img:1"
    assert old["entries"] == 5
    assert old["state"] == "removed"
    assert old["last_action"] == "remove"
    assert old["first_ts"] == format_ns(T0)
    assert old["last_ts"] == format_ns(T0 + 4 * SECOND)
    assert old["tail_ok"] is True
    assert by_id[DB]["state"] == "running"


def test_ls_no_trunc_shows_full_ids_and_exact_times(root):
    """--no-trunc gives 64-hex IDs and RFC 3339 times instead of '… ago'."""
    result = invoke(root, "ls", "--no-trunc")
    assert WEB_OLD in result.out
    assert format_ns(T0) in result.out
    assert "ago" not in result.out


def test_ls_human_times_are_relative(root):
    """Without --no-trunc, times read like podman ps ('… ago')."""
    assert "ago" in invoke(root, "ls").out


def test_ls_flags_a_broken_tail_and_verify_column_reports_full_check(root):
    """A tampered last entry shows BROKEN cheaply; ls --verify runs the full check (FAILED)."""
    path = root / "containers" / DB / "audit.jsonl"
    data = path.read_bytes().replace(b'"action":"start"', b'"action":"stop!"')
    path.write_bytes(data)
    assert "BROKEN" in invoke(root, "ls").out
    full = invoke(root, "ls", "--verify")
    assert "VERIFY" in full.lines[0]
    assert "FAILED" in full.out
    rows = [json.loads(x) for x in invoke(root, "ls", "--json", "--verify").lines]
    assert {r["container_id"]: r["verified"] for r in rows}[DB] is False


def test_ls_on_a_root_with_nothing_recorded_prints_only_the_header(tmp_path):
    """A root that does not exist yet is an empty listing, not an error."""
    result = invoke(tmp_path / "none", "ls")
    assert result.code == 0
    assert len(result.lines) == 1
    assert invoke(tmp_path / "none", "ls", "--json").out == ""


def test_ls_refuses_a_world_writable_root(tmp_path):
    """An unsafe root is one Error line and exit 1, not a traceback."""
    root = tmp_path / "root"
    root.mkdir()
    os.chmod(root, 0o777)  # noqa: S103 -- the point of the test
    result = invoke(root, "ls")
    assert result.code == 1
    assert result.err.startswith("Error: trail root")
    assert len(result.err.splitlines()) == 1


def test_ls_colours_when_wanted(root, monkeypatch):
    """With colour on, ls colours the states."""
    monkeypatch.setattr(ls, "colour_wanted", lambda: True)
    assert "\x1b[32mrunning" in invoke(root, "ls").out


def test_ls_and_show_report_unaudited_starts(tmp_path):
    """A start without hook entries is UNAUDITED in ls and named by show; hooked starts are ok.

    ``ls --json`` carries ``"unaudited": true`` for it; hook runs without any
    start event (the listener was down) are "events missing", not unaudited.
    """
    root = tmp_path / "root"
    bypassed, audited, hooks_only = cid("1"), cid("2"), cid("3")
    later = podman_run(root, bypassed, T0, hooks=False)
    podman_run(root, bypassed, later + SECOND)  # started again normally: not flagged again
    podman_run(root, audited, T0 + 10 * SECOND)
    write_trail(root, hooks_only, ["createRuntime", "poststart"], source="hook", start_ns=T0)

    rows = {r["container_id"]: r for r in map(json.loads, invoke(root, "ls", "--json").lines)}
    assert rows[bypassed]["unaudited"] is True
    assert rows[bypassed]["unaudited_starts"] == [2]
    assert (rows[audited]["unaudited"], rows[audited]["events_missing"]) == (False, 0)
    assert (rows[hooks_only]["unaudited"], rows[hooks_only]["events_missing"]) == (False, 1)

    header, *lines = invoke(root, "ls").lines
    column = header.index("AUDIT")
    cells = {line.split()[0]: line[column:].split("  ")[0].strip() for line in lines}
    assert cells == {
        bypassed[:12]: "UNAUDITED",
        audited[:12]: "ok",
        hooks_only[:12]: "events missing",
    }

    shown = invoke(root, "show", bypassed[:12])
    assert shown.code == 0
    assert "UNAUDITED" not in shown.out  # stdout stays the entries
    (note,) = [line for line in shown.err.splitlines() if line.startswith("UNAUDITED")]
    assert "(seq 2)" in note
    assert "createRuntime, poststart" in note
    assert "UNAUDITED" not in invoke(root, "show", audited[:12]).err


def test_ls_judges_the_first_and_last_entries_of_a_long_trail(tmp_path):
    """Past ls's window a bypassed first start is still found; a window cutting a run is no alarm.

    A run whose hook entries fall just before the last 512 entries and whose
    start event falls inside them is not judged unaudited.
    """
    root = tmp_path / "root"
    long_bypassed, long_ok = cid("4"), cid("5")
    for container_id, hooks in ((long_bypassed, False), (long_ok, True)):
        after = podman_run(root, container_id, T0, hooks=hooks)
        write_trail(root, container_id, ["exec"] * 600, start_ns=after, step_ns=SECOND // 100)
    rows = {r["container_id"]: r for r in map(json.loads, invoke(root, "ls", "--json").lines)}
    assert rows[long_bypassed]["unaudited"] is True
    assert rows[long_ok]["unaudited"] is False

    cut = cid("6")
    after = podman_run(root, cut, T0)  # 2 hook entries, init, start, died
    write_trail(root, cut, ["exec"] * 510, start_ns=after, step_ns=SECOND // 1000)
    # The last 512 entries begin at this run's start event: its hooks are outside.
    (row,) = [
        r for r in map(json.loads, invoke(root, "ls", "--json").lines) if r["container_id"] == cut
    ]
    assert row["unaudited"] is False
