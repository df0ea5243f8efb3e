"""The hook's fast append (hookstore, hookchain, hooksettings) and JSON (leanjson).

The fast path must write exactly what TrailWriter writes, and hand everything
unusual to it; these tests pin both, and that the mirrored constants agree.
"""

from __future__ import annotations

import fcntl
import json
import os
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shieldaudit import hookchain, hooksettings, hookstore, leanjson, settings
from shieldaudit.errors import LockTimeoutError
from shieldaudit.store import chain, layout, writer
from shieldaudit.store.verify import verify_container
from shieldaudit.store.writer import TrailWriter

if TYPE_CHECKING:
    from pathlib import Path

CID = "c" * 64
KEY_SECRET = b"0123456789abcdef0123456789abcdef"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


def lean(root: Path, **overrides) -> hooksettings.LeanSettings:
    values = {"fsync": "never"} | overrides
    return hooksettings.LeanSettings(str(root), **values)


def store(root: Path, **overrides) -> settings.StoreSettings:
    values = {"fsync": "never"} | overrides
    return settings.StoreSettings(root, **values)


class Clock:
    """A deterministic ns clock, one microsecond per call."""

    def __init__(self) -> None:
        """Start at a fixed instant."""
        self.now = 1_795_000_000_000_000_000

    def __call__(self) -> int:
        """Return the next instant."""
        self.now += 1000
        return self.now


def fields(i: int) -> dict[str, object]:
    return {
        "source": "hook",
        "action": "poststart",
        "container": f"name-{i}",
        "pid": i or None,
        "detail": "echo é \x00 \ud800",
        "status": "created",
        "annotations": {"a": "b"},
    }


def test_mirrored_constants_match_the_store():
    """Every constant the fast path mirrors equals the reference modules' value."""
    assert hookchain.CORE_KEYS == chain.CORE_KEYS
    assert {k for k, v in chain.CORE_DEFAULTS.items() if v is None} == hookchain.CORE_NULLS
    assert {v for k, v in chain.CORE_DEFAULTS.items() if v is not None} == {""}
    assert hookchain.GENESIS == chain.GENESIS
    assert str(settings.DEFAULT_CONFIG_FILE) == hooksettings.DEFAULT_CONFIG_FILE
    assert hooksettings.DEFAULT_MAX_SEGMENT_BYTES == settings.DEFAULT_MAX_SEGMENT_BYTES
    assert hooksettings.DEFAULT_KEEP_SEGMENTS == settings.DEFAULT_KEEP_SEGMENTS
    assert hooksettings.MIN_SEGMENT_BYTES == settings.MIN_SEGMENT_BYTES
    assert hookstore.LOCK_TIMEOUT_S == layout.LOCK_TIMEOUT_S
    assert hookstore.MAX_ENTRY_BYTES == writer.MAX_ENTRY_BYTES
    assert hookstore.MAX_KEY_FILE_BYTES == chain.MAX_KEY_FILE_BYTES
    assert hookstore.MIN_KEY_BYTES == chain.MIN_KEY_BYTES
    assert str(settings.default_root(uid=0)) == hooksettings.DEFAULT_ROOT_FOR_ROOT
    assert {s.env for s in settings.SETTINGS} >= set(hooksettings.STORE_ENV)


@given(json_values)
def test_leanjson_dumps_matches_json(value):
    """dumps() is byte for byte json.dumps(ensure_ascii=True, separators=(',', ':'))."""
    assert leanjson.dumps(value) == json.dumps(value, ensure_ascii=True, separators=(",", ":"))


@given(json_values)
def test_leanjson_loads_round_trips(value):
    """loads() reads back what json writes, with surrounding whitespace."""
    assert leanjson.loads(" \n" + json.dumps(value) + "\t ") == value


@pytest.mark.parametrize("text", ["", "   ", "{", "[1,]", "1 2", "{'a': 1}", "[" * 50_000, "nul"])
def test_leanjson_loads_refuses_invalid(text):
    """Anything that is not exactly one JSON value is a ValueError (deep nesting too)."""
    with pytest.raises(ValueError):
        leanjson.loads(text)


@pytest.mark.parametrize("value", [1.5, {1: "a"}, object(), b"x"])
def test_leanjson_dumps_refuses_other_types(value):
    """Types an entry never holds are refused rather than encoded differently from json."""
    with pytest.raises(TypeError):
        leanjson.dumps(value)


@pytest.mark.parametrize("keyed", [False, True])
def test_seal_matches_chain(keyed):
    """seal() builds the same line and mac as chain.build_body + chain.seal."""
    key = chain.Key.from_secret(KEY_SECRET) if keyed else None
    lean_key = (KEY_SECRET, chain.alg_name(key)) if keyed else None
    body = {**fields(3), "ts": "2026-11-23T00:00:00.000000Z", "container_id": CID, "extra": 1}

    expected = chain.seal(chain.build_body({**body, "seq": 7}, "ab" * 32, key), key)

    assert hookchain.seal(body, 7, "ab" * 32, lean_key) == expected


def test_long_hmac_key_matches_hmac_module():
    """Keys longer than the SHA-256 block are hashed first, as RFC 2104 (and hmac) do."""
    secret = b"k" * 200
    body = {"source": "hook", "ts": "t"}
    key = chain.Key.from_secret(secret)

    line, mac = hookchain.seal(body, 1, chain.GENESIS, (secret, chain.alg_name(key)))

    assert mac == chain.expected_mac(line, chain.alg_name(key), chain.KeyRing((key,)))[0]


@pytest.mark.parametrize("keyed", [False, True])
def test_fast_path_writes_what_trailwriter_writes(tmp_path, keyed):
    """The same appends with the same clock give byte-identical trails through either path."""
    key_file = None
    if keyed:
        key_file = tmp_path / "key"
        key_file.write_bytes(KEY_SECRET + b"\n")
        key_file.chmod(0o600)
    fast_root, ref_root = tmp_path / "fast", tmp_path / "ref"
    fast_clock, ref_clock = Clock(), Clock()
    for i in range(5):
        hookstore.append(
            lean(fast_root, key_file=str(key_file) if key_file else None),
            CID,
            fields(i),
            clock=fast_clock,
        )
    with TrailWriter(store(ref_root, key_file=key_file), clock=ref_clock) as ref:
        for i in range(5):
            ref.append(CID, fields(i))

    fast = (fast_root / "containers" / CID / "audit.jsonl").read_bytes()
    assert fast == (ref_root / "containers" / CID / "audit.jsonl").read_bytes()
    assert (fast_root / "state" / "locks" / f"{CID}.lock").is_file()
    keys = chain.load_keys(key_file)
    assert verify_container(fast_root, CID, keys).ok


def test_fast_path_continues_a_trailwriter_trail(tmp_path):
    """Alternating writers keep one valid chain (seq and prev read from the file)."""
    root = tmp_path / "root"
    seqs = []
    for i in range(6):
        if i % 2:
            seqs.append(hookstore.append(lean(root), CID, fields(i)))
        else:
            with TrailWriter(store(root)) as ref:
                seqs.append(ref.append(CID, fields(i)).seq)

    assert seqs == [1, 2, 3, 4, 5, 6]
    assert verify_container(root, CID, chain.NO_KEYS).ok


def test_skip_sees_the_last_entry(tmp_path):
    """With skip() true for the last entry, nothing is written and None returned."""
    root = tmp_path / "root"
    hookstore.append(lean(root), CID, {"source": "hook", "action": "poststop"})

    def is_poststop(last):
        return last["action"] == "poststop"

    skipped = hookstore.append(lean(root), CID, {"action": "poststop"}, skip=is_poststop)
    written = hookstore.append(lean(root), CID, {"action": "createRuntime"}, skip=None)

    assert skipped is None
    assert written == 2


def test_torn_tail_is_left_to_trailwriter(tmp_path):
    """A last line without newline raises Unusual; nothing is written by the fast path."""
    root = tmp_path / "root"
    hookstore.append(lean(root), CID, fields(1))
    active = root / "containers" / CID / "audit.jsonl"
    with active.open("ab") as f:
        f.write(b'{"seq":2,"ts"')
    before = active.read_bytes()

    with pytest.raises(hookstore.Unusual):
        hookstore.append(lean(root), CID, fields(2))

    assert active.read_bytes() == before


def test_rotation_is_left_to_trailwriter(tmp_path):
    """An append that reaches max_segment_bytes raises Unusual (TrailWriter rotates)."""
    root = tmp_path / "root"
    hookstore.append(lean(root, max_segment_bytes=100_000), CID, fields(1))

    with pytest.raises(hookstore.Unusual):
        hookstore.append(lean(root, max_segment_bytes=256), CID, fields(2))


def test_just_rotated_trail_is_left_to_trailwriter(tmp_path):
    """An empty active segment next to sealed ones raises Unusual (the head is sealed)."""
    root = tmp_path / "root"
    with TrailWriter(store(root, max_segment_bytes=256)) as ref:
        ref.append(CID, fields(1))
    assert (root / "containers" / CID / "audit-000001.jsonl").exists()

    with pytest.raises(hookstore.Unusual):
        hookstore.append(lean(root), CID, fields(2))
    (root / "containers" / CID / "audit.jsonl").unlink()
    with pytest.raises(hookstore.Unusual):
        hookstore.append(lean(root), CID, fields(2))


@pytest.mark.parametrize("problem", ["missing", "public", "short", "fifo"])
def test_key_file_problems_are_left_to_trailwriter(tmp_path, problem):
    """Any doubt about the key file raises Unusual, so the reference loader words the error."""
    key_file = tmp_path / "key"
    if problem == "fifo":
        os.mkfifo(key_file, 0o600)
    elif problem != "missing":
        key_file.write_bytes(b"short\n" if problem == "short" else KEY_SECRET)
        key_file.chmod(0o644 if problem == "public" else 0o600)

    with pytest.raises(hookstore.Unusual):
        hookstore.append(lean(tmp_path / "root", key_file=str(key_file)), CID, fields(1))


@pytest.mark.parametrize("problem", ["group-writable", "file", "symlinked-trail"])
def test_unsafe_layouts_are_left_to_trailwriter(tmp_path, problem):
    """Unsafe roots and symlinked trail dirs raise Unusual; nothing is followed or written."""
    root = tmp_path / "root"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if problem == "group-writable":
        root.mkdir()
        root.chmod(0o770)
    elif problem == "file":
        root.write_text("x")
    else:
        (root / "containers").mkdir(parents=True)
        (root / "containers" / CID).symlink_to(elsewhere)

    with pytest.raises(hookstore.Unusual):
        hookstore.append(lean(root), CID, fields(1))

    assert list(elsewhere.iterdir()) == []


def test_lock_wait_is_bounded(tmp_path):
    """A lock held elsewhere makes the append fail with LockTimeoutError after the bound."""
    root = tmp_path / "root"
    hookstore.append(lean(root), CID, fields(1))
    lock_path = root / "state" / "locks" / f"{CID}.lock"
    with lock_path.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(LockTimeoutError, match=r"timed out after 0\.05s"):
            hookstore.append(lean(root), CID, fields(2), lock_timeout=0.05)


@pytest.mark.parametrize(
    "environ",
    [
        {"SHIELDAUDIT_ROOT": "/srv/audit"},
        {
            "SHIELDAUDIT_ROOT": "/srv/audit",
            "SHIELDAUDIT_FSYNC": " Never ",
            "SHIELDAUDIT_KEEP_SEGMENTS": "0",
        },
        {"SHIELDAUDIT_ROOT": "/srv/audit", "SHIELDAUDIT_MAX_SEGMENT_BYTES": "4096"},
        {
            "SHIELDAUDIT_ROOT": "/srv/audit",
            "SHIELDAUDIT_KEY_FILE": "/etc/k",
            "SHIELDAUDIT_FAIL_CLOSED": "yes",
        },
        {
            "SHIELDAUDIT_ROOT": "/srv/audit",
            "SHIELDAUDIT_KEY_FILE": "",
            "SHIELDAUDIT_FAIL_CLOSED": "0",
        },
        {"SHIELDAUDIT_ROOT": "/srv/audit", "SHIELDAUDIT_MAX_SEGMENT_BYTES": "10MiB"},
        {"SHIELDAUDIT_ROOT": "/srv//audit/"},
        {"SHIELDAUDIT_ROOT": "~/audit"},
        {"SHIELDAUDIT_ROOT": "/srv/audit", "SHIELDAUDIT_FSYNC": "sometimes"},
        {"SHIELDAUDIT_ROOT": "/srv/audit", "SHIELDAUDIT_MAX_SEGMENT_BYTES": "12"},
        {"SHIELDAUDIT_ROOT": "/srv/audit", "SHIELDAUDIT_FAIL_CLOSED": "maybe"},
        {"SHIELDAUDIT_ROOT": "/srv/audit", "SHIELDAUDIT_CONFIG": "/etc/x.toml"},
        {},
    ],
)
def test_lean_settings_agree_with_the_full_loader(environ):
    """lean_settings() gives the full loader's values, or None to let it decide."""
    result = hooksettings.lean_settings(environ, uid=0, file_exists=lambda _path: False)
    if result is None:
        return
    try:
        full = settings.load_store_settings({**environ, "SHIELDAUDIT_CONFIG": ""})
    except Exception as exc:
        pytest.fail(f"lean accepted {environ} but the full loader refused: {exc}")
    assert (
        result.root,
        result.max_segment_bytes,
        result.keep_segments,
        result.fsync,
        result.key_file,
        result.fail_closed,
    ) == (
        str(full.root),
        full.max_segment_bytes,
        full.keep_segments,
        full.fsync,
        str(full.key_file) if full.key_file else None,
        full.fail_closed,
    )


def test_lean_settings_defer_to_a_config_file_unless_all_are_set():
    """A config file forces the full loader, unless the environment sets every store setting."""
    partial = {"SHIELDAUDIT_ROOT": "/srv/a"}
    complete = dict.fromkeys(hooksettings.STORE_ENV, "") | {
        "SHIELDAUDIT_ROOT": "/srv/a",
        "SHIELDAUDIT_MAX_SEGMENT_BYTES": "4096",
        "SHIELDAUDIT_KEEP_SEGMENTS": "3",
        "SHIELDAUDIT_FSYNC": "always",
    }

    assert hooksettings.lean_settings(partial, file_exists=lambda _p: True) is None
    assert (
        hooksettings.lean_settings(partial, uid=1000, file_exists=lambda _p: False).root == "/srv/a"
    )
    assert hooksettings.lean_settings({}, uid=1000, file_exists=lambda _p: False) is None
    assert hooksettings.lean_settings(complete, file_exists=lambda _p: True).keep_segments == 3


def test_record_error_appends_one_json_line(tmp_path):
    """record_error() appends {ts, stage, container_id, error} lines under state/."""
    root = tmp_path / "root"

    assert hookstore.record_error(str(root), "poststop", CID, "boom \u2603", sync=False) is None
    assert hookstore.record_error(str(root), "x", "", "again") is None

    lines = (root / "state" / "hook-errors.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert list(first) == ["ts", "stage", "container_id", "error"]
    assert (first["stage"], first["container_id"], first["error"]) == (
        "poststop",
        CID,
        "boom \u2603",
    )
    assert len(lines) == 2


@pytest.mark.parametrize("problem", ["group-writable", "file", "symlinked-log"])
def test_record_error_refuses_unsafe_places(tmp_path, problem):
    """Nothing is recorded under an unsafe root or through a symlink; the reason is returned."""
    root = tmp_path / "root"
    target = tmp_path / "target"
    target.write_text("")
    if problem == "group-writable":
        root.mkdir()
        root.chmod(0o770)
    elif problem == "file":
        root.write_text("x")
    else:
        (root / "state").mkdir(parents=True)
        (root / "state" / "hook-errors.jsonl").symlink_to(target)

    reason = hookstore.record_error(str(root), "poststop", CID, "boom")

    assert reason
    assert target.read_text() == ""
