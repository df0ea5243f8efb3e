"""Recomputing an entry's mac on the sidecar's hot path.

The same digest as :func:`shieldaudit.store.chain.expected_mac`, specialised
for speed: the signed bytes are cut at a fixed offset from the end of the line
and each ``chain`` value is resolved to its key once.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Final

from shieldaudit.store import chain

if TYPE_CHECKING:
    from shieldaudit.store.chain import KeyRing

_PREFIX: Final = b',"mac":"'
_SUFFIX_LEN: Final = len(_PREFIX) + chain.MAC_HEX_LEN + 2  # ,"mac":"<64 hex>"}
_UNKNOWN: Final = b""  # a chain whose key we do not hold: not judged


class MacChecker:
    """Tells whether a line's mac is wrong, when the keys allow judging it."""

    def __init__(self, keys: KeyRing) -> None:
        """Judge unkeyed chains always, keyed ones when ``keys`` holds their key."""
        self._keys = keys
        self._secrets: dict[object, bytes | None] = {chain.ALG_PLAIN: None}

    def _secret(self, alg: object) -> bytes | None:
        if alg not in self._secrets:
            secret = _UNKNOWN
            if isinstance(alg, str) and alg.startswith(chain.ALG_KEYED_PREFIX):
                key = self._keys.by_kid(alg[len(chain.ALG_KEYED_PREFIX) :])
                if key is not None:
                    secret = key.secret
            if len(self._secrets) < 64:  # bounded: a hostile trail cannot grow it
                self._secrets[alg] = secret
            return secret
        return self._secrets[alg]

    def wrong(self, line: bytes, alg: object, mac: str) -> bool:
        """Return True when the line's mac is provably not the digest of its content."""
        secret = self._secret(alg)
        if secret == _UNKNOWN:
            return False
        if line[-_SUFFIX_LEN : -_SUFFIX_LEN + len(_PREFIX)] != _PREFIX or not line.endswith(b'"}'):
            return True  # the mac is not where every writer puts it
        signed = line[:-_SUFFIX_LEN] + b"}"
        if secret is None:
            return hashlib.sha256(signed).hexdigest() != mac
        return hmac.new(secret, signed, hashlib.sha256).hexdigest() != mac
