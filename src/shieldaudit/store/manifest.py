"""What ``install-hooks`` wrote, recorded so the sidecar can tell the hooks are still in place.

``<root>/state/hooks-manifest.json`` lists every hooks.d file install-hooks
wrote for this root, with the SHA-256 of its content::

    {"version": 1, "hooks": [{"path": "/etc/containers/oci/hooks.d/shieldaudit-poststart.json",
                              "sha256": "<64 hex>"}, ...]}

Installing into a directory replaces that directory's files in the list;
``--uninstall`` removes them. :func:`check` says whether every listed file is
still there with the same content: a hooks.d file deleted or edited is how
containers end up running unaudited, and the sidecar exports the answer as
``shieldaudit_hooks_installed``. No manifest (or an empty one) means the hooks
were never installed for this root: not installed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Final

from shieldaudit.core.errors import StorageError
from shieldaudit.store import layout

if TYPE_CHECKING:
    from collections.abc import Iterable

MANIFEST_FILE: Final = "hooks-manifest.json"
LOCK_FILE: Final = "hooks-manifest.lock"
VERSION: Final = 1
#: A hooks.d file is a few hundred bytes; anything beyond this is not ours.
MAX_FILE_BYTES: Final = 64 * 1024
MAX_MANIFEST_BYTES: Final = 1024 * 1024


def manifest_path(root: Path) -> Path:
    """Return where the manifest of installed hooks lives."""
    return layout.state_path(root, MANIFEST_FILE)


def digest(path: Path) -> str | None:
    """Return the SHA-256 of a file's content; None when it is missing, unreadable or too big."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_FILE_BYTES:
        return None
    return hashlib.sha256(data).hexdigest()


def load(root: Path) -> dict[str, str] | None:
    """Return ``{path: sha256}`` from the manifest; None when there is none or it is not one."""
    try:
        with manifest_path(root).open("rb") as f:
            data = json.loads(f.read(MAX_MANIFEST_BYTES))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        return None
    hooks = data.get("hooks")
    if not isinstance(hooks, list):
        return None
    listed: dict[str, str] = {}
    for item in hooks:
        if not isinstance(item, dict):
            return None
        path, sha = item.get("path"), item.get("sha256")
        if not (isinstance(path, str) and isinstance(sha, str)):
            return None
        listed[path] = sha
    return listed


def check(root: Path) -> tuple[bool, str]:
    """Return whether every recorded hooks.d file is in place and unchanged, and why not."""
    listed = load(root)
    if not listed:
        return False, f"no hooks recorded in {manifest_path(root)}: run install-hooks"
    for path, sha in sorted(listed.items()):
        found = digest(Path(path))
        if found is None:
            return False, f"{path} is missing or unreadable"
        if found != sha:
            return False, f"{path} was changed after install-hooks wrote it"
    return True, "ok"


def record(root: Path, hooks_dir: Path, written: Iterable[Path]) -> None:
    """Replace the manifest's files of ``hooks_dir`` with ``written`` (none: uninstall).

    Raises:
        StorageError: the manifest cannot be written.
    """
    directory = hooks_dir.absolute()
    entries = {str(path.absolute()): digest(path) for path in written}
    state = layout.state_path(root)
    try:
        state.mkdir(mode=layout.DIR_MODE, parents=True, exist_ok=True)
        lock_fd = os.open(
            state / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
    except OSError as exc:
        raise StorageError(f"cannot record the installed hooks in {state}: {exc}") from None
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        listed = load(root) or {}
        kept = {p: s for p, s in listed.items() if Path(p).parent != directory}
        kept.update({p: s for p, s in entries.items() if s is not None})
        _write(root, kept)
    except OSError as exc:
        raise StorageError(
            f"cannot record the installed hooks in {manifest_path(root)}: {exc}"
        ) from None
    finally:
        os.close(lock_fd)


def _write(root: Path, listed: dict[str, str]) -> None:
    target = manifest_path(root)
    if not listed:
        target.unlink(missing_ok=True)
        return
    hooks = [{"path": p, "sha256": s} for p, s in sorted(listed.items())]
    data = (json.dumps({"version": VERSION, "hooks": hooks}, indent=1) + "\n").encode()
    tmp = target.with_name(f".{MANIFEST_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        tmp.replace(target)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
