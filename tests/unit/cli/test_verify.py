"""``shieldaudit verify`` through the real CLI entry point (in-process)."""

from __future__ import annotations

import json
import os

import pytest

from cli_helpers import DB, WEB_NEW, WEB_OLD, cid, invoke, three_containers


@pytest.fixture
def root(tmp_path):
    """A root with three containers: 'web' used twice over time, and 'db' still running."""
    return three_containers(tmp_path / "root")


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


@pytest.mark.parametrize("given", ["", "  "])
def test_an_empty_verification_key_is_a_usage_error(root, given):
    """`--verification-key ''` was ignored (verify ran as without it): exit 2, one line."""
    result = invoke(root, "verify", "--verification-key", given)
    assert result.code == 2
    assert result.out == ""
    assert result.err.splitlines() == [
        (
            "Error: --verification-key is empty: give the verification key file "
            "that 'shieldaudit keys init' wrote"
        )
    ]
