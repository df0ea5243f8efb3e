"""The CLI's cheap trail reads: streaming lines by chunks, and reading only a trail's end."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from cli_helpers import cid, write_trail
from shieldaudit.cli import trails
from shieldaudit.cli.trails import COMPLETE, INCOMPLETE, OVERSIZED, stream_lines
from store_helpers import all_lines


def _expected(data: bytes, max_line: int) -> list[tuple[bytes, int]]:
    """The obvious (whole-file) answer stream_lines must give."""
    *complete, last = data.split(b"\n")
    out = [(b"", OVERSIZED) if len(x) > max_line else (x, COMPLETE) for x in complete if x]
    if last:
        out.append((b"", OVERSIZED) if len(last) > max_line else (last, INCOMPLETE))
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.one_of(st.binary(max_size=40), st.just(b"\n"), st.just(b"x" * 90)), max_size=60),
    st.integers(min_value=1, max_value=64),
)
def test_stream_lines_matches_a_whole_file_split(tmp_path_factory, pieces, chunk):
    """Whatever the chunk size, lines come out as a whole-file split would give them."""
    data = b"".join(pieces)
    path = tmp_path_factory.mktemp("s") / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    old = trails._STREAM_CHUNK
    try:
        trails._STREAM_CHUNK = chunk  # type: ignore[misc]
        got = list(stream_lines(fd, max_line=50))
    finally:
        trails._STREAM_CHUNK = old  # type: ignore[misc]
        os.close(fd)
    assert got == _expected(data, 50)


def test_tail_lines_reads_back_across_a_rotation(tmp_path):
    """The last lines come from older segments when the active one is (nearly) empty."""
    root = tmp_path / "root"
    write_trail(root, cid("a"), [f"x{i}" for i in range(30)], max_segment_bytes=1500)
    lines = all_lines(root, cid("a"))
    with trails.Trails(root) as opened:
        fd = opened.open_dir(cid("a"))
        try:
            names = trails.segment_names(fd)
            assert trails.tail_lines(fd, names, 8) == lines[-8:]
            assert trails.tail_lines(fd, names, 100) == lines
        finally:
            os.close(fd)
