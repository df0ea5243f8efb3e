"""hooks.d files for the OCI hook: build, validate, install atomically, uninstall.

The files follow the ``1.0.0`` schema of containers/common's
``oci-hooks(5)``. Podman 4.3 skips a file whose JSON is broken or whose
``path`` is missing, and the containers then run *unaudited*; newer Podman
instead fails every ``podman run``. So each file is validated before it is
moved into place, the native hook it names and the Python reference path
it hands over to are run once (:func:`check_runnable`), and a file
this module did not write (no :data:`MANAGED_MARK` in its ``env``) is never
overwritten or removed.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Final

from shieldaudit.core.errors import ShieldAuditError, StorageError, UsageError
from shieldaudit.hook.ocistate import STAGES

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from shieldaudit.core.settings import StoreSettings

HOOKS_VERSION: Final = "1.0.0"
DEFAULT_STAGES: Final = ("createRuntime", "poststart", "poststop")
#: Seconds the runtime lets the hook run; the hook's own waits are bounded far below.
HOOK_TIMEOUT_S: Final = 10
MANAGED_MARK: Final = "SHIELDAUDIT_MANAGED_BY=shieldaudit-install-hooks"
FILE_PREFIX: Final = "shieldaudit-"
CHECK_TIMEOUT_S: Final = 30
MAX_HOOK_FILE_BYTES: Final = 64 * 1024
#: The native hook's name: the executable hooks.d runs, and its argv[0].
HOOK_NAME: Final = "shieldaudit-hook"
#: The variable naming the interpreter of the Python reference path.
PYTHON_ENV: Final = "SHIELDAUDIT_HOOK_PYTHON"
#: How the Python reference path is started (the native hook uses the same flags).
REFERENCE_ARGS: Final = ("-I", "-B", "-m", "shieldaudit.hook")
_ELF_MAGIC: Final = b"\x7fELF"
# Go's RE2 (which Podman uses) has no lookaround or backreferences.
_NOT_RE2: Final = re.compile(r"\(\?<?[=!]|\(\?P=|\\[1-9]")


def file_name(stage: str) -> str:
    """Return the hooks.d file name for a stage (``shieldaudit-createRuntime.json``)."""
    return f"{FILE_PREFIX}{stage}.json"


def native_hook_path() -> str:
    """Return the absolute path of this installation's native ``shieldaudit-hook``.

    Found through the package's installed files (wherever pip put its scripts:
    a venv, ``/usr/local/bin``, ``~/.local/bin``), else next to the interpreter.
    The path is returned even when nothing is there; :func:`check_executable`
    then says so.
    """
    candidates: list[str] = []
    try:
        from importlib.metadata import PackageNotFoundError, distribution  # noqa: PLC0415

        files = distribution("shieldaudit").files or []
        candidates += [str(f.locate()) for f in files if f.name == HOOK_NAME]
    except PackageNotFoundError:
        pass
    candidates.append(os.path.join(sysconfig.get_path("scripts"), HOOK_NAME))  # noqa: PTH118
    candidates.append(os.path.join(os.path.dirname(sys.executable), HOOK_NAME))  # noqa: PTH118, PTH120
    for candidate in candidates:
        if os.path.isfile(candidate):  # noqa: PTH113
            return os.path.abspath(candidate)  # noqa: PTH100
    return os.path.abspath(candidates[0])  # noqa: PTH100


def settings_env(
    settings: StoreSettings, *, fail_closed: bool = False, python: str | None = None
) -> list[str]:
    """Return the hook's environment: every store setting, so no config file is read.

    Podman runs ``poststop`` with an empty environment; this is all it gets.
    ``SHIELDAUDIT_HOOK_PYTHON`` names the interpreter of the Python reference
    path the native hook hands unusual cases to: this installation's own
    (``sys.executable`` as started, not resolved, so a venv stays a venv).
    """
    return [
        f"SHIELDAUDIT_ROOT={settings.root}",
        f"SHIELDAUDIT_MAX_SEGMENT_BYTES={settings.max_segment_bytes}",
        f"SHIELDAUDIT_KEEP_SEGMENTS={settings.keep_segments}",
        f"SHIELDAUDIT_FSYNC={settings.fsync}",
        f"SHIELDAUDIT_KEY_FILE={settings.key_file or ''}",
        f"SHIELDAUDIT_FAIL_CLOSED={int(fail_closed or settings.fail_closed)}",
        f"{PYTHON_ENV}={python or sys.executable}",
        MANAGED_MARK,
    ]


def annotation_when(spec: str) -> dict[str, object]:
    """Turn ``KEY_REGEX[=VALUE_REGEX]`` into an anchored ``when.annotations`` condition.

    Both regexes must match the whole key (value): ``^(?:...)$``. The value
    defaults to anything.

    Raises:
        UsageError: an empty key, a regex that does not compile, or one using
            constructs Podman's RE2 engine lacks.
    """
    key, sep, value = spec.partition("=")
    if not key:
        raise UsageError(f"--annotation {spec!r}: expected KEY_REGEX or KEY_REGEX=VALUE_REGEX")
    patterns: dict[str, str] = {}
    for part, what in ((key, "key"), (value if sep else ".*", "value")):
        if _NOT_RE2.search(part):
            raise UsageError(
                f"--annotation {what} regex {part!r} uses lookaround or backreferences, "
                "which Podman's regex engine (RE2) does not support",
            )
        anchored = f"^(?:{part})$"
        try:
            re.compile(anchored)
        except re.error as exc:
            raise UsageError(f"--annotation {what} regex {part!r} is invalid: {exc}") from None
        patterns[what] = anchored
    return {"annotations": {patterns["key"]: patterns["value"]}}


def build_hook(
    stage: str,
    path: str,
    env: Sequence[str],
    annotation: str | None = None,
    *,
    fail_closed: bool = False,
    timeout: int = HOOK_TIMEOUT_S,
) -> dict[str, object]:
    """Return the hooks.d document running ``path STAGE [--fail-closed]`` at ``stage``."""
    if stage not in STAGES:
        raise UsageError(f"unknown stage {stage!r}: expected one of {', '.join(STAGES)}")
    when: dict[str, object] = (
        {"always": True} if annotation is None else annotation_when(annotation)
    )
    return {
        "version": HOOKS_VERSION,
        "hook": {
            "path": path,
            "args": [HOOK_NAME, stage, *(["--fail-closed"] if fail_closed else [])],
            "env": list(env),
            "timeout": timeout,
        },
        "when": when,
        "stages": [stage],
    }


def validate(doc: Mapping[str, object], *, check_path: bool = True) -> None:  # noqa: C901, PLR0912
    """Check a hooks.d document against the 1.0.0 schema and, optionally, its executable.

    Raises:
        UsageError: naming the first problem found.
    """
    if doc.get("version") != HOOKS_VERSION:
        raise UsageError(f"hook version must be {HOOKS_VERSION!r}, not {doc.get('version')!r}")
    hook = doc.get("hook")
    if not isinstance(hook, dict):
        raise UsageError("hook: expected an object with path, args, env, timeout")
    path = hook.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise UsageError(f"hook.path must be an absolute path, not {path!r}")
    for key in ("args", "env"):
        value = hook.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"hook.{key} must be a list of strings")
    if not all("=" in item for item in hook.get("env", [])):
        raise UsageError("hook.env entries must be NAME=VALUE")
    timeout = hook.get("timeout")
    if timeout is not None and (not isinstance(timeout, int) or timeout < 1):
        raise UsageError(f"hook.timeout must be a positive integer, not {timeout!r}")
    when = doc.get("when")
    if not isinstance(when, dict) or not any(
        when.get(k) for k in ("always", "annotations", "commands", "hasBindMounts")
    ):
        raise UsageError("when: needs at least one condition (always, annotations, ...)")
    for pattern in [*when.get("annotations", {}).items(), *when.get("commands", [])]:
        for text in pattern if isinstance(pattern, tuple) else (pattern,):
            try:
                re.compile(text)
            except (re.error, TypeError) as exc:
                raise UsageError(f"when: bad regex {text!r}: {exc}") from None
    stages = doc.get("stages")
    if not isinstance(stages, list) or not stages or not set(stages) <= set(STAGES):
        raise UsageError(f"stages must be a non-empty list of {', '.join(STAGES)}")
    if check_path:
        check_executable(path)


def check_executable(path: str) -> None:
    """Raise UsageError unless ``path`` is an executable regular file in native (ELF) format.

    hooks.d runs a native executable, never a script: a script would bring back
    an interpreter start on every container start (and its dependence on the
    environment it finds).
    """
    if not os.path.isfile(path):  # noqa: PTH113 -- follows symlinks, like the runtime
        raise UsageError(
            f"hook executable {path} does not exist: reinstall shieldaudit "
            "(pip install builds the native hook; it needs cargo)",
        )
    if not os.access(path, os.X_OK):
        raise UsageError(f"hook executable {path} is not executable")
    try:
        with open(path, "rb") as f:  # noqa: PTH123
            magic = f.read(len(_ELF_MAGIC))
    except OSError as exc:
        raise UsageError(f"hook executable {path} cannot be read: {exc.strerror}") from None
    if magic != _ELF_MAGIC:
        raise UsageError(
            f"hook executable {path} is not a native executable (a script?): hooks.d must run "
            "the native shieldaudit-hook; reinstall shieldaudit (pip install builds it with cargo)",
        )


def _hook_env(hook: Mapping[str, object]) -> dict[str, str]:
    env = hook.get("env") or []
    assert isinstance(env, list)  # noqa: S101 -- validate() checked it
    return dict(str(item).split("=", 1) for item in env)


def _run_check(argv: Sequence[str], env: Mapping[str, str], stdin: bytes, cwd: str) -> str:
    try:
        result = subprocess.run(
            argv,
            env=dict(env),
            input=stdin,
            cwd=cwd,
            capture_output=True,
            timeout=CHECK_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StorageError(f"cannot run the hook {argv[0]}: {exc}") from None
    out = result.stdout.decode(errors="replace")
    err = result.stderr.decode(errors="replace")
    if result.returncode != 0 or err.strip():
        output = " ".join((err or out).split())[-500:]
        raise StorageError(
            f"the hook command {' '.join(argv)} failed (exit {result.returncode}): {output}"
        )
    return out.strip()


def check_runnable(doc: Mapping[str, object]) -> str:
    """Run the native hook and the Python reference path as the runtime would; return their output.

    Both run in the hook's own environment (nothing else) with ``--check``,
    then each appends one entry for a synthetic state to a throwaway root (the
    native hook first, the reference second, continuing its chain), and the
    result must verify. Nothing is written anywhere else: the reference runs
    with ``-B``, so no ``__pycache__`` appears next to the package.

    Raises:
        StorageError: a run failed or the throwaway trail is not what both
            paths must write; the message carries the output.
    """
    hook = doc["hook"]
    assert isinstance(hook, dict)  # noqa: S101 -- validate() checked it
    env = _hook_env(hook)
    python = env.get(PYTHON_ENV, "")
    if not python.startswith("/"):
        raise StorageError(f"the hook's environment must name {PYTHON_ENV}=<absolute python>")
    native = [str(hook["path"])]
    reference = [python, *REFERENCE_ARGS]
    scratch = tempfile.mkdtemp(prefix="shieldaudit-check-")
    try:
        lines = [
            _run_check([*native, "--check"], env, b"", scratch),
            _run_check([*reference, "--check"], env, b"", scratch),
        ]
        root = os.path.join(scratch, "root")  # noqa: PTH118
        # Retention off in the throwaway root: with tiny segments each check
        # entry is a segment of its own, and both must stay to be compared.
        check_env = {**env, "SHIELDAUDIT_ROOT": root, "SHIELDAUDIT_KEEP_SEGMENTS": "0"}
        container_id = secrets.token_hex(32)
        state = json.dumps({"ociVersion": "1.0.2", "id": container_id, "status": "created"})
        for argv in (native, reference):
            _run_check([*argv, "poststart", "--fail-closed"], check_env, state.encode(), scratch)
        lines.append(_check_trail(Path(root), container_id, env.get("SHIELDAUDIT_KEY_FILE")))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return "\n".join(line for line in lines if line)


def _check_trail(root: Path, container_id: str, key_file: str | None) -> str:
    """Read the check's trail through the store reader, every segment, and verify it."""
    from shieldaudit.store import chain  # noqa: PLC0415 -- only when installing
    from shieldaudit.store.reader import TrailDir  # noqa: PLC0415
    from shieldaudit.store.verify import verify_container  # noqa: PLC0415

    keys = chain.load_keys(Path(key_file) if key_file else None)
    try:
        with TrailDir(root, container_id) as trail:
            seqs = [record.seq for record in trail.records()]
    except (OSError, ShieldAuditError) as exc:
        raise StorageError(f"the hook check wrote no readable trail: {exc}") from None
    result = verify_container(root, container_id, keys)
    if seqs != [1, 2] or not result.ok:
        raise StorageError(
            f"the hook check's trail is wrong (seqs {seqs}, chain ok: {result.ok}): "
            "the native hook and the Python reference disagree; reinstall shieldaudit",
        )
    return "shieldaudit-hook: native and reference paths wrote one valid chain"


def read_document(path: Path) -> dict[str, object] | None:
    """Return a hooks.d file's JSON object, or None if it is not one."""
    try:
        data = path.read_bytes()[: MAX_HOOK_FILE_BYTES + 1]
        doc = json.loads(data)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def is_managed(path: Path) -> bool:
    """Return whether ``path`` is a hooks.d file written by :func:`install`."""
    doc = read_document(path)
    hook = doc.get("hook") if doc else None
    return isinstance(hook, dict) and MANAGED_MARK in (hook.get("env") or [])


def _write_atomically(directory: Path, name: str, data: bytes) -> Path:
    # A half-written hooks.d file is what makes Podman skip the hook (4.3) or fail
    # every container (newer): write a temporary name without ".json" (never read
    # by Podman), fsync, then rename over the target in one step.
    target = directory / name
    tmp = directory / f".{name}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, "short write")
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(target)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def install(
    hooks_dir: Path, docs: Mapping[str, Mapping[str, object]], *, check: bool = True
) -> tuple[list[Path], list[Path]]:
    """Write one validated file per stage; remove this tool's files for other stages.

    Args:
        hooks_dir: the hooks.d directory (created if missing).
        docs: stage -> document, from :func:`build_hook`.
        check: run the hook command once (``--check``) before installing.

    Returns:
        The files written and the files removed.

    Raises:
        UsageError: a document is invalid, or a target exists and was not written
            by install-hooks (nothing is written then).
        StorageError: the directory or a file cannot be written, or the check failed.
    """
    for doc in docs.values():
        validate(doc)
    for stage in docs:
        target = hooks_dir / file_name(stage)
        if target.exists() and not is_managed(target):
            raise UsageError(
                f"{target} exists and was not written by shieldaudit install-hooks: "
                "move it away first",
            )
    if check:
        checked: set[str] = set()
        for doc in docs.values():
            hook = doc["hook"]
            assert isinstance(hook, dict)  # noqa: S101 -- validate() checked it
            what = json.dumps([hook["path"], hook.get("env")])
            if what not in checked:  # the stages differ only in their STAGE argument
                check_runnable(doc)
                checked.add(what)
    try:
        hooks_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        written = []
        for stage, doc in docs.items():
            data = (json.dumps(doc, indent=2) + "\n").encode()
            validate(json.loads(data))
            written.append(_write_atomically(hooks_dir, file_name(stage), data))
        removed = _remove_managed(hooks_dir, keep=set(docs))
    except OSError as exc:
        raise StorageError(f"cannot write hooks in {hooks_dir}: {exc.strerror or exc}") from None
    return written, removed


def uninstall(hooks_dir: Path) -> list[Path]:
    """Remove every hooks.d file install-hooks wrote in ``hooks_dir``; return them."""
    try:
        return _remove_managed(hooks_dir, keep=set())
    except OSError as exc:
        raise StorageError(f"cannot remove hooks in {hooks_dir}: {exc.strerror or exc}") from None


def _remove_managed(hooks_dir: Path, keep: Iterable[str]) -> list[Path]:
    keep_names = {file_name(stage) for stage in keep}
    removed: list[Path] = []
    if not hooks_dir.is_dir():
        return removed
    for path in sorted(hooks_dir.glob(f"{FILE_PREFIX}*.json")):
        if path.name not in keep_names and is_managed(path):
            path.unlink()
            removed.append(path)
    return removed
