"""A fresh Debian host's Podman layout, in a private mount namespace, for real-Podman tests.

The README's quick start is about the host's *default* configuration: no
``CONTAINERS_CONF``, no ``--hooks-dir``, commands in ``/usr/local/bin``, an
install in ``/opt``. Tests must not touch the host, so :class:`FreshHost`
runs such commands in a mount namespace of their own (``unshare -m``, kept
alive by a holder process and entered with ``nsenter``) where

* ``/etc/containers`` is a fresh directory: the host's ``policy.json`` and
  ``registries.conf(.d)``, a ``storage.conf`` for private storage, and one
  drop-in, ``containers.conf.d/40-private.conf``, keeping Podman's runtime
  state private (runc, cgroupfs, file events, private tmp dirs; no network)
  and setting *no* ``hooks_dir``;
* ``/usr/share/containers`` is a copy of the host's (Debian's
  ``containers.conf`` and ``seccomp.json``), without ``oci/hooks.d``: it is
  what install-hooks must create;
* ``/opt`` and ``/usr/local/bin`` are tmpfs with the host's entries bound
  back in, so what is installed there vanishes with the namespace.

Mounts made inside the namespace are private: the host and parallel tests
never see them.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import TracebackType

# Podman's host-wide runtime state goes under the test's directory instead.
PRIVATE_ENGINE = """\
# Private runtime state for the test; deliberately no hooks_dir.
[containers]
netns = "none"
{ulimits}
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{tmp}/events.log"
tmp_dir = "{tmp}/libpod-tmp"
static_dir = "{tmp}/storage/libpod"
volume_path = "{tmp}/storage/volumes"
lock_type = "file"
"""
# The limits the suite's own containers.conf uses (tests/containers.conf.in).
SAFE_ULIMITS = 'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]'
STORAGE = '[storage]\ndriver = "{driver}"\ngraphroot = "{tmp}/storage"\nrunroot = "{tmp}/run"\n'
#: Variables that would make Podman or shieldaudit read something else than the fresh layout.
CLEARED_ENV = (
    "CONTAINERS_CONF",
    "CONTAINERS_CONF_OVERRIDE",
    "CONTAINERS_STORAGE_CONF",
    "CONTAINERS_REGISTRIES_CONF",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "SHIELDAUDIT_CONFIG",
    "SHIELDAUDIT_HOOKS_DIR",
    "PREFIX",
    "BINDIR",
    "HOOKS_DIR",
    "VENV",
)


def storage_driver(podman_tmp: Path) -> str:
    """Return the storage driver the session's harness found usable."""
    text = (podman_tmp / "storage.conf").read_text()
    match = re.search(r'^driver = "([^"]+)"', text, re.MULTILINE)
    assert match, text
    return match[1]


class FreshHost:
    """A mount namespace showing a fresh Debian Podman layout; see the module docstring."""

    def __init__(self, tmp: Path, driver: str, *, ulimits: bool = True) -> None:
        """Prepare the layout under ``tmp`` (not started: use ``with``).

        Args:
            tmp: a private directory (storage, configs, logs live below it).
            driver: the storage driver (overlay or vfs).
            ulimits: set ulimits Podman can apply on any host; False keeps
                Podman's own defaults (which some hosts refuse).
        """
        self.tmp = tmp
        self.etc = tmp / "etc-containers"
        self.share = tmp / "usr-share-containers"
        self.home = tmp / "home"
        self.events_log = tmp / "events.log"
        self._holder: subprocess.Popen[bytes] | None = None
        for path in (self.home, tmp / "libpod-tmp", tmp / "orig"):
            path.mkdir(parents=True)
        shutil.copytree("/usr/share/containers", self.share, symlinks=True)
        shutil.rmtree(self.share / "oci", ignore_errors=True)
        (self.etc / "containers.conf.d").mkdir(parents=True)
        for name in ("policy.json", "registries.conf", "registries.conf.d"):
            source = Path("/etc/containers") / name
            if source.is_dir():
                shutil.copytree(source, self.etc / name, symlinks=True)
            elif source.exists():
                shutil.copy2(source, self.etc / name)
        (self.etc / "storage.conf").write_text(STORAGE.format(driver=driver, tmp=tmp))
        (self.etc / "containers.conf.d" / "40-private.conf").write_text(
            PRIVATE_ENGINE.format(tmp=tmp, ulimits=SAFE_ULIMITS if ulimits else "")
        )

    @property
    def hooks_dir(self) -> Path:
        """Where the namespace's /usr/share/containers/oci/hooks.d really is."""
        return self.share / "oci" / "hooks.d"

    def _setup_script(self) -> str:
        orig = self.tmp / "orig"
        lines = [
            "set -eu",
            f"mount --bind {shlex.quote(str(self.etc))} /etc/containers",
            f"mount --bind {shlex.quote(str(self.share))} /usr/share/containers",
        ]
        for index, target in enumerate(("/opt", "/usr/local/bin")):
            keep = orig / str(index)
            lines += [
                f"mkdir -p {keep}",
                f"mount --bind {target} {keep}",
                f"mount -t tmpfs -o mode=0755 tmpfs {target}",
                (
                    f'for e in {keep}/* ; do [ -e "$e" ] || [ -L "$e" ] || continue; '
                    f'n={target}/"${{e##*/}}"; '
                    f'if [ -L "$e" ]; then cp -P "$e" "$n"; '
                    f'elif [ -d "$e" ]; then mkdir "$n"; mount --bind "$e" "$n"; '
                    f'else touch "$n"; mount --bind "$e" "$n"; fi; done'
                ),
            ]
        lines += ["echo ready", "exec sleep 86400"]
        return "\n".join(lines)

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a root shell on the fresh host (plus ``extra``)."""
        env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
        env["HOME"] = str(self.home)
        env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        env.update(extra or {})
        return env

    def argv(self, argv: Sequence[str], cwd: Path | None = None) -> list[str]:
        """Return ``argv`` wrapped to run inside the namespace, in ``cwd`` (default: tmp).

        Entering a mount namespace resets the working directory to its root,
        so nsenter is told where to go.
        """
        assert self._holder is not None, "FreshHost not started"
        where = cwd or self.tmp
        return [
            "nsenter",
            "--target",
            str(self._holder.pid),
            "--mount",
            f"--wd={where}",
            "--",
            *argv,
        ]

    def run(
        self,
        *argv: str,
        extra_env: Mapping[str, str] | None = None,
        timeout: float = 300,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace; capture its output (never raises on failure)."""
        return subprocess.run(
            self.argv(argv, cwd),
            env=self.env(extra_env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def __enter__(self) -> Self:
        """Create the namespace and wait until its mounts are in place."""
        self._holder = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                self._setup_script(),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert self._holder.stdout is not None
        # The setup script either prints "ready" or exits (EOF) with its error.
        if self._holder.stdout.readline().strip() != b"ready":
            self._holder.kill()
            _, err = self._holder.communicate()
            raise AssertionError(f"could not set up the namespace: {err.decode(errors='replace')}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Remove the namespace's containers, then end it (its mounts go with it)."""
        if self._holder is None:
            return
        self.run("podman", "rm", "--all", "--force", "--time", "0", timeout=120)
        self.run("podman", "rmi", "--all", "--force", timeout=120)
        os.killpg(self._holder.pid, signal.SIGKILL)
        self._holder.wait()
        if self._holder.stdout is not None:
            self._holder.stdout.close()
        if self._holder.stderr is not None:
            self._holder.stderr.close()
        self._holder = None
        shutil.rmtree(self.tmp / "storage", ignore_errors=True)
        shutil.rmtree(self.tmp / "run", ignore_errors=True)


def copy_checkout(repo: Path, dest: Path) -> Path:
    """Copy the checkout's sources to ``dest`` (a clone to install from, move and delete)."""
    shutil.copytree(
        repo,
        dest,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            ".mypy_cache",
            ".ruff_cache",
            ".pytest_cache",
            ".hypothesis",
            ".test-image",
            "target",
        ),
    )
    return dest
