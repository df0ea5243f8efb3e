"""The store's one line reader: exact lines across chunk boundaries, tails, and decoding."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cli_helpers import cid, write_trail
from shieldaudit.store import chain, reader
from shieldaudit.store.reader import TrailDir, iter_lines
from store_helpers import all_lines

_line = st.binary(max_size=3000).map(lambda b: b.replace(b"\n", b"."))


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@example(lines=[b"a" * 2500, b"b", b"c" * 2001, b"d" * 2000], tail=b"e")
@given(lines=st.lists(_line, min_size=1, max_size=250), tail=st.one_of(st.just(b""), _line))
def test_lines_offsets_and_oversized_lines(tmp_path_factory, lines, tail):
    """Every line comes back once with its offset; over-limit lines are flagged, never held."""
    limit = 2000
    path = tmp_path_factory.mktemp("r") / "f"
    content = b"".join(line + b"\n" for line in lines) + tail
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    try:
        got = list(iter_lines(fd, 0, max_line=limit))
    finally:
        os.close(fd)
    expected_count = len(lines) + (1 if tail and len(tail) <= limit else 0)
    assert len(got) == expected_count
    offset = 0
    for raw, line in zip(got, lines, strict=False):
        assert raw.offset == offset
        if len(line) > limit:
            assert raw.oversized
            assert raw.data == line[:256]
        else:
            assert not raw.oversized
            assert raw.data == line
            assert content[raw.offset : raw.offset + len(line)] == line
        assert raw.complete
        offset += len(line) + 1
    if tail and len(tail) <= limit:
        assert got[-1].data == tail
        assert not got[-1].complete
        assert got[-1].offset == offset


def test_reading_from_an_offset(tmp_path):
    """Starting mid-file yields the lines after that offset with file offsets."""
    path = tmp_path / "f"
    path.write_bytes(b"one\ntwo\nthree\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        got = [(r.offset, r.data) for r in iter_lines(fd, 4)]
    finally:
        os.close(fd)
    assert got == [(4, b"two"), (8, b"three")]


def _split(data: bytes, max_line: int) -> list[tuple[int, int, bytes]]:
    """The obvious (whole-file) answer scan_lines must give (oversized lines whole)."""
    out: list[tuple[int, int, bytes]] = []
    at = 0
    *complete, last = data.split(b"\n")
    for line in complete:
        out.append((reader.OVERSIZED if len(line) > max_line else reader.COMPLETE, at, line))
        at += len(line) + 1
    if len(last) > max_line:
        out.append((reader.OVERSIZED, at, last))
    elif last:
        out.append((reader.INCOMPLETE, at, last))
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.one_of(st.binary(max_size=40), st.just(b"\n"), st.just(b"x" * 90)), max_size=60),
    st.integers(min_value=1, max_value=64),
)
def test_scan_lines_matches_a_whole_file_split(tmp_path_factory, pieces, chunk):
    """Whatever the chunk size, lines, kinds and offsets are those of a whole-file split."""
    data = b"".join(pieces)
    path = tmp_path_factory.mktemp("s") / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    old = reader._CHUNK
    try:
        reader._CHUNK = chunk  # type: ignore[misc]
        got = list(reader.scan_lines(fd, max_line=50))
    finally:
        reader._CHUNK = old  # type: ignore[misc]
        os.close(fd)
    want = _split(data, 50)
    assert [(kind, at) for kind, at, _ in got] == [(kind, at) for kind, at, _ in want]
    for (kind, _, line), (_, _, whole) in zip(got, want, strict=True):
        if kind == reader.OVERSIZED:  # its first bytes, as many as were read when it was found
            assert whole.startswith(line)
            assert min(len(whole), 51) <= len(line) <= 256
        else:
            assert line == whole


def test_tail_lines_reads_back_across_a_rotation(tmp_path):
    """The last lines come from older segments when the active one is (nearly) empty."""
    root = tmp_path / "root"
    write_trail(root, cid("a"), [f"x{i}" for i in range(30)], max_segment_bytes=1500)
    lines = all_lines(root, cid("a"))
    with TrailDir(root, cid("a")) as trail:
        names = reader.segment_names(trail.fd)
        assert len(names) > 2
        assert reader.tail_lines(trail.fd, names, 8) == lines[-8:]
        assert reader.tail_lines(trail.fd, names, 100) == lines
        assert reader.head_lines(trail.fd, names, 3) == lines[:3]
        first = reader.first_entry(trail.fd, names)
    assert first is not None
    assert (first.seq, first.action) == (1, "x0")


def test_tail_lines_leave_out_an_oversized_line_and_a_torn_tail(tmp_path):
    """An over-limit line is not held (a fragment of it is no entry); a torn tail is left out."""
    root = tmp_path / "root"
    write_trail(root, cid("a"), ["a", "b"])
    active = root / "containers" / cid("a") / "audit.jsonl"
    good = active.read_bytes().splitlines()
    with active.open("ab") as handle:
        handle.write(b"y" * (reader.MAX_LINE_BYTES + 200_000) + b"\n")
        handle.write(good[0] + b"\n")
        handle.write(b'{"seq":4,"ts"')
    with TrailDir(root, cid("a")) as trail:
        names = reader.segment_names(trail.fd)
        lines = reader.tail_lines(trail.fd, names, 10)
    assert lines[:2] == good
    assert lines[-1] == good[0]
    assert all(len(line) <= reader.MAX_LINE_BYTES for line in lines)
    assert all(reader.try_decode(line) is None for line in lines[2:-1])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"\xff\xfe{}", "not UTF-8 at byte 0"),
        (b"{not json", "not JSON (Expecting property name enclosed in double quotes at column 2)"),
        (b"[1, 2]", "not a JSON object but list"),
        (b'{"seq": 0}', "missing or invalid seq"),
        (b'{"seq": true}', "missing or invalid seq"),
        (b"[" * 100_000, "not an entry (JSON nested too deeply)"),
    ],
)
def test_decode_words_a_malformed_line_as_before(line, message):
    """Lines that are no JSON object with a seq keep the messages verify has always printed."""
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        reader.decode(line)
    assert reader.try_decode(line) is None


def _line(**changes: object) -> bytes:
    fields: dict[str, object] = {
        "seq": 3,
        "ts": "2026-11-22T10:42:12.211996Z",
        "source": "hook",
        "action": "poststart",
        "container": "web",
        "container_id": cid("a"),
        "epoch": 4,
    }
    fields.update(changes)
    return chain.seal(chain.build_body(fields, chain.GENESIS, None), None)[0].rstrip(b"\n")


def test_decode_gives_an_entry_with_its_extra_keys():
    """A stored line becomes an Entry: fields as attributes, extra keys kept, dict-style reads."""
    entry = reader.decode(_line())
    assert (entry.seq, entry.action, entry.container_id) == (3, "poststart", cid("a"))
    assert entry.get("epoch") == entry["epoch"] == 4
    assert entry.get("pid") is None
    assert entry.get("nothing", "x") == "x"
    with pytest.raises(KeyError):
        entry["nothing"]


def test_decode_takes_a_lone_surrogate_the_fast_decoder_refuses():
    """The writer escapes a hostile name's lone surrogate; that line is still an entry."""
    entry = reader.decode(_line(container="web\ud800"))
    assert entry.container == "web\ud800"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"ts": "yesterday"}, "ts"),
        ({"container_id": "abc"}, "container_id"),
        ({"source": "elsewhere"}, "source"),
        ({"pid": "12"}, "pid"),
    ],
)
def test_a_json_object_outside_the_entry_format_is_not_an_entry(changes, field):
    """A line with a seq that breaks the format is malformed, and says which key."""
    with pytest.raises(ValueError, match=f"^not an entry \\({field}: "):
        reader.decode(_line(**changes))


def test_decoded_lines_skip_empty_lines_and_mark_what_is_no_entry(tmp_path):
    """Show's reading: empty lines are no lines; garbage and a partial tail have no entry."""
    good = _line()
    path = tmp_path / "f"
    path.write_bytes(b"\n" + good + b"\n\ngarbage\n" + good[:20])
    fd = os.open(path, os.O_RDONLY)
    try:
        got = list(reader.decoded_lines(fd))
    finally:
        os.close(fd)
    assert [(kind, line) for kind, line, _ in got] == [
        (reader.COMPLETE, good),
        (reader.COMPLETE, b"garbage"),
        (reader.INCOMPLETE, good[:20]),
    ]
    assert [entry is not None for _, _, entry in got] == [True, False, False]
