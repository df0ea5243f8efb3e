"""``shieldaudit show`` through the real CLI entry point (in-process)."""

from __future__ import annotations

import json

import pytest

from cli_helpers import DB, SECOND, T0, WEB_NEW, WEB_OLD, cid, invoke, three_containers, write_trail
from shieldaudit.cli import show
from shieldaudit.core.timefmt import format_ns

AMBIG = "ab" + "0" * 62


@pytest.fixture
def root(tmp_path):
    """A root with three containers: 'web' used twice over time, and 'db' still running."""
    return three_containers(tmp_path / "root")


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


def test_show_colours_when_wanted(root, monkeypatch):
    """With colour on, show colours states and sources; JSON never is."""
    monkeypatch.setattr(show, "colour_wanted", lambda: True)
    assert "\x1b[" in invoke(root, "show", "db").out
    assert "\x1b[" not in invoke(root, "show", "db", "--json").out
