"""Forward-secure keys on real files: init, one-way steps, an intruder with the current key caught.

``keys init``, the key stepping at each seal, ``verify`` with and without the
verification key.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from cli_helpers import SECOND, T0, cid, invoke, write_trail
from shieldaudit.store import fskey

A, B = cid("a"), cid("b")


@pytest.fixture
def host(tmp_path):
    """A root, a key directory outside it, and an evolving key created by ``keys init``."""
    keydir = tmp_path / "etc"
    keydir.mkdir(mode=0o700)
    offhost = tmp_path / "offhost"
    offhost.mkdir(mode=0o700)
    root = tmp_path / "root"
    key = keydir / "key"
    env = {"SHIELDAUDIT_KEY_FILE": str(key)}
    result = invoke(
        root, "keys", "init", "--verification-key", str(offhost / "verify.key"), env=env
    )
    assert result.code == 0, result.err
    return root, key, offhost / "verify.key", env


def _epochs(root: Path, container_id: str) -> list[int]:
    path = root / "containers" / container_id / "audit.jsonl"
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()]


def _history(host, rounds=3):
    """Write and seal ``rounds`` times: epochs 0 .. rounds-1 closed, the key at ``rounds``."""
    root, key, _, env = host
    for n in range(rounds):
        write_trail(
            root, A, ["create" if n == 0 else "exec"], start_ns=T0 + n * SECOND, key_file=key
        )
        write_trail(
            root, B, ["create" if n == 0 else "exec"], start_ns=T0 + n * SECOND, key_file=key
        )
        assert invoke(root, "seal", env=env).code == 0


def test_keys_init_writes_both_keys_privately_and_refuses_to_overwrite(host):
    """Both files are 0600 with the documented headers; a second init changes nothing (exit 2)."""
    root, key, verification, env = host
    for path, header in ((key, fskey.SIGNING_HEADER), (verification, fskey.VERIFICATION_HEADER)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_bytes().splitlines()[0] == header
    _, series = fskey.decode(key.read_bytes(), key)
    assert series.epoch == 0
    before = key.read_bytes()
    again = invoke(
        root, "keys", "init", "--verification-key", str(verification.with_name("v2")), env=env
    )
    assert again.code == 2
    assert again.err.startswith(f"Error: {key} already exists")
    assert key.read_bytes() == before


def test_keys_init_needs_a_key_file_and_a_place_outside_the_root(tmp_path):
    """No key file configured, or the verification key under the root: one Error line, exit 2."""
    root = tmp_path / "root"
    result = invoke(root, "keys", "init", "--verification-key", str(tmp_path / "v"))
    assert result.code == 2
    assert result.err.startswith("Error: no key file is configured")
    root.mkdir(mode=0o700)
    env = {"SHIELDAUDIT_KEY_FILE": str(tmp_path / "key")}
    inside = invoke(root, "keys", "init", "--verification-key", str(root / "v"), env=env)
    assert inside.code == 2
    assert "inside the trail root" in inside.err
    assert not (tmp_path / "key").exists()


def test_each_seal_steps_the_key_and_entries_carry_their_epoch(host):
    """Entries name the epoch that signed them; each seal leaves the next key and no old copy."""
    root, key, _, _ = host
    keys_seen = [fskey.decode(key.read_bytes(), key)[1].secret]
    _history(host)
    _, series = fskey.decode(key.read_bytes(), key)
    assert series.epoch == 3
    assert _epochs(root, A) == [0, 1, 2]
    seeds = [keys_seen[0]]
    for _ in range(3):
        seeds.append(fskey.evolve(seeds[-1]))
    assert series.secret == seeds[3]
    everything = b"".join(
        p.read_bytes() for p in [*root.rglob("*"), *key.parent.iterdir()] if p.is_file()
    )
    for old in seeds[:3]:
        assert old.hex().encode() not in everything
    seals = [json.loads(line) for line in (root / "seals" / "seals.jsonl").read_text().splitlines()]
    assert [s["epoch"] for s in seals] == [0, 1, 2]
    assert all(s["chain"] == f"hmac-sha256-fs:{series.kid}" for s in seals)


def test_static_key_entries_are_unchanged(tmp_path):
    """With a static key file, entries carry no epoch key (byte-identical to before)."""
    key = tmp_path / "static"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    key.chmod(0o600)
    root = tmp_path / "root"
    write_trail(root, A, ["create"], key_file=key)
    line = json.loads((root / "containers" / A / "audit.jsonl").read_text())
    assert "epoch" not in line
    assert line["chain"].startswith("hmac-sha256:")
    assert invoke(root, "seal", env={"SHIELDAUDIT_KEY_FILE": str(key)}).code == 0
    assert invoke(root, "verify", env={"SHIELDAUDIT_KEY_FILE": str(key)}).code == 0


def test_untouched_history_verifies_on_the_host_and_with_the_verification_key(host):
    """On the host: exit 0 and a note on earlier epochs; with the verification key: all checked."""
    root, _, verification, env = host
    _history(host)
    write_trail(
        root, A, ["died"], start_ns=T0 + 10 * SECOND, key_file=Path(env["SHIELDAUDIT_KEY_FILE"])
    )
    on_host = invoke(root, "verify", env=env)
    assert on_host.code == 0, on_host.out
    assert "note: 6 entries and 3 seal(s) signed in earlier epochs" in on_host.err
    full = invoke(root, "verify", "--verification-key", str(verification), env=env)
    assert full.code == 0, full.out
    assert "note:" not in full.err
    elsewhere = invoke(root, "verify", "--verification-key", str(verification))
    assert elsewhere.code == 0, elsewhere.out


def test_intruder_with_the_current_key_is_caught_by_the_verification_key(host, tmp_path):
    """History re-created with the current key (trails and seals replaced) fails with it."""
    root, key, verification, env = host
    _history(host)
    stolen = fskey.decode(key.read_bytes(), key)[1]
    # The intruder removes everything and replays a history of their own, starting a
    # key file "at epoch 0" from the stolen key, then puts the real key file back.
    for path in sorted(root.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    fake = tmp_path / "etc" / "fake"
    fake.write_bytes(fskey.encode(fskey.SIGNING_HEADER, stolen.kid, 0, stolen.secret))
    fake.chmod(0o600)
    fake_env = {"SHIELDAUDIT_KEY_FILE": str(fake)}
    for n in range(3):
        write_trail(
            root, A, ["create" if n == 0 else "exec"], start_ns=T0 + n * SECOND, key_file=fake
        )
        assert invoke(root, "seal", env=fake_env).code == 0
    assert _epochs(root, A) == [0, 1, 2]
    on_host = invoke(root, "verify", env=env)
    assert "signed in earlier epochs" in on_host.err  # the host cannot tell: it says so
    full = invoke(root, "verify", "--verification-key", str(verification), env=env)
    assert full.code == 1
    assert "seal 1: modified: its mac does not match its content" in full.lines
    assert any("entry modified" in line for line in full.lines)


def test_intruder_resigning_entries_with_the_current_epoch_is_caught_on_the_host(host):
    """Entries re-signed with the current key carry its epoch, which the seals had closed."""
    root, key, _, env = host
    _history(host)
    trail = root / "containers" / A
    for path in trail.iterdir():
        path.unlink()
    write_trail(root, A, ["create", "exec", "exec"], key_file=key)
    result = invoke(root, "verify", env=env)
    assert result.code == 1
    assert any(
        "signed in epoch 3 but first sealed by seal 1 (epoch 0)" in line for line in result.lines
    )


def test_missing_last_seal_shows_against_the_key_epoch(host):
    """Deleting the newest seals is caught on the host: the key's epoch says how many there were."""
    root, _, _, env = host
    _history(host)
    seals = root / "seals" / "seals.jsonl"
    seals.write_bytes(b"".join(seals.read_bytes().splitlines(keepends=True)[:1]))
    result = invoke(root, "verify", env=env)
    assert result.code == 1
    assert (
        "seals: the signing key is at epoch 3: the seals of epochs 1 to 2 are missing"
        in result.lines
    )


def test_key_put_back_and_used_after_its_epoch_closed_is_caught(host):
    """An old key file restored and signed with: the entry's epoch was already closed by a seal."""
    root, key, verification, env = host
    saved = key.read_bytes()
    _history(host, rounds=1)
    key.write_bytes(saved)
    write_trail(root, A, ["exec"], start_ns=T0 + 10 * SECOND, key_file=key)
    result = invoke(root, "verify", "--verification-key", str(verification), env=env)
    assert result.code == 1
    assert "the key file was put back" in result.out
    assert any("signed in epoch 0, which seal 1 already closed" in line for line in result.lines)


def test_verification_key_of_another_series_is_a_usage_error(host, tmp_path):
    """A verification key that does not match the signing key: one Error line, exit 2."""
    root, _, _, env = host
    other = tmp_path / "other.key"
    seed = fskey.new_seed()
    other.write_bytes(fskey.encode(fskey.VERIFICATION_HEADER, fskey.kid_of(seed), 0, seed))
    other.chmod(0o600)
    result = invoke(root, "verify", "--verification-key", str(other), env=env)
    assert result.code == 2
    assert result.err.startswith("Error: invalid setting --verification-key (from option):")
    assert os.path.exists(other)


def test_all_seals_deleted_shows_against_the_key_epoch(host):
    """Removing seals/ altogether is caught on the host: the key has stepped three times."""
    root, _, _, env = host
    _history(host)
    for path in (root / "seals").iterdir():
        path.unlink()
    result = invoke(root, "verify", env=env)
    assert result.code == 1
    assert "seals: the signing key is at epoch 3: the seals of epochs 0 to 2 are missing" in (
        result.lines
    )
