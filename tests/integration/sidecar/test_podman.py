"""The sidecar against real Podman, real hooks and a real Prometheus server.

One container's lifecycle, recorded by the installed OCI hooks, moves the
sidecar's counters by exactly the expected amounts; Debian's ``prometheus``,
started on loopback by the test, scrapes the sidecar and answers a query for
``shieldaudit_events_total``.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from http_helpers import free_port, http_get, wait_for
from shieldaudit.hook import hooksd
from sidecar_helpers import SidecarProc

pytestmark = pytest.mark.podman

STAGES = ("createRuntime", "poststart", "poststop")
PROMETHEUS = "/usr/bin/prometheus"


def hook_command() -> str:
    """The installed native ``shieldaudit-hook`` of this installation."""
    path = hooksd.native_hook_path()
    hooksd.check_executable(path)
    return path


def install_hooks(hooks_dir: Path, root: Path) -> None:
    hooks_dir.mkdir()
    for stage in STAGES:
        spec = {
            "version": "1.0.0",
            "hook": {
                "path": hook_command(),
                "args": ["shieldaudit-hook", stage],
                "env": [f"SHIELDAUDIT_ROOT={root}", "SHIELDAUDIT_FSYNC=never"],
                "timeout": 10,
            },
            "when": {"always": True},
            "stages": [stage],
        }
        (hooks_dir / f"shieldaudit-{stage}.json").write_text(json.dumps(spec))


def query(port: int, promql: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    answer = http_get(url)
    if answer is None or answer[0] != 200:
        return []
    body = json.loads(answer[1])
    return body.get("data", {}).get("result", []) if body.get("status") == "success" else []


@pytest.fixture
def prometheus(tmp_path):
    """Start Prometheus on a free loopback port; yield a function that points it at a target."""
    if not Path(PROMETHEUS).exists():
        pytest.fail("Debian's prometheus package is required: apt-get install prometheus")
    procs: list[subprocess.Popen[bytes]] = []

    def start(target_port: int) -> int:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: shieldaudit\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n",
        )
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            ),
        )
        log.close()
        return port

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def test_container_lifecycle_counted_and_scraped_by_prometheus(tmp_path, podman_env, prometheus):
    """One `podman run` moves the hook counters by one per stage; Prometheus sees them."""
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    hooks_dir = tmp_path / "hooks.d"
    install_hooks(hooks_dir, root)
    sidecar = SidecarProc(root)
    try:
        # /metrics answers (at 0) before the initial scan ends; readiness is awaited.
        before = sidecar.wait_ready()

        def hook(values, stage):
            return values.get(f"hook:{stage}", 0.0)

        podman_env.run("--hooks-dir", str(hooks_dir), "run", "--rm", podman_env.image, "true")

        ids = os.listdir(root / "containers")
        assert len(ids) == 1, "the hooks wrote no trail: check the hooks.d files"
        after = sidecar.wait_for(lambda v: all(hook(v, s) == 1 for s in STAGES), "the hooks")
        assert sum(hook(after, s) for s in STAGES) == 3
        assert after["shieldaudit_events_total"] - before["shieldaudit_events_total"] == 3
        assert after["shieldaudit_watched_containers"] == 1
        assert after["shieldaudit_hook_errors_total"] == 0
        assert after["shieldaudit_integrity_failures_total"] == 0

        prom_port = prometheus(sidecar.port)
        promql = 'shieldaudit_events_total{source="hook",action="poststop"}'
        result = wait_for(
            lambda: query(prom_port, promql),
            "prometheus to return shieldaudit_events_total",
            lambda: (tmp_path / "prometheus.log").read_text(errors="replace")[-4000:],
        )
        value = result[0]["value"]
        assert isinstance(value, list)
        assert float(value[1]) == 1
        assert sidecar.terminate() == 0
    finally:
        sidecar.close()


def test_listener_in_process_records_and_counts_events(tmp_path, podman_env, podman_service):
    """With the listener in-process, one container's events and hooks are all counted."""
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    hooks_dir = tmp_path / "hooks.d"
    install_hooks(hooks_dir, root)
    sidecar = SidecarProc(root, listen=True, env={"SHIELDAUDIT_PODMAN_URL": podman_service.url})
    try:
        assert sidecar.wait_ready()["shieldaudit_listener_connected"] == 1

        podman_env.run("--hooks-dir", str(hooks_dir), "run", "--rm", podman_env.image, "true")

        def counted(values: dict[str, float], source: str, action: str) -> float:
            return values.get(f"{source}:{action}", 0.0)

        wanted = [("hook", s) for s in STAGES] + [
            ("events", a) for a in ("create", "init", "start", "died", "remove")
        ]
        after = sidecar.wait_for(
            lambda v: all(counted(v, s, a) >= 1 for s, a in wanted), "every event and hook"
        )
        for source, action in wanted:
            assert counted(after, source, action) == 1, (source, action)
        assert after["shieldaudit_watched_containers"] == 1
        assert after["shieldaudit_integrity_failures_total"] == 0
        assert sidecar.terminate() == 0
    finally:
        sidecar.close()
