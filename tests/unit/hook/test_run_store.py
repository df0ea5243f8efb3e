"""The store pieces the hook's reference path uses: ``append_unless`` and the failure log.

``TrailWriter.append_unless`` is how the double-poststop rule is kept: its
check sees the trail's entries newest first, under the lock, across sealed
segments. ``hook.record_error`` writes ``state/hook-errors.jsonl``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from shieldaudit.core import settings
from shieldaudit.hook import run as hook
from shieldaudit.store import chain
from shieldaudit.store.verify import verify_container
from shieldaudit.store.writer import TrailWriter

if TYPE_CHECKING:
    from pathlib import Path

CID = "c" * 64


def store(root: Path, **overrides) -> settings.StoreSettings:
    values = {"fsync": "never"} | overrides
    return settings.StoreSettings(root, **values)


def entry(source: str, action: str) -> dict[str, object]:
    return {"source": source, "action": action, "container": "web"}


def test_skip_sees_entries_newest_first(tmp_path):
    """The check gets the entries newest first; True writes nothing and returns None."""
    root = tmp_path / "root"
    seen: list[list[str]] = []

    def record(newest_first):
        seen.append([e["action"] for e in newest_first])
        return len(seen) == 1

    with TrailWriter(store(root)) as writer:
        for action in ("createRuntime", "poststart", "poststop"):
            writer.append(CID, entry("hook", action))
        skipped = writer.append_unless(CID, entry("hook", "poststop"), record)
        written = writer.append_unless(CID, entry("hook", "poststop"), record)

    assert skipped is None
    assert written is not None
    assert written.seq == 4
    assert seen[0] == ["poststop", "poststart", "createRuntime"]
    assert verify_container(root, CID, chain.NO_KEYS).ok


def test_skip_reads_on_into_sealed_segments(tmp_path):
    """After a rotation the check still reaches the entries of the sealed segments."""
    root = tmp_path / "root"
    with TrailWriter(store(root, max_segment_bytes=256)) as writer:
        writer.append(CID, entry("hook", "poststop"))
        assert (root / "containers" / CID / "audit-000001.jsonl").exists()
        writer.append(CID, entry("events", "died"))
        result = writer.append_unless(
            CID,
            entry("hook", "poststop"),
            hook.repeated_poststop("poststop"),
        )

    assert result is None
    assert verify_container(root, CID, chain.NO_KEYS).ok


def test_skip_leaves_a_torn_tail_for_the_next_writer(tmp_path):
    """A skipped append touches nothing: the torn tail is set aside by the next real append."""
    root = tmp_path / "root"
    with TrailWriter(store(root)) as writer:
        writer.append(CID, entry("hook", "poststop"))
    active = root / "containers" / CID / "audit.jsonl"
    with active.open("ab") as f:
        f.write(b'{"seq":2,"ts"')
    before = active.read_bytes()

    with TrailWriter(store(root)) as writer:
        skipped = writer.append_unless(CID, entry("hook", "poststop"), lambda _e: True)
        assert active.read_bytes() == before
        written = writer.append(CID, entry("hook", "createRuntime"))

    assert skipped is None
    assert (written.seq, written.torn_bytes) == (2, 13)


def test_record_error_appends_one_json_line(tmp_path):
    """record_error() appends {ts, stage, container_id, error} lines under state/."""
    root = tmp_path / "root"

    assert hook.record_error(str(root), "poststop", CID, "boom \u2603", sync=False) is None
    assert hook.record_error(str(root), "x", "", "again") is None

    lines = (root / "state" / "hook-errors.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert list(first) == ["ts", "stage", "container_id", "error"]
    assert (first["stage"], first["container_id"], first["error"]) == (
        "poststop",
        CID,
        "boom \u2603",
    )
    assert lines[0].isascii()
    assert len(lines) == 2


@pytest.mark.parametrize("problem", ["group-writable", "file", "symlinked-log", "state-file"])
def test_record_error_refuses_unsafe_places(tmp_path, problem):
    """Nothing is recorded under an unsafe root or through a symlink; the reason is returned."""
    root = tmp_path / "root"
    target = tmp_path / "target"
    target.write_text("")
    if problem == "group-writable":
        root.mkdir()
        root.chmod(0o770)
    elif problem == "file":
        root.write_text("x")
    elif problem == "state-file":
        root.mkdir()
        (root / "state").write_text("")
    else:
        (root / "state").mkdir(parents=True)
        (root / "state" / "hook-errors.jsonl").symlink_to(target)

    reason = hook.record_error(str(root), "poststop", CID, "boom")

    assert reason
    assert target.read_text() == ""
