"""The sidecar as a real process: endpoints over HTTP, SIGTERM, kill -9, --emit.

Counts are checked exactly: entries and rotations written before start, while
running, and across a ``kill -9`` with rotations while it was down add up to
what was written, never more, never less.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shieldaudit import hooksd
from shieldaudit.settings import StoreSettings
from shieldaudit.store.writer import TrailWriter
from shieldaudit.watch.checkpoint import load

if TYPE_CHECKING:
    from pathlib import Path

DEADLINE_S = 60.0
IDS = [f"{n:064x}" for n in range(1, 4)]
RUN_CLI = "import sys; from shieldaudit.cli import main; sys.argv[0] = 'shieldaudit'; main()"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write(root: Path, cid: str, count: int) -> None:
    settings = StoreSettings(root=root, max_segment_bytes=1500, keep_segments=0, fsync="never")
    with TrailWriter(settings) as writer:
        for i in range(count):
            writer.append(cid, {"source": "hook", "action": "poststop", "detail": f"{i}"})


def sealed_count(root: Path) -> int:
    return sum(
        1 for cid in IDS for p in (root / "containers" / cid).glob("audit-*.jsonl") if p.is_file()
    )


class SidecarProc:
    """A ``shieldaudit sidecar`` subprocess (``--no-listen`` unless asked) on a free port."""

    def __init__(
        self, root: Path, *extra: str, listen: bool = False, env: dict[str, str] | None = None
    ) -> None:
        """Start it; stdout is piped (for --emit), stderr kept for failure messages."""
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                RUN_CLI,
                "--root",
                str(root),
                "sidecar",
                *([] if listen else ["--no-listen"]),
                "--metrics-port",
                str(self.port),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "SHIELDAUDIT_CONFIG": os.devnull, **(env or {})},
        )

    def get(self, path: str) -> tuple[int, str]:
        """GET a path; return (status, body), status 0 when nothing answers."""
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def metrics(self) -> dict[str, float]:
        """Scrape /metrics into {name: value} (events summed over labels)."""
        status, text = self.get("/metrics")
        if status != 200:
            return {}
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
        return values

    def wait_for(self, condition, what: str) -> dict[str, float]:
        """Poll the metrics until ``condition(metrics)`` holds."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            assert self.proc.poll() is None, self.proc.stderr.read().decode()  # type: ignore[union-attr]
            values = self.metrics()
            if values and condition(values):
                return values
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; last metrics: {values}")
            time.sleep(0.05)

    def wait_ready(self) -> dict[str, float]:
        """Poll /readyz until 200 (the initial scan is published); return the metrics then.

        /metrics answers (every series at 0) before the initial scan ends, so
        only readiness says that the history has been counted.
        """
        deadline = time.monotonic() + DEADLINE_S
        while True:
            assert self.proc.poll() is None, self.proc.stderr.read().decode()  # type: ignore[union-attr]
            status, body = self.get("/readyz")
            if status == 200:
                return self.metrics()
            if time.monotonic() > deadline:
                pytest.fail(f"/readyz never turned 200; last answer: {status} {body!r}")
            time.sleep(0.05)

    def terminate(self) -> int:
        """SIGTERM and wait; return the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def kill9(self) -> None:
        """SIGKILL: no chance to save anything."""
        self.proc.kill()
        self.proc.wait(timeout=30)

    def close(self) -> None:
        """Make sure the process is gone."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


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
    deadline = time.monotonic() + DEADLINE_S
    while len(lines) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # lines are flushed one by one, without waiting for exit

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
    third.wait_for(lambda _v: third.get("/readyz")[0] == 200, "the next sidecar")
    assert events(third.metrics()) == 0  # the checkpoint covers everything: nothing twice
    assert third.terminate() == 0
