"""Seals through the real CLI on real files: each tampering caught by its own line, no false alarm.

Trails are written by the real writer, sealed by ``shieldaudit seal``, then
tampered with the way someone with write access to the root would (editing,
truncating, deleting files); ``shieldaudit verify`` must exit 1 with a line
naming the container's short ID (or the seal), and 0 after a legitimate
``prune`` or retention.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import pytest

from cli_helpers import SECOND, T0, cid, invoke, write_trail

if TYPE_CHECKING:
    from pathlib import Path

A, B = cid("a"), cid("b")


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _seals(root: Path) -> Path:
    return root / "seals" / "seals.jsonl"


@pytest.fixture
def root(tmp_path):
    """Two trails, sealed once, then one more entry each, sealed again."""
    root = tmp_path / "root"
    write_trail(root, A, ["create", "start", "died"], name="alpha")
    write_trail(root, B, ["create", "start"], name="beta")
    assert invoke(root, "seal").code == 0
    write_trail(root, A, ["remove"], start_ns=T0 + 10 * SECOND)
    write_trail(root, B, ["died"], start_ns=T0 + 10 * SECOND)
    assert invoke(root, "seal").code == 0
    return root


def _verify(root: Path, *args: str) -> tuple[int, list[str]]:
    result = invoke(root, "verify", *args)
    return result.code, result.lines[:-1]


def test_untouched_sealed_trails_verify_and_seal_prints_one_summary(root):
    """Sealed, untouched trails verify (exit 0); a seal prints one summary line and exits 0."""
    result = invoke(root, "seal")
    assert result.code == 0
    assert len(result.lines) == 1
    assert result.lines[0].startswith("seal 3 at ")
    assert "2 trail(s), 0 changed, 0 pruned" in result.lines[0]
    verified = invoke(root, "verify")
    assert verified.code == 0, verified.out
    assert (
        verified.lines[-1]
        == "OK: 2 container(s), 7 entries, 3 seal(s), 0 problem(s) in 0 container(s)"
    )


def test_truncated_tail_is_caught(root):
    """Deleting a trail's newest entries leaves a valid chain, but not the sealed head."""
    active = root / "containers" / A / "audit.jsonl"
    active.write_bytes(b"".join(_lines(active)[:2]))
    code, lines = _verify(root)
    assert code == 1
    assert lines == [
        f"{A[:12]} seals: tail truncated: the trail ends at seq 2 but seal 2 recorded seq 4"
    ]


def test_trail_deleted_without_tombstone_is_caught(root):
    """A whole trail directory removed by hand is named, with the seq it was sealed at."""
    for path in (root / "containers" / B).iterdir():
        path.unlink()
    (root / "containers" / B).rmdir()
    code, lines = _verify(root)
    assert code == 1
    assert lines == [f"{B[:12]} seals: trail removed without a tombstone (seal 2 recorded seq 3)"]


def test_rewritten_history_at_a_sealed_seq_is_caught(root):
    """Re-creating a trail with recomputed plain hashes passes the chain, not the seals."""
    directory = root / "containers" / A
    for path in directory.iterdir():
        path.unlink()
    write_trail(root, A, ["create", "start", "died", "remove"], name="forged")
    code, lines = _verify(root)
    assert code == 1
    assert any(
        line.startswith(f"{A[:12]} audit.jsonl seq 3: differs from seal 1") for line in lines
    )
    assert any("seq 4: differs from seal 2" in line for line in lines)


def test_seal_missing_from_the_middle_is_caught(root):
    """Removing a seal line breaks the seals' numbering."""
    invoke(root, "seal")
    lines = _lines(_seals(root))
    _seals(root).write_bytes(lines[0] + lines[2])
    code, out = _verify(root)
    assert code == 1
    assert "seal 3: seal 2 missing (removed from the seals)" in out


def test_edited_seal_is_caught(root):
    """Changing a recorded head in a seal (to hide a truncation) breaks its mac."""
    lines = _lines(_seals(root))
    record = json.loads(lines[1])
    record["heads"][A][0] = 2
    lines[1] = json.dumps(record, separators=(",", ":")).encode() + b"\n"
    _seals(root).write_bytes(b"".join(lines))
    code, out = _verify(root)
    assert code == 1
    assert "seal 2: modified: its mac does not match its content" in out


def test_seals_out_of_order_are_caught(root):
    """Swapping two seals is reported as an out-of-order seal."""
    lines = _lines(_seals(root))
    _seals(root).write_bytes(lines[1] + lines[0])
    code, out = _verify(root)
    assert code == 1
    assert any("out of order" in line for line in out)


def test_missing_sealed_segment_is_caught_and_retention_is_not(tmp_path):
    """Retention's removals are recorded and never alarm; a segment deleted by hand does."""
    root = tmp_path / "root"
    settings = {"max_segment_bytes": 300, "keep_segments": 2}
    write_trail(root, A, ["create", "start"], **settings)
    assert invoke(root, "seal").code == 0
    write_trail(root, A, ["exec"] * 8, start_ns=T0 + 10 * SECOND, **settings)
    numbers = sorted(p.name for p in (root / "containers" / A).glob("audit-*.jsonl"))
    assert len(numbers) == 2
    assert numbers[0] != "audit-000001.jsonl"  # retention removed the oldest
    assert _verify(root, "--verification-key", "/nonexistent")[0] == 2
    result = invoke(root, "verify", env={"SHIELDAUDIT_KEEP_SEGMENTS": "2"})
    assert result.code == 0, result.out
    assert invoke(root, "seal").code == 0
    write_trail(root, A, ["exec"] * 3, start_ns=T0 + 30 * SECOND, **settings)
    assert invoke(root, "seal").code == 0
    result = invoke(root, "verify", env={"SHIELDAUDIT_KEEP_SEGMENTS": "2"})
    assert result.code == 0, result.out
    oldest = min((root / "containers" / A).glob("audit-*.jsonl"))
    oldest.unlink()
    result = invoke(root, "verify", env={"SHIELDAUDIT_KEEP_SEGMENTS": "2"})
    assert result.code == 1
    assert f"{A[:12]} seals: sealed segment {oldest.name} missing (not removed by retention)" in (
        result.lines
    )


def test_prune_leaves_a_tombstone_and_no_alarm(root):
    """A trail removed by prune is not a problem, before and after the next seal."""
    old = T0 // SECOND
    for path in [*(root / "containers" / A).iterdir(), root / "containers" / A]:
        os.utime(path, (old, old))
    pruned = invoke(root, "prune", "--older-than", "1d")
    assert pruned.code == 0, pruned.out + pruned.err
    assert f"removed {A[:12]}" in pruned.out
    assert _verify(root) == (0, [])
    sealed = invoke(root, "seal")
    assert sealed.code == 0
    assert "1 pruned" in sealed.out
    assert _verify(root) == (0, [])
    record = json.loads(_lines(_seals(root))[-1])
    assert list(record["tombstones"]) == [A]


def test_tombstone_without_deletion_is_harmless(root):
    """A prune killed between its tombstone and the deletion leaves a trail that still verifies."""
    state = root / "state" / "tombstones.jsonl"
    state.write_text(json.dumps({"container_id": A, "seq": 4, "mac": "x", "ts": ""}) + "\n")
    assert _verify(root) == (0, [])
    assert invoke(root, "seal").code == 0
    assert _verify(root) == (0, [])
    write_trail(root, A, ["exec"], start_ns=T0 + 20 * SECOND)
    assert invoke(root, "seal").code == 0
    assert _verify(root) == (0, [])


def test_seal_keeps_evidence_and_exits_1(root):
    """A seal after a truncation reports it, exits 1, and does not record the shorter head."""
    active = root / "containers" / B / "audit.jsonl"
    active.write_bytes(_lines(active)[0])
    result = invoke(root, "seal")
    assert result.code == 1
    assert f"{B[:12]} seals: tail truncated" in result.out
    assert "tampering found" in result.err
    code, lines = _verify(root)
    assert code == 1
    assert lines == [
        f"{B[:12]} seals: tail truncated: the trail ends at seq 1 but seal 2 recorded seq 3"
    ]


def test_an_emptied_trail_is_truncated_and_an_unsafe_one_is_not_called_removed(root):
    """A trail emptied to nothing is a truncation to seq 0; an unreadable one is only unsafe."""
    (root / "containers" / A / "audit.jsonl").write_bytes(b"")
    (root / "containers" / B).chmod(0o770)
    code, lines = _verify(root)
    assert code == 1
    assert f"{A[:12]} seals: tail truncated: the trail ends at seq 0 but seal 2 recorded seq 4" in (
        lines
    )
    assert not any("removed without a tombstone" in line for line in lines)
    assert any(
        line.startswith(f"{B[:12]} - seq ?: ") and "writable by group" in line for line in lines
    )
