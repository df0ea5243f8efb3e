"""Smoke tests of the real-Podman harness (tests/podman_harness.py).

They pin what the other integration tests build on: the local test image runs
under runc with the harness's private config, the API service answers on its
socket and can be restarted in place, and events written by a CLI podman reach
a reader going through the service (the shared events file backend).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

pytestmark = pytest.mark.podman


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def test_run_echo_prints_output(podman_env):
    """`podman run --rm <test image> echo hello` works and its output is captured."""
    result = podman_env.run("run", "--rm", podman_env.image, "echo", "hello")

    assert result.stdout == "hello\n"


def test_run_failure_reports_output(podman_env):
    """A failing podman command raises AssertionError with its exit status and stderr."""
    with pytest.raises(AssertionError, match=r"exited 3"):
        podman_env.run("run", "--rm", podman_env.image, "sh", "-c", "echo oops >&2; exit 3")


def test_service_serves_remote_cli(podman_env, podman_service):
    """The API service shares the session storage: a remote `ps` sees a CLI container."""
    name = f"smoke-{uuid.uuid4().hex[:12]}"
    podman_env.run("create", "--name", name, podman_env.image, "true")

    remote = podman_env.run("--url", podman_service.url, "ps", "--all", "--format", "{{.Names}}")

    assert name in remote.stdout.split()
    podman_env.run("rm", name)


def test_service_restarts_on_same_socket(podman_env, podman_service):
    """`stop()` makes the socket unreachable and `start()` brings it back at the same URL."""
    url = podman_service.url

    podman_service.stop()
    down = podman_env.run("--url", url, "version", check=False, timeout=30)
    podman_service.start()
    up = podman_env.run("--url", url, "version")

    assert down.returncode != 0
    assert podman_service.url == url
    assert "API Version" in up.stdout


def test_cli_events_are_visible_through_service(podman_env, podman_service):
    """Lifecycle events of a CLI `podman run` are read back over the API service.

    `--until` is set in the future on purpose: Podman 4.3's file events backend
    stops reading at once when `--until` is already past, returning nothing or
    only part of the file (seen with Podman 4.3.1 and the file events logger).
    """
    name = f"smoke-{uuid.uuid4().hex[:12]}"
    since = datetime.now(UTC) - timedelta(seconds=1)
    podman_env.run("run", "--rm", "--name", name, podman_env.image, "true")
    until = datetime.now(UTC) + timedelta(seconds=2)

    result = podman_env.run(
        "--url",
        podman_service.url,
        "events",
        "--since",
        _rfc3339(since),
        "--until",
        _rfc3339(until),
        "--filter",
        f"container={name}",
        "--format",
        "json",
        timeout=30,
    )

    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert {event["Name"] for event in events} == {name}
    assert {"create", "start", "died", "remove"} <= {event["Status"] for event in events}
    assert name in podman_env.events_log.read_text()
