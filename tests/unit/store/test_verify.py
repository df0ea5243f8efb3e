"""verify: every kind of tampering is caught and named by container, segment and seq."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from shieldaudit.store import chain
from shieldaudit.store.verify import MAX_MESSAGE_CHARS, MAX_PROBLEMS, verify_container
from store_helpers import CID_A, trail, write


def _rewrite(path, transform):
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(transform(lines)))


def _messages(report):
    return [p.render() for p in report.problems]


@pytest.fixture
def root(tmp_path):
    """A root with one container of 12 entries in one active segment."""
    root = tmp_path / "root"
    write(root, CID_A, 12)
    return root


def test_intact_trail_verifies(root):
    """An untouched trail has no problems and counts every entry."""
    report = verify_container(root, CID_A)
    assert report.ok
    assert (report.entries, report.first_seq, report.last_seq) == (12, 1, 12)


def test_edited_entry_is_caught_with_its_seq(root):
    """Changing a field of entry 5 breaks its mac; the problem names container and seq 5."""
    active = trail(root, CID_A) / "audit.jsonl"
    _rewrite(active, lambda ls: [ln.replace(b'"n4"', b'"n9"') for ln in ls])
    report = verify_container(root, CID_A)
    assert not report.ok
    assert [p.seq for p in report.problems] == [5]
    assert "modified" in report.problems[0].message
    assert report.problems[0].render().startswith(CID_A[:12] + " audit.jsonl seq 5:")


def test_edited_last_entry_is_caught(root):
    """The last entry carries its own mac, so editing it is caught although nothing follows it."""
    active = trail(root, CID_A) / "audit.jsonl"
    _rewrite(active, lambda ls: [*ls[:-1], ls[-1].replace(b'"test"', b'"tost"')])
    assert [p.seq for p in verify_container(root, CID_A).problems] == [12]


def test_edit_with_recomputed_plain_hash_breaks_the_next_link(root):
    """An attacker who recomputes entry 5's unkeyed mac still breaks entry 6's prev link."""
    active = trail(root, CID_A) / "audit.jsonl"

    def forge(lines):
        body = json.loads(lines[4])
        body["detail"] = "forged"
        del body["mac"]
        line, _mac = chain.seal(body, None)
        return [*lines[:4], line, *lines[5:]]

    _rewrite(active, forge)
    report = verify_container(root, CID_A)
    assert [p.seq for p in report.problems] == [6]
    assert "chain broken" in report.problems[0].message


def test_deleted_entry_is_a_gap(root):
    """Removing entry 7 is reported as a gap at seq 8 naming the missing seq."""
    active = trail(root, CID_A) / "audit.jsonl"
    _rewrite(active, lambda ls: ls[:6] + ls[7:])
    report = verify_container(root, CID_A)
    assert [p.seq for p in report.problems] == [8]
    assert "seq 7 missing" in report.problems[0].message


def test_inserted_entry_is_caught(root):
    """A duplicated (replayed) entry inserted after entry 3 is reported."""
    active = trail(root, CID_A) / "audit.jsonl"
    _rewrite(active, lambda ls: [*ls[:3], ls[1], *ls[3:]])
    report = verify_container(root, CID_A)
    assert not report.ok
    assert report.problems[0].seq == 2
    assert "out of order" in report.problems[0].message


def test_reordered_entries_are_caught(root):
    """Swapping entries 4 and 5 is reported at those seqs."""
    active = trail(root, CID_A) / "audit.jsonl"
    _rewrite(active, lambda ls: [*ls[:3], ls[4], ls[3], *ls[5:]])
    report = verify_container(root, CID_A)
    assert {p.seq for p in report.problems} == {4, 5}


def test_sealed_segment_removed_from_the_middle(tmp_path):
    """Deleting audit-000003.jsonl is reported as a missing segment and a seq gap."""
    root = tmp_path / "root"
    write(root, CID_A, 10, max_segment_bytes=256, keep_segments=0)
    os.remove(trail(root, CID_A) / "audit-000003.jsonl")
    report = verify_container(root, CID_A)
    texts = _messages(report)
    assert any("audit-000003.jsonl missing" in t for t in texts)
    assert any("seq 4:" in t and "seq 3 missing" in t for t in texts)


def test_oldest_segments_removed_beyond_retention_are_caught(tmp_path):
    """With keep-all retention, a trail that starts at audit-000004 is reported, not excused."""
    root = tmp_path / "root"
    write(root, CID_A, 6, max_segment_bytes=256, keep_segments=0)
    for number in (1, 2, 3):
        os.remove(trail(root, CID_A) / f"audit-{number:06d}.jsonl")
    report = verify_container(root, CID_A, keep_segments=0)
    assert not report.ok
    assert any("segments before audit-000004.jsonl are missing" in t for t in _messages(report))


def test_entry_moved_from_another_container_is_caught(tmp_path):
    """An entry copied from another container's trail is refused by container_id and chain."""
    root = tmp_path / "root"
    other = "c" * 64
    write(root, CID_A, 3)
    write(root, other, 3)
    foreign = (trail(root, other) / "audit.jsonl").read_bytes().splitlines(keepends=True)[2]
    with (trail(root, CID_A) / "audit.jsonl").open("ab") as handle:
        handle.write(foreign)
    report = verify_container(root, CID_A)
    assert any("another container" in p.message for p in report.problems)


def test_keyed_chain_forgery_without_key_is_caught(tmp_path):
    """With a key, recomputing plain SHA-256 hashes (no key) over an edit is caught."""
    root = tmp_path / "root"
    key_file = tmp_path / "key"
    key_file.write_bytes(b"a-secret-of-at-least-sixteen-bytes\n")
    key_file.chmod(0o600)
    write(root, CID_A, 5, key_file=key_file)
    keys = chain.load_keys(key_file)
    active = trail(root, CID_A) / "audit.jsonl"

    def forge(lines):
        out = []
        prev = chain.GENESIS
        for raw in lines:
            body = json.loads(raw)
            body["detail"] = "rewritten"
            body["prev"] = prev
            del body["mac"]
            signed = json.dumps(body, separators=(",", ":")).encode()
            mac = hashlib.sha256(signed).hexdigest()  # what an attacker without the key can do
            out.append(signed[:-1] + b',"mac":"' + mac.encode() + b'"}\n')
            prev = mac
        return out

    _rewrite(active, forge)
    report = verify_container(root, CID_A, keys)
    assert not report.ok
    assert {p.seq for p in report.problems} == {1, 2, 3, 4, 5}


def test_keyed_trail_downgraded_to_plain_sha256_is_caught(tmp_path):
    """Re-sealing a keyed trail as an unkeyed chain is caught when the key is configured."""
    root = tmp_path / "root"
    key_file = tmp_path / "key"
    key_file.write_bytes(b"a-secret-of-at-least-sixteen-bytes\n")
    key_file.chmod(0o600)
    write(root, CID_A, 4, key_file=key_file)
    active = trail(root, CID_A) / "audit.jsonl"

    def downgrade(lines):
        out, prev = [], chain.GENESIS
        for raw in lines:
            body = json.loads(raw)
            del body["mac"]
            body["prev"] = prev
            body["chain"] = "sha256"
            line, prev = chain.seal(body, None)
            out.append(line)
        return out

    _rewrite(active, downgrade)
    report = verify_container(root, CID_A, chain.load_keys(key_file))
    assert not report.ok
    assert any("not keyed" in p.message for p in report.problems)


def test_unkeyed_prefix_then_keyed_entries_verify(tmp_path):
    """Enabling a key later: the unkeyed prefix is protected by the first keyed entry."""
    root = tmp_path / "root"
    key_file = tmp_path / "key"
    key_file.write_bytes(b"a-secret-of-at-least-sixteen-bytes\n")
    key_file.chmod(0o600)
    write(root, CID_A, 3)
    write(root, CID_A, 2, key_file=key_file)
    report = verify_container(root, CID_A, chain.load_keys(key_file))
    assert report.ok, _messages(report)


def test_rotated_keys_still_verify(tmp_path):
    """A key file listing the new key first and the old one after verifies both generations."""
    root = tmp_path / "root"
    old, new = b"old-secret-0123456789abcdef", b"new-secret-0123456789abcdef"
    key_file = tmp_path / "key"
    key_file.write_bytes(old + b"\n")
    key_file.chmod(0o600)
    write(root, CID_A, 2, key_file=key_file)
    key_file.write_bytes(new + b"\n" + old + b"\n")
    write(root, CID_A, 2, key_file=key_file)
    assert verify_container(root, CID_A, chain.load_keys(key_file)).ok


def test_key_file_readable_by_others_is_refused(tmp_path):
    """A key others can read cannot protect anything: refused with a chmod hint."""
    key_file = tmp_path / "key"
    key_file.write_bytes(b"a-secret-of-at-least-sixteen-bytes\n")
    key_file.chmod(0o644)
    with pytest.raises(Exception, match="chmod 600"):
        chain.load_keys(key_file)


def test_non_utf8_and_huge_lines_are_reported_not_fatal(tmp_path):
    """Non-UTF-8 bytes and a 10 MiB line inside a trail are reported; checking goes on."""
    root = tmp_path / "root"
    write(root, CID_A, 2)
    active = trail(root, CID_A) / "audit.jsonl"
    with active.open("ab") as handle:
        handle.write(b"\xff\xfe garbage \xc3\x28\n")
        handle.write(b"x" * (10 * 1024 * 1024) + b"\n")
    write(root, CID_A, 1)
    report = verify_container(root, CID_A)
    texts = _messages(report)
    assert any("not UTF-8" in t for t in texts)
    assert any("longer than" in t for t in texts)
    assert report.entries == 3
    assert report.last_seq == 3


def test_report_keeps_the_first_problems_counts_all_and_cuts_hostile_messages(tmp_path):
    """A million-problem trail must not mean a million kept problems, nor huge messages.

    50 lines with a 10 KiB unknown chain algorithm each: 20 problems kept,
    every one counted, each message cut to a few hundred characters.
    """
    root = tmp_path / "root"
    write(root, CID_A, 1)
    active = trail(root, CID_A) / "audit.jsonl"
    first = active.read_bytes()
    hostile = first.replace(b'"chain":"sha256"', b'"chain":"' + b"z" * 10240 + b'"').rstrip(b"\n")
    with active.open("ab") as handle:
        for seq in range(2, 52):
            handle.write(hostile.replace(b'"seq":1,', f'"seq":{seq},'.encode()) + b"\n")
    report = verify_container(root, CID_A)
    assert not report.ok
    assert len(report.problems) == MAX_PROBLEMS
    assert report.problem_count > MAX_PROBLEMS
    assert report.more_problems == report.problem_count - MAX_PROBLEMS
    assert all(len(p.message) <= MAX_MESSAGE_CHARS for p in report.problems)
    assert any("unknown chain algorithm" in p.message for p in report.problems)
