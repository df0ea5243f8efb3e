"""The sidecar as a real process: endpoints over HTTP, SIGTERM, kill -9, --emit.

Counts are checked exactly: entries and rotations written before start, while
running, and across a ``kill -9`` with rotations while it was down add up to
what was written, never more, never less.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
from typing import TYPE_CHECKING

import pytest

from shieldaudit.core.settings import StoreSettings
from shieldaudit.hook import hooksd
from shieldaudit.sidecar.watch.checkpoint import load
from shieldaudit.store.writer import TrailWriter
from sidecar_helpers import DEADLINE_S, SidecarProc

if TYPE_CHECKING:
    from pathlib import Path

IDS = [f"{n:064x}" for n in range(1, 4)]


def write(root: Path, cid: str, count: int) -> None:
    settings = StoreSettings(root=root, max_segment_bytes=1500, keep_segments=0, fsync="never")
    with TrailWriter(settings) as writer:
        for i in range(count):
            writer.append(cid, {"source": "hook", "action": "poststop", "detail": f"{i}"})


def sealed_count(root: Path) -> int:
    return sum(
        1 for cid in IDS for p in (root / "containers" / cid).glob("audit-*.jsonl") if p.is_file()
    )


@pytest.fixture
def sidecars():
    started: list[SidecarProc] = []

    def start(root: Path, *extra: str) -> SidecarProc:
        proc = SidecarProc(root, *extra)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


def events(values: dict[str, float]) -> float:
    return values.get("shieldaudit_events_total", -1)


def test_endpoints_history_and_clean_sigterm(tmp_path, sidecars):
    """History and live entries are counted; /healthz and /readyz answer; SIGTERM exits 0."""
    root = tmp_path / "root"
    write(root, IDS[0], 12)
    sidecar = sidecars(root)
    values = sidecar.wait_ready()
    assert events(values) == 12
    assert values["shieldaudit_rotations_total"] == sealed_count(root) > 0
    assert values["shieldaudit_watched_containers"] == 1
    assert sidecar.get("/healthz") == (200, "ok\n")
    assert sidecar.get("/nope")[0] == 404

    write(root, IDS[1], 5)
    values = sidecar.wait_for(lambda v: events(v) == 17, "live entries")
    assert values["shieldaudit_watched_containers"] == 2

    assert sidecar.terminate() == 0
    loaded = load(root / "state" / "sidecar-checkpoint")
    assert loaded is not None
    assert loaded.marks[IDS[1]].last_seq == 5


def test_exact_counts_across_kill9_with_rotations_while_down(tmp_path, sidecars):
    """Before start, while running, across kill -9 and rotations while down: exact totals."""
    root = tmp_path / "root"
    for cid in IDS:
        write(root, cid, 10)
    first = sidecars(root)
    first.wait_for(lambda v: events(v) == 30, "history")
    for cid in IDS:
        write(root, cid, 7)
    before_kill = first.wait_for(lambda v: events(v) == 51, "live entries")
    sealed_before_kill = sealed_count(root)
    assert before_kill["shieldaudit_rotations_total"] <= sealed_before_kill
    first.kill9()

    for cid in IDS:
        write(root, cid, 15)  # several rotations per trail while nothing runs
    for cid in IDS:
        write(root, cid, 1)  # a sentinel: once counted, everything before it is
    second = sidecars(root)
    second.wait_for(lambda v: events(v) >= 48, "catch-up")
    write(root, IDS[0], 1)  # published only after everything before it: a final fence
    after = second.wait_for(lambda v: events(v) >= 49, "the fence entry")

    assert events(after) == 49
    total_rotations = before_kill["shieldaudit_rotations_total"]
    total_rotations += after["shieldaudit_rotations_total"]
    assert total_rotations == sealed_count(root)
    assert after["shieldaudit_integrity_failures_total"] == 0
    assert after["shieldaudit_parse_errors_total"] == 0
    assert second.terminate() == 0


def test_emit_writes_watch_event_lines(tmp_path, sidecars):
    """--emit prints one flushed WatchEvent JSON line per entry on stdout, as it is read."""
    root = tmp_path / "root"
    write(root, IDS[0], 2)
    sidecar = sidecars(root, "--emit")
    lines: list[dict[str, object]] = []

    def read() -> None:
        assert sidecar.proc.stdout is not None
        lines.extend(json.loads(raw) for raw in sidecar.proc.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sidecar.wait_for(lambda v: events(v) == 2, "history")
    write(root, IDS[0], 1)
    # Lines are flushed one by one, without waiting for exit.
    sidecar.wait_until(lambda: len(lines) >= 3, "the third --emit line")

    assert [line["seq"] for line in lines] == [1, 2, 3]
    assert list(lines[0]) == [
        "ts",
        "source",
        "action",
        "container",
        "container_id",
        "seq",
        "dest",
        "detail",
    ]
    assert sidecar.terminate() == 0
    with contextlib.suppress(RuntimeError):
        reader.join(timeout=10)


def test_hook_failures_counted_once(tmp_path, sidecars):
    """Failures the real hook records are counted, live and not again after a restart."""
    root = tmp_path / "root"
    write(root, IDS[0], 1)
    hook = [hooksd.native_hook_path(), "poststop"]
    env = {"SHIELDAUDIT_ROOT": str(root), "SHIELDAUDIT_FSYNC": "never"}

    def fail_hook() -> None:
        subprocess.run(hook, input=b"", env=env, capture_output=True, check=True, timeout=60)

    fail_hook()
    first = sidecars(root)
    first.wait_for(lambda v: v.get("shieldaudit_hook_errors_total") == 1, "history")
    fail_hook()
    first.wait_for(lambda v: v.get("shieldaudit_hook_errors_total") == 2, "a live failure")
    assert first.terminate() == 0

    fail_hook()
    second = sidecars(root)
    values = second.wait_ready()  # history counted: one new failure, the old two not again
    assert values["shieldaudit_hook_errors_total"] == 1
    assert second.terminate() == 0


def fast_trails(root: Path, containers: int, per_container: int) -> None:
    """Write trails in the real chain format directly (no locks, no fsync), for volume."""
    from shieldaudit.store import chain  # noqa: PLC0415

    for n in range(containers):
        cid = f"{n + 100:064x}"
        directory = root / "containers" / cid
        directory.mkdir(parents=True, mode=0o700)
        prev = chain.GENESIS
        lines = []
        for seq in range(1, per_container + 1):
            body = chain.build_body(
                {"seq": seq, "source": "hook", "action": "poststart", "container_id": cid},
                prev,
                None,
            )
            line, prev = chain.seal(body, None)
            lines.append(line)
        (directory / "audit.jsonl").write_bytes(b"".join(lines))


def test_sigterm_during_catch_up_then_resume_exactly(tmp_path, sidecars):
    """SIGTERM in the middle of a backlog exits 0 promptly; the next run counts the rest."""
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    fast_trails(root, 10, 15_000)
    first = sidecars(root)
    partial = first.wait_for(lambda v: events(v) > 0, "catch-up under way")
    assert first.terminate() == 0
    assert events(partial) <= 150_000
    loaded = load(root / "state" / "sidecar-checkpoint")
    assert loaded is not None
    done = sum(mark.last_seq for mark in loaded.marks.values())

    second = sidecars(root)
    second.wait_for(lambda v: events(v) >= 150_000 - done, "the rest")
    write(root, IDS[0], 1)  # a fence: published only after everything before it
    after = second.wait_for(lambda v: events(v) >= 150_001 - done, "the fence")

    assert events(after) == 150_001 - done
    assert second.terminate() == 0


def test_second_sidecar_on_the_same_root_refused_first_keeps_counting(tmp_path, sidecars):
    """A second sidecar on a root exits 1 with one Error line naming the root and the first PID."""
    root = tmp_path / "root"
    write(root, IDS[0], 3)
    first = sidecars(root)
    first.wait_for(lambda v: events(v) == 3, "history")

    second = sidecars(root)
    assert second.proc.wait(timeout=DEADLINE_S) == 1
    assert second.proc.stderr is not None
    err = second.proc.stderr.read().decode()
    assert err.count("\n") == 1, err
    assert err.startswith(f"Error: another shieldaudit sidecar is running on {root} ")
    assert f"(pid {first.proc.pid}; " in err
    assert second.get("/healthz") == (0, "")  # it never served

    write(root, IDS[1], 2)
    first.wait_for(lambda v: events(v) == 5, "entries after the refusal")
    assert first.terminate() == 0

    third = sidecars(root)  # the lock went with the first process
    third.wait_ready()
    assert events(third.metrics()) == 0  # the checkpoint covers everything: nothing twice
    assert third.terminate() == 0
