"""A ``shieldaudit sidecar`` as a real subprocess, for the tests that run one.

Start it on a free port, poll its HTTP endpoints until a condition holds, stop
it with SIGTERM or SIGKILL, and always reap it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import pytest
from prometheus_client.parser import text_string_to_metric_families

from http_helpers import free_port

if TYPE_CHECKING:
    from pathlib import Path

DEADLINE_S = 60.0
RUN_CLI = "import sys; from shieldaudit.cli import main; sys.argv[0] = 'shieldaudit'; main()"


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
