"""``ls``, ``show`` and ``verify`` through the real CLI entry point (in-process)."""

from __future__ import annotations

import errno
import json
import os

import click
import pytest

from cli_helpers import SECOND, T0, cid, invoke, write_trail
from shieldaudit.cli import inspect, output
from shieldaudit.core.timefmt import format_ns

WEB_OLD = cid("a")
WEB_NEW = cid("b")
DB = cid("c")
AMBIG = "ab" + "0" * 62


@pytest.fixture
def root(tmp_path):
    """A root with three containers: 'web' used twice over time, and 'db' still running."""
    root = tmp_path / "root"
    write_trail(
        root,
        WEB_OLD,
        ["create", "init", "start", "died", "remove"],
        name="web",
        image="img:1",
        start_ns=T0,
    )
    write_trail(root, DB, ["create", "start"], name="db", image="pg:16", start_ns=T0 + 20 * SECOND)
    write_trail(
        root,
        WEB_NEW,
        ["create", "start", "died"],
        name="web",
        image="img:2",
        start_ns=T0 + 100 * SECOND,
    )
    return root


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


def test_show_by_reused_name_shows_the_most_recent_container(root):
    """A name given to two containers over time means the newer one."""
    result = invoke(root, "show", "web", "--json")
    entries = [json.loads(line) for line in result.lines]
    assert {e["container_id"] for e in entries} == {WEB_NEW}
    assert [e["seq"] for e in entries] == [1, 2, 3]


def test_show_all_shows_every_container_that_had_the_name_oldest_first(root):
    """--all shows each container the name was given to, oldest first, labelled by short ID."""
    result = invoke(root, "show", "web", "--all")
    assert result.code == 0
    assert len(result.lines) == 10
    assert result.lines[0].split()[1] == WEB_OLD[:12]
    assert result.lines[5] == f"{WEB_OLD[:12]}  state: removed"
    assert result.lines[-2].split()[1] == WEB_NEW[:12]
    assert result.lines[-1] == f"{WEB_NEW[:12]}  state: exited"


def test_show_by_unique_prefix_and_json_lines_are_stored_bytes(root):
    """A unique ID prefix works; --json prints the stored lines exactly."""
    result = invoke(root, "show", DB[:5], "--json")
    stored = (root / "containers" / DB / "audit.jsonl").read_text().splitlines()
    assert result.lines == stored


def test_show_ambiguous_prefix_exits_2_listing_candidates(tmp_path):
    """An ID prefix matching two trails: exit 2, one Error line naming both candidates."""
    root = tmp_path / "root"
    write_trail(root, cid("a"), ["create"], name="one")
    write_trail(root, AMBIG, ["create"], name="two")
    result = invoke(root, "show", "a")
    assert result.code == 2
    assert result.out == ""
    (line,) = result.err.splitlines()
    assert line.startswith("Error: 'a' matches 2 containers")
    assert f"{cid('a')[:12]} (one)" in line
    assert f"{AMBIG[:12]} (two)" in line


def test_show_all_with_an_ambiguous_prefix_shows_every_match(tmp_path):
    """--all turns an ambiguous prefix into 'each of them'."""
    root = tmp_path / "root"
    write_trail(root, cid("a"), ["create"], name="one")
    write_trail(root, AMBIG, ["create"], name="two", start_ns=T0 + SECOND)
    result = invoke(root, "show", "a", "--all", "--json")
    assert [json.loads(x)["container_id"] for x in result.lines] == [cid("a"), AMBIG]


@pytest.mark.parametrize("query", ["nope", "0123", "WEBX", ""])
def test_show_unknown_container_exits_2(root, query):
    """Nothing matching (or an empty query) is exit 2 with one Error line."""
    result = invoke(root, "show", query)
    assert result.code == 2
    assert result.err.startswith("Error: ")
    assert len(result.err.splitlines()) == 1


def test_show_full_id_in_upper_case_is_accepted(root):
    """IDs are matched case-insensitively, as people paste them."""
    assert invoke(root, "show", DB.upper(), "--json").code == 0


def test_show_filters_by_action_source_and_time(root):
    """--action (repeatable), --source, --since and --until narrow the entries."""

    def seqs(*args):
        return [json.loads(x)["seq"] for x in invoke(root, "show", DB[:8], "--json", *args).lines]

    assert seqs("--action", "start") == [2]
    assert seqs("--action", "start", "--action", "create") == [1, 2]
    assert seqs("--source", "hook") == []
    assert seqs("--source", "events") == [1, 2]
    assert seqs("--since", format_ns(T0 + 21 * SECOND)) == [2]
    assert seqs("--until", "2026-11-22T10:00:20.5Z") == [1]
    assert seqs("--since", "2026-11-22T11:00:00+01:00", "--until", "2026-11-22T10:00:20Z") == [1]
    assert seqs("--since", "1h") == []  # written in the past (2026-11-22), relative to now
    assert seqs("--until", "1h") == [1, 2]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--since", "yesterday"], "invalid --since 'yesterday'"),
        (["--until", "10x"], "invalid --until '10x'"),
        (["--since", "1m", "--until", "1h"], "is after --until"),
    ],
)
def test_show_bad_times_exit_2_with_one_error_line(root, args, needle):
    """A time that is neither RFC 3339 nor an age, or an empty window, is a usage error."""
    result = invoke(root, "show", "db", *args)
    assert result.code == 2
    (line,) = result.err.splitlines()
    assert line.startswith("Error: ")
    assert needle in line


def test_show_human_lines_escape_control_characters(tmp_path):
    """A hostile detail cannot send escape sequences to the terminal."""
    root = tmp_path / "root"
    write_trail(root, cid("d"), ["create"], name="evil\x1b[2J")
    result = invoke(root, "show", cid("d")[:4])
    assert "\x1b" not in result.out
    assert "create" in result.out


def test_show_reads_across_segments_and_reports_unreadable_lines(tmp_path):
    """Entries come in seq order across rotations; a garbage line is counted on stderr, skipped."""
    root = tmp_path / "root"
    write_trail(root, cid("e"), [f"a{i}" for i in range(30)], max_segment_bytes=1500)
    trail = root / "containers" / cid("e")
    assert len(list(trail.glob("audit-*.jsonl"))) > 3
    with (trail / "audit-000002.jsonl").open("ab") as f:
        f.write(b"not json\n")
    result = invoke(root, "show", "eee", "--json")
    assert [json.loads(x)["seq"] for x in result.lines] == list(range(1, 31))
    assert "1 line(s) could not be read" in result.err


def test_show_ignores_a_final_line_still_being_written(tmp_path):
    """An incomplete last line of the active segment is not an entry and not an error."""
    root = tmp_path / "root"
    write_trail(root, cid("f"), ["create"])
    with (root / "containers" / cid("f") / "audit.jsonl").open("ab") as f:
        f.write(b'{"seq":2,"ts"')
    result = invoke(root, "show", "fff")
    assert len(result.lines) == 2
    assert result.lines[-1] == "state: created"
    assert result.err == ""


def test_verify_ok_then_tampered_exits_1_with_problem_lines(root):
    """verify: exit 0 and an OK summary; after an edit, exit 1 with container/segment/seq lines."""
    ok = invoke(root, "verify")
    assert ok.code == 0
    assert ok.lines[-1].startswith("OK: 3 container(s), 10 entries")
    path = root / "containers" / WEB_OLD / "audit.jsonl"
    path.write_bytes(path.read_bytes().replace(b'"action":"died"', b'"action":"oops"'))
    bad = invoke(root, "verify")
    assert bad.code == 1
    assert bad.lines[0].startswith(f"{WEB_OLD[:12]} audit.jsonl seq 4: entry modified")
    assert bad.lines[-1].startswith("FAILED: 3 container(s)")
    one = invoke(root, "verify", "db")
    assert one.code == 0
    rows = [json.loads(x) for x in invoke(root, "verify", "--json").lines]
    assert {r["container_id"]: r["ok"] for r in rows} == {WEB_OLD: False, WEB_NEW: True, DB: True}


def test_verify_caps_problem_lines_per_trail_and_counts_the_rest(root):
    """A trail of 1,000 garbage lines prints its first 20 problems, one 'and K more' line, a count.

    The other trails' lines and the summary stay visible; the exit status and
    the summary's total are unchanged; --json keeps the first 20 and the count.
    """
    path = root / "containers" / DB / "audit.jsonl"
    with path.open("ab") as handle:
        handle.write(b"not an entry\n" * 1000)
    other = root / "containers" / WEB_OLD / "audit.jsonl"
    other.write_bytes(other.read_bytes().replace(b'"action":"died"', b'"action":"oops"'))
    result = invoke(root, "verify")
    assert result.code == 1
    db_lines = [line for line in result.lines if line.startswith(DB[:12])]
    assert len(db_lines) == 21
    assert db_lines[0] == (
        f"{DB[:12]} audit.jsonl seq ?: line 3 (after seq 2): not JSON (Expecting value at column 1)"
    )
    assert db_lines[-1] == f"{DB[:12]} … and 980 more problems in this trail"
    assert any(line.startswith(f"{WEB_OLD[:12]} audit.jsonl seq 4: entry") for line in result.lines)
    assert result.lines[-1] == (
        "FAILED: 3 container(s), 10 entries, 1001 problem(s) in 2 container(s)"
    )
    rows = {r["container_id"]: r for r in map(json.loads, invoke(root, "verify", "--json").lines)}
    assert len(rows[DB]["problems"]) == 20
    assert rows[DB]["problem_count"] == 1000
    assert rows[WEB_OLD]["problem_count"] == 1
    assert rows[WEB_NEW]["problem_count"] == 0


def test_verify_unknown_container_exits_2(root):
    """`verify NAME` that matches nothing is a usage error (exit 2)."""
    result = invoke(root, "verify", "ghost")
    assert result.code == 2
    assert result.err.startswith("Error: no trail matches 'ghost'")


def test_a_planted_symlink_is_skipped_by_ls_and_reported_by_verify(root, tmp_path):
    """One symlink in containers/ does not hide the other trails; verify reports it (exit 1)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "containers" / cid("d"))
    listing = invoke(root, "ls", "--json")
    assert listing.code == 0
    assert len(listing.lines) == 3
    assert listing.err.startswith(f"Warning: skipped {cid('d')[:12]}: ")
    check = invoke(root, "verify")
    assert check.code == 1
    assert check.lines[0].startswith(f"{cid('d')[:12]} - seq ?: ")
    assert check.lines[-1].startswith("FAILED: 4 container(s)")


def test_show_no_trunc_prints_exact_times_and_full_details(tmp_path):
    """--no-trunc keeps microseconds and the whole detail; the default cuts both."""
    root = tmp_path / "root"
    write_trail(root, cid("9"), ["create"], image="i" * 200)
    short = invoke(root, "show", "999").out
    full = invoke(root, "show", "999", "--no-trunc").out
    assert format_ns(T0) in full
    assert format_ns(T0) not in short
    assert "i" * 200 in full
    assert "…" in short


def test_colour_is_decided_from_the_terminal_and_no_color(monkeypatch):
    """Colour when stdout is a terminal, unless NO_COLOR is set."""

    class Terminal:
        def isatty(self):
            return True

    monkeypatch.setattr(output.sys, "stdout", Terminal())
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert output.colour_wanted()
    monkeypatch.setenv("NO_COLOR", "1")
    assert not output.colour_wanted()


def test_ls_and_show_colour_when_wanted(root, monkeypatch):
    """With colour on, states and sources are coloured; JSON never is."""
    monkeypatch.setattr(inspect, "colour_wanted", lambda: True)
    assert "\x1b[32mrunning" in invoke(root, "ls").out
    assert "\x1b[" in invoke(root, "show", "db").out
    assert "\x1b[" not in invoke(root, "show", "db", "--json").out


@pytest.mark.parametrize(
    ("raised", "code"),
    [(KeyboardInterrupt(), 130), (BrokenPipeError(errno.EPIPE, "Broken pipe"), 0)],
)
def test_quiet_exit_turns_ctrl_c_and_epipe_into_silent_exits(raised, code):
    """Ctrl-C exits 130 and a closed pipe exits 0, both without a word."""
    with pytest.raises(click.exceptions.Exit) as info, output.quiet_exit():
        raise raised
    assert info.value.exit_code == code


def test_quiet_exit_lets_other_os_errors_through():
    """An I/O error that is not EPIPE is not hidden."""
    with pytest.raises(PermissionError), output.quiet_exit():
        raise PermissionError(errno.EACCES, "denied")


def _run(root, container_id, start_ns, *, hooks=True, name="app"):
    """One container run as Podman 4.3 with runc 1.1 writes it: hook entries, then events."""
    if hooks:
        start_ns = write_trail(
            root,
            container_id,
            ["createRuntime", "poststart"],
            name=name,
            source="hook",
            start_ns=start_ns,
            step_ns=SECOND // 100,
        )
    return write_trail(
        root,
        container_id,
        ["init", "start", "died"],
        name=name,
        start_ns=start_ns,
        step_ns=SECOND // 100,
    )


def test_ls_and_show_report_unaudited_starts(tmp_path):
    """A start without hook entries is UNAUDITED in ls and named by show; hooked starts are ok.

    ``ls --json`` carries ``"unaudited": true`` for it; hook runs without any
    start event (the listener was down) are "events missing", not unaudited.
    """
    root = tmp_path / "root"
    bypassed, audited, hooks_only = cid("1"), cid("2"), cid("3")
    later = _run(root, bypassed, T0, hooks=False)
    _run(root, bypassed, later + SECOND)  # started again normally: not flagged again
    _run(root, audited, T0 + 10 * SECOND)
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
        after = _run(root, container_id, T0, hooks=hooks)
        write_trail(root, container_id, ["exec"] * 600, start_ns=after, step_ns=SECOND // 100)
    rows = {r["container_id"]: r for r in map(json.loads, invoke(root, "ls", "--json").lines)}
    assert rows[long_bypassed]["unaudited"] is True
    assert rows[long_ok]["unaudited"] is False

    cut = cid("6")
    after = _run(root, cut, T0)  # 2 hook entries, init, start, died
    write_trail(root, cut, ["exec"] * 510, start_ns=after, step_ns=SECOND // 1000)
    # The last 512 entries begin at this run's start event: its hooks are outside.
    (row,) = [
        r for r in map(json.loads, invoke(root, "ls", "--json").lines) if r["container_id"] == cut
    ]
    assert row["unaudited"] is False
