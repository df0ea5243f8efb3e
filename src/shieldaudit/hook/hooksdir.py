"""Which hooks.d directory the host's Podman actually reads.

Podman takes its OCI hooks directories from ``hooks_dir`` in the ``[engine]``
table of containers.conf (containers.conf(5)); unset, it uses its built-in
default, ``/usr/share/containers/oci/hooks.d``, only. Debian's Podman 4.3
and 5.4, as root, read nothing else: ``/etc/containers/oci/hooks.d`` is *not*
read unless containers.conf lists it. A hook installed anywhere else never
runs, and nothing says so.

containers.conf is read from these files, each overriding what the earlier
ones set (containers/common ``pkg/config``):

1. ``$CONTAINERS_CONF`` alone, when that variable is set; otherwise
   ``/usr/share/containers/containers.conf``,
   ``/etc/containers/containers.conf``, the ``*.conf`` files of
   ``/etc/containers/containers.conf.d/`` in lexical order, then the user's
   ``$XDG_CONFIG_HOME/containers/containers.conf`` (``$HOME/.config/...``
   when unset) and its ``.d/*.conf`` files. Podman before 5.0 reads the user's
   files only when not run as root.
2. ``$CONTAINERS_CONF_OVERRIDE`` last, even with ``CONTAINERS_CONF`` (Podman
   4.5 and later; earlier versions ignore it).

A list may carry ``{append=true}`` (Podman 4.8 and later) to extend the list
built so far instead of replacing it, for that file and the following ones.

Of several directories, Podman reads all, and a file in a later directory
masks a file of the same name in an earlier one. The hooks go into the
**last** directory: there no other directory can mask them.

Everything here is pure: the environment, the user, the Podman version and
file access are passed in, so every rule is unit-tested without a host.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

from shieldaudit.core.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

#: Podman's built-in ``hooks_dir`` (containers/common ``DefaultHooksDirs``).
BUILTIN_HOOKS_DIR: Final = Path("/usr/share/containers/oci/hooks.d")
#: What root's Podman 4.8+ reads when ``hooks_dir`` is set to an empty list.
IMPLICIT_HOOKS_DIRS: Final = (BUILTIN_HOOKS_DIR, Path("/etc/containers/oci/hooks.d"))
SYSTEM_CONF: Final = Path("/usr/share/containers/containers.conf")
ADMIN_CONF: Final = Path("/etc/containers/containers.conf")
USER_CONF: Final = Path("containers/containers.conf")
CONF_ENV: Final = "CONTAINERS_CONF"
OVERRIDE_ENV: Final = "CONTAINERS_CONF_OVERRIDE"
VERSION_TIMEOUT_S: Final = 30
_VERSION: Final = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")

Version = tuple[int, int, int]


class Files(Protocol):
    """The file access the resolver needs (the host's, or a test's)."""

    def read(self, path: Path) -> bytes | None:
        """Return the file's bytes, or None when it does not exist."""

    def conf_files(self, directory: Path) -> list[str]:
        """Return the names of the non-directory entries of ``directory`` ([] if missing)."""


class HostFiles:
    """:class:`Files` on the real file system."""

    def read(self, path: Path) -> bytes | None:
        """Return the file's bytes, or None when it does not exist.

        Raises:
            UsageError: it exists but cannot be read.
        """
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UsageError(
                f"cannot read the Podman configuration {path}: {exc.strerror or exc}; "
                "pass --hooks-dir DIR to choose the hooks directory yourself",
            ) from None

    def conf_files(self, directory: Path) -> list[str]:
        """Return the names of the non-directory entries of ``directory`` ([] if missing)."""
        try:
            with os.scandir(directory) as entries:
                return [e.name for e in entries if not e.is_dir()]
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise UsageError(
                f"cannot list the Podman configuration directory {directory}: "
                f"{exc.strerror or exc}; pass --hooks-dir DIR to choose the hooks directory",
            ) from None


@dataclass(frozen=True)
class Engine:
    """What changes the reading of containers.conf between Podman versions.

    ``version`` None means unknown (no podman on PATH): the current rules apply.
    """

    version: Version | None = None

    def _at_least(self, version: Version) -> bool:
        return self.version is None or self.version >= version

    @property
    def reads_override_env(self) -> bool:
        """``CONTAINERS_CONF_OVERRIDE`` is honoured (Podman 4.5)."""
        return self._at_least((4, 5, 0))

    @property
    def appends_lists(self) -> bool:
        """``{append=true}`` in a list, and an empty ``hooks_dir`` means the implicit dirs (4.8)."""
        return self._at_least((4, 8, 0))

    @property
    def reads_user_conf_as_root(self) -> bool:
        """Root reads ``~/.config/containers/containers.conf`` too (Podman 5.0)."""
        return self._at_least((5, 0, 0))


@dataclass(frozen=True)
class HooksDirChoice:
    """The directory to install into, and why."""

    directory: Path
    #: The file whose ``hooks_dir`` decided it, or None for Podman's built-in default.
    source: Path | None
    #: Every directory Podman reads, in increasing precedence.
    dirs: tuple[Path, ...]

    @property
    def reason(self) -> str:
        """Say where the choice came from, for the install message."""
        if self.source is None:
            return "built-in default"
        if len(self.dirs) > 1 and self.directory == self.dirs[-1]:
            return f"from {self.source}, the last of its {len(self.dirs)} hooks_dir entries"
        return f"from {self.source}"


def parse_version(text: str) -> Version | None:
    """Return the version in ``podman --version`` output (``podman version 4.3.1``)."""
    match = _VERSION.search(text)
    if match is None:
        return None
    return (int(match[1]), int(match[2]), int(match[3] or 0))


def podman_version(podman: str = "podman") -> Version | None:
    """Return the installed Podman's version, or None without a usable podman on PATH."""
    path = shutil.which(podman)
    if path is None:
        return None
    try:
        result = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_version(result.stdout) if result.returncode == 0 else None


def user_conf(env: Mapping[str, str], home: str | None) -> Path | None:
    """Return the user's containers.conf path (``$XDG_CONFIG_HOME`` first, then ``$HOME``)."""
    if env.get("XDG_CONFIG_HOME"):
        return Path(env["XDG_CONFIG_HOME"]) / USER_CONF
    home = env.get("HOME") or home
    return Path(home) / ".config" / USER_CONF if home else None


def config_files(
    env: Mapping[str, str], uid: int, home: str | None, files: Files, engine: Engine
) -> list[Path]:
    """Return the containers.conf files Podman would read, in the order it reads them.

    Files that do not exist are included (the caller skips them), except the
    ones named by environment variables, which Podman refuses to start without.

    Raises:
        UsageError: ``CONTAINERS_CONF`` (or ``CONTAINERS_CONF_OVERRIDE``) names
            a file that does not exist.
    """
    paths: list[Path] = []
    if env.get(CONF_ENV):
        paths.append(_named_by(CONF_ENV, env[CONF_ENV], files))
    else:
        paths += [SYSTEM_CONF, ADMIN_CONF, *_drop_ins(ADMIN_CONF, files)]
        mine = user_conf(env, home)
        if mine is not None and (uid != 0 or engine.reads_user_conf_as_root):
            paths += [mine, *_drop_ins(mine, files)]
    if engine.reads_override_env and env.get(OVERRIDE_ENV):
        paths.append(_named_by(OVERRIDE_ENV, env[OVERRIDE_ENV], files))
    return paths


def _named_by(variable: str, value: str, files: Files) -> Path:
    path = Path(value)
    if files.read(path) is None:
        raise UsageError(
            f"{variable}={value}: no such file (Podman refuses to run with it too); "
            f"create it or unset {variable}",
        )
    return path


def _drop_ins(conf: Path, files: Files) -> list[Path]:
    directory = conf.parent / f"{conf.name}.d"
    return [
        directory / name for name in sorted(files.conf_files(directory)) if name.endswith(".conf")
    ]


def hooks_dir_setting(
    path: Path, data: bytes, *, appends: bool
) -> tuple[list[str], bool | None] | None:
    """Return a file's ``[engine] hooks_dir`` entries and its append attribute, or None if unset.

    Raises:
        UsageError: the file is not TOML, or ``hooks_dir`` is not a list of
            absolute paths (plus, where the engine knows it, ``{append=BOOL}``).
    """
    try:
        doc = tomllib.loads(data.decode("utf-8", errors="replace"))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(
            f"{path} is not valid TOML ({exc}); Podman cannot read it either: fix it, "
            "or pass --hooks-dir DIR",
        ) from None
    engine = doc.get("engine")
    if engine is None:
        return None
    if not isinstance(engine, dict):
        raise UsageError(f"{path}: [engine] must be a table; fix it, or pass --hooks-dir DIR")
    if "hooks_dir" not in engine:
        return None
    value = engine["hooks_dir"]
    if not isinstance(value, list):
        raise UsageError(
            f"{path}: hooks_dir must be a list of directories, not {value!r}; "
            "fix it, or pass --hooks-dir DIR",
        )
    return _entries(path, value, appends=appends)


def _entries(path: Path, value: list[object], *, appends: bool) -> tuple[list[str], bool | None]:
    entries: list[str] = []
    append: bool | None = None
    for item in value:
        if isinstance(item, str) and item.startswith("/"):
            entries.append(item)
        elif isinstance(item, dict) and set(item) == {"append"}:
            if not appends:
                raise UsageError(
                    f"{path}: hooks_dir: this Podman does not know {{append=...}} (4.8 and "
                    "later do) and refuses the file; remove it, or pass --hooks-dir DIR",
                )
            if not isinstance(item["append"], bool):
                raise UsageError(
                    f"{path}: hooks_dir: append must be true or false; fix it, "
                    "or pass --hooks-dir DIR",
                )
            append = item["append"]
        else:
            raise UsageError(
                f"{path}: hooks_dir entry {item!r} is not an absolute directory path; "
                "fix it, or pass --hooks-dir DIR",
            )
    return entries, append


def resolve(
    env: Mapping[str, str],
    uid: int,
    home: str | None,
    files: Files,
    engine: Engine,
) -> HooksDirChoice:
    """Return the hooks directory the engine reads, following containers.conf's rules.

    Raises:
        UsageError: a containers.conf cannot be used (named but missing, not
            TOML, a bad ``hooks_dir``), or ``hooks_dir`` is empty so Podman
            runs no hooks at all.
    """
    dirs: list[str] = [str(BUILTIN_HOOKS_DIR)]
    source: Path | None = None
    append = False
    for path in config_files(env, uid, home, files, engine):
        data = files.read(path)
        if data is None:
            continue
        setting = hooks_dir_setting(path, data, appends=engine.appends_lists)
        if setting is None:
            continue
        entries, attribute = setting
        if attribute is not None:
            append = attribute
        dirs = [*dirs, *entries] if append else entries
        source = path
    if not dirs:
        return _empty_list(source, uid, engine)
    return HooksDirChoice(
        directory=Path(dirs[-1]), source=source, dirs=tuple(Path(d) for d in dirs)
    )


def _empty_list(source: Path | None, uid: int, engine: Engine) -> HooksDirChoice:
    if engine.appends_lists and uid == 0:
        # An empty list: root's Podman then reads the two implicit directories,
        # /etc last.
        return HooksDirChoice(
            directory=IMPLICIT_HOOKS_DIRS[-1], source=source, dirs=IMPLICIT_HOOKS_DIRS
        )
    raise UsageError(
        f"hooks_dir in {source} is an empty list: Podman runs no hooks at all; "
        "list a directory there, or pass --hooks-dir DIR",
    )


def resolve_host(env: Mapping[str, str] | None = None, podman: str = "podman") -> HooksDirChoice:
    """Resolve for this process: its environment, user, home and installed Podman."""
    environ = os.environ if env is None else env
    home: str | None
    try:
        import pwd  # noqa: PLC0415 -- POSIX only, and only here

        home = pwd.getpwuid(os.getuid()).pw_dir
    except (ImportError, KeyError):
        home = None
    return resolve(environ, os.getuid(), home, HostFiles(), Engine(podman_version(podman)))


def describe(dirs: Sequence[Path]) -> str:
    """Render a directory list for messages."""
    return ", ".join(str(d) for d in dirs)
