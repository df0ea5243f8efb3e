"""Pure seal logic: encoding, folding, judging heads and entries; the evolving key; the interval.

Folding checks numbering, links, macs and epochs; the evolving key's one-way
step and file format; the seal interval setting.
"""

from __future__ import annotations

import pytest

from shieldaudit.core.settings import parse_seal_interval
from shieldaudit.store import chain, fskey, seals

A, B = "a" * 64, "b" * 64
MAC = "1" * 64


def _seal(number: int, prev: str, *, heads=None, tombstones=None, retired=None, key=None):
    return seals.encode(
        number,
        f"2026-11-22T10:00:0{number}.000000Z",
        prev,
        heads=heads or {},
        tombstones=tombstones or {},
        retired=retired or {},
        key=key,
    )


def _chain_of(*specs, key=None):
    lines, prev = [], chain.GENESIS
    for number, spec in enumerate(specs, 1):
        line, prev = _seal(number, prev, key=key(number) if key else None, **spec)
        lines.append(line.rstrip(b"\n"))
    return lines


def test_fold_gives_each_trail_its_latest_head_and_pins():
    """Heads accumulate; tombstones drop a trail; retention moves its first segment."""
    lines = _chain_of(
        {"heads": {A: seals.Head(2, MAC, 0), B: seals.Head(1, MAC, 0)}},
        {"heads": {A: seals.Head(5, "2" * 64, 1)}, "retired": {A: [1, 2]}},
        {"tombstones": {B: (1, MAC)}},
    )
    fold = seals.fold(lines, chain.NO_KEYS)
    assert fold.problems == []
    assert fold.count == 3
    assert fold.trails[A].head == seals.Head(5, "2" * 64, 3)
    assert [p.seq for p in fold.trails[A].pins] == [2, 5]
    assert B not in fold.trails
    assert fold.tombstones[B][:2] == (1, MAC)


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (lambda ls: [ls[0], ls[2]], "seal 3: seal 2 missing (removed from the seals)"),
        (
            lambda ls: [ls[1], ls[0], ls[2]],
            "seal 1: out of order (expected seal 3): a seal replayed",
        ),
        (
            lambda ls: [ls[0], ls[1].replace(b'"ts":"2026', b'"ts":"2027'), ls[2]],
            "seal 2: modified: its mac does not match its content",
        ),
    ],
    ids=["missing", "reordered", "edited"],
)
def test_fold_reports_missing_reordered_and_edited_seals(tamper, expected):
    """Each change to the seal file is one line naming the seal."""
    lines = _chain_of({}, {}, {})
    assert expected in seals.fold(tamper(lines), chain.NO_KEYS).problems


def test_fold_reports_a_replaced_seal_and_a_line_that_is_not_one():
    """A seal recomputed without its predecessor's mac breaks the link; garbage is named by line."""
    lines = _chain_of({}, {})
    forged, _ = _seal(2, "f" * 64)
    fold = seals.fold([lines[0], forged.rstrip(b"\n"), b"garbage"], chain.NO_KEYS)
    assert fold.problems == [
        "seal 2: chain broken: prev does not match the mac of seal 1 (a seal was replaced)",
        "seals line 3: not a seal (not JSON)",
    ]


def test_compare_judges_current_heads_against_the_seals():
    """Truncated, rewritten, segments missing, trails removed: problems; growth: a change."""
    c, d, e = "c" * 64, "d" * 64, "e" * 64
    heads = {
        A: seals.Head(5, MAC, 0),
        B: seals.Head(5, MAC, 0),
        c: seals.Head(5, MAC, 2),
        d: seals.Head(5, MAC, 3),
        e: seals.Head(5, MAC, 0),
    }
    fold = seals.fold(_chain_of({"heads": heads}), chain.NO_KEYS)
    current = {
        A: seals.Head(3, MAC, 0),  # truncated
        B: seals.Head(5, "9" * 64, 0),  # rewritten at the sealed seq
        c: seals.Head(7, MAC, 3),  # segment 2 gone, not retired
        d: seals.Head(9, "3" * 64, 3),  # grew
        "f" * 64: seals.Head(1, MAC, 0),  # new
    }  # e: removed without a tombstone
    changes, problems = seals.compare(fold, current)
    assert set(changes) == {d, "f" * 64}
    assert problems == {
        A: "tail truncated: the trail ends at seq 3 but seal 1 recorded seq 5",
        B: "seq 5 differs from seal 1: history rewritten",
        c: "sealed segment audit-000002.jsonl missing (not removed by retention)",
        e: "trail removed without a tombstone (seal 1 recorded seq 5)",
    }
    seals.apply_pending(fold, [{"container_id": e, "seq": 5, "mac": MAC}], [])
    seals.apply_pending(fold, [], [{"container_id": c, "segment": 2}])
    assert set(seals.compare(fold, current)[1]) == {A, B}


def test_a_trail_sealed_before_its_first_rotation_still_misses_segment_one():
    """Sealed with no sealed segment yet, then segment 1 deleted by hand: it is missing."""
    fold = seals.fold(_chain_of({"heads": {A: seals.Head(2, MAC, 0)}}), chain.NO_KEYS)
    _, problems = seals.compare(fold, {A: seals.Head(9, MAC, 2)})
    assert problems == {A: "sealed segment audit-000001.jsonl missing (not removed by retention)"}


def _series_keys(seed: bytes):
    kid = fskey.kid_of(seed)
    series = fskey.Series(kid, 0, seed, seed=seed)

    def key(number: int) -> chain.Key:
        epoch = number - 1
        secret = series.key_for(epoch)
        assert secret is not None
        return chain.Key(secret, kid, epoch)

    return series, key


def test_evolving_seals_check_with_the_seed_and_run_from_epoch_zero():
    """With the seed every epoch checks; a series starting past epoch 0 is re-created history."""
    seed = b"s" * 32
    series, key = _series_keys(seed)
    lines = _chain_of({}, {}, {}, key=key)
    ring = chain.KeyRing((chain.Key(seed, series.kid, 0),), series)
    fold = seals.fold(lines, ring)
    assert (fold.problems, fold.unchecked, fold.last_epoch) == ([], 0, 2)
    host = fskey.Series(series.kid, 3, fskey.evolve(series.key_for(2) or b""))
    host_fold = seals.fold(lines, chain.KeyRing((chain.Key(host.secret, host.kid, 3),), host))
    assert (host_fold.problems, host_fold.unchecked) == ([], 3)
    assert seals.key_problems(host_fold, host, on_host=True) == []
    late = fskey.Series(series.kid, 5, b"x" * 32)
    assert seals.key_problems(host_fold, late, on_host=True) == [
        "seals: the signing key is at epoch 5: the seals of epochs 3 to 4 are missing"
    ]
    late_start = seals.fold(lines[1:], ring)
    assert any("the seals of an evolving key start at epoch 0" in p for p in late_start.problems)


def test_entry_checker_wants_the_epoch_of_the_first_covering_seal():
    """An entry's epoch is that of the first seal recording it, or one no seal has closed."""
    seed = b"t" * 32
    series, key = _series_keys(seed)
    lines = _chain_of(
        {"heads": {A: seals.Head(2, MAC, 0)}}, {"heads": {A: seals.Head(4, "4" * 64, 0)}}, key=key
    )
    fold = seals.fold(lines, chain.KeyRing((chain.Key(seed, series.kid, 0),), series))
    check = seals.entry_checker(fold, A)
    alg = chain.ALG_EVOLVING_PREFIX + series.kid
    assert check(1, {"epoch": 0, "chain": alg, "mac": "x"}) is None
    assert check(4, {"epoch": 1, "chain": alg, "mac": "4" * 64}) is None
    assert check(5, {"epoch": 2, "chain": alg, "mac": "y"}) is None
    assert "first sealed by seal 1 (epoch 0)" in (check(2, {"epoch": 1, "chain": alg}) or "")
    assert "which seal 2 already closed" in (check(5, {"epoch": 1, "chain": alg}) or "")
    assert "differs from seal 2" in (check(4, {"epoch": 1, "chain": alg, "mac": "z"}) or "")


def test_evolve_is_one_way_and_the_key_file_round_trips():
    """The step is HMAC(k, label); files decode to what was encoded; damage is one message."""
    seed = fskey.new_seed()
    series = fskey.Series(fskey.kid_of(seed), 0, seed, seed=seed)
    assert series.key_for(2) == fskey.evolve(fskey.evolve(seed))
    data = fskey.encode(fskey.SIGNING_HEADER, series.kid, 2, series.key_for(2) or b"")
    header, parsed = fskey.decode(data, "k")
    assert (header, parsed.epoch, parsed.secret, parsed.seed) == (
        fskey.SIGNING_HEADER,
        2,
        series.key_for(2),
        None,
    )
    assert parsed.key_for(1) is None  # the host cannot go back
    with pytest.raises(ValueError, match="k is damaged"):
        fskey.decode(data.replace(b"epoch 2", b"epoch two"), "k")
    with pytest.raises(ValueError, match="a verification key is the epoch-0 seed"):
        fskey.decode(data.replace(fskey.SIGNING_HEADER, fskey.VERIFICATION_HEADER), "k")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1h", 3600), ("0", 0), ("30s", 30), ("10m", 600), ("2d", 172800), ("90", 90)],
)
def test_seal_interval_parses_durations(text, seconds):
    """Durations with a unit or plain seconds; 0 turns sealing off."""
    assert parse_seal_interval(text) == seconds


@pytest.mark.parametrize("text", ["soon", "0.5", "8d", "-1h", "nan", "", "inf"])
def test_seal_interval_refuses_the_rest(text):
    """Anything else is refused with a sentence saying what is expected."""
    with pytest.raises(ValueError, match="expected"):
        parse_seal_interval(text)
