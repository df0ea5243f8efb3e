"""Pure parts of collect: reading omprog's input, validating messages, the metrics text.

Pins that input lines are cut at newlines whatever the read sizes, that an
over-long line becomes one empty (refused) line without being held, that seal
records and trail lines are told apart by the file they came from, and that
every collect metric is exported from the start.
"""

from __future__ import annotations

import json
import os
import threading

import pytest

from shieldaudit.fleet import collect as collect_module
from shieldaudit.fleet.collect import (
    MAX_LINE_BYTES,
    SEALS_STREAM,
    Collector,
    Counts,
    RefusedError,
    message,
    parse_message,
    read_batches,
)

CID = "ab" * 32
MAC = "1f" * 32
PREV = "0" * 64


def entry(seq: int = 1) -> str:
    """A trail line as the writer makes it (chain fields only matter here)."""
    body = {"seq": seq, "container_id": CID, "prev": PREV, "chain": "sha256", "mac": MAC}
    return json.dumps(body, separators=(",", ":"))


def feed(chunks: list[bytes], size: int = 7) -> list[bytes]:
    """Write chunks into a pipe from a thread; return every line read_batches yields."""
    read_fd, write_fd = os.pipe()

    def writer() -> None:
        for chunk in chunks:
            os.write(write_fd, chunk)
        os.close(write_fd)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        return [line for batch in read_batches(read_fd, chunk=size) for line in batch]
    finally:
        thread.join()
        os.close(read_fd)


def test_lines_are_cut_at_newlines_whatever_the_reads():
    """Lines split over several reads come out whole; a last line without newline is not one."""
    assert feed([b"a", b"bc\nde", b"f\n\ngh"]) == [b"abc", b"def", b""]


def test_an_over_long_line_is_one_empty_line():
    """A line past the limit is skipped (not held) and stands as one empty line."""
    big = b"x" * (MAX_LINE_BYTES + 200 * 1024)
    assert feed([b"one\n", big, b"tail\ntwo\n"], size=4096) == [b"one", b"", b"two"]


def test_trail_and_seal_lines_are_told_apart_by_their_file():
    """A trail line names its container by path; a seal record its seal number."""
    trail = parse_message(message("node-a", f"/r/containers/{CID}/audit-000003.jsonl", 7, entry()))
    assert (trail.node, trail.stream, trail.file, trail.offset, trail.seq) == (
        "node-a",
        CID,
        "audit-000003.jsonl",
        7,
        1,
    )
    seal_line = json.dumps({"seal": 4, "prev": PREV, "chain": "sha256", "mac": MAC})
    seal = parse_message(message("node-a", "/r/seals/seals.jsonl", 0, seal_line))
    assert (seal.stream, seal.seq) == (SEALS_STREAM, 4)
    with pytest.raises(RefusedError) as caught:
        parse_message(message("node-a", "/r/seals/seals.jsonl", 0, entry()))
    assert caught.value.reason == "entry"


@pytest.mark.parametrize(
    "header",
    [
        '{"file":"%s","offset":7}',
        '{"file": "%s", "offset": 7}',
        '{"file":"%s","offset":7}'.replace("/", "\\/"),
        '{"offset":7,"file":"%s"}',
        '{ "file":"%s","offset":7 }',
    ],
)
def test_every_header_spelling_gives_the_same_line(header):
    """The compact header rsyslog writes (slashes escaped or not) and any other JSON agree."""
    path = f"/r/containers/{CID}/audit-000003.jsonl"
    line = entry(5)
    shipped = parse_message(f"node-a {header % path} {line}".encode())
    assert (shipped.node, shipped.stream, shipped.file, shipped.offset, shipped.seq) == (
        "node-a",
        CID,
        "audit-000003.jsonl",
        7,
        5,
    )
    assert shipped.line == line.encode()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (f'node-a {{"file":"/r/containers/{CID}/audit.jsonl","offset":7}} {{"seq":1}} ', "entry"),
        (f'node-a {{"file":"/r/containers/{CID}/audit.jsonl","offset":7}}  {{"seq":1}}', "entry"),
        (f'node-a {{"file":"/r/containers/{CID}\\/..\\/x","offset":7}} {{}}', "file"),
        (f'node-a {{"file":"/r/containers/{CID}/audit.jsonl","offset":-1}} {{}}', "envelope"),
        ('-a {"file":"/r/seals/seals.jsonl","offset":0} {}', "node"),
    ],
)
def test_near_miss_messages_are_refused(text, reason):
    """Messages just off the fast path are refused for the same reasons as before."""
    with pytest.raises(RefusedError) as caught:
        parse_message(text.encode())
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("not json", "the line is not JSON"),
        ("[1, 2]", "the line is not a JSON object"),
        ('"text"', "the line is not a JSON object"),
        (entry() + " {}", "the line is not JSON"),  # something after the object
        (entry()[:-1], "the line is not JSON"),  # cut short
        (entry().replace('"seq":1', '"seq":0'), "missing or invalid seq"),
        (entry().replace('"seq":1', '"seq":true'), "missing or invalid seq"),
        (entry().replace('"seq":1', '"seq":1.0'), "missing or invalid seq"),
        (entry().replace('"seq":1', '"seq":"1"'), "missing or invalid seq"),
        (entry().replace('"seq":1,', ""), "missing or invalid seq"),
        (entry().replace(MAC, MAC.upper()), "missing or invalid mac"),
        (entry().replace(MAC, "1f"), "missing or invalid mac"),
        (entry().replace(PREV, "0" * 200), "missing or invalid prev"),
        (entry().replace(CID, "cd" * 32), "container_id differs from the trail it was read from"),
        (entry().replace(f'"container_id":"{CID}",', ""), "container_id differs"),
        (entry().replace(f'"{CID}"', "null"), "container_id differs"),
        (entry().replace('"seq":1', '"seq":1,"x":[1,]'), "the line is not JSON"),
        (entry().replace('"chain"', '"ch\\u00e9in"'), None),  # an escape is still ASCII
    ],
)
def test_every_shipped_line_is_parsed_in_full(line, why):
    """Only one JSON object with a valid seq, mac and prev of its own trail reaches a copy."""
    text = message("node-a", f"/r/containers/{CID}/audit.jsonl", 7, line)
    if why is None:
        assert parse_message(text).line == line.encode()
        return
    with pytest.raises(RefusedError) as caught:
        parse_message(text)
    assert caught.value.reason == "entry"
    assert str(caught.value).startswith(why)


def test_a_non_ascii_line_is_refused():
    """Trail lines are ASCII (the writer escapes): raw UTF-8 did not come from a trail."""
    line = entry().replace('"chain"', '"ch\u00e9in"')
    text = message("node-a", f"/r/containers/{CID}/audit.jsonl", 7, line)
    with pytest.raises(RefusedError, match="not one line of ASCII"):
        parse_message(text)


def test_a_remembered_header_belongs_to_its_node_and_path_only():
    """What one node's header validated to is never used for another node or file."""
    path = f"/r/containers/{CID}/audit.jsonl"
    first = parse_message(message("node-a", path, 7, entry()))
    other_node = parse_message(message("node-b", path, 7, entry()))
    other_file = parse_message(
        message("node-a", path.replace("audit.jsonl", "audit-000002.jsonl"), 0, entry())
    )
    assert (first.node, first.file) == ("node-a", "audit.jsonl")
    assert (other_node.node, other_node.file) == ("node-b", "audit.jsonl")
    assert (other_file.node, other_file.file, other_file.offset) == (
        "node-a",
        "audit-000002.jsonl",
        0,
    )
    with pytest.raises(RefusedError) as caught:
        parse_message(message("node-a", path.replace(CID, "x" * 64), 7, entry()))
    assert caught.value.reason == "file"


@pytest.mark.parametrize("offset", ["007", "-1", "1e3", "", "7.0"])
def test_an_offset_that_is_not_a_plain_number_is_refused(offset):
    """Leading zeros, signs, exponents and absurd offsets are not taken by the fast path."""
    path = f"/r/containers/{CID}/audit.jsonl"
    text = f'node-a {{"file":"{path}","offset":{offset}}} {entry()}'.encode()
    with pytest.raises(RefusedError) as caught:
        parse_message(text)
    assert caught.value.reason == "envelope"


def test_every_metric_is_exported_at_zero():
    """All collect series exist from the start, so alerts on increase() work at once."""
    text = Counts().render()
    for series in (
        'shieldaudit_collect_entries_total{outcome="stored"} 0',
        'shieldaudit_collect_entries_total{outcome="duplicate"} 0',
        "shieldaudit_collect_conflicts_total 0",
        'shieldaudit_collect_refused_total{reason="file"} 0',
        'shieldaudit_collect_refused_total{reason="backlog"} 0',
        "shieldaudit_collect_waiting_entries 0",
    ):
        assert series in text.splitlines()


def chained(count: int, pad: int = 0) -> list[str]:
    """``count`` linked trail lines of CID (seq 1..count), each padded by ``pad`` bytes."""
    lines, prev = [], PREV
    for seq in range(1, count + 1):
        mac = f"{seq:064x}"
        body = {"seq": seq, "container_id": CID, "prev": prev, "chain": "sha256", "mac": mac}
        if pad:
            body["detail"] = "x" * pad
        lines.append(json.dumps(body, separators=(",", ":")))
        prev = mac
    return lines


def test_lines_waiting_are_bounded_in_bytes_and_counted(tmp_path, monkeypatch):
    """Lines ahead of a gap wait up to the byte limit; past it they are refused as backlog.

    The gauge says how many wait now, the counter how many ever had to; once
    the gap is filled the waiting lines are stored in order and the gauge is 0.
    """
    monkeypatch.setattr(collect_module, "MAX_PENDING_BYTES", 6 * 1024)
    lines = chained(12, pad=900)  # about 1.2 KB each: five fit in 6 KiB
    path = f"/r/containers/{CID}/audit.jsonl"
    collector = Collector(tmp_path / "central", fsync=False)
    try:
        outcomes = [
            collector.apply(parse_message(message("node-a", path, 1, line))) for line in lines[1:]
        ]
        assert outcomes == ["pending"] * 5 + ["refused"] * 6
        assert (collector.counts.waiting, collector.counts.pending) == (5, 5)
        assert collector.counts.refused["backlog"] == 6
        assert "shieldaudit_collect_waiting_entries 5" in collector.counts.render()
        assert collector.apply(parse_message(message("node-a", path, 0, lines[0]))) == "stored"
        collector.flush()
        assert collector.counts.waiting == 0
        assert collector.counts.stored == 6
    finally:
        collector.close()
    trail = tmp_path / "central" / "node-a" / "containers" / CID / "audit.jsonl"
    assert trail.read_text().splitlines() == lines[:6]


def test_waiting_lines_survive_a_restart_and_are_counted_once(tmp_path):
    """Waiting lines are on disk: a new collector reloads them, the gauge counts each once.

    (They were written but never read back before: the stored path did not
    pass the file check, and the lines were dropped.)
    """
    lines = chained(4)
    path = f"/r/containers/{CID}/audit.jsonl"
    first = Collector(tmp_path / "central", fsync=False)
    for line in lines[2:]:
        assert first.apply(parse_message(message("node-a", path, 1, line))) == "pending"
    first.close()
    second = Collector(tmp_path / "central", fsync=False)
    try:
        assert second.apply(parse_message(message("node-a", path, 0, lines[0]))) == "stored"
        assert second.counts.waiting == 2
        assert second.apply(parse_message(message("node-a", path, 1, lines[1]))) == "stored"
        assert (second.counts.waiting, second.counts.stored) == (0, 4)
    finally:
        second.close()
    trail = tmp_path / "central" / "node-a" / "containers" / CID / "audit.jsonl"
    assert trail.read_text().splitlines() == lines


def test_waiting_seal_records_survive_a_restart(tmp_path):
    """A node's seal records that arrive ahead of an earlier one are reloaded the same way."""
    seals, prev = [], PREV
    for number in range(1, 4):
        mac = f"{number:064x}"
        seals.append(json.dumps({"seal": number, "prev": prev, "chain": "sha256", "mac": mac}))
        prev = mac
    path = "/r/seals/seals.jsonl"
    first = Collector(tmp_path / "central", fsync=False)
    assert first.apply(parse_message(message("node-a", path, 9, seals[2]))) == "pending"
    first.close()
    second = Collector(tmp_path / "central", fsync=False)
    try:
        for line in seals[:2]:
            assert second.apply(parse_message(message("node-a", path, 9, line))) == "stored"
        assert (second.counts.waiting, second.counts.stored) == (0, 3)
    finally:
        second.close()
    copy = tmp_path / "central" / "node-a" / "seals" / "seals.jsonl"
    assert copy.read_text().splitlines() == seals


def test_a_pending_file_is_checked_like_the_network(tmp_path):
    """Lines in a pending file that collect did not write are counted and never placed.

    A line naming another file, one of another trail, one that is not JSON,
    and a cut-off last line are refused; the waiting line collect wrote is
    reloaded and placed once its gap is filled.
    """
    lines = chained(3)
    path = f"/r/containers/{CID}/audit.jsonl"
    first = Collector(tmp_path / "central", fsync=False)
    assert first.apply(parse_message(message("node-a", path, 1, lines[2]))) == "pending"
    first.close()
    pending = tmp_path / "central" / "node-a" / "state" / "collect" / f"{CID}.pending.jsonl"
    good = pending.read_bytes()
    other = json.loads(entry(2).replace(CID, "cd" * 32))
    bad = [
        json.dumps({"file": "../../x", "offset": 1, "line": lines[1]}),
        json.dumps({"file": "audit.jsonl", "offset": 1, "line": json.dumps(other)}),
        "not json",
    ]
    pending.write_bytes("\n".join(bad).encode() + b"\n" + good + b'{"file":')
    second = Collector(tmp_path / "central", fsync=False)
    try:
        assert second.apply(parse_message(message("node-a", path, 0, lines[0]))) == "stored"
        assert second.counts.refused["entry"] == 4
        assert second.counts.waiting == 1
        assert second.apply(parse_message(message("node-a", path, 1, lines[1]))) == "stored"
        assert second.counts.stored == 3
    finally:
        second.close()
    trail = tmp_path / "central" / "node-a" / "containers" / CID / "audit.jsonl"
    assert trail.read_text().splitlines() == lines
