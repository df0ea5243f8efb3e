"""The native hook against the Python reference path, byte for byte (differential tests).

Each generated case (a state, a bundle's config.json, containers/storage's
containers.json, a key or none, a trail of some shape) is run twice on two
identical copies of the world: once by the native ``shieldaudit-hook`` as the
runtime runs it (a real process, the hooks.d environment), once by the Python
reference (``shieldaudit.hook.run`` in-process, its clock returning the instant
the native run wrote). The bytes on disk, the exit status and the stderr line
must be the same. The native hook hands unusual cases to the reference through
``SHIELDAUDIT_HOOK_PYTHON``, here a wrapper that counts the hand-overs, so the
tests also pin that the common cases stay native.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from native_hook import native_hook
from shieldaudit.core.settings import StoreSettings
from shieldaudit.hook import run as hook
from shieldaudit.store.writer import TrailWriter

CID = "0123456789abcdef" * 4
OTHER = "fedcba9876543210" * 4
STAGES = ["createRuntime", "poststart", "poststop", "prestart", "createContainer", "startContainer"]
KEY = b"k" * 24 + b"\n# a comment\n" + b"old-key-still-accepted-1\n"
_TS = re.compile(rb'"ts":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6})Z"')


@dataclass
class World:
    """Everything one case needs on disk, outside the two roots."""

    base: Path
    bundle: str
    key_file: str | None
    python: Path
    marker: Path
    reason: str = ""


@dataclass
class Case:
    """One generated hook run."""

    stage: str
    state: bytes
    config: bytes | None = None
    containers: bytes | None = None
    keyed: bool = False
    shape: str = "none"
    fail_closed: bool = False
    fsync: str = "never"
    max_segment: int = 10 * 1024 * 1024
    extra_args: list[str] = field(default_factory=list)
    key_kind: str = "good"
    env: dict[str, str] = field(default_factory=dict)
    root_suffix: str = ""


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    """The native hook and a reference interpreter that counts hand-overs."""
    base = tmp_path_factory.mktemp("native")
    marker = base / "handovers"
    marker.write_bytes(b"")
    wrapper = base / "python"
    wrapper.write_text(f'#!/bin/sh\nprintf x >> {marker}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    return native_hook(), wrapper, marker


def handovers(marker: Path) -> int:
    return marker.stat().st_size


# ---------------------------------------------------------------- hostile JSON


def _escape(char: str) -> str:
    code = ord(char)
    if code > 0xFFFF:
        code -= 0x10000
        return f"\\u{0xD800 | (code >> 10):04x}\\u{0xDC00 | (code & 0x3FF):04X}"
    return f"\\u{code:04x}"


def encode_string(text: str, style: int) -> str:
    """Return a JSON string in one of four styles.

    0 all raw (control characters included), 1 printable ASCII raw and the rest
    escaped, 2 a mix of both, 3 everything escaped.
    """
    out = ['"']
    for index, char in enumerate(text):
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")  # a lone surrogate can only be an escape
        elif (
            style == 0
            or (style in {1, 2} and 0x20 <= code < 0x7F)
            or (style == 2 and (index + code) % 3 == 0)
        ):
            out.append(char)  # raw, control characters included (json strict=False)
        else:
            out.append(_escape(char))
    out.append('"')
    return "".join(out)


def encode(value: object, style: int, dup: bool = False) -> str:
    """Serialise with the given escaping style; ``dup`` repeats each object's first key."""
    if isinstance(value, str):
        return encode_string(value, style)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, RawJson):
        return value.text
    if isinstance(value, list):
        return "[" + ",".join(encode(v, style, dup) for v in value) + "]"
    assert isinstance(value, dict)
    items = [f"{encode_string(k, style)}:{encode(v, style, dup)}" for k, v in value.items()]
    if dup and value:
        first = next(iter(value))
        items.insert(0, f"{encode_string(first, style)}:{encode('shadowed', style)}")
    return "{" + ",".join(items) + "}"


@dataclass(frozen=True)
class RawJson:
    """A literal JSON text (huge numbers, NaN, deep nesting)."""

    text: str


hostile_text = st.text(
    alphabet=st.characters(codec=None, exclude_categories=()),
    max_size=30,
) | st.sampled_from(
    [
        "",
        "plain",
        "tab\there",
        "nl\nx\x00\x01\x1f\x7f",
        "\u00e9t\u00e9 \u65e5\u672c",
        "emoji \U0001f600",
        "\ud800lone",
        "pair\ud83d\ude00",
        "quote'\"\\",
        "x" * 300,
    ]
)
odd_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [
            RawJson("NaN"),
            RawJson("-Infinity"),
            RawJson("1e999"),
            RawJson("9" * 400),
            RawJson("-0"),
            RawJson("[" * 40 + "]" * 40),
            RawJson("[" * 200 + "]" * 200),  # deeper than the native reader goes
            RawJson("7" * 5000),  # longer than Python converts
        ]
    ),
    hostile_text,
)
annotations = st.dictionaries(hostile_text, hostile_text | odd_scalar, max_size=6) | st.just(
    {f"k{i:03d}": f"v{i}" for i in range(40)}
)


@st.composite
def states(draw, *, valid_id: bool = True) -> tuple[bytes, dict[str, object]]:
    """An OCI state document (bytes) and the value it encodes."""
    doc: dict[str, object] = {"ociVersion": draw(st.sampled_from(["1.0.2", "1.1.0", ""]))}
    doc["id"] = (
        CID
        if valid_id
        else draw(
            st.sampled_from(
                [CID.upper(), CID[:63], "../../etc", "", "x" * 200, "ab'c", "tab\there"]
            )
            | odd_scalar
        )
    )
    doc["status"] = draw(
        st.sampled_from(["creating", "created", "running", "stopped"]) | hostile_text
    )
    doc["pid"] = draw(st.integers(min_value=0, max_value=2**40) | odd_scalar)
    bundle_key = draw(st.sampled_from(["bundle", "bundlePath", "both", "none"]))
    doc["__bundle__"] = bundle_key
    if draw(st.booleans()):
        doc["annotations"] = draw(annotations | odd_scalar)
    if draw(st.integers(0, 9)) == 0:
        doc["extra"] = draw(odd_scalar)
    return b"", doc


def render_state(doc: dict[str, object], bundle: RawJson, style: int, dup: bool) -> bytes:
    doc = dict(doc)
    key = doc.pop("__bundle__")
    if key in {"bundle", "both"}:
        doc["bundle"] = bundle
    if key in {"bundlePath", "both"}:
        doc["bundlePath"] = RawJson('"/elsewhere"') if key == "both" else bundle
    return encode(doc, style, dup).encode("utf-8", "surrogatepass")


@st.composite
def configs(draw) -> bytes | None:
    kind = draw(st.sampled_from(["none", "json", "json", "json", "garbage", "empty", "array"]))
    if kind == "none":
        return None
    if kind == "garbage":
        return draw(st.binary(max_size=40))
    if kind == "empty":
        return b"  \n"
    if kind == "array":
        return b"[1,2]"
    args = draw(st.lists(hostile_text | odd_scalar, max_size=6))
    if draw(st.integers(0, 9)) == 0:
        args = ["a" * 100] * 8
    doc: dict[str, object] = {"ociVersion": "1.0.2", "process": {"args": args, "cwd": "/"}}
    if draw(st.booleans()):
        ann = draw(annotations)
        if draw(st.booleans()):
            ann["io.kubernetes.cri-o.ContainerName"] = draw(hostile_text)
            ann["io.kubernetes.cri-o.ImageName"] = draw(hostile_text)
        doc["annotations"] = ann
    style = draw(st.integers(0, 3))
    return encode(doc, style, draw(st.booleans())).encode("utf-8", "surrogatepass")


@st.composite
def containers_files(draw) -> bytes | None:
    kind = draw(st.sampled_from(["none"] * 3 + ["compact"] * 12 + ["missing", "pretty", "garbage"]))
    if kind == "none":
        return None
    if kind == "garbage":
        return draw(st.binary(max_size=60))
    meta: object = {"image-name": draw(hostile_text), "name": draw(hostile_text)}
    metadata = (
        draw(st.sampled_from(["", "not json", "[1]", '{"image-name":"\x01raw"}']))
        if draw(st.integers(0, 4)) == 0
        else encode(meta, draw(st.integers(0, 2)))
    )
    record = {
        "id": CID,
        "names": draw(st.lists(hostile_text, max_size=2) | odd_scalar),
        "image": draw(hostile_text | odd_scalar),
        "layer": "l" * 64,
        "metadata": metadata,
        "created": "2026-11-22T10:42:12.211996Z",
    }
    other = {"id": OTHER, "names": ["other"], "image": "i", "metadata": "{}"}
    records = [other, record] if kind != "missing" else [other]
    style = draw(st.integers(0, 2))
    text = "[" + ",".join(encode(r, style) for r in records) + "]"
    if kind == "pretty":
        # Python's json refuses integers of more than 4,300 digits (the hook does
        # not): such a file stays compact, still a valid hostile case.
        with contextlib.suppress(ValueError):
            text = json.dumps(json.loads(text, strict=False), indent=2)
    return text.encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------- running both paths


def prepare_root(root: Path, case: Case, key_file: str | None) -> None:
    """Build the case's trail shape in ``root`` (deterministically: same bytes every time)."""
    if case.shape == "none":
        return
    keys = None
    store = StoreSettings(root, fsync="never", key_file=Path(key_file) if key_file else None)
    ns = iter(range(1_795_000_000_000_000_000, 1_795_000_100_000_000_000, 1_000_000_007))
    with TrailWriter(store, keys=keys, clock=lambda: next(ns)) as writer:
        if case.shape == "empty":
            writer.append(CID, {"source": "cli", "action": "test"})
            (root / "containers" / CID / "audit.jsonl").write_bytes(b"")
            return
        count = {"one": 1, "many": 7}.get(case.shape, 3)
        for i in range(count):
            source = "hook" if i % 3 != 1 else "events"
            action = "poststop" if (case.shape == "poststop_last" and i == count - 1) else "start"
            writer.append(CID, {"source": source, "action": action, "detail": f"n{i}\x01\u00e9"})
        if case.shape == "died_after_poststop":
            writer.append(CID, {"source": "hook", "action": "poststop"})
            writer.append(CID, {"source": "events", "action": "died", "exit_code": 0})
    active = root / "containers" / CID / "audit.jsonl"
    if case.shape == "torn":
        with active.open("ab") as f:
            f.write(b'{"seq":99,"ts":"half a li')
    elif case.shape == "garbage_last":
        with active.open("ab") as f:
            f.write(b"not an entry\n")
    elif case.shape == "sealed_only":
        active.rename(active.with_name("audit-000001.jsonl"))
        active.write_bytes(b"")
    elif case.shape == "nlink2":
        os.link(active, root / "containers" / "second-link")
    elif case.shape == "loose_dir":
        (root / "containers" / CID).chmod(0o770)


def snapshot(root: Path) -> dict[str, object]:
    """What a run left under ``root``: paths, trail bytes, error lines (times masked)."""
    found: dict[str, object] = {}
    torn: list[bytes] = []
    if not root.exists():
        return found
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel.startswith("state/torn/"):
            torn.append(path.read_bytes())
            continue
        if path.is_dir() or path.suffix == ".lock":
            found[rel] = "dir" if path.is_dir() else "lock"
            continue
        data = path.read_bytes()
        if rel.startswith("state/hook-errors"):
            data = _TS.sub(b'"ts":"T"', data).replace(bytes(root), b"ROOT")
        found[rel] = data
    found["torn"] = sorted(torn)
    return found


def newest_ts_ns(root: Path) -> int | None:
    """The instant of the newest entry or error line under ``root`` (microseconds, as ns)."""
    best = None
    for path in [*root.glob("containers/*/audit*.jsonl"), *root.glob("state/hook-errors*.jsonl")]:
        for match in _TS.finditer(path.read_bytes()):
            text = match.group(1).decode()
            best = text if best is None or text > best else best
    if best is None:
        return None
    moment = datetime.strptime(best, "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)
    return (int(moment.timestamp()) * 1_000_000 + moment.microsecond) * 1000


def environment(root: Path, case: Case, world: World) -> dict[str, str]:
    return {
        "SHIELDAUDIT_ROOT": str(root) + case.root_suffix,
        "SHIELDAUDIT_MAX_SEGMENT_BYTES": str(case.max_segment),
        "SHIELDAUDIT_KEEP_SEGMENTS": "20",
        "SHIELDAUDIT_FSYNC": case.fsync,
        "SHIELDAUDIT_KEY_FILE": world.key_file if case.keyed and world.key_file else "",
        "SHIELDAUDIT_FAIL_CLOSED": "1" if case.fail_closed else "0",
        "SHIELDAUDIT_HOOK_PYTHON": str(world.python),
        **case.env,
    }


@dataclass
class Result:
    """What one run left: exit status, stderr (roots masked), the files under the root."""

    status: int
    stderr: str
    files: dict[str, object]


def run_both(case: Case, world: World, binary: Path) -> tuple[Result, Result, bool]:
    """Run the native hook and the reference on twin roots.

    Returns both results and whether the native run handed over.
    """
    native_root = world.base / "native-root"
    ref_root = world.base / "ref-root"
    usable_key = world.key_file if case.keyed and case.key_kind == "good" else None
    for root in (native_root, ref_root):
        prepare_root(root, case, usable_key)
    argv = [case.stage, *case.extra_args]
    before = handovers(world.marker)
    proc = subprocess.run(
        [str(binary), *argv],
        input=case.state,
        env=environment(native_root, case, world),
        capture_output=True,
        timeout=60,
        check=False,
    )
    handed = handovers(world.marker) > before
    if handed:  # learn why (for the statistics): the same run with no reference to go to
        shutil.copytree(native_root, world.base / "why-root", symlinks=True)
        for root in (native_root,):
            shutil.rmtree(root, ignore_errors=True)
            prepare_root(root, case, usable_key)
        why = subprocess.run(
            [str(binary), *argv],
            input=case.state,
            env={
                **environment(native_root, case, world),
                "SHIELDAUDIT_HOOK_PYTHON": "/nonexistent",
            },
            capture_output=True,
            timeout=60,
            check=False,
        ).stderr.decode("utf-8", "replace")
        world.reason = why.partition("handing over because ")[2].partition(")")[0] or why
        shutil.rmtree(native_root, ignore_errors=True)
        (world.base / "why-root").rename(native_root)
    native = Result(
        proc.returncode,
        proc.stderr.decode("utf-8", "replace").replace(str(native_root), "ROOT"),
        snapshot(native_root),
    )
    instant = newest_ts_ns(native_root) or 1_795_000_000_000_000_000
    err = io.StringIO()
    with tempfile.TemporaryFile() as stdin, contextlib.redirect_stderr(err):
        stdin.write(case.state)
        stdin.seek(0)
        status = hook.run(argv, environment(ref_root, case, world), stdin.fileno(), lambda: instant)
    reference = Result(status, err.getvalue().replace(str(ref_root), "ROOT"), snapshot(ref_root))
    return native, reference, handed


def make_world(base: Path, tools: tuple[Path, Path, Path], case_files: Case) -> World:
    _, python, marker = tools
    bundle_dir = base / "storage" / "overlay-containers" / CID / "userdata"
    bundle_dir.mkdir(parents=True)
    if case_files.config is not None:
        (bundle_dir / "config.json").write_bytes(case_files.config)
    if case_files.containers is not None:
        (base / "storage" / "overlay-containers" / "containers.json").write_bytes(
            case_files.containers
        )
    key_file = base / "key"
    write_key(key_file, case_files.key_kind)
    return World(base, str(bundle_dir), str(key_file), python, marker)


KEY_KINDS = {
    "good": (KEY, 0o600),
    "crlf": (b"k" * 24 + b"\r\n", 0o600),
    "loose": (KEY, 0o640),
    "short": (b"short\n", 0o600),
    "comments only": (b"# no key here\n\n", 0o600),
    "a short second key": (KEY + b"tiny\n", 0o600),
    "spaces": (b"  " + b"s" * 20 + b"\t \n", 0o600),
}


def write_key(path: Path, kind: str) -> None:
    """The key file of a case: a good one, or one the reference refuses or reads its own way."""
    if kind == "missing":
        return
    if kind == "symlink":
        target = path.with_name("real-key")
        target.write_bytes(KEY)
        target.chmod(0o600)
        path.symlink_to(target)
        return
    if kind == "directory":
        path.mkdir(mode=0o700)
        return
    data, mode = KEY_KINDS[kind]
    path.write_bytes(data)
    path.chmod(mode)


def check_case(case: Case, tools, stats: Counter) -> None:
    base = Path(tempfile.mkdtemp(prefix="nh-"))
    try:
        world = make_world(base, tools, case)
        case.state = case.state.replace(b"@BUNDLE@", world.bundle.encode())
        native, reference, handed = run_both(case, world, tools[0])
        stats["handed over" if handed else "native"] += 1
        if handed:
            stats[world.reason] += 1
        assert native.status == reference.status, (native, reference)
        assert native.stderr == reference.stderr
        assert native.files == reference.files
        assert "panicked" not in native.stderr
    finally:
        for root in ("native-root", "ref-root"):
            with contextlib.suppress(FileNotFoundError):
                (base / root / "containers" / CID).chmod(0o700)
        shutil.rmtree(base, ignore_errors=True)


@st.composite
def cases(draw, *, valid_id: bool = True, shapes: list[str] | None = None) -> Case:
    _, doc = draw(states(valid_id=valid_id))
    style = draw(st.integers(0, 3))
    state = render_state(doc, RawJson('"@BUNDLE@"'), style, draw(st.integers(0, 4)) == 0)
    return Case(
        stage=draw(st.sampled_from(STAGES)),
        state=state,
        config=draw(configs()),
        containers=draw(containers_files()),
        keyed=draw(st.booleans()),
        shape=draw(st.sampled_from(shapes or ["none", "one", "many"])),
        fail_closed=draw(st.booleans()),
        fsync=draw(st.sampled_from(["never"] * 5 + ["always"])),
    )


_SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


def test_entries_from_hostile_inputs_match_the_reference(tools):
    """Hostile states, config.json and containers.json: the native bytes are the reference's.

    Control characters (raw and escaped), non-ASCII, lone and paired surrogate
    escapes, huge and odd numbers, duplicate keys, deep nesting; keyed and
    unkeyed; new and existing trails. Most cases must stay native.
    """
    stats: Counter[str] = Counter()

    @settings(max_examples=700, **_SETTINGS)
    @given(case=cases())
    def check(case):
        check_case(case, tools, stats)

    check()
    # Deep nesting, huge integers and non-compact containers.json go to the
    # reference by design; everything else must stay native.
    assert stats["native"] > 2 * stats["handed over"], stats


SHAPES = [
    "none",
    "empty",
    "one",
    "many",
    "torn",
    "garbage_last",
    "sealed_only",
    "nlink2",
    "loose_dir",
    "poststop_last",
    "died_after_poststop",
]


def test_trails_of_every_shape_match_the_reference(tools):
    """Trails of every shape give the reference's bytes, exit status and stderr line.

    A torn tail, a rotation due, only sealed segments, a second hard link, a
    loose directory, a poststop repeat with a listener entry between.
    """
    stats: Counter[str] = Counter()

    @settings(max_examples=250, **_SETTINGS)
    @given(
        case=cases(shapes=SHAPES),
        segment=st.sampled_from([10 * 1024 * 1024, 10 * 1024 * 1024, 2048, 256]),
        stage=st.sampled_from(["poststop", "poststop", "createRuntime", "poststart"]),
    )
    def check(case, segment, stage):
        case.max_segment = segment
        case.stage = stage
        check_case(case, tools, stats)

    check()
    # Both paths were exercised: the plain shapes natively, the others by the reference.
    assert stats["native"] > 50, stats
    assert stats["handed over"] > 50, stats


@st.composite
def failing_cases(draw) -> Case:
    kind = draw(
        st.sampled_from(
            ["bad_id", "bad_stage", "not_utf8", "not_object", "empty", "not_json", "too_big"]
        )
    )
    case = draw(cases(valid_id=kind != "bad_id"))
    if kind == "bad_stage":
        case.stage = draw(st.sampled_from(["preStart", "typo", "post stop", "x" * 100, "é"]))
    elif kind == "not_utf8":
        at = draw(st.integers(0, max(0, len(case.state) - 1)))
        case.state = case.state[:at] + b"\xff" + case.state[at + 1 :]
    elif kind == "not_object":
        case.state = draw(st.sampled_from([b"[]", b'"id"', b"null", b"true", b"12", b" [1] "]))
    elif kind == "empty":
        case.state = draw(st.sampled_from([b"", b" \n\t", b"\x0b\x0c"]))
    elif kind == "not_json":
        case.state = draw(st.sampled_from([b"{", b"{'id':1}", b'{"id":"x",}', b"nul"]))
    else:
        case.state = b'{"id":"' + CID.encode() + b'","pad":"' + b"x" * (1024 * 1024) + b'"}'
    return case


def test_failures_match_the_reference(tools):
    """Failures match the reference: exit status, the one stderr line, the error log line.

    Bad IDs, unknown stages, non-UTF-8, non-objects, empty or oversized stdin;
    fail-open 0 and fail-closed 1.
    """
    stats: Counter[str] = Counter()

    @settings(max_examples=250, **_SETTINGS)
    @given(case=failing_cases())
    def check(case):
        check_case(case, tools, stats)

    check()
    assert stats["native"] > stats["handed over"], stats


SETTINGS_VARIANTS = [
    {},
    {"SHIELDAUDIT_MAX_SEGMENT_BYTES": "10MiB"},
    {"SHIELDAUDIT_MAX_SEGMENT_BYTES": " 4096 "},
    {"SHIELDAUDIT_MAX_SEGMENT_BYTES": "100"},
    {"SHIELDAUDIT_MAX_SEGMENT_BYTES": str(2 * 1024**3)},
    {"SHIELDAUDIT_KEEP_SEGMENTS": "200000"},
    {"SHIELDAUDIT_KEEP_SEGMENTS": "-1"},
    {"SHIELDAUDIT_FSYNC": " Never "},
    {"SHIELDAUDIT_FSYNC": "sometimes"},
    {"SHIELDAUDIT_FAIL_CLOSED": "TRUE"},
    {"SHIELDAUDIT_FAIL_CLOSED": "maybe"},
    {"SHIELDAUDIT_KEY_FILE": "relative/key"},
]


def test_keys_and_settings_match_the_reference(tools):
    """Key files and settings of every kind give the reference's bytes, status and stderr.

    Good, loose, short, comment-only, CRLF, symlinked, missing and directory key
    files; sizes with units, out-of-range numbers, odd spellings, a root with a
    trailing slash. What the native parser does not take goes to the reference,
    which accepts or refuses it with its own words.
    """
    stats: Counter[str] = Counter()

    @settings(max_examples=150, **_SETTINGS)
    @given(
        case=cases(shapes=["none", "one"]),
        key_kind=st.sampled_from([*KEY_KINDS, "symlink", "missing", "directory"]),
        env=st.sampled_from(SETTINGS_VARIANTS),
        suffix=st.sampled_from(["", "", "", "/"]),
    )
    def check(case, key_kind, env, suffix):
        case.keyed = True
        case.key_kind = key_kind
        case.env = env
        case.root_suffix = suffix
        check_case(case, tools, stats)

    check()
    assert stats["native"] > 10, stats
    assert stats["handed over"] > 10, stats
