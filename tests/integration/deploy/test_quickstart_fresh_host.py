"""The hooks reach Podman on a fresh Debian layout, and the README quick start works as written.

Everything runs in a private mount namespace showing a fresh host's Podman
configuration (tests/freshhost.py): no ``CONTAINERS_CONF``, no
``--hooks-dir``, so install-hooks must find the directory Podman really reads
(on Debian, the built-in ``/usr/share/containers/oci/hooks.d``), and a plain
``podman run`` must then be recorded by the hooks.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from freshhost import FreshHost, copy_checkout, storage_driver
from http_helpers import free_port

REPO = Path(__file__).resolve().parents[3]
DEV_SHIELDAUDIT = str(Path(sys.executable).parent / "shieldaudit")
BUILD_IMAGE = str(REPO / "scripts" / "build-test-image.sh")
DEMO_IMAGE = "localhost/busybox:latest"
ALL_STAGES = {"createRuntime", "poststart", "poststop"}
ENTRY_DEADLINE_S = 60.0
# make run installs the checkout with pip (and builds what it must): minutes on a loaded machine.
MAKE_RUN_DEADLINE_S = 900.0
STOP_DEADLINE_S = 60.0


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """Fail with the command's output unless it exited 0."""
    assert result.returncode == 0, (
        f"{result.args} exited {result.returncode}\n--- stdout ---\n{result.stdout}"
        f"--- stderr ---\n{result.stderr}"
    )
    return result


def hook_stages(host: FreshHost, name: str, shieldaudit: str, env: dict[str, str]) -> set[str]:
    """The stages the hooks recorded for container NAME, once createRuntime and poststop are in."""
    deadline = time.monotonic() + ENTRY_DEADLINE_S
    while True:
        shown = host.run(shieldaudit, "show", name, "--json", extra_env=env)
        entries = [json.loads(line) for line in shown.stdout.splitlines() if line.strip()]
        stages = {e["action"] for e in entries if e["source"] == "hook"}
        if {"createRuntime", "poststop"} <= stages or time.monotonic() > deadline:
            return stages
        time.sleep(0.2)


def private_conf(host: FreshHost, hooks_dirs: list[Path]) -> str:
    """A whole containers.conf: the namespace's private settings plus ``hooks_dir``."""
    text = (host.etc / "containers.conf.d" / "40-private.conf").read_text()
    listed = ", ".join(f'"{d}"' for d in hooks_dirs)
    return text.replace("[engine]\n", f"[engine]\nhooks_dir = [{listed}]\n", 1)


@pytest.mark.podman
def test_install_hooks_default_is_where_a_fresh_debian_podman_reads(podman_env, tmp_path):
    """Without --hooks-dir or CONTAINERS_CONF, the hooks land where Podman reads, and run.

    On Debian (Podman 4.3 and 5.4) that is the built-in
    /usr/share/containers/oci/hooks.d; install-hooks says so, a plain `podman
    run` (no --hooks-dir) is recorded with source=hook at every stage, and
    nothing is written to /etc/containers/oci/hooks.d or to the real host.
    """
    env = {"SHIELDAUDIT_ROOT": str(tmp_path / "root")}
    host_share_before = sorted(os.listdir("/usr/share/containers"))
    with FreshHost(tmp_path / "host", storage_driver(podman_env.tmp)) as host:
        ok(host.run(BUILD_IMAGE, DEMO_IMAGE))
        installed = ok(host.run(DEV_SHIELDAUDIT, "install-hooks", extra_env=env))
        assert installed.stdout.splitlines()[-1] == (
            "installed 3 hooks into /usr/share/containers/oci/hooks.d, "
            "the hooks directory Podman reads (built-in default)"
        )
        assert sorted(p.name for p in host.hooks_dir.iterdir()) == sorted(
            f"shieldaudit-{stage}.json" for stage in ALL_STAGES
        )
        assert not (host.etc / "oci").exists()

        ok(host.run("podman", "run", "--rm", "--name", "demo", DEMO_IMAGE, "true"))
        assert hook_stages(host, "demo", DEV_SHIELDAUDIT, env) == ALL_STAGES
    assert sorted(os.listdir("/usr/share/containers")) == host_share_before


@pytest.mark.podman
@pytest.mark.parametrize("where", ["CONTAINERS_CONF", "drop-in"])
def test_install_hooks_follows_a_configured_hooks_dir(podman_env, tmp_path, where):
    """A hooks_dir set in containers.conf (the variable's file, or a drop-in listing two dirs).

    install-hooks takes the last listed directory and names the file that set
    it; `podman run` without --hooks-dir is recorded by the hooks; Podman's
    built-in directory is left empty.
    """
    env = {"SHIELDAUDIT_ROOT": str(tmp_path / "root")}
    first, last = tmp_path / "hooks-first", tmp_path / "hooks-last"
    with FreshHost(tmp_path / "host", storage_driver(podman_env.tmp)) as host:
        if where == "CONTAINERS_CONF":
            conf = tmp_path / "containers.conf"
            conf.write_text(private_conf(host, [last]))
            env["CONTAINERS_CONF"] = str(conf)
            reason = f"from {conf}"
        else:
            drop_in = host.etc / "containers.conf.d" / "50-hooks.conf"
            drop_in.write_text(f'[engine]\nhooks_dir = ["{first}", "{last}"]\n')
            conf = Path("/etc/containers/containers.conf.d/50-hooks.conf")
            reason = f"from {conf}, the last of its 2 hooks_dir entries"
        ok(host.run(BUILD_IMAGE, DEMO_IMAGE, extra_env=env))
        installed = ok(host.run(DEV_SHIELDAUDIT, "install-hooks", extra_env=env))
        assert installed.stdout.splitlines()[-1] == (
            f"installed 3 hooks into {last}, the hooks directory Podman reads ({reason})"
        )
        assert len(list(last.iterdir())) == 3
        assert not first.exists()
        assert not host.hooks_dir.exists()

        ok(host.run("podman", "run", "--rm", "--name", "demo", DEMO_IMAGE, "true", extra_env=env))
        assert hook_stages(host, "demo", DEV_SHIELDAUDIT, env) == ALL_STAGES


class MakeRun:
    """`make run` in the namespace, in its own process group (so Ctrl-C can be sent to it)."""

    def __init__(self, host: FreshHost, clone: Path, env: dict[str, str], log: Path) -> None:
        """Start it; stdout is read line by line, stderr goes to ``log``."""
        self.log = log
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                host.argv(["make", "run"], cwd=clone),
                env=host.env(env),
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
        self.lines: list[str] = []

    def stderr(self) -> str:
        """What make and the script printed on stderr so far."""
        return self.log.read_text(errors="replace")

    def until(self, prefix: str) -> str | None:
        """Read stdout until a line starts with ``prefix``; None if make exits first."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + MAKE_RUN_DEADLINE_S
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not selector.select(timeout=1.0):
                    continue
                raw = self.proc.stdout.readline()
                if not raw:
                    self.proc.wait(timeout=STOP_DEADLINE_S)
                    return None
                line = raw.decode().rstrip("\n")
                self.lines.append(line)
                if line.startswith(prefix):
                    return line
        pytest.fail(f"make run printed no {prefix!r} line\n{self.stderr()}", pytrace=False)

    def interrupt(self) -> int:
        """Ctrl-C: SIGINT to the process group, as a terminal sends it; return make's status."""
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"make run ignored Ctrl-C\n{self.stderr()}", pytrace=False)

    def kill(self) -> None:
        """Cleanup: whatever is left of this run."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def fix_line(stderr: str) -> str:
    """The one-line ulimits fix make run printed."""
    lines = [line for line in stderr.splitlines() if line.startswith("mkdir -p /etc/containers")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.podman
@pytest.mark.slow
# Two pip installs of the checkout, each building the native hook with cargo.
@pytest.mark.timeout(1800)
def test_readme_quick_start_as_written(podman_env, tmp_path):
    """`make run`, `podman run --rm --name demo busybox true`, `shieldaudit show demo`, as root.

    On a fresh Debian layout with Podman's defaults (only its runtime state
    kept private): make run installs the checkout non-editably into
    /opt/shieldaudit with the commands in /usr/local/bin, installs the hooks
    where Podman reads them, builds the local busybox image, proves a
    container start is recorded by the hooks and runs the agent in the
    foreground. Where this host refuses Podman's default ulimits, it stops
    with the one-line fix instead, which works as printed. The README's
    commands then work from PATH with no registry; `shieldaudit verify` exits
    0 and /metrics counts the hook entries; Ctrl-C ends make quietly; and
    with the clone deleted, containers still start and are still recorded.
    """
    socket_dir = Path(tempfile.mkdtemp(prefix="qs-", dir=podman_env.tmp / "sockets"))
    port = free_port()
    env = {
        "SHIELDAUDIT_ROOT": str(tmp_path / "root"),
        "SHIELDAUDIT_METRICS_PORT": str(port),
        "SHIELDAUDIT_PODMAN_URL": f"unix://{socket_dir}/podman.sock",
    }
    clone = copy_checkout(REPO, tmp_path / "clone")
    with FreshHost(tmp_path / "host", storage_driver(podman_env.tmp), ulimits=False) as host:
        run = MakeRun(host, clone, env, tmp_path / "make-run-1.log")
        try:
            if run.until("shieldaudit: the agent runs in the foreground") is None:
                # This host forbids Podman's default ulimits: make run said so and how to fix it.
                assert run.proc.returncode != 0
                assert "with its default ulimits" in run.stderr(), run.stderr()
                plain = host.run("podman", "run", "--rm", DEMO_IMAGE, "true")
                assert "error setting rlimit" in plain.stderr, plain.stderr
                ok(host.run("sh", "-c", fix_line(run.stderr())))
                run.kill()
                run = MakeRun(host, clone, env, tmp_path / "make-run-2.log")
                assert run.until("shieldaudit: the agent runs in the foreground"), run.stderr()
            else:
                assert "default ulimits" not in run.stderr()
            said = [line for line in run.lines if line.startswith("shieldaudit: ")]
            assert said[0] == (
                "shieldaudit: installed 3 hooks into /usr/share/containers/oci/hooks.d, "
                "the hooks directory Podman reads (built-in default)"
            ), run.lines
            assert re.fullmatch(
                r"shieldaudit: hooks verified: container shieldaudit-check-\S+ was recorded "
                r"by the hooks \(createRuntime,poststart,poststop\)",
                said[1],
            ), run.lines
            assert len(list(host.hooks_dir.iterdir())) == 3

            # The README's commands, as written (in a second terminal).
            ok(host.run("podman", "run", "--rm", "--name", "demo", "busybox", "true"))
            assert hook_stages(host, "demo", "shieldaudit", env) == ALL_STAGES
            ok(host.run("shieldaudit", "verify", extra_env=env))
            metrics = ok(
                host.run(
                    "sh", "-c", f"curl -s localhost:{port}/metrics | grep shieldaudit_events_total"
                )
            )
            assert 'source="hook"' in metrics.stdout

            status = run.interrupt()
            assert status in {0, -signal.SIGINT}, run.stderr()
            assert "make: ***" not in run.stderr(), run.stderr()
            assert "Traceback" not in run.stderr(), run.stderr()
        finally:
            run.kill()

        # The clone is gone; what the hooks run is not.
        shutil.rmtree(clone)
        ok(host.run("podman", "run", "--rm", "--name", "after", "busybox", "true"))
        assert hook_stages(host, "after", "shieldaudit", env) == ALL_STAGES
        hook_files = [json.loads(p.read_text()) for p in host.hooks_dir.iterdir()]
        for doc in hook_files:
            assert str(clone) not in json.dumps(doc)
            named = [doc["hook"]["path"], *doc["hook"]["args"]]
            assert any(arg.startswith("/opt/shieldaudit/") for arg in named), doc
