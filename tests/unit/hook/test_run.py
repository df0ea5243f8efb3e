"""``shieldaudit-hook`` end to end in-process (shieldaudit.hook.run): input, output, failures.

Each test feeds a state document through a real file descriptor, with a
Podman-like storage layout in tmp_path, and reads the trail and
``state/hook-errors.jsonl`` back.
"""

from __future__ import annotations

import json
import os

import pytest

from shieldaudit.core.settings import StoreSettings
from shieldaudit.hook import run as hook
from shieldaudit.store import chain
from shieldaudit.store.verify import verify_container
from shieldaudit.store.writer import TrailWriter

CID = "d" * 64
OTHER = "e" * 64


@pytest.fixture
def podman_layout(tmp_path):
    """A graphroot with one container's bundle and containers.json, as Podman 4 writes them."""
    containers = tmp_path / "storage" / "overlay-containers"
    bundle = containers / CID / "userdata"
    bundle.mkdir(parents=True)
    config = {
        "ociVersion": "1.0.2-dev",
        "process": {"args": ["sh", "-c", "sleep 1"]},
        "annotations": {"io.container.manager": "libpod"},
    }
    (bundle / "config.json").write_text(json.dumps(config))
    meta = json.dumps({"image-name": "localhost/test:latest", "name": "web"})
    records = [
        {"id": OTHER, "names": ["other"]},
        {"id": CID, "names": ["web"], "image": "f" * 64, "metadata": meta},
    ]
    (containers / "containers.json").write_text(json.dumps(records))
    return bundle


@pytest.fixture
def env(tmp_path):
    """The hooks.d environment install-hooks writes (Podman passes nothing else)."""
    return {
        "SHIELDAUDIT_ROOT": str(tmp_path / "root"),
        "SHIELDAUDIT_MAX_SEGMENT_BYTES": "10485760",
        "SHIELDAUDIT_KEEP_SEGMENTS": "20",
        "SHIELDAUDIT_FSYNC": "never",
        "SHIELDAUDIT_KEY_FILE": "",
        "SHIELDAUDIT_FAIL_CLOSED": "0",
    }


def run_hook(tmp_path, argv, environ, data: bytes) -> int:
    stdin = tmp_path / "stdin"
    stdin.write_bytes(data)
    fd = os.open(stdin, os.O_RDONLY)
    try:
        return hook.run(argv, environ, fd)
    finally:
        os.close(fd)


def state(bundle, **extra) -> bytes:
    doc = {"ociVersion": "1.0.2-dev", "id": CID, "status": "creating", "pid": 321}
    doc["bundle"] = str(bundle)
    return json.dumps(doc | extra).encode()


def entries(env, container_id=CID) -> list[dict]:
    path = os.path.join(env["SHIELDAUDIT_ROOT"], "containers", container_id, "audit.jsonl")
    with open(path, "rb") as f:
        return [json.loads(line) for line in f]


def errors(env) -> list[dict]:
    path = os.path.join(env["SHIELDAUDIT_ROOT"], "state", "hook-errors.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        return [json.loads(line) for line in f]


def test_records_name_image_and_command(tmp_path, podman_layout, env, capsys):
    """A createRuntime call writes one hook entry with name, image, command and status."""
    status = run_hook(tmp_path, ["createRuntime"], env, state(podman_layout))

    (entry,) = entries(env)
    assert status == 0
    assert capsys.readouterr().err == ""
    assert entry["source"] == "hook"
    assert entry["action"] == "createRuntime"
    assert (entry["container"], entry["image"]) == ("web", "localhost/test:latest")
    assert entry["detail"] == "sh -c 'sleep 1'"
    assert (entry["pid"], entry["status"], entry["image_id"]) == (321, "creating", "f" * 64)
    assert entry["annotations"] == {"io.container.manager": "libpod"}


def test_podman_poststop_state_with_empty_env_settings(tmp_path, podman_layout, env):
    """Podman's poststop state (no pid, status stopped) is recorded with pid null."""
    doc = {"ociVersion": "1.0.2-dev", "id": CID, "status": "stopped", "bundle": str(podman_layout)}

    status = run_hook(tmp_path, ["poststop"], env, json.dumps(doc).encode())

    (entry,) = entries(env)
    assert status == 0
    assert (entry["action"], entry["pid"], entry["status"]) == ("poststop", None, "stopped")


def test_legacy_bundle_path_and_pid_zero(tmp_path, podman_layout, env):
    """Older runtimes' bundlePath is honoured; pid 0 means no process (null)."""
    doc = {"ociVersion": "1.0.0", "id": CID, "status": "created", "pid": 0}
    doc["bundlePath"] = str(podman_layout)

    run_hook(tmp_path, ["poststart"], env, json.dumps(doc).encode())

    (entry,) = entries(env)
    assert (entry["container"], entry["pid"]) == ("web", None)


def test_poststop_twice_is_recorded_once(tmp_path, podman_layout, env):
    """A second poststop right after a poststop (Podman's double run) adds nothing."""
    for stage in ["createRuntime", "poststop", "poststop", "createRuntime", "poststop"]:
        assert run_hook(tmp_path, [stage], env, state(podman_layout)) == 0

    actions = [e["action"] for e in entries(env)]
    assert actions == ["createRuntime", "poststop", "createRuntime", "poststop"]
    assert verify_container(tmp_path / "root", CID, chain.NO_KEYS).ok


def test_poststop_after_a_listener_entry_is_still_recorded_once(tmp_path, podman_layout, env):
    """The repeat check looks at the last hook entry: a listener ``died`` between changes nothing.

    With the listener running, ``died`` lands between Podman's two poststop runs;
    the second, nameless poststop must still be recognised as the repeat.
    """
    for stage in ["createRuntime", "poststart", "poststop"]:
        assert run_hook(tmp_path, [stage], env, state(podman_layout)) == 0
    with TrailWriter(StoreSettings(tmp_path / "root", fsync="never")) as writer:
        writer.append(CID, {"source": "events", "action": "died", "exit_code": 0})

    assert run_hook(tmp_path, ["poststop"], env, state(podman_layout)) == 0

    actions = [(e["source"], e["action"]) for e in entries(env)]
    assert actions == [
        ("hook", "createRuntime"),
        ("hook", "poststart"),
        ("hook", "poststop"),
        ("events", "died"),
    ]


def test_control_characters_in_json_strings_keep_the_entry(tmp_path, podman_layout, env):
    """Raw control characters inside JSON strings (state, config.json, containers.json) are kept.

    They are invalid strict JSON, but whoever creates the container controls these
    files: the entry must still be written, with the characters escaped in the trail.
    """
    (podman_layout / "config.json").write_bytes(
        b'{"process": {"args": ["sh", "-c", "echo\ta\x01"]}, "annotations": {"k": "v\x1f"}}'
    )
    meta = json.dumps({"image-name": "localhost/test:latest"}).encode()
    storage = podman_layout.parent.parent / "containers.json"
    storage.write_bytes(
        b'[{"id":"'
        + CID.encode()
        + b'","names":["we\x02b"],"metadata":'
        + json.dumps(meta.decode()).encode()
        + b"}]"
    )
    data = state(podman_layout)[:-1] + b', "annotations": {"io.x": "a\x01b"}}'

    status = run_hook(tmp_path, ["createRuntime"], env, data)

    (entry,) = entries(env)
    assert status == 0
    assert errors(env) == []
    assert entry["annotations"] == {"io.x": "a\u0001b"}
    assert entry["container"] == "we\u0002b"
    assert entry["detail"] == "sh -c 'echo\ta\x01'"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no OCI state on stdin"),
        (b"\x00garbage", "not JSON"),
        (b"[]", "not a JSON object"),
        (b" " * (1024 * 1024) + b"{}", "larger than 1048576 bytes"),
        (b'{"id": "../../../etc", "status": "creating"}', "invalid container ID"),
    ],
)
@pytest.mark.parametrize("closed", [False, True])
def test_bad_stdin_is_a_recorded_failure(tmp_path, env, capsys, data, message, closed):  # noqa: PLR0917
    """Bad stdin: one stderr line, one hook-errors line; exit 0 fail-open, 1 fail-closed."""
    argv = ["createRuntime", "--fail-closed"] if closed else ["createRuntime"]

    status = run_hook(tmp_path, argv, env, data)

    err = capsys.readouterr().err
    assert status == (1 if closed else 0)
    assert err.count("\n") == 1
    assert message in err
    assert "fail-closed" in err if closed else "fail-open" in err
    (record,) = errors(env)
    assert record["stage"] == "createRuntime"
    assert message in record["error"]
    assert not (tmp_path / "root" / "containers").exists() or not any(
        (tmp_path / "root" / "containers").iterdir()
    )


def test_hostile_id_is_recorded_escaped_and_never_a_path(tmp_path, env):
    """A hostile ID is kept (clipped, JSON-escaped) in the error record and creates no path."""
    hostile = "../" * 40 + "\n\u2028"

    run_hook(tmp_path, ["poststart"], env, json.dumps({"id": hostile}).encode())

    (record,) = errors(env)
    assert record["container_id"] == hostile[:79] + "…"
    assert "invalid container ID" in record["error"]
    assert not (tmp_path / "root" / "containers").exists()


def test_env_fail_closed_setting(tmp_path, env):
    """SHIELDAUDIT_FAIL_CLOSED=1 in the hook's environment makes failures exit 1."""
    assert run_hook(tmp_path, ["poststart"], env | {"SHIELDAUDIT_FAIL_CLOSED": "1"}, b"") == 1
    assert run_hook(tmp_path, ["poststart"], env | {"SHIELDAUDIT_FAIL_CLOSED": "junk"}, b"") == 1
    assert run_hook(tmp_path, ["poststart"], env, b"") == 0


@pytest.mark.parametrize("problem", ["missing", "huge", "malformed", "fifo", "not-object"])
def test_bad_bundle_config_leaves_fields_empty(tmp_path, podman_layout, env, problem):
    """A missing, huge, malformed or special config.json is ignored: the entry is still written."""
    config = podman_layout / "config.json"
    config.unlink()
    if problem == "huge":
        config.write_bytes(b'{"process": {"args": ["x"]}, "pad": "' + b"x" * (2 << 20) + b'"}')
    elif problem == "malformed":
        config.write_bytes(b'{"process": ')
    elif problem == "fifo":
        os.mkfifo(config)
    elif problem == "not-object":
        config.write_bytes(b"[1]")
    (podman_layout.parent.parent / "containers.json").write_bytes(b"{broken")

    status = run_hook(tmp_path, ["createRuntime"], env, state(podman_layout))

    (entry,) = entries(env)
    assert status == 0
    assert entry["detail"] == entry["container"] == entry["image"] == ""
    assert errors(env) == []


def test_unknown_stage_is_refused_and_recorded(tmp_path, podman_layout, env, capsys):
    """An unknown STAGE writes no entry; it is a recorded failure naming the valid stages."""
    status = run_hook(tmp_path, ["preStart"], env, state(podman_layout))

    assert status == 0
    assert "unknown hook stage 'preStart'" in capsys.readouterr().err
    (record,) = errors(env)
    assert (record["stage"], record["container_id"]) == ("preStart", CID)
    assert not (tmp_path / "root" / "containers" / CID / "audit.jsonl").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "missing STAGE"),
        (["poststart", "extra"], "unexpected argument"),
        (["--bogus"], "unexpected"),
    ],
)
def test_bad_arguments_are_recorded(tmp_path, env, capsys, argv, message):
    """Bad arguments are failures like any other (the runtime only sees the exit status)."""
    status = run_hook(tmp_path, argv, env, b"{}")

    assert status == 0
    assert message in capsys.readouterr().err
    assert len(errors(env)) == 1


def test_invalid_setting_is_recorded(tmp_path, podman_layout, env, capsys):
    """A bad setting value takes the full loader, whose error is recorded under the root."""
    status = run_hook(
        tmp_path, ["poststart"], env | {"SHIELDAUDIT_FSYNC": "sometimes"}, state(podman_layout)
    )

    assert status == 0
    assert "SHIELDAUDIT_FSYNC" in capsys.readouterr().err
    (record,) = errors(env)
    assert "invalid setting fsync" in record["error"]


def test_unusable_root_goes_to_stderr_only(tmp_path, podman_layout, env, capsys):
    """A root that is a file cannot hold the record: stderr says so; fail-closed exits 1."""
    root = tmp_path / "root"
    root.write_text("not a directory")

    status = run_hook(tmp_path, ["createRuntime", "--fail-closed"], env, state(podman_layout))

    err = capsys.readouterr().err
    assert status == 1
    assert "not a directory" in err
    assert "[failure not recorded:" in err
    assert err.count("\n") == 1


def test_symlinked_trail_is_refused_and_recorded(tmp_path, podman_layout, env):
    """A trail dir swapped for a symlink is refused (via TrailWriter) and the failure recorded."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "root" / "containers").mkdir(parents=True)
    (tmp_path / "root" / "containers" / CID).symlink_to(elsewhere)

    status = run_hook(tmp_path, ["createRuntime"], env, state(podman_layout))

    assert status == 0
    (record,) = errors(env)
    assert record["error"].startswith("refusing to follow a symlink at ")
    assert list(elsewhere.iterdir()) == []


def test_torn_tail_takes_the_reference_writer(tmp_path, podman_layout, env):
    """After a crash mid-write the hook still appends: TrailWriter sets the fragment aside."""
    run_hook(tmp_path, ["createRuntime"], env, state(podman_layout))
    active = tmp_path / "root" / "containers" / CID / "audit.jsonl"
    with active.open("ab") as f:
        f.write(b'{"seq":2,"ts":"2026')

    run_hook(tmp_path, ["poststart"], env, state(podman_layout))

    seqs = [e["seq"] for e in entries(env)]
    assert seqs == [1, 2]
    assert entries(env)[1]["torn_tail_bytes"] == 19
    assert verify_container(tmp_path / "root", CID, chain.NO_KEYS).ok


def test_help_and_check(tmp_path, env, capsys):
    """--help prints the usage and --check reports the interpreter; both exit 0."""
    assert run_hook(tmp_path, ["--help"], env, b"") == 0
    assert run_hook(tmp_path, ["--check"], env, b"") == 0

    out = capsys.readouterr().out
    assert "usage: shieldaudit-hook STAGE" in out
    assert "shieldaudit-hook: ok" in out


def test_unreadable_stdin_is_a_recorded_failure(tmp_path, env, capsys):
    """A closed or unreadable stdin is one clear failure, not an internal error."""
    fd = os.open(tmp_path, os.O_RDONLY)  # a directory: read() fails with EISDIR
    try:
        status = hook.run(["poststart"], env, fd)
    finally:
        os.close(fd)

    assert status == 0
    assert "cannot read the OCI state on stdin" in capsys.readouterr().err
    assert len(errors(env)) == 1
