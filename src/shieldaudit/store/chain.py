r"""Entry serialisation and the hash chain (pure functions, standard library only).

Line format: ``{...,"prev":"<hex>","chain":"<alg>","mac":"<64 hex>"}\\n``.

* ``mac`` is the digest of the line's bytes up to and excluding ``,"mac":…``
  (with the closing brace restored): SHA-256 for an unkeyed chain, HMAC-SHA-256
  with the signing key for a keyed one. It is always the last key, so the signed
  bytes are recovered exactly by cutting a fixed-length suffix.
* ``prev`` is the ``mac`` of the previous entry of the same container, or
  :data:`GENESIS` for ``seq`` 1. Since ``mac`` covers ``prev``, each entry
  commits to all history before it; a keyed entry protects every entry before it.
* ``chain`` is ``sha256`` or ``hmac-sha256:<kid>``, where ``kid`` names the key
  (a hash of it, never the key), so verification knows which key to use and a
  downgrade to plain hashes is visible.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from shieldaudit.core.errors import ConfigError
from shieldaudit.core.ids import HEX_DIGITS
from shieldaudit.store import fskey

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from shieldaudit.core.settings import StoreSettings

GENESIS: Final = "0" * 64
ALG_PLAIN: Final = "sha256"
ALG_KEYED_PREFIX: Final = "hmac-sha256:"
#: Entries and seals signed with an evolving key: ``hmac-sha256-fs:<kid>`` plus ``"epoch": N``.
ALG_EVOLVING_PREFIX: Final = "hmac-sha256-fs:"
#: What :func:`expected_mac` says of an epoch whose key this host no longer holds.
EARLIER_EPOCH: Final = "signed in an earlier epoch (needs the verification key)"
MAC_HEX_LEN: Final = 64
_MAC_PREFIX: Final = b',"mac":"'
_MAC_SUFFIX_LEN: Final = len(_MAC_PREFIX) + MAC_HEX_LEN + 2  # + '"}'
MIN_KEY_BYTES: Final = 16
MAX_KEY_FILE_BYTES: Final = 64 * 1024
#: Keys every entry has, in the order they are written (docs/format.md, "Entries").
CORE_KEYS: Final = (
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
CHAIN_KEYS: Final = ("prev", "chain", "mac")
#: What an unknown core value is written as: "" for text, null for numbers.
CORE_DEFAULTS: Final[dict[str, object]] = {
    "seq": None,
    "ts": "",
    "source": "",
    "action": "",
    "container": "",
    "container_id": "",
    "image": "",
    "pid": None,
    "exit_code": None,
    "dest": "",
    "detail": "",
}
# One encoder for every line: json.dumps() with non-default options builds a new
# encoder per call, which is a noticeable part of an append.
_ENCODER: Final = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Key:
    """An HMAC key and its public identifier."""

    secret: bytes
    kid: str
    #: The epoch of an evolving key (None for a static key).
    epoch: int | None = None

    @classmethod
    def from_secret(cls, secret: bytes) -> Key:
        """Derive the key ID: a short hash of the secret (reveals nothing usable)."""
        kid = hashlib.sha256(b"shieldaudit-kid\0" + secret).hexdigest()[:16]
        return cls(secret, kid)


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The signing key (first) and every key accepted when verifying."""

    keys: tuple[Key, ...]
    #: The evolving key, when the key file holds one (then ``keys`` is its current epoch).
    series: fskey.Series | None = None

    @property
    def signer(self) -> Key | None:
        """Return the key new entries are signed with, if any."""
        return self.keys[0] if self.keys else None

    def by_kid(self, kid: str) -> Key | None:
        """Return the key with this ID, if the ring holds it."""
        for key in self.keys:
            if key.kid == kid:
                return key
        return None


NO_KEYS: Final = KeyRing(())


def load_keys(path: Path | None, *, source: str = "settings", root: Path | None = None) -> KeyRing:
    """Read the key file: one secret per line, the first signs, all verify.

    The file must be a regular file outside the trail root, owned by this user
    or root and readable only by its owner: a key that others can read or
    replace cannot stop them from forging a chain. Every problem is a bad
    setting (exit status 2) naming ``key_file`` and ``source``, where its value
    came from.
    """
    if path is None:
        return NO_KEYS
    try:
        if root is not None and _inside(path, root):
            raise ValueError(  # noqa: TRY301 -- worded like every other problem below
                f"{path} is inside the trail root {root}, where whoever can read or copy the "
                "trails gets the key: move it out (for example to /etc/shieldaudit/key)",
            )
        data = _read_key_file(path)
        if fskey.is_evolving(data):
            return evolving_ring(path, data)
        secrets = _parse_secrets(path, data)
    except ValueError as exc:
        raise ConfigError("key_file", source, str(exc)) from None
    return KeyRing(tuple(Key.from_secret(s) for s in secrets))


def evolving_ring(path: Path | str, data: bytes) -> KeyRing:
    """Return the ring of an evolving key file: its current epoch signs; raise ValueError."""
    header, series = fskey.decode(data, path)
    if header != fskey.SIGNING_HEADER:
        raise ValueError(
            f"{path} is a verification key: it belongs off this host, given to "
            "'shieldaudit verify --verification-key'; the key file is the signing key",
        )
    return KeyRing((Key(series.secret, series.kid, series.epoch),), series)


def read_private(path: Path) -> bytes:
    """Return a private key file's bytes (regular, ours or root's, ``0600``); raise ValueError."""
    return _read_key_file(path)


def store_keys(settings: StoreSettings) -> KeyRing:
    """Return the key ring of a writer's settings (checked against its root)."""
    return load_keys(settings.key_file, source=settings.key_file_source, root=settings.root)


def _read_key_file(path: Path) -> bytes:
    """Return the key file's bytes; raise ValueError unless it is private and ours."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ValueError(
            f"{path} does not exist: create it ('head -c 32 /dev/urandom | base64 > {path}; "
            f"chmod 600 {path}') or unset the setting",
        ) from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path} is not a regular file")
        euid = os.geteuid()
        if st.st_uid not in {0, euid}:
            raise ValueError(
                f"{path} belongs to uid {st.st_uid}, not to this user (uid {euid}) or root, "
                f"and its owner can replace the key: run 'chown {euid} {path}'",
            )
        if st.st_mode & 0o077:
            raise ValueError(
                f"{path} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}): run 'chmod 600 {path}'",
            )
        return os.read(fd, MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)


def _parse_secrets(path: Path, data: bytes) -> list[bytes]:
    """Return the secrets of a key file; raise ValueError if there is no usable one."""
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_KEY_FILE_BYTES} bytes")
    secrets = [
        line.strip() for line in data.splitlines() if line.strip() and not line.startswith(b"#")
    ]
    if not secrets:
        raise ValueError(f"{path} holds no key: put a random secret on its first line")
    if any(len(secret) < MIN_KEY_BYTES for secret in secrets):
        raise ValueError(
            f"{path}: a key is shorter than {MIN_KEY_BYTES} bytes; "
            "generate one with 'head -c 32 /dev/urandom | base64'",
        )
    return secrets


def _inside(path: Path, root: Path) -> bool:
    """Return whether ``path`` (symlinks resolved) is the root or below it."""
    real = os.path.realpath(path)
    real_root = os.path.realpath(root)
    return real == real_root or real.startswith(real_root.rstrip("/") + "/")


def digest(key: Key | None, data: bytes) -> str:
    """Return the chain digest of ``data``: HMAC-SHA-256 with a key, SHA-256 without."""
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(key.secret, data, hashlib.sha256).hexdigest()


def alg_name(key: Key | None) -> str:
    """Return the ``chain`` value for entries written with ``key``."""
    if key is None:
        return ALG_PLAIN
    if key.epoch is not None:
        return ALG_EVOLVING_PREFIX + key.kid
    return ALG_KEYED_PREFIX + key.kid


def build_body(fields: Mapping[str, object], prev: str, key: Key | None) -> dict[str, object]:
    """Order an entry's keys: the core keys, any extra keys, then the chain keys."""
    body: dict[str, object] = {name: fields.get(name, CORE_DEFAULTS[name]) for name in CORE_KEYS}
    for name, value in fields.items():
        if name not in body and name not in CHAIN_KEYS:
            body[name] = value
    body["prev"] = prev
    body["chain"] = alg_name(key)
    return body


def seal(body: Mapping[str, object], key: Key | None) -> tuple[bytes, str]:
    """Serialise an entry body and append its ``mac``; return the line and the mac.

    ``ensure_ascii`` keeps every line pure ASCII, so hostile strings (lone
    surrogates, control characters) can never produce invalid UTF-8 on disk.
    """
    signed = _ENCODER.encode(body).encode("ascii")
    mac = digest(key, signed)
    line = signed[:-1] + _MAC_PREFIX + mac.encode("ascii") + b'"}\n'
    return line, mac


def signed_part(line: bytes) -> bytes | None:
    """Return the bytes a line's ``mac`` covers, or None if the suffix is malformed."""
    raw = line.rstrip(b"\n")
    if len(raw) <= _MAC_SUFFIX_LEN or not raw.endswith(b'"}'):
        return None
    cut = len(raw) - _MAC_SUFFIX_LEN
    if raw[cut : cut + len(_MAC_PREFIX)] != _MAC_PREFIX:
        return None
    return raw[:cut] + b"}"


def line_mac(line: bytes) -> str | None:
    """Return the mac written at the end of a line, or None if the suffix is malformed."""
    raw = line.rstrip(b"\n")
    if signed_part(raw) is None:
        return None
    mac = raw[-MAC_HEX_LEN - 2 : -2].decode("ascii", "replace")
    return mac if HEX_DIGITS.issuperset(mac) else None


def expected_mac(
    line: bytes, alg: str, keys: KeyRing, epoch: object = None
) -> tuple[str | None, str | None]:
    """Recompute a line's mac; return ``(mac, None)`` or ``(None, why it cannot be)``.

    ``epoch`` is the line's ``epoch`` value, used for evolving keys; a key of an
    earlier epoch than the host holds gives :data:`EARLIER_EPOCH`.
    """
    signed = signed_part(line)
    if signed is None:
        return None, "no valid mac suffix"
    if alg == ALG_PLAIN:
        return digest(None, signed), None
    if alg.startswith(ALG_EVOLVING_PREFIX):
        return _evolving_mac(signed, alg[len(ALG_EVOLVING_PREFIX) :], keys.series, epoch)
    if alg.startswith(ALG_KEYED_PREFIX):
        return _static_mac(signed, alg[len(ALG_KEYED_PREFIX) :], keys)
    return None, f"unknown chain algorithm {alg!r}"


def _static_mac(signed: bytes, kid: str, keys: KeyRing) -> tuple[str | None, str | None]:
    key = keys.by_kid(kid)
    if key is None:
        if not keys.keys:
            return None, f"entry is keyed (key id {kid}) and no key file is set"
        return None, f"entry is keyed with a key not in the key file (key id {kid})"
    return digest(key, signed), None


def _evolving_mac(
    signed: bytes, kid: str, series: fskey.Series | None, epoch: object
) -> tuple[str | None, str | None]:
    if series is None or series.kid != kid:
        return None, f"signed with an evolving key (key id {kid}) that is not configured"
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        return None, "signed with an evolving key but has no valid epoch"
    secret = series.key_for(epoch)
    if secret is None:
        if epoch < series.epoch:
            return None, EARLIER_EPOCH
        return None, (
            f"signed in epoch {epoch}, later than the key's epoch {series.epoch} "
            "(the key file was put back, or the line was forged)"
        )
    return hmac.new(secret, signed, hashlib.sha256).hexdigest(), None


def parse_line(line: bytes) -> dict[str, object]:
    """Parse one trail line into a dict; raise ValueError saying what is wrong."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 at byte {exc.start}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        # A hostile line of deeply nested brackets must not crash every later append.
        raise ValueError("not an entry (JSON nested too deeply)") from None
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object but {type(value).__name__}")
    seq = value.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ValueError("missing or invalid seq")
    return value


def head_of(lines: Sequence[bytes]) -> tuple[int, str] | None:
    """Return ``(seq, mac)`` of the last line that parses as an entry, scanning backwards."""
    for line in reversed(lines):
        try:
            entry = parse_line(line)
        except ValueError:
            continue
        mac = entry.get("mac")
        if isinstance(mac, str) and len(mac) == MAC_HEX_LEN:
            seq = entry["seq"]
            assert isinstance(seq, int)  # noqa: S101 -- parse_line checked it
            return seq, mac
    return None
