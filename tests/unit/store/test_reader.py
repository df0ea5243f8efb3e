"""The streaming line reader: exact lines across chunk boundaries, oversized and partial lines."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shieldaudit.store.reader import iter_lines

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
