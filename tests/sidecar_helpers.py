"""A ``shieldaudit sidecar`` as a real subprocess, for the tests and benchmarks that run one.

Start it on a free port, poll its HTTP endpoints until a condition holds, stop
it with SIGTERM or SIGKILL, and always reap it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import IO, TYPE_CHECKING, Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from http_helpers import DEADLINE_S, free_port, http_get

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

T = TypeVar("T")
RUN_CLI = "import sys; from shieldaudit.cli import main; sys.argv[0] = 'shieldaudit'; main()"


class SidecarProc:
    """A ``shieldaudit sidecar`` subprocess (``--no-listen`` unless asked) on a free port.

    stdout and stderr are pipes, or, with ``logs``, the files ``logs.out`` and
    ``logs.err`` (for a process that writes much, or runs long: a file never
    blocks it). ``deadline_s`` bounds every wait.
    """

    def __init__(
        self,
        root: Path,
        *extra: str,
        listen: bool = False,
        env: dict[str, str] | None = None,
        logs: Path | None = None,
        deadline_s: float = DEADLINE_S,
    ) -> None:
        """Start it now (``started`` is the moment, for a time-to-ready)."""
        self.port = free_port()
        self.deadline_s = deadline_s
        self.out = self.err = None
        argv = [
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
        ]
        environ = {**os.environ, "SHIELDAUDIT_CONFIG": os.devnull, **(env or {})}
        self.started = time.monotonic()
        if logs is None:
            self.proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environ
            )
            return
        self.out, self.err = logs.with_suffix(".out"), logs.with_suffix(".err")
        with self.out.open("ab") as out, self.err.open("ab") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, env=environ)

    def get(self, path: str) -> tuple[int, str]:
        """GET a path; return (status, body), status 0 when nothing answers."""
        return http_get(f"http://127.0.0.1:{self.port}{path}") or (0, "")

    def metrics(self) -> dict[str, float]:
        """Scrape /metrics into {name: value}; {} when it does not answer.

        Labelled series are summed under their name; each
        ``shieldaudit_events_total`` series is also there as ``source:action``.
        """
        status, text = self.get("/metrics")
        if status != 200:
            return {}
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
                if sample.name == "shieldaudit_events_total":
                    values[f"{sample.labels['source']}:{sample.labels['action']}"] = sample.value
        return values

    def ready(self) -> bool:
        """Return whether /readyz answers 200 (the initial scan published, the listener in)."""
        return self.get("/readyz")[0] == 200

    def stderr(self) -> str:
        """What the process wrote on stderr: all of it once it has ended, the file's so far."""
        if self.err is not None:
            return self.err.read_text(errors="replace")
        if self.proc.poll() is None or self.proc.stderr is None or self.proc.stderr.closed:
            return ""
        return self.proc.stderr.read().decode(errors="replace")

    def assert_running(self) -> None:
        """Fail with its stderr if it has exited."""
        code = self.proc.poll()
        assert code is None, f"the sidecar exited {code}\n{self.stderr()}"

    def wait_until(
        self,
        probe: Callable[[], T | None],
        what: str,
        diagnose: Callable[[], str] = lambda: "",
        interval: float = 0.05,
    ) -> T:
        """Poll ``probe`` until it returns something truthy; fail if the process exits."""
        deadline = time.monotonic() + self.deadline_s
        while True:
            self.assert_running()
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}{diagnose()}")
            time.sleep(interval)

    def wait_for(self, condition: Callable[[dict[str, float]], Any], what: str) -> dict[str, float]:
        """Poll the metrics until ``condition(metrics)`` holds; return them."""
        last: dict[str, float] = {}

        def probe() -> dict[str, float] | None:
            nonlocal last
            last = self.metrics()
            return last if last and condition(last) else None

        return self.wait_until(probe, what, lambda: f"; last metrics: {last}")

    def wait_ready(self, interval: float = 0.05) -> dict[str, float]:
        """Poll /readyz until 200 (the initial scan is published); return the metrics then.

        /metrics answers (every series at 0) before the initial scan ends, so
        only readiness says that the history has been counted.
        """
        last = (0, "")

        def probe() -> bool:
            nonlocal last
            last = self.get("/readyz")
            return last[0] == 200

        self.wait_until(probe, "/readyz to turn 200", lambda: f"; last answer: {last}", interval)
        return self.metrics()

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait; return the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill9(self) -> None:
        """SIGKILL: no chance to save anything."""
        self.proc.kill()
        self.proc.wait(timeout=30)

    def close(self) -> None:
        """Make sure the process is gone and its pipes closed."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        streams: tuple[IO[bytes] | None, ...] = (self.proc.stdout, self.proc.stderr)
        for stream in streams:
            if stream is not None:
                stream.close()
