"""``shieldaudit-hook STAGE [--fail-closed]``: the OCI hook, one ``source=hook`` entry per call.

It runs synchronously on every container's start path, often with an empty
environment (Podman runs ``poststop`` with no PATH or HOME), so:

* it imports only the standard library's cheapest modules and the project's
  lean ones (:mod:`~shieldaudit.ocistate`, :mod:`~shieldaudit.hooksettings`,
  :mod:`~shieldaudit.hookstore`, :mod:`~shieldaudit.hookchain`,
  :mod:`~shieldaudit.leanjson`); the reference writer and the full settings
  loader are imported only for the unusual cases (see ``hookstore``);
* it never hangs: stdin is read up to 1 MiB, the lock wait is bounded (2 s);
* every failure is one line on stderr plus one line in
  ``<root>/state/hook-errors.jsonl`` (counted by the sidecar as
  ``shieldaudit_hook_errors_total``); the exit status is then 0 (fail-open,
  the default) or 1 (``--fail-closed`` / ``SHIELDAUDIT_FAIL_CLOSED=1``), which
  makes the runtime refuse to start a container it cannot audit.

An unknown STAGE is refused (recorded as a failure): the action vocabulary,
and with it the sidecar's metric labels, stays the six OCI stages.
"""

# pathlib costs the hook ~2 ms per container start; os.path is free.
# ruff: noqa: PTH100, PTH120

from __future__ import annotations

import os
import sys
import time

from shieldaudit import hooksettings, hookstore, leanjson, ocistate
from shieldaudit.errors import InvalidContainerIdError, ShieldAuditError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

MAX_STATE_BYTES = 1024 * 1024
MAX_CONFIG_BYTES = 1024 * 1024
MAX_STORAGE_BYTES = 16 * 1024 * 1024
#: How much of containers.json one record may span when decoded on its own.
RECORD_WINDOW_BYTES = 256 * 1024
MAX_ERROR_CHARS = 1000
USAGE = "usage: shieldaudit-hook STAGE [--fail-closed] < state.json  (or: --check)"


def read_bounded(fd: int, limit: int, what: str) -> bytes:
    """Read ``fd`` to its end, refusing more than ``limit`` bytes."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = os.read(fd, min(65536, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        chunks.append(chunk)
        if total > limit:
            raise UsageError(f"{what} is larger than {limit} bytes")


def read_stdin(fd: int) -> bytes:
    """Read the OCI state from ``fd`` (at most :data:`MAX_STATE_BYTES`)."""
    try:
        return read_bounded(fd, MAX_STATE_BYTES, "OCI state on stdin")
    except OSError as exc:
        raise UsageError(f"cannot read the OCI state on stdin: {exc.strerror or exc}") from None


def read_file(path: str, limit: int) -> bytes | None:
    """Return a regular file's bytes, or None when absent, unreadable, special or over ``limit``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (st.st_mode & 0o170000) != 0o100000 or st.st_size > limit:
            return None
        os.set_blocking(fd, True)
        return read_bounded(fd, limit, path)
    except (OSError, UsageError):
        return None
    finally:
        os.close(fd)


def gather(state: ocistate.OciState) -> tuple[ocistate.ContainerInfo, ocistate.ContainerInfo]:
    """Learn what is cheap from the bundle's config.json and the storage metadata.

    Absent, huge or malformed files are ignored: they only leave fields empty.
    """
    bundle = ocistate.ContainerInfo()
    storage = ocistate.ContainerInfo()
    if not state.bundle:
        return bundle, storage
    data = read_file(state.bundle.rstrip("/") + "/config.json", MAX_CONFIG_BYTES)
    if data is not None:
        try:  # noqa: SIM105 -- contextlib is too heavy an import for the hook
            bundle = ocistate.bundle_info(ocistate.parse_json_object(data, "config.json"))
        except UsageError:
            pass  # malformed: learn nothing from it
    meta_path = ocistate.storage_metadata_path(state.bundle, state.container_id)
    if meta_path is not None:
        data = read_file(meta_path, MAX_STORAGE_BYTES)
        if data is not None:
            storage = storage_record(data, state.container_id)
    return bundle, storage


def storage_record(data: bytes, container_id: str) -> ocistate.ContainerInfo:
    """Find one container in ``containers.json`` without parsing the whole list.

    The file lists every container on the host, so parsing it all would make
    each hook's cost grow with the host's container count. containers/storage
    writes ``id`` as each record's first key, compactly: find that, decode the record
    that starts at the brace before it, and check it. Anything unexpected falls
    back to parsing the whole file.
    """
    key = b'"id":"' + container_id.encode("ascii") + b'"'
    at = data.find(key)
    start = data.rfind(b"{", 0, at) if at >= 0 else -1
    if start >= 0 and not data[start + 1 : at].strip():
        window = data[start : start + RECORD_WINDOW_BYTES].decode("utf-8", "replace")
        try:
            record = leanjson.decode_at(window, 0)
        except ValueError:
            record = None
        if isinstance(record, dict) and record.get("id") == container_id:
            return ocistate.storage_info([record], container_id)
    try:
        containers = leanjson.loads(data.decode("utf-8"))
    except ValueError:
        return ocistate.ContainerInfo()
    return ocistate.storage_info(containers, container_id)


def is_repeat(stage: str) -> Callable[[Mapping[str, object]], bool] | None:
    """Return the check that makes a stage idempotent, if it needs one.

    Podman can run ``poststop`` twice for one stop (once from ``podman stop``,
    once from conmon's cleanup). Two poststops in a row with nothing between
    them can only be that, so the second one is not written.
    """
    if stage != "poststop":
        return None
    return lambda last: last.get("source") == "hook" and last.get("action") == "poststop"


def append_entry(
    environ: Mapping[str, str],
    container_id: str,
    fields: Mapping[str, object],
    skip: Callable[[Mapping[str, object]], bool] | None,
    clock: Callable[[], int],
) -> None:
    """Append through the fast path, else through the reference TrailWriter."""
    lean = hooksettings.lean_settings(environ)
    if lean is not None:
        try:
            hookstore.append(lean, container_id, fields, clock=clock, skip=skip)
        except hookstore.Unusual:
            pass
        else:
            return
    # The unusual cases: worth their imports, rare by construction.
    from shieldaudit.settings import load_store_settings  # noqa: PLC0415
    from shieldaudit.store.writer import TrailWriter  # noqa: PLC0415

    with TrailWriter(load_store_settings(environ), clock=clock) as writer:
        writer.append(container_id, fields)


def error_root(environ: Mapping[str, str]) -> str | None:
    """Return the root to record a failure under, even when the settings do not load."""
    lean = hooksettings.lean_settings(environ)
    if lean is not None:
        return lean.root
    root = environ.get("SHIELDAUDIT_ROOT", "").strip()
    if root.startswith("/"):
        return root
    try:
        from shieldaudit.settings import load_store_settings  # noqa: PLC0415

        return str(load_store_settings(environ).root)
    except (ShieldAuditError, OSError, RuntimeError, KeyError):  # no HOME, no passwd entry
        return None


def self_check() -> str:
    """Import everything any hook run may need; return a one-line description."""
    import shieldaudit.settings  # noqa: PLC0415
    import shieldaudit.store.writer  # noqa: F401, PLC0415

    here = os.path.dirname(os.path.abspath(__file__))
    version = ".".join(map(str, sys.version_info[:3]))
    return f"shieldaudit-hook: ok (python {version}, package {here})"


def run(  # noqa: C901 -- argument parsing and the one place failures are caught
    argv: Sequence[str],
    environ: Mapping[str, str],
    stdin_fd: int = 0,
    clock: Callable[[], int] = time.time_ns,
) -> int:
    """Record one hook invocation; return the exit status (see the module docstring)."""
    stage = ""
    flag_closed = False
    problem = ""
    for arg in argv:
        if arg == "--fail-closed":
            flag_closed = True
        elif arg in {"-h", "--help"}:
            print(USAGE)
            return 0
        elif arg == "--check":
            print(self_check())
            return 0
        elif arg.startswith("-") or stage:
            problem = f"unexpected argument {ocistate.clip(arg, 64)!r}; {USAGE}"
        else:
            stage = arg
    if not stage and not problem:
        problem = f"missing STAGE; {USAGE}"
    container_id = ""
    try:
        if problem:
            raise UsageError(problem)  # noqa: TRY301 -- recorded like every failure
        state = ocistate.parse_state(read_stdin(stdin_fd))
        container_id = state.container_id
        if stage not in ocistate.STAGES:
            raise UsageError(  # noqa: TRY301 -- recorded like every failure
                f"unknown hook stage {ocistate.clip(stage, 64)!r}: expected one of "
                f"{', '.join(ocistate.STAGES)}; fix the hooks.d file (shieldaudit install-hooks)",
            )
        bundle, storage = gather(state)
        fields = ocistate.entry_fields(stage, state, bundle, storage)
        append_entry(environ, container_id, fields, is_repeat(stage), clock)
    except InvalidContainerIdError as exc:
        return fail(exc.message, environ, stage, exc.value, flag_closed=flag_closed, clock=clock)
    except ShieldAuditError as exc:
        return fail(exc.message, environ, stage, container_id, flag_closed=flag_closed, clock=clock)
    except Exception as exc:  # noqa: BLE001 -- a hook must report, never trace back
        message = f"internal error ({type(exc).__name__}: {exc}); please report it"
        return fail(message, environ, stage, container_id, flag_closed=flag_closed, clock=clock)
    return 0


def fail(
    message: str,
    environ: Mapping[str, str],
    stage: str,
    container_id: str,
    *,
    flag_closed: bool,
    clock: Callable[[], int],
) -> int:
    """Report a failure: one stderr line, one hook-errors line; return 1 if fail-closed."""
    message = " ".join(ocistate.clip(message, MAX_ERROR_CHARS).split())
    root = error_root(environ)
    fsync = environ.get("SHIELDAUDIT_FSYNC", "always").strip().lower() != "never"
    why_not = (
        hookstore.record_error(
            root,
            ocistate.clip(stage, 64),
            ocistate.clip(container_id, 80),
            message,
            clock=clock,
            sync=fsync,
        )
        if root is not None
        else "no usable root"
    )
    closed = flag_closed or hooksettings.env_fail_closed(environ)
    suffix = f" [failure not recorded: {why_not}]" if why_not else ""
    verdict = "container refused (fail-closed)" if closed else "container allowed (fail-open)"
    print(f"shieldaudit-hook {stage or '?'}: {message}; {verdict}{suffix}", file=sys.stderr)
    return 1 if closed else 0


def main() -> None:
    """Entry point of the ``shieldaudit-hook`` script and of ``_hookmain``."""
    sys.exit(run(sys.argv[1:], os.environ))


if __name__ == "__main__":
    main()
