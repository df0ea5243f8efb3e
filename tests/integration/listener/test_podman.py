"""``shieldaudit listen`` against a real ``podman system service`` on a temporary socket.

Each test runs the listener as a subprocess (as in production), drives
containers with the Podman CLI (which needs no service: it appends to the
shared events log the service reads), and counts the resulting entries. A
"sentinel" container run last marks the end of a replay: the stream delivers
events in log order, so once the sentinel's ``remove`` is on disk every earlier
event has been handled, and any duplicate would already be there.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

from shieldaudit.store import chain
from shieldaudit.store.verify import verify_container

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.podman

DEADLINE_S = 60.0
LIFECYCLE = ("create", "init", "start", "died", "remove")
SHIELDAUDIT = (sys.executable, "-c", "from shieldaudit.cli import main; main()")


class ListenProcess:
    """`shieldaudit --root ROOT listen --url URL` as a subprocess, stderr kept in a file."""

    def __init__(self, root: Path, url: str, env: dict[str, str], log: Path) -> None:
        """Prepare (not start) the listener."""
        self.root = root
        self.url = url
        self.env = {**env, "SHIELDAUDIT_FSYNC": "always"}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait until its cursor exists."""
        cursor = self.root / "state" / "listener-cursor.json"
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [*SHIELDAUDIT, "--root", str(self.root), "listen", "--url", self.url],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        # Once the cursor exists, every later event is replayed even if the
        # first connection is still being made.
        wait_until(cursor.exists, "the listener saved its first cursor")

    def signal(self, sig: int) -> int:
        """Send ``sig`` and return the exit status."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        self.proc = None
        return code

    def stop(self) -> None:
        """SIGTERM it if it runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGTERM)

    def log_text(self) -> str:
        """Return what it logged."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def listen(podman_service, tmp_path):
    """A started listener writing into tmp_path/root; stopped with SIGTERM at the end."""
    root = tmp_path / "root"
    proc = ListenProcess(root, podman_service.url, podman_service.podman.env, tmp_path / "l.log")
    proc.start()
    yield proc
    proc.stop()


def wait_until(condition, what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting until {what}")
        time.sleep(0.05)


def trails(root: Path) -> dict[str, list[dict]]:
    """Every trail's entries (all segments), by container ID."""
    found: dict[str, list[dict]] = {}
    base = root / "containers"
    if not base.exists():
        return found
    for directory in base.iterdir():
        lines: list[bytes] = []
        for path in [*sorted(directory.glob("audit-*.jsonl")), directory / "audit.jsonl"]:
            if path.exists():
                lines.extend(path.read_bytes().splitlines())
        found[directory.name] = [json.loads(line) for line in lines if line.endswith(b"}")]
    return found


def events_by_name(root: Path) -> dict[str, list[dict]]:
    """Events entries grouped by container name."""
    grouped: dict[str, list[dict]] = {}
    for entries in trails(root).values():
        for entry in entries:
            if entry["source"] == "events":
                grouped.setdefault(entry["container"], []).append(entry)
    return grouped


def actions(root: Path, name: str) -> Counter[str]:
    return Counter(e["action"] for e in events_by_name(root).get(name, []))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def run_and_remove(podman_env, name: str, *command: str) -> None:
    """`podman run --name NAME image COMMAND` (any exit status), then `podman rm`."""
    podman_env.run("run", "--name", name, podman_env.image, *(command or ("true",)), check=False)
    podman_env.run("rm", name)


def wait_removed(root: Path, *names: str) -> None:
    for name in names:
        wait_until(lambda n=name: actions(root, n)["remove"] >= 1, f"{name}'s remove is written")


def assert_exactly_once(root: Path, *names: str) -> None:
    """Every container's events are all distinct, and its lifecycle is complete."""
    for name in names:
        counted = actions(root, name)
        assert all(counted[a] == 1 for a in LIFECYCLE), (name, counted)
        assert max(counted.values()) == 1, (name, counted)


def test_lifecycle_recorded_once_with_name_image_and_exit_code(podman_env, listen):
    """A named container gives create, init, start, died, remove once each, fully described."""
    name = unique("lst-life")

    run_and_remove(podman_env, name, "sh", "-c", "exit 3")
    wait_removed(listen.root, name)

    entries = events_by_name(listen.root)[name]
    assert_exactly_once(listen.root, name)
    assert {e["image"] for e in entries} == {podman_env.image}
    assert [e["exit_code"] for e in entries if e["action"] == "died"] == [3]
    assert all(e["exit_code"] is None for e in entries if e["action"] != "died")
    (cid,) = {e["container_id"] for e in entries}
    assert [e["seq"] for e in trails(listen.root)[cid]] == list(range(1, len(entries) + 1))
    assert verify_container(listen.root, cid, chain.NO_KEYS).ok


def test_service_restart_loses_and_duplicates_nothing(podman_env, podman_service, listen):
    """Containers run while the service is down appear exactly once after it is back."""
    before = unique("lst-before")
    run_and_remove(podman_env, before)
    wait_removed(listen.root, before)

    podman_service.stop()
    during = [unique("lst-down") for _ in range(3)]
    for name in during:
        run_and_remove(podman_env, name)
    podman_service.start()
    sentinel = unique("lst-sentinel")
    run_and_remove(podman_env, sentinel)
    wait_removed(listen.root, *during, sentinel)

    assert_exactly_once(listen.root, before, *during, sentinel)
    assert "lost the events stream" in listen.log_text()


def test_unreachable_service_one_line_then_recovers(podman_env, podman_service, tmp_path):
    """Started before Podman, the listener logs one line, retries, and records once it is up."""
    podman_service.stop()
    proc = ListenProcess(tmp_path / "root", podman_service.url, podman_env.env, tmp_path / "l.log")
    proc.start()
    try:
        wait_until(lambda: "cannot reach Podman" in proc.log_text(), "the outage is logged")
        time.sleep(1.5)  # several backoff attempts (0.2 s, 0.4 s, 0.8 s) while it is down
        podman_service.start()
        name = unique("lst-late")
        run_and_remove(podman_env, name)
        wait_removed(proc.root, name)
    finally:
        proc.stop()

    log = proc.log_text()
    assert log.count("cannot reach Podman") == 1, log
    assert "No such file or directory" in log
    assert log.count("connected to") == 1, log
    assert_exactly_once(proc.root, name)


def test_sigkill_and_restart_loses_and_duplicates_nothing(podman_env, listen):
    """After kill -9 the restarted listener replays what it missed, nothing twice."""
    before = [unique("lst-pre") for _ in range(2)]
    for name in before:
        run_and_remove(podman_env, name)
    wait_removed(listen.root, *before)

    assert listen.signal(signal.SIGKILL) == -signal.SIGKILL
    missed = [unique("lst-missed") for _ in range(2)]
    for name in missed:
        run_and_remove(podman_env, name)
    listen.start()
    sentinel = unique("lst-sentinel")
    run_and_remove(podman_env, sentinel)
    wait_removed(listen.root, *missed, sentinel)

    assert_exactly_once(listen.root, *before, *missed, sentinel)
    for cid in trails(listen.root):
        assert verify_container(listen.root, cid, chain.NO_KEYS).ok


def test_sigterm_exits_zero_with_cursor_saved(podman_env, listen):
    """SIGTERM stops the listener with status 0 and a cursor at its last event."""
    name = unique("lst-term")
    run_and_remove(podman_env, name)
    wait_removed(listen.root, name)

    assert listen.signal(signal.SIGTERM) == 0

    cursor = json.loads((listen.root / "state" / "listener-cursor.json").read_text())
    newest = max(e["event_time_ns"] for e in events_by_name(listen.root)[name])
    assert cursor["time_ns"] >= newest


def test_once_catches_up_and_exits(podman_env, listen):
    """`listen --once` records what happened since the cursor, then exits 0."""
    assert listen.signal(signal.SIGTERM) == 0
    name = unique("lst-once")
    run_and_remove(podman_env, name)

    result = subprocess.run(
        [*SHIELDAUDIT, "--root", str(listen.root), "listen", "--once", "--url", listen.url],
        env=listen.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert_exactly_once(listen.root, name)


def test_fifty_containers_in_quick_succession(podman_env, listen):
    """50 containers started back to back (4 at a time) give 50 complete lifecycles."""
    names = [unique(f"lst-burst{i:02d}") for i in range(50)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda n: run_and_remove(podman_env, n), names))
    wait_removed(listen.root, *names)

    assert_exactly_once(listen.root, *names)


def test_hook_and_event_entries_share_one_trail_and_seq(podman_env, listen, tmp_path):
    """With the OCI hook installed too, one container's trail interleaves both with seq 1..n."""
    from click.testing import CliRunner  # noqa: PLC0415

    from shieldaudit.cli import cli  # noqa: PLC0415

    hooks_dir = tmp_path / "hooks.d"
    installed = CliRunner().invoke(
        cli, ["--root", str(listen.root), "install-hooks", "--hooks-dir", str(hooks_dir)]
    )
    assert installed.exit_code == 0, installed.output
    name = unique("lst-hook")

    podman_env.run("--hooks-dir", str(hooks_dir), "run", "--name", name, podman_env.image, "true")
    cid = podman_env.run("inspect", "--format", "{{.Id}}", name).stdout.strip()
    podman_env.run("rm", name)
    wait_until(
        lambda: {"poststop", "remove"} <= {e["action"] for e in trails(listen.root).get(cid, [])},
        "both the hook's poststop and the remove event are written",
    )

    entries = trails(listen.root)[cid]
    sources = Counter(e["source"] for e in entries)
    assert sources["hook"] == 3
    assert sources["events"] >= len(LIFECYCLE)
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert verify_container(listen.root, cid, chain.NO_KEYS).ok


def test_stops_with_the_listener_record_one_named_hook_poststop(podman_env, listen, tmp_path):
    """`run -d` + `stop` with the listener running: one named hook poststop per stop.

    Podman may run poststop twice for one stop, and the listener's ``died`` can
    land between the two runs; the repeat is recognised by the last hook entry,
    so no second (nameless) poststop is written. Four containers at a time.
    """
    from click.testing import CliRunner  # noqa: PLC0415

    from shieldaudit.cli import cli  # noqa: PLC0415

    hooks_dir = tmp_path / "hooks.d"
    installed = CliRunner().invoke(
        cli, ["--root", str(listen.root), "install-hooks", "--hooks-dir", str(hooks_dir)]
    )
    assert installed.exit_code == 0, installed.output
    hooks = ("--hooks-dir", str(hooks_dir))
    names = [unique(f"lst-stop{i}") for i in range(8)]

    def cycle(name: str) -> None:
        podman_env.run(*hooks, "run", "-d", "--name", name, podman_env.image, "sleep", "600")
        podman_env.run(*hooks, "stop", "-t", "1", name)
        podman_env.run(*hooks, "rm", name)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(cycle, names))
    wait_removed(listen.root, *names)

    for name in names:
        (entries,) = [
            found
            for found in trails(listen.root).values()
            if any(e["container"] == name for e in found)
        ]
        hook = [(e["action"], e["container"]) for e in entries if e["source"] == "hook"]
        assert hook == [(stage, name) for stage in ("createRuntime", "poststart", "poststop")]
