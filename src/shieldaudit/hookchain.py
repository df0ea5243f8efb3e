"""The chain's entry format for the hook: build an entry line, hash or HMAC it (pure).

Mirrors :func:`shieldaudit.store.chain.build_body` and
:func:`~shieldaudit.store.chain.seal` byte for byte (tests pin it), using only
modules that are cheap to import: :mod:`shieldaudit.leanjson` instead of
``json``, and the builtin SHA-256 (HMAC per RFC 2104 on top) instead of
``hashlib``/``hmac``, which load OpenSSL.
"""

from __future__ import annotations

import time

from shieldaudit import leanjson

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

GENESIS = "0" * 64
CORE_KEYS = (
    "seq",
    "ts",
    "source",
    "action",
    "container",
    "container_id",
    "image",
    "pid",
    "exit_code",
    "dest",
    "detail",
)
#: What an unknown core value is written as (chain.CORE_DEFAULTS): null for numbers.
CORE_NULLS = frozenset({"seq", "pid", "exit_code"})
_CHAIN_KEYS = frozenset({"prev", "chain", "mac"})
_TRANS_36 = bytes(x ^ 0x36 for x in range(256))
_TRANS_5C = bytes(x ^ 0x5C for x in range(256))


def _load_sha256() -> Callable[[bytes], object]:
    # The builtin module (``_sha256`` in 3.11, ``_sha2`` from 3.12) avoids
    # loading OpenSSL, which hashlib always does.
    for name in ("_sha256", "_sha2"):
        try:
            return __import__(name).sha256  # type: ignore[no-any-return]
        except (ImportError, AttributeError):
            continue
    import hashlib  # noqa: PLC0415 -- only on interpreters without the builtin module

    return hashlib.sha256


_sha256 = _load_sha256()


def format_ns(ns: int) -> str:
    """Format ns since the epoch as RFC 3339 UTC with microseconds (as shieldaudit.timefmt)."""
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1000:06d}Z"


def _digest(secret: bytes | None, data: bytes) -> str:
    if secret is None:
        return _sha256(data).hexdigest()  # type: ignore[attr-defined, no-any-return]
    # HMAC (RFC 2104) over the builtin SHA-256, to avoid importing hmac/hashlib.
    if len(secret) > 64:
        secret = _sha256(secret).digest()  # type: ignore[attr-defined]
    key = secret.ljust(64, b"\0")
    inner = _sha256(key.translate(_TRANS_36) + data).digest()  # type: ignore[attr-defined]
    return _sha256(key.translate(_TRANS_5C) + inner).hexdigest()  # type: ignore[attr-defined, no-any-return]


def seal(
    fields: Mapping[str, object], seq: int, prev: str, key: tuple[bytes, str] | None
) -> tuple[bytes, str]:
    """Build the entry line exactly as ``chain.build_body`` + ``chain.seal`` do."""
    body: dict[str, object] = {}
    for name in CORE_KEYS:
        body[name] = fields.get(name, None if name in CORE_NULLS else "")
    body["seq"] = seq
    for name, value in fields.items():
        if name not in body and name not in _CHAIN_KEYS:
            body[name] = value
    body["prev"] = prev
    body["chain"] = "sha256" if key is None else key[1]
    signed = leanjson.dumps(body).encode("ascii")
    mac = _digest(None if key is None else key[0], signed)
    return signed[:-1] + b',"mac":"' + mac.encode("ascii") + b'"}\n', mac


def key_id(secret: bytes) -> str:
    """Return the public key ID of a secret, as ``chain.Key.from_secret`` derives it."""
    return _sha256(b"shieldaudit-kid\0" + secret).hexdigest()[:16]  # type: ignore[attr-defined, no-any-return]
