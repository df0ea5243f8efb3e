"""Forward-secure (evolving) signing keys: the file format, the one-way step, atomic replacement.

An evolving key starts from a random 32-byte seed, the key of epoch 0. Each
seal closes the current epoch and replaces the key file with the next
epoch's key, ``k[n+1] = HMAC-SHA-256(k[n], "shieldaudit evolve")``. The step
cannot be undone, so whoever takes the key file at epoch N can sign epoch N
and later, never an earlier one. The seed, written once to the verification
key file and kept off the host, derives every epoch's key.

Key file (signing key, on the host, ``0600``)::

    shieldaudit-evolving-key v1
    id <16 hex: names the series, a hash of the seed>
    epoch <N>
    key <64 hex: k[N]>

The verification key file has the same lines under the header
``shieldaudit-verification-key v1``, at epoch 0 (the seed). Both headers are
recognised before a file is read as a static key file (one secret per line).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from pathlib import Path

SIGNING_HEADER: Final = b"shieldaudit-evolving-key v1"
VERIFICATION_HEADER: Final = b"shieldaudit-verification-key v1"
STEP_LABEL: Final = b"shieldaudit evolve"
SEED_BYTES: Final = 32
#: Epochs derived at most when verifying (over a century of hourly seals).
MAX_EPOCH: Final = 1_000_000
_TEMP_PREFIX: Final = ".shieldaudit-key-"


def kid_of(seed: bytes) -> str:
    """Return the public ID of a key series: a short hash of its seed (as static keys' IDs)."""
    return hashlib.sha256(b"shieldaudit-kid\0" + seed).hexdigest()[:16]


def evolve(secret: bytes) -> bytes:
    """Return the next epoch's key (the one-way step)."""
    return hmac.new(secret, STEP_LABEL, hashlib.sha256).digest()


def is_evolving(data: bytes) -> bool:
    """Return whether key-file bytes hold an evolving or verification key (not static keys)."""
    return data.startswith((SIGNING_HEADER, VERIFICATION_HEADER))


@dataclass(slots=True)
class Series:
    """One evolving key as a reader holds it: the current epoch's key, and the seed if known."""

    kid: str
    epoch: int
    secret: bytes  # the key of ``epoch``
    seed: bytes | None = None  # epoch 0's key: only the verification key holds it
    _derived: list[bytes] = field(default_factory=list, repr=False)

    def key_for(self, epoch: int) -> bytes | None:
        """Return the key of ``epoch``, or None when it cannot be had from what is held."""
        if epoch == self.epoch:
            return self.secret
        if self.seed is None or not 0 <= epoch <= MAX_EPOCH:
            return None
        if not self._derived:
            self._derived.append(self.seed)
        while len(self._derived) <= epoch:
            self._derived.append(evolve(self._derived[-1]))
        return self._derived[epoch]

    def can_sign(self, epoch: int) -> bool:
        """Return whether ``epoch``'s key is held (the current one, or any with the seed)."""
        return self.key_for(epoch) is not None


def encode(header: bytes, kid: str, epoch: int, secret: bytes) -> bytes:
    """Return a key file's bytes (pure)."""
    return b"%s\nid %s\nepoch %d\nkey %s\n" % (
        header,
        kid.encode("ascii"),
        epoch,
        secret.hex().encode("ascii"),
    )


def decode(data: bytes, path: Path | str) -> tuple[bytes, Series]:
    """Parse a signing or verification key file; return its header and series.

    Raises ValueError naming the file and what is wrong.
    """
    lines = data.split(b"\n")
    header = lines[0] if lines else b""
    if header not in {SIGNING_HEADER, VERIFICATION_HEADER}:
        raise ValueError(f"{path} is not a shieldaudit evolving or verification key")
    fields: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if line.strip():
            name, _, value = line.strip().partition(b" ")
            fields[name] = value.strip()
    try:
        kid = fields[b"id"].decode("ascii")
        epoch = int(fields[b"epoch"])
        secret = bytes.fromhex(fields[b"key"].decode("ascii"))
    except (KeyError, ValueError, UnicodeDecodeError):
        raise ValueError(
            f"{path} is damaged: expected the lines 'id', 'epoch' and 'key' after its header",
        ) from None
    if len(kid) != 16 or len(secret) != SEED_BYTES or not 0 <= epoch <= MAX_EPOCH:
        raise ValueError(f"{path} is damaged: its id, epoch or key has the wrong length")
    if header == VERIFICATION_HEADER:
        if epoch != 0 or kid_of(secret) != kid:
            raise ValueError(f"{path} is damaged: a verification key is the epoch-0 seed")
        return header, Series(kid, 0, secret, seed=secret)
    return header, Series(kid, epoch, secret, seed=secret if epoch == 0 else None)


def new_seed() -> bytes:
    """Return a fresh random seed (epoch 0's key)."""
    return os.urandom(SEED_BYTES)


def write_new(path: Path, data: bytes) -> None:
    """Create ``path`` (``0600``, never over an existing file) holding ``data``, durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_parent(path)


def replace(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: temp file, fsync, rename, directory fsync.

    The temporary file sits beside the key (never under the trail root) and is
    renamed over it, so at every moment the key file holds a whole key, old or
    new, and no second copy of the old key is left behind. Leftover temporary
    files of an interrupted step hold a *later* key, never an earlier one;
    they are removed by the next step.
    """
    directory = path.parent
    temp = directory / f"{_TEMP_PREFIX}{os.getpid()}-{os.urandom(4).hex()}"
    write_new(temp, data)
    try:
        os.rename(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_parent(path)
    for name in os.listdir(directory):
        if name.startswith(_TEMP_PREFIX) and name != temp.name:
            with contextlib.suppress(OSError):
                os.unlink(directory / name)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_parent(path: Path) -> None:
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
