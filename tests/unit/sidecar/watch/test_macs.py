"""The sidecar's fast mac check agrees with the store's reference implementation."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shieldaudit.sidecar.watch.macs import MacChecker
from shieldaudit.store import chain

KEY = chain.Key.from_secret(b"s" * 32)
RING = chain.KeyRing((KEY,))


@given(detail=st.text(max_size=200), keyed=st.booleans())
def test_sealed_lines_are_never_wrong(detail, keyed):
    """Any line sealed by the writer's code passes, keyed (with its key) or not."""
    key = KEY if keyed else None
    body = chain.build_body({"seq": 1, "detail": detail}, chain.GENESIS, key)
    line, mac = chain.seal(body, key)
    raw = line.rstrip(b"\n")
    assert not MacChecker(RING).wrong(raw, body["chain"], mac)
    assert chain.expected_mac(raw, str(body["chain"]), RING) == (mac, None)


def test_edits_and_unknown_keys():
    """An edited line is wrong; a keyed line without its key, or an unknown chain, is not judged."""
    body = chain.build_body({"seq": 1, "detail": "ok"}, chain.GENESIS, KEY)
    line, mac = chain.seal(body, KEY)
    edited = line.rstrip(b"\n").replace(b'"ok"', b'"no"')
    alg = body["chain"]
    assert MacChecker(RING).wrong(edited, alg, mac)
    assert not MacChecker(chain.NO_KEYS).wrong(edited, alg, mac)
    assert not MacChecker(RING).wrong(edited, "md5", mac)
    plain, plain_mac = chain.seal(chain.build_body({"seq": 1}, chain.GENESIS, None), None)
    assert MacChecker(chain.NO_KEYS).wrong(plain.rstrip(b"\n") + b" ", "sha256", plain_mac)
