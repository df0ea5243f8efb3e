"""``scripts/run-agent.sh`` (what ``make run`` runs): the README quick start, end to end.

The script installs the hooks fail-open, starts a Podman API service when the
socket is missing, runs the sidecar with the listener and prints where the
trails and metrics are. Here every path is private to the test: the hooks dir
(``HOOKS_DIR``), the root and the socket; podman uses the harness storage.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from test_deploy_image import (
    SHIELDAUDIT,
    free_port,
    http_get,
    sample,
    scrape,
    trail_root,
    wait_for,
)

from podman_harness import ping
from shieldaudit import __version__

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "run-agent.sh"
LINE_DEADLINE_S = 60.0
STOP_DEADLINE_S = 30.0
EVENTS = "shieldaudit_events_total"


class Agent:
    """One run of the script, in its own session so it can be stopped as a group."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        """Start the script with ``env``; its stderr goes to ``log``."""
        self.log = log
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                [str(SCRIPT)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )

    def first_line(self) -> str:
        """Return the first line the script prints on stdout (60 s deadline)."""
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout=LINE_DEADLINE_S):
                pytest.fail(f"run-agent printed nothing\n{self.logs()}", pytrace=False)
        return self.proc.stdout.readline().decode().rstrip("\n")

    def logs(self) -> str:
        """Return the script's stderr so far."""
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        """Whether the script still runs."""
        return self.proc.poll() is None

    def stop(self) -> int:
        """SIGTERM the script (as systemd or Ctrl-C would) and return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                pytest.fail(f"run-agent ignored SIGTERM\n{self.logs()}", pytrace=False)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def kill_group(self) -> None:
        """Cleanup after a failure: kill whatever of this run is left."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def show(root: Path, name: str) -> list[dict]:
    """`shieldaudit show NAME --json` as the README runs it; [] while NAME is unknown."""
    result = subprocess.run(
        [str(SHIELDAUDIT), "--root", str(root), "show", name, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        return []
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.podman
def test_run_agent_quick_start(podman_env, tmp_path):
    """The quick start works on a host with nothing running, and running it again is harmless.

    `run-agent.sh` prints where trails and metrics are, installs the hooks,
    starts the Podman API service it needs; `podman run --name demo` is then
    recorded by the hooks and the listener, `shieldaudit show demo` shows it
    and /metrics counts it. SIGTERM stops the agent and the service it
    started; a second run reuses the same hooks files and serves again.
    """
    root = trail_root(tmp_path)
    hooks = tmp_path / "hooks.d"
    port = free_port()
    # Short: unix socket paths are limited to 107 bytes.
    socket_dir = Path(tempfile.mkdtemp(prefix="agent-", dir=podman_env.tmp / "sockets"))
    socket_path = socket_dir / "podman.sock"
    env = {
        **podman_env.env,
        "SHIELDAUDIT_ROOT": str(root),
        "SHIELDAUDIT_METRICS_PORT": str(port),
        "SHIELDAUDIT_PODMAN_URL": f"unix://{socket_path}",
        "HOOKS_DIR": str(hooks),
        "START_PODMAN": "auto",
        # make run installs fail-open even where fail-closed is configured.
        "SHIELDAUDIT_FAIL_CLOSED": "1",
        "VENV": str(SHIELDAUDIT.parent.parent),
    }
    env.pop("SHIELDAUDIT_CONFIG", None)
    expected_line = (
        f"shieldaudit: trails in {root} (shieldaudit ls; shieldaudit show NAME), "
        f"metrics at http://127.0.0.1:{port}/metrics"
    )

    agent = Agent(env, tmp_path / "agent-1.log")
    try:
        assert agent.first_line() == expected_line
        installed = {p.name: p.read_text() for p in sorted(hooks.glob("*.json"))}
        assert set(installed) == {
            "shieldaudit-createRuntime.json",
            "shieldaudit-poststart.json",
            "shieldaudit-poststop.json",
        }
        for text in installed.values():
            assert "SHIELDAUDIT_FAIL_CLOSED=0" in text
        wait_for(
            lambda: sample(scrape(port), "shieldaudit_listener_connected") == 1.0,
            "the listener to connect to the service run-agent started",
            agent.logs,
            agent.alive,
        )

        podman_env.run(
            "--hooks-dir", str(hooks), "run", "--rm", "--name", "demo", podman_env.image, "true"
        )

        def recorded() -> bool:
            entries = show(root, "demo")
            seen = {(e["source"], e["action"]) for e in entries}
            return {("hook", "createRuntime"), ("hook", "poststop"), ("events", "start")} <= seen

        wait_for(
            recorded,
            "`shieldaudit show demo` to list hook and event entries",
            agent.logs,
            agent.alive,
        )

        def counted() -> bool:
            metrics = scrape(port)
            hook = sample(metrics, EVENTS, source="hook", action="createRuntime")
            start = sample(metrics, EVENTS, source="events", action="start")
            # Hooks run only for demo (a private hooks dir); the listener sees
            # the whole shared Podman storage, so other tests' events may count too.
            return hook == 1.0 and start is not None and start >= 1.0

        def counts() -> str:
            metrics = scrape(port) or {}
            found = {k: v for k, v in metrics.items() if k[0] == EVENTS and v}
            return f"{agent.logs()}\nnon-zero {EVENTS}: {found}"

        wait_for(counted, "/metrics to count the demo container", counts, agent.alive)
        assert agent.stop() in {0, 143}, agent.logs()
    finally:
        agent.kill_group()
    # The Podman service the script started went with it.
    deadline = time.monotonic() + STOP_DEADLINE_S
    while ping(socket_path, timeout=1.0):
        assert time.monotonic() < deadline, "the Podman service outlived run-agent"
        time.sleep(0.2)

    again = Agent(env, tmp_path / "agent-2.log")
    try:
        assert again.first_line() == expected_line
        assert {p.name: p.read_text() for p in sorted(hooks.glob("*.json"))} == installed
        # /metrics answers (every series at 0) before the initial scan ends:
        # only once ready has the history been read.
        wait_for(
            lambda: (http_get(f"http://127.0.0.1:{port}/readyz") or (0, ""))[0] == 200,
            "the second run to be ready",
            again.logs,
            again.alive,
        )
        metrics = scrape(port)
        assert sample(metrics, "shieldaudit_build_info", version=__version__) == 1.0
        # Counted once: the checkpoint carries over, nothing is re-counted.
        assert sample(metrics, EVENTS, source="hook", action="createRuntime") == 0.0
        assert again.stop() in {0, 143}, again.logs()
    finally:
        again.kill_group()
