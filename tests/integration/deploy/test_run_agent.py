"""``scripts/run-agent.sh`` (what ``make run`` runs): the README quick start, end to end.

The script installs a copy of the checkout non-editably, installs the hooks
fail-open where Podman reads them, proves a container start is recorded,
starts a Podman API service when the socket is missing, runs the sidecar with
the listener and prints where the trails and metrics are. Here every path is
private to the test: the install (``PREFIX``, ``BINDIR``), the hooks dir (from
a private ``CONTAINERS_CONF``'s ``hooks_dir``, as install-hooks resolves it),
the root and the socket; podman uses the harness storage.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from freshhost import copy_checkout
from http_helpers import (
    free_port,
    sample,
    scrape,
    trail_root,
    wait_for,
)
from podman_harness import ping
from shieldaudit import __version__

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "scripts" / "run-agent.sh"
# The first line comes after a pip install of the checkout.
LINE_DEADLINE_S = 600.0
STOP_DEADLINE_S = 30.0
EVENTS = "shieldaudit_events_total"


class Agent:
    """One run of the script, in its own session so it can be stopped as a group."""

    def __init__(self, script: Path, env: dict[str, str], log: Path) -> None:
        """Start the script with ``env``; its stderr goes to ``log``."""
        self.log = log
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                [str(script)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                # Unbuffered: readline() then takes no more than one line, so
                # select() on the pipe never waits for a line already read.
                bufsize=0,
                start_new_session=True,
                # As from a terminal, whatever this test process inherited.
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
            )

    def lines(self, count: int) -> list[str]:
        """Return the first ``count`` lines the script prints on stdout (deadline each)."""
        assert self.proc.stdout is not None
        lines = []
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            for _ in range(count):
                if not selector.select(timeout=LINE_DEADLINE_S):
                    pytest.fail(f"run-agent printed {lines}\n{self.logs()}", pytrace=False)
                line = self.proc.stdout.readline().decode()
                if not line:
                    pytest.fail(f"run-agent exited after {lines}\n{self.logs()}", pytrace=False)
                lines.append(line.rstrip("\n"))
        return lines

    def logs(self) -> str:
        """Return the script's stderr so far."""
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        """Whether the script still runs."""
        return self.proc.poll() is None

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Stop the script and return its exit status.

        SIGTERM goes to the script (as systemd sends it), SIGINT to its whole
        process group (as a terminal's Ctrl-C).
        """
        if self.proc.poll() is None:
            if sig == signal.SIGINT:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
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


def show(shieldaudit: Path, root: Path, name: str) -> list[dict]:
    """`shieldaudit show NAME --json` as the README runs it; [] while NAME is unknown."""
    result = subprocess.run(
        [str(shieldaudit), "--root", str(root), "show", name, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        return []
    return [json.loads(line) for line in result.stdout.splitlines()]


def hook_conf(podman_env, tmp_path: Path, hooks: Path) -> Path:
    """The harness's containers.conf with only ``hooks_dir`` changed (same storage)."""
    text = (podman_env.tmp / "containers.conf").read_text()
    text, count = re.subn(r"^hooks_dir = .*$", f'hooks_dir = ["{hooks}"]', text, flags=re.MULTILINE)
    assert count == 1, text
    conf = tmp_path / "containers.conf"
    conf.write_text(text)
    return conf


@pytest.mark.podman
@pytest.mark.slow
# Two pip installs of the checkout, each building the native hook with cargo.
@pytest.mark.timeout(1800)
def test_run_agent_quick_start(podman_env, tmp_path):
    """The quick start on a host with nothing running; again is harmless; the clone may go.

    `run-agent.sh`, from a clone, installs it non-editably into PREFIX (links
    in BINDIR), installs the hooks where containers.conf's hooks_dir says,
    proves a container start is recorded by them, starts the Podman API
    service it needs and prints where trails and metrics are. `podman run
    --name demo` (no --hooks-dir) is then recorded by the hooks and the
    listener, `shieldaudit show demo` shows it and /metrics counts it. Ctrl-C
    stops the agent with status 0 and the service it started; a second run
    reuses the same hooks files and serves again, stopped by SIGTERM. With
    the clone deleted, containers still start and are recorded.
    """
    root = trail_root(tmp_path)
    hooks = tmp_path / "hooks.d"
    conf = hook_conf(podman_env, tmp_path, hooks)
    prefix, bindir = tmp_path / "prefix", tmp_path / "bin"
    clone = copy_checkout(REPO, tmp_path / "clone")
    shieldaudit = bindir / "shieldaudit"
    port = free_port()
    # Short: unix socket paths are limited to 107 bytes.
    socket_dir = Path(tempfile.mkdtemp(prefix="agent-", dir=podman_env.tmp / "sockets"))
    socket_path = socket_dir / "podman.sock"
    env = {
        **podman_env.env,
        "CONTAINERS_CONF": str(conf),
        "SHIELDAUDIT_ROOT": str(root),
        "SHIELDAUDIT_METRICS_PORT": str(port),
        "SHIELDAUDIT_PODMAN_URL": f"unix://{socket_path}",
        "PREFIX": str(prefix),
        "BINDIR": str(bindir),
        "START_PODMAN": "auto",
        # make run installs fail-open even where fail-closed is configured.
        "SHIELDAUDIT_FAIL_CLOSED": "1",
    }
    for name in ("SHIELDAUDIT_CONFIG", "HOOKS_DIR", "CONTAINERS_CONF_OVERRIDE"):
        env.pop(name, None)
    podman = {"CONTAINERS_CONF": str(conf)}
    expected = [
        (
            f"shieldaudit: installed 3 hooks into {hooks}, the hooks directory Podman reads "
            f"(from {conf})"
        ),
        (
            r"shieldaudit: hooks verified: container shieldaudit-check-\S+ was recorded by the "
            r"hooks \(createRuntime,poststart,poststop\)"
        ),
        (
            f"shieldaudit: trails in {root} (shieldaudit ls; shieldaudit show NAME), "
            f"metrics at http://127.0.0.1:{port}/metrics"
        ),
        "shieldaudit: the agent runs in the foreground; Ctrl-C stops it (the hooks stay installed)",
    ]

    def check_lines(lines: list[str]) -> None:
        assert lines[0] == expected[0]
        assert re.fullmatch(expected[1], lines[1]), lines
        assert lines[2:] == expected[2:]

    agent = Agent(clone / "scripts" / "run-agent.sh", env, tmp_path / "agent-1.log")
    try:
        check_lines(agent.lines(4))
        assert shieldaudit.resolve() == (prefix / "bin" / "shieldaudit").resolve()
        installed = {p.name: p.read_text() for p in sorted(hooks.glob("*.json"))}
        assert set(installed) == {
            "shieldaudit-createRuntime.json",
            "shieldaudit-poststart.json",
            "shieldaudit-poststop.json",
        }
        for text in installed.values():
            assert "SHIELDAUDIT_FAIL_CLOSED=0" in text
            assert str(clone) not in text
        wait_for(
            lambda: sample(scrape(port), "shieldaudit_listener_connected") == 1.0,
            "the listener to connect to the service run-agent started",
            agent.logs,
            agent.alive,
        )

        podman_env.run("run", "--rm", "--name", "demo", podman_env.image, "true", extra_env=podman)

        def recorded() -> bool:
            entries = show(shieldaudit, root, "demo")
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
            # Hooks run only for run-agent's check container and demo (a private
            # hooks dir); the listener sees the whole shared Podman storage, so
            # other tests' events may count too.
            return hook == 2.0 and start is not None and start >= 1.0

        def counts() -> str:
            metrics = scrape(port) or {}
            found = {k: v for k, v in metrics.items() if k[0] == EVENTS and v}
            return f"{agent.logs()}\nnon-zero {EVENTS}: {found}"

        wait_for(counted, "/metrics to count the demo container", counts, agent.alive)
        assert agent.stop(signal.SIGINT) == 0, agent.logs()
        assert "Traceback" not in agent.logs()
    finally:
        agent.kill_group()
    # The Podman service the script started went with it.
    deadline = time.monotonic() + STOP_DEADLINE_S
    while ping(socket_path, timeout=1.0):
        assert time.monotonic() < deadline, "the Podman service outlived run-agent"
        time.sleep(0.2)

    again = Agent(clone / "scripts" / "run-agent.sh", env, tmp_path / "agent-2.log")
    try:
        check_lines(again.lines(4))
        assert {p.name: p.read_text() for p in sorted(hooks.glob("*.json"))} == installed
        wait_for(
            lambda: sample(scrape(port), "shieldaudit_build_info", version=__version__) == 1.0,
            "the second run to serve /metrics",
            again.logs,
            again.alive,
        )
        # Counted once: the checkpoint carries over; only this run's check container is new.
        wait_for(
            lambda: sample(scrape(port), EVENTS, source="hook", action="createRuntime") == 1.0,
            "the second run to count its own check container only",
            again.logs,
            again.alive,
        )
        assert again.stop() in {0, 143}, again.logs()
    finally:
        again.kill_group()

    # Moving or deleting the clone must not break container starts.
    shutil.rmtree(clone)
    podman_env.run("run", "--rm", "--name", "after", podman_env.image, "true", extra_env=podman)
    wait_for(
        lambda: (
            {"createRuntime", "poststop"}
            <= {e["action"] for e in show(shieldaudit, root, "after") if e["source"] == "hook"}
        ),
        "the hooks to record a container started after the clone was deleted",
        lambda: "",
    )
