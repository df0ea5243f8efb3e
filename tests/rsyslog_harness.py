"""Real rsyslogd instances (Debian's rsyslog and rsyslog-relp) for the fleet tests and bench.

Each instance gets its own configuration (the shipped ``deploy/rsyslog`` file
with the paths, the port and the host name of the test put in), its own work
directory and pid file, runs in the foreground (``-n``) and is killed by the
caller. Everything listens and connects on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from http_helpers import free_port  # noqa: F401 -- the fleet tests and bench take it from here

if TYPE_CHECKING:
    from collections.abc import Callable

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy" / "rsyslog"
RSYSLOGD = "/usr/sbin/rsyslogd"
#: The shipped spool file name: one file per UTC minute.
PER_MINUTE = "%$year-utc%%$month-utc%%$day-utc%%$hour-utc%%$minute-utc%"
#: For tests only: one file per second, still 12 digits in the order written.
PER_SECOND = "00%$now-unixtimestamp%"


def node_config(root: Path, work: Path, host: str, port: int) -> str:
    """Return the shipped node configuration for a test node."""
    text = (DEPLOY / "node.conf").read_text(encoding="utf-8")
    text = _sub(text, "/var/lib/shieldaudit/", f"{root}/")
    text = _sub(text, 'workDirectory="/var/spool/rsyslog"', f'workDirectory="{work}"')
    text = _sub(
        text, 'target="collector.example.org" port="2514"', f'target="127.0.0.1" port="{port}"'
    )
    text = _sub(text, "global(\n", f'global(\n    localHostname="{host}"\n')
    return text + "\n" + _nothing_else()


def collector_config(spool: Path, work: Path, port: int, *, per_second: bool = False) -> str:
    """Return the shipped collector configuration, its spool files at ``spool.<12 digits>``.

    As shipped, rsyslog starts a new spool file every UTC minute; with
    ``per_second`` (tests only, to see many files in seconds) every second,
    named ``00`` and the Unix time, which sorts the same way.
    """
    text = (DEPLOY / "collector.conf").read_text(encoding="utf-8")
    text = _sub(text, 'workDirectory="/var/spool/rsyslog"', f'workDirectory="{work}"')
    text = _sub(text, "/var/spool/shieldaudit-collect/spool", str(spool))
    if per_second:
        text = _sub(text, PER_MINUTE, PER_SECOND)
    text = _sub(
        text,
        'input(type="imrelp" port="2514"',
        f'input(type="imrelp" address="127.0.0.1" port="{port}"',
    )
    return text + "\n" + _nothing_else()


def _nothing_else() -> str:
    # rsyslogd reports its own messages through the default ruleset: keep them in the work dir.
    return ""


def _sub(text: str, old: str, new: str) -> str:
    assert old in text, f"deploy/rsyslog no longer holds {old!r}"
    return text.replace(old, new)


@dataclass
class Rsyslogd:
    """One rsyslogd in the foreground with its own config, work dir and pid file."""

    name: str
    base: Path
    config: str
    proc: subprocess.Popen[bytes] | None = None
    #: A command that runs rsyslogd (its arguments appended), e.g. in a mount namespace.
    wrapper: list[str] = field(default_factory=list)

    @property
    def work(self) -> Path:
        """Return the instance's work directory."""
        return self.base / "work"

    def start(self) -> None:
        """Write the config and start rsyslogd in the foreground, in its own session."""
        self.work.mkdir(parents=True, exist_ok=True, mode=0o700)
        conf = self.base / "rsyslog.conf"
        conf.write_text(self.config, encoding="utf-8")
        log = (self.base / "rsyslogd.log").open("ab")
        self.proc = subprocess.Popen(
            [*self.wrapper, RSYSLOGD, "-n", "-f", str(conf), "-i", str(self.base / "rsyslogd.pid")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> None:
        """Signal rsyslogd and wait for it; kill its whole group if it does not end in time."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def kill_group(self) -> None:
        """Kill the instance and what it started (collect), for cleanup."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def log(self) -> str:
        """Return what rsyslogd printed."""
        path = self.base / "rsyslogd.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


@dataclass
class CollectProcess:
    """``shieldaudit collect --spool`` as its service runs it, in its own session."""

    program: str
    central: Path
    spool: Path
    metrics: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    #: A command that runs collect (its arguments appended), e.g. in rsyslogd's mount namespace.
    wrapper: list[str] = field(default_factory=list)

    def args(self, *extra: str) -> list[str]:
        """Return the command line."""
        args = [
            *self.wrapper,
            self.program,
            "collect",
            "--central",
            str(self.central),
            "--spool",
            str(self.spool),
        ]
        if self.metrics is not None:
            args += ["--metrics-file", str(self.metrics)]
        return [*args, *extra]

    def start(self) -> None:
        """Start following the spool (stderr to ``<spool>.collect.log``)."""
        with self.spool.with_name(self.spool.name + ".collect.log").open("ab") as log:
            self.proc = subprocess.Popen(
                self.args(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal collect and return its exit status."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        code = self.proc.wait(60)
        self.proc = None
        return code

    def kill(self) -> None:
        """Kill collect if it runs (cleanup)."""
        if self.proc is not None:
            self.stop(signal.SIGKILL)

    def once(self) -> subprocess.CompletedProcess[str]:
        """Run ``collect --once`` to the spool's end; return the finished process."""
        return subprocess.run(
            self.args("--once"), capture_output=True, text=True, timeout=300, check=False
        )

    def log(self) -> str:
        """Return what collect printed."""
        path = self.spool.with_name(self.spool.name + ".collect.log")
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``check`` until it holds; fail saying ``what`` did not happen in ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def validate(config: str, base: Path) -> subprocess.CompletedProcess[str]:
    """Run ``rsyslogd -N1`` on a configuration; return the finished process."""
    base.mkdir(parents=True, exist_ok=True)
    conf = base / "validate.conf"
    conf.write_text(config, encoding="utf-8")
    return subprocess.run(
        [RSYSLOGD, "-N1", "-f", str(conf)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
