"""Real-Podman test harness: private storage, the local test image, an API service.

Loaded as a pytest plugin from ``tests/conftest.py``. Fixtures:

- ``podman_env`` (session): a :class:`PodmanEnv` whose podman uses its own
  ``containers.conf`` and ``storage.conf`` (rendered from ``tests/*.conf.in``)
  under a session temp dir, so tests never touch the host's container storage
  and parallel sessions never collide. The test image is built into it.
- ``podman_service`` (function): a started ``podman system service`` on a
  private unix socket, as a :class:`PodmanService` that tests may stop and
  start again; it is stopped at the end of the test.

Without ``podman`` and ``runc`` the fixtures fail (never skip) with a line saying
how to install them; ``make test`` installs them first.
"""

from __future__ import annotations

import http.client
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from types import TracebackType

IMAGE = "localhost/shieldaudit-test:latest"
TESTS_DIR = Path(__file__).resolve().parent
BUILD_IMAGE_SCRIPT = TESTS_DIR.parent / "scripts" / "build-test-image.sh"
SERVICE_DEADLINE_S = 20.0
STOP_GRACE_S = 10.0
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class PodmanEnv:
    """A podman configured to use the session's private storage and config.

    Attributes:
        env: ``os.environ`` plus ``CONTAINERS_CONF`` and ``CONTAINERS_STORAGE_CONF``;
            pass it to any subprocess that runs podman (or a podman-py client's
            service) so it sees the same storage.
        tmp: the session directory holding config, storage, logs and sockets.
        image: the busybox test image, present in this storage.
        graphroot: container storage (images, layers, podman's database).
        runroot: container runtime state.
        events_log: the events file every podman process of the session appends to.
        hooks_dir: the configured (initially empty) OCI hooks dir; a test that
            installs hooks should rather use its own dir with
            ``run("--hooks-dir", str(dir), "run", ...)``.
    """

    env: dict[str, str]
    tmp: Path
    image: str
    graphroot: Path
    runroot: Path
    events_log: Path
    hooks_dir: Path

    def run(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 120,
        input: str | None = None,  # noqa: A002 -- same name as subprocess.run's
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``podman *args`` with this environment and capture its output.

        Raises:
            AssertionError: if ``check`` and podman exits non-zero; the message
                holds the command, exit status, stdout and stderr.
        """
        env = self.env if extra_env is None else {**self.env, **extra_env}
        result = subprocess.run(
            ["podman", *args],
            env=env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(_describe_failure(result))
        return result


class PodmanService:
    """``podman system service --time=0`` on a unix socket, restartable in place."""

    def __init__(self, podman: PodmanEnv, socket_path: Path) -> None:
        """Prepare (not start) a service for ``podman`` listening on ``socket_path``."""
        if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH:
            raise ValueError(f"unix socket path too long ({socket_path}); use a shorter tmp dir")
        self.podman = podman
        self.socket_path = socket_path
        self.log_path = socket_path.with_suffix(".log")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL for ``podman --url`` and podman-py: ``unix://<socket_path>``."""
        return f"unix://{self.socket_path}"

    @property
    def running(self) -> bool:
        """Whether the service process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the service and wait until ``_ping`` answers OK (20 s deadline).

        Does nothing if it is already running. A stale socket file from a
        previous run is removed first: podman will not bind over it.
        """
        if self.running:
            return
        # `podman system service` does not create the socket's directory.
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                ["podman", "system", "service", "--time=0", self.url],
                env=self.podman.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + SERVICE_DEADLINE_S
        while not ping(self.socket_path):
            if self._proc.poll() is not None:
                self._proc = None
                raise AssertionError(f"podman system service exited early:\n{self._log_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"podman system service not ready after {SERVICE_DEADLINE_S:.0f}s:\n"
                    f"{self._log_text()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the service: SIGTERM, then SIGKILL if it is not gone within 10 s."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> Self:
        """Start the service."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the service."""
        self.stop()

    def _log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class _UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a unix socket: all the API client the harness needs."""

    def __init__(self, socket_path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self._socket_path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def ping(socket_path: Path, timeout: float = 2.0) -> bool:
    """Return whether the podman API on ``socket_path`` answers ``_ping`` with OK."""
    conn = _UnixHTTPConnection(socket_path, timeout)
    try:
        conn.request("GET", "/v4.0.0/libpod/_ping")
        response = conn.getresponse()
        return response.status == 200 and response.read().strip() == b"OK"
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _describe_failure(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"`{shlex.join(result.args)}` exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}--- stderr ---\n{result.stderr}"
    )


def _require_podman() -> None:
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    if not missing:
        return
    # Never a skip: a skipped Podman test proves nothing. `make test` installs them.
    pytest.fail(
        f"real-Podman tests need {' and '.join(missing)} on PATH: run `make test` "
        "(installs them from Debian) or `apt-get install podman runc`",
        pytrace=False,
    )


def _render(template: str, tmp: Path, driver: str) -> str:
    text = (TESTS_DIR / template).read_text()
    return text.replace("@TMP@", str(tmp)).replace("@DRIVER@", driver)


def _configure(tmp: Path) -> PodmanEnv:
    """Write the config files, choose a storage driver and return the environment."""
    podman = PodmanEnv(
        env={
            **os.environ,
            "CONTAINERS_CONF": str(tmp / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(tmp / "storage.conf"),
        },
        tmp=tmp,
        image=IMAGE,
        graphroot=tmp / "storage",
        runroot=tmp / "run",
        events_log=tmp / "events.log",
        hooks_dir=tmp / "hooks.d",
    )
    podman.hooks_dir.mkdir()
    (tmp / "sockets").mkdir()
    (tmp / "containers.conf").write_text(_render("containers.conf.in", tmp, ""))
    # overlay is fast, but cannot stack on overlayfs/tmpfs-backed dirs (as in
    # some CI containers); fall back to vfs there rather than fail every test.
    drivers = [os.environ.get("SHIELDAUDIT_STORAGE_DRIVER") or "overlay", "vfs"]
    for driver in drivers:
        (tmp / "storage.conf").write_text(_render("storage.conf.in", tmp, driver))
        probe = podman.run("info", "--format", "{{.Store.GraphDriverName}}", check=False)
        if probe.returncode == 0:
            return podman
        shutil.rmtree(podman.graphroot, ignore_errors=True)
        shutil.rmtree(podman.runroot, ignore_errors=True)
    raise AssertionError(f"no usable storage driver in {drivers}:\n{_describe_failure(probe)}")


def _unmount_under(root: Path) -> None:
    """Lazily unmount everything mounted at or below ``root``, deepest first."""
    prefix = f"{root}/"
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Field 5 is the mount point, with spaces etc. as octal escapes.
        mount_point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4])
        if mount_point.startswith(prefix):
            mounts.append(mount_point)
    for mount_point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mount_point], capture_output=True, check=False)


def _teardown(podman: PodmanEnv) -> None:
    """Remove the session's containers, images and storage; keep configs and logs."""
    podman.run("rm", "--all", "--force", "--time", "0", check=False)
    podman.run("rmi", "--all", "--force", check=False)
    _unmount_under(podman.tmp)
    shutil.rmtree(podman.graphroot, ignore_errors=True)
    shutil.rmtree(podman.runroot, ignore_errors=True)


@pytest.fixture(scope="session")
def podman_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanEnv]:
    """Podman with private config and storage, holding the test image."""
    _require_podman()
    podman = _configure(tmp_path_factory.mktemp("podman"))
    try:
        build = subprocess.run(
            [str(BUILD_IMAGE_SCRIPT), podman.image],
            env=podman.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if build.returncode != 0:
            raise AssertionError(_describe_failure(build))
        yield podman
    finally:
        _teardown(podman)


@pytest.fixture
def podman_service(podman_env: PodmanEnv) -> Iterator[PodmanService]:
    """A running ``podman system service`` sharing ``podman_env``'s storage and events."""
    # Under the session dir, not tmp_path: long test names would overflow sun_path.
    socket_dir = Path(tempfile.mkdtemp(prefix="svc-", dir=podman_env.tmp / "sockets"))
    with PodmanService(podman_env, socket_dir / "podman.sock") as service:
        yield service
