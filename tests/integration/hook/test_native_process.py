"""The native hook's own paths, as the runtime runs it (a real process, the hooks.d environment).

Pins that the common cases never leave the native process (the reference
interpreter is made unreachable, so a hand-over would show as a failure), that
the native failures (lock timeout, a failed write) are worded and recorded as
the reference words them, that an impossible hand-over is one clean failure,
and that a hand-over passes the exact stdin bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import resource
import sys
from pathlib import Path

from native_hook import CID, NO_PYTHON, entries, env_for, podman_bundle, run, state
from shieldaudit.core.settings import StoreSettings
from shieldaudit.hook import run as hook
from shieldaudit.store import chain
from shieldaudit.store.verify import verify_container
from shieldaudit.store.writer import TrailWriter


def test_a_container_lifecycle_stays_native_keyed_and_unkeyed(tmp_path):
    """A Podman container's three hooks stay native, keyed and unkeyed.

    createRuntime, poststart, poststop: three entries with name, image and command,
    written without the reference (unreachable here); the chain verifies, keyed
    with the key file's first line.
    """
    bundle = podman_bundle(tmp_path)
    key = tmp_path / "key"
    key.write_bytes(b"# signing key first\nthe-current-key-32-bytes-long-xx\nan-older-key-16b+\n")
    key.chmod(0o600)
    for keyed in (False, True):
        root = tmp_path / f"root-{keyed}"
        env = env_for(root, SHIELDAUDIT_KEY_FILE=str(key) if keyed else "")
        for stage, status, pid in (
            ("createRuntime", "creating", 4242),
            ("poststart", "running", 4242),
            ("poststop", "stopped", 0),
        ):
            proc = run(stage, state(bundle, status, pid), env)
            assert (proc.returncode, proc.stderr) == (0, b"")
        got = entries(root)
        assert [e["action"] for e in got] == ["createRuntime", "poststart", "poststop"]
        assert {e["container"] for e in got} == {"web"}
        assert {e["image"] for e in got} == {"docker.io/library/alpine:latest"}
        assert got[0]["detail"] == "/bin/sh -c 'echo hi; sleep 1'"
        assert got[2]["pid"] is None
        kid = chain.Key.from_secret(b"the-current-key-32-bytes-long-xx").kid
        assert {e["chain"] for e in got} == {f"hmac-sha256:{kid}" if keyed else "sha256"}
        keys = chain.load_keys(key) if keyed else chain.NO_KEYS
        report = verify_container(root, CID, keys)
        assert report.ok, report


def test_poststop_repeat_after_a_listener_entry_is_not_written(tmp_path):
    """A repeated poststop after a listener entry is recognised natively and not written.

    The listener's 'died' entry follows the first poststop; the rule looks at the
    last hook entry, not the last entry.
    """
    root = tmp_path / "root"
    bundle = podman_bundle(tmp_path)
    assert run("poststop", state(bundle, "stopped", 0), env_for(root)).returncode == 0
    with TrailWriter(StoreSettings(root, fsync="never")) as writer:
        writer.append(CID, {"source": "events", "action": "died", "exit_code": 0})
    before = (root / "containers" / CID / "audit.jsonl").read_bytes()
    proc = run("poststop", state(bundle, "stopped", 0), env_for(root))
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert (root / "containers" / CID / "audit.jsonl").read_bytes() == before
    proc = run("poststart", state(bundle, "running"), env_for(root))
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert [e["action"] for e in entries(root)] == ["poststop", "died", "poststart"]


def test_a_held_lock_is_a_recorded_native_failure(tmp_path):
    """A lock held past the 2 s bound is a native failure, worded as the reference words it.

    Fail-closed exit 1, one stderr line, one hook-errors.jsonl line, nothing written.
    """
    root = tmp_path / "root"
    bundle = podman_bundle(tmp_path)
    assert run("createRuntime", state(bundle), env_for(root)).returncode == 0
    lock_path = root / "state" / "locks" / f"{CID}.lock"
    with lock_path.open("r+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = run("poststart", state(bundle), env_for(root), "--fail-closed")
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 1
    assert lines == [
        (
            f"shieldaudit-hook poststart: timed out after 2s waiting for the lock of container "
            f"{CID[:12]}: another writer holds it; retry, or look for a stuck shieldaudit "
            "process; container refused (fail-closed)"
        )
    ]
    errors = (root / "state" / "hook-errors.jsonl").read_text().splitlines()
    assert len(errors) == 1
    record = json.loads(errors[0])
    assert (record["stage"], record["container_id"]) == ("poststart", CID)
    assert record["error"].startswith("timed out after 2s")
    assert len(entries(root)) == 1


def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_failed_write_leaves_the_trail_as_it_was(tmp_path):
    """A write past the file size limit fails cleanly and leaves the trail unchanged.

    EFBIG, with SIGXFSZ ignored as Python ignores it: one failure line naming the
    trail file, the exit status per mode.
    """
    root = tmp_path / "root"
    bundle = podman_bundle(tmp_path)
    assert run("createRuntime", state(bundle), env_for(root)).returncode == 0
    active = root / "containers" / CID / "audit.jsonl"
    before = active.read_bytes()
    proc = run("poststart", state(bundle), env_for(root), preexec_fn=_limit_file_size(len(before)))
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 0
    assert lines == [
        (
            f"shieldaudit-hook poststart: cannot write {active}: File too large (free space, then "
            "retry); container allowed (fail-open)"
        )
    ]
    assert active.read_bytes() == before


def test_an_unreachable_reference_is_one_clean_failure(tmp_path):
    """A hand-over that cannot run is one clean, recorded failure.

    A torn tail (the reference's case) with SHIELDAUDIT_HOOK_PYTHON missing: one
    stderr line saying what could not run and why it was needed; fail-closed 1.
    """
    root = tmp_path / "root"
    bundle = podman_bundle(tmp_path)
    assert run("createRuntime", state(bundle), env_for(root)).returncode == 0
    active = root / "containers" / CID / "audit.jsonl"
    with active.open("ab") as f:
        f.write(b'{"seq":2,"ts":"2026')
    proc = run("poststart", state(bundle), env_for(root), "--fail-closed")
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 1
    assert len(lines) == 1
    assert lines[0].startswith(
        f"shieldaudit-hook poststart: cannot run the Python reference path {NO_PYTHON}: "
        "No such file or directory (handing over because a torn tail)"
    )
    assert lines[0].endswith("; container refused (fail-closed)")
    record = json.loads((root / "state" / "hook-errors.jsonl").read_text())
    assert "cannot run the Python reference path" in record["error"]


def test_a_hand_over_passes_the_exact_stdin_bytes(tmp_path):
    """A hand-over passes the state the runtime sent, byte for byte.

    A torn tail goes to the reference with a 200 KiB state (past a pipe's buffer)
    holding raw control characters.
    """
    root = tmp_path / "root"
    bundle = podman_bundle(tmp_path)
    assert run("createRuntime", state(bundle), env_for(root)).returncode == 0
    with (root / "containers" / CID / "audit.jsonl").open("ab") as f:
        f.write(b'{"seq":2,"ts":"2026')
    annotations = {f"note.{i:02d}": f"\x01{i}" + "v" * 300 for i in range(32)}
    big = (
        json.dumps(
            {
                "id": CID,
                "status": "running",
                "pid": 7,
                "bundle": bundle,
                "annotations": annotations,
                "padding": "p" * 200_000,
            },
            ensure_ascii=False,
        )
        .replace("\\u0001", "\x01")
        .encode()
    )
    proc = run("poststart", big, env_for(root, sys.executable))
    assert (proc.returncode, proc.stderr) == (0, b"")
    last = entries(root)[-1]
    assert last["torn_tail_bytes"] == len(b'{"seq":2,"ts":"2026')
    assert last["annotations"] == {k: v[:255] + "…" for k, v in annotations.items()}


def test_check_runs_the_native_and_the_reference_path(tmp_path):
    """--check prints the native line, then the reference's own check, and exits 0."""
    proc = run("--check", b"", env_for(tmp_path / "root", sys.executable))
    lines = proc.stdout.decode().splitlines()
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert lines[0].startswith("shieldaudit-hook: native ")
    assert lines[1].startswith("shieldaudit-hook: ok")


def test_a_full_error_log_is_rotated_natively(tmp_path):
    """A full error log is rotated natively, as the reference rotates it.

    At 1 MiB the hook moves hook-errors.jsonl to hook-errors.1.jsonl (replacing
    the previous generation) and starts a new log with its own line.
    """
    root = tmp_path / "root"
    bundle = podman_bundle(tmp_path)
    assert run("createRuntime", state(bundle), env_for(root)).returncode == 0
    log = root / "state" / "hook-errors.jsonl"
    full = b'{"ts":"2026-11-22T10:42:12.211996Z","stage":"x","container_id":"","error":"e"}\n'
    full *= 1024 * 1024 // len(full) + 1
    log.write_bytes(full)
    log.with_name("hook-errors.1.jsonl").write_bytes(b"the previous generation\n")
    proc = run("bogus", state(bundle), env_for(root))
    assert proc.returncode == 0
    assert proc.stderr.decode().startswith("shieldaudit-hook bogus: unknown hook stage 'bogus'")
    assert log.with_name("hook-errors.1.jsonl").read_bytes() == full
    (line,) = log.read_bytes().splitlines()
    assert json.loads(line)["stage"] == "bogus"


def test_a_hand_over_for_the_bundle_passes_the_state_not_the_bundle(tmp_path):
    """A config.json the native reader leaves to the reference is handed over with the state.

    Nesting deeper than the native reader goes, in config.json: the reference gets
    the runtime's state on stdin (its status and pid are in the entry) and reads
    config.json itself.
    """
    root = tmp_path / "root"
    bundle = podman_bundle(tmp_path)
    config = Path(bundle) / "config.json"
    deep = "[" * 200 + "]" * 200
    config.write_text(f'{{"process":{{"args":["sleep","9"]}},"x":{deep}}}')
    proc = run("poststart", state(bundle, "running", 31337), env_for(root, sys.executable))
    assert (proc.returncode, proc.stderr) == (0, b"")
    (entry,) = entries(root)
    assert (entry["status"], entry["pid"], entry["detail"]) == ("running", 31337, "sleep 9")


def _spoil_error_log(root: Path, how: str) -> None:
    state_dir = root / "state"
    if how == "loose state/":
        state_dir.chmod(0o770)
    elif how == "foreign state/":
        os.chown(state_dir, 54321, -1)
    else:
        os.link(state_dir / "hook-errors.jsonl", root.parent / f"{root.name}-outside")


def _pipe(data: bytes) -> int:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, data)
    os.close(write_fd)
    return read_fd


def test_a_refused_error_log_is_refused_as_the_reference_refuses_it(tmp_path):
    """A loose or foreign ``state/`` or a hard-linked hook-errors.jsonl is not appended to.

    The failure (an unknown stage, recorded by the native hook itself)
    goes to stderr only, with the reference's "failure not recorded" reason word
    for word; the log (and the file linked to it) is unchanged.
    """
    bad = state(str(tmp_path / "no-bundle"))
    for how in ("loose state/", "foreign state/", "hard-linked log"):
        base = tmp_path / how.replace(" ", "-").replace("/", "")
        native_root, reference_root = base / "native", base / "reference"
        for root in (native_root, reference_root):
            assert run("bogus", bad, env_for(root)).returncode == 0
            _spoil_error_log(root, how)
        log = native_root / "state" / "hook-errors.jsonl"
        before = log.read_bytes()
        proc = run("bogus", bad, env_for(native_root))
        assert proc.returncode == 0
        assert log.read_bytes() == before
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            status = hook.run(["bogus"], env_for(reference_root), stdin_fd=_pipe(bad))
        assert status == 0
        native_line = proc.stderr.decode().replace(str(native_root), "ROOT")
        reference_line = err.getvalue().replace(str(reference_root), "ROOT")
        assert native_line == reference_line, how
        assert "[failure not recorded: ROOT/state" in native_line, how
