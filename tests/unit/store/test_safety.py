"""The store under hostile local state: loose or foreign directories, hard links, key files.

Real directories and files, changed the way another local user (or a careless
administrator) would; the tests run as root, like the Podman tests, so they
can hand a directory to another uid.
"""

from __future__ import annotations

import os

import pytest

from shieldaudit.core.errors import ConfigError, UnsafePathError
from shieldaudit.core.settings import load_store_settings
from shieldaudit.store import chain, writer
from shieldaudit.store.reader import TrailDir
from shieldaudit.store.writer import TORN_MAX_BYTES, TORN_MAX_FILES, TrailWriter
from store_helpers import CID_A, all_lines, settings, trail, write

OTHER_UID = 4242
SECRET = b"a-secret-of-at-least-sixteen-bytes\n"


def _append(root, **overrides):
    with TrailWriter(settings(root, **overrides)) as w:
        return w.append(CID_A, {"source": "cli", "action": "x"})


def _target(root, which):
    return {
        "containers": root / "containers",
        "state": root / "state",
        "trail": trail(root, CID_A),
        "locks": root / "state" / "locks",
    }[which]


@pytest.mark.parametrize("which", ["containers", "state", "trail", "locks"])
@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777, 0o1777])
def test_group_or_world_writable_directory_is_refused(tmp_path, which, mode):
    """A directory below the root others can write: refused naming path, mode and fix; no write."""
    root = tmp_path / "root"
    write(root, CID_A, 1)
    target = _target(root, which)
    target.chmod(mode)
    before = all_lines(root, CID_A)
    with pytest.raises(UnsafePathError) as caught:
        _append(root)
    message = caught.value.message
    assert str(target) in message
    assert f"mode {mode:04o}" in message
    assert f"chmod go-w {target}" in message
    assert all_lines(root, CID_A) == before
    assert oct(target.stat().st_mode & 0o7777) == oct(mode)  # reported, not silently repaired


@pytest.mark.parametrize("which", ["containers", "state", "trail", "locks"])
def test_directory_owned_by_another_user_is_refused(tmp_path, which):
    """A directory below the root that belongs to another uid: refused with the chown fix."""
    root = tmp_path / "root"
    write(root, CID_A, 1)
    target = _target(root, which)
    os.chown(target, OTHER_UID, -1)
    before = all_lines(root, CID_A)
    with pytest.raises(UnsafePathError) as caught:
        _append(root)
    message = caught.value.message
    assert str(target) in message
    assert f"uid {OTHER_UID}" in message
    assert f"chown {os.geteuid()} {target}" in message
    assert all_lines(root, CID_A) == before


def test_reader_refuses_a_foreign_trail_directory(tmp_path):
    """Readers check the same: a trail directory another user owns is reported, not read."""
    root = tmp_path / "root"
    write(root, CID_A, 1)
    os.chown(trail(root, CID_A), OTHER_UID, -1)
    with pytest.raises(UnsafePathError, match=f"uid {OTHER_UID}"):
        TrailDir(root, CID_A)


def test_directories_of_the_roots_owner_and_of_root_are_accepted(tmp_path):
    """A root owned by another user may hold directories of that user or of root (readers)."""
    root = tmp_path / "root"
    write(root, CID_A, 1)
    for path in (root, root / "containers", trail(root, CID_A)):
        os.chown(path, OTHER_UID, -1)
    with TrailDir(root, CID_A) as directory:
        assert [e.seq for e in directory.last_entries(5)] == [1]
    os.chown(trail(root, CID_A), 0, -1)
    with TrailDir(root, CID_A) as directory:
        assert [e.seq for e in directory.last_entries(5)] == [1]


def test_writer_refuses_a_root_owned_by_another_user(tmp_path):
    """A writer's entries would be at the mercy of the root's owner: refused, nothing created."""
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    os.chown(root, OTHER_UID, -1)
    with pytest.raises(UnsafePathError, match=f"belongs to uid {OTHER_UID}"):
        _append(root)
    assert list(root.iterdir()) == []


def test_hard_linked_active_segment_is_refused_and_other_file_untouched(tmp_path):
    """audit.jsonl with a second hard link outside the root: refused, the outside file unchanged."""
    root = tmp_path / "root"
    write(root, CID_A, 1)
    active = trail(root, CID_A) / "audit.jsonl"
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious\n")
    active.unlink()
    os.link(outside, active)
    with pytest.raises(UnsafePathError, match="2 hard links") as caught:
        _append(root)
    assert "find / -xdev -samefile" in caught.value.message
    assert outside.read_bytes() == b"precious\n"


def test_hard_link_made_while_a_writer_holds_the_file_is_seen(tmp_path):
    """A long-lived writer (the listener) notices a hard link added after it opened audit.jsonl."""
    root = tmp_path / "root"
    with TrailWriter(settings(root)) as w:
        w.append(CID_A, {"source": "events", "action": "start"})
        os.link(trail(root, CID_A) / "audit.jsonl", tmp_path / "copy")
        size = (tmp_path / "copy").stat().st_size
        with pytest.raises(UnsafePathError, match="hard links"):
            w.append(CID_A, {"source": "events", "action": "die"})
    assert (tmp_path / "copy").stat().st_size == size


def test_hard_linked_sealed_segment_is_refused_when_finding_the_head(tmp_path):
    """The writer reads the newest sealed segment for the chain head: hard-linked, it is refused."""
    root = tmp_path / "root"
    write(root, CID_A, 4, max_segment_bytes=256, keep_segments=0)
    directory = trail(root, CID_A)
    (directory / "audit.jsonl").unlink()  # the head must come from the newest sealed segment
    newest = max(p for p in directory.iterdir() if p.name.startswith("audit-"))
    os.link(newest, tmp_path / "backup")
    with pytest.raises(UnsafePathError, match=f"{newest}.*hard links"):
        _append(root, max_segment_bytes=256, keep_segments=0)


def test_torn_dir_keeps_the_newest_fragments_within_its_bounds(tmp_path):
    """Repeated torn tails, plus a huge fragment an older version left: state/torn stays bounded.

    The oldest fragments go first: after TORN_MAX_FILES + 6 torn tails the 6
    oldest are gone and the leftover over the byte bound is removed.
    """
    root = tmp_path / "root"
    write(root, CID_A, 1)
    torn = root / "state" / "torn"
    torn.mkdir(mode=0o700)
    leftover = torn / f"{CID_A}-1.fragment"
    with leftover.open("wb") as handle:
        handle.truncate(300 * 1024 * 1024)  # sparse: 300 MiB apparent size
    os.utime(leftover, ns=(1, 1))
    (torn / "notes.txt").write_text("not a fragment: never counted or removed\n")
    active = trail(root, CID_A) / "audit.jsonl"
    for i in range(TORN_MAX_FILES + 6):
        with active.open("ab") as handle:
            handle.write(b'{"seq":%d,"torn' % i)
        written = write(root, CID_A, 1)
        assert written == [i + 2]
    fragments = sorted(p for p in torn.iterdir() if p.name.endswith(".fragment"))
    assert len(fragments) == TORN_MAX_FILES
    assert sum(p.stat().st_size for p in fragments) <= TORN_MAX_BYTES
    assert not leftover.exists()
    assert (torn / "notes.txt").exists()
    kept = {p.read_bytes() for p in fragments}
    assert kept == {b'{"seq":%d,"torn' % i for i in range(6, TORN_MAX_FILES + 6)}


def test_torn_dir_byte_bound_removes_oldest_first(tmp_path, monkeypatch):
    """With a small byte bound, the newest fragments that fit are kept and all older ones go."""
    monkeypatch.setattr(writer, "TORN_MAX_BYTES", 250)
    root = tmp_path / "root"
    write(root, CID_A, 1)
    active = trail(root, CID_A) / "audit.jsonl"
    for i in range(5):
        with active.open("ab") as handle:
            handle.write(b"%d" % i + b"x" * 99)  # 100 bytes each
        write(root, CID_A, 1)
    kept = sorted(p.read_bytes()[:1] for p in (root / "state" / "torn").iterdir())
    assert kept == [b"3", b"4"]


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("missing", "does not exist"),
        ("public", "chmod 600"),
        ("foreign", f"belongs to uid {OTHER_UID}"),
        ("inside-root", "inside the trail root"),
        ("short", "shorter than"),
    ],
)
def test_bad_key_file_is_a_bad_setting_naming_its_source(tmp_path, problem, expected):
    """Every key-file problem is exit 2, naming key_file and where its value came from."""
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    key_file = (root if problem == "inside-root" else tmp_path) / "key"
    if problem != "missing":
        key_file.write_bytes(b"short\n" if problem == "short" else SECRET)
        key_file.chmod(0o644 if problem == "public" else 0o600)
    if problem == "foreign":
        os.chown(key_file, OTHER_UID, -1)
    environ = {
        "SHIELDAUDIT_ROOT": str(root),
        "SHIELDAUDIT_KEY_FILE": str(key_file),
        "SHIELDAUDIT_CONFIG": os.devnull,
    }
    with pytest.raises(ConfigError) as caught:
        TrailWriter(load_store_settings(environ))
    assert caught.value.exit_code == 2
    message = caught.value.message
    assert message.startswith("invalid setting key_file (from SHIELDAUDIT_KEY_FILE): ")
    assert str(key_file) in message
    assert expected in message
    assert not (root / "containers").exists()


def test_key_file_through_a_symlinked_path_into_the_root_is_refused(tmp_path):
    """A key path that resolves into the trail root (through a symlinked directory) is refused."""
    root = tmp_path / "root"
    (root / "keys").mkdir(parents=True, mode=0o700)
    (root / "keys" / "key").write_bytes(SECRET)
    (root / "keys" / "key").chmod(0o600)
    (tmp_path / "etc").symlink_to(root / "keys")
    with pytest.raises(ConfigError, match="inside the trail root"):
        chain.load_keys(tmp_path / "etc" / "key", source="test", root=root)


def test_root_owned_key_file_is_accepted(tmp_path):
    """A private key file of this user (or root) outside the root loads."""
    key_file = tmp_path / "key"
    key_file.write_bytes(SECRET)
    key_file.chmod(0o600)
    ring = chain.load_keys(key_file, source="test", root=tmp_path / "root")
    assert ring.signer is not None
