"""Shared helpers for the fleet tests: node trails, the messages rsyslog makes of them, spools."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

from rsyslog_harness import wait_for
from shieldaudit.core.settings import StoreSettings
from shieldaudit.hook import hooksd
from shieldaudit.store.writer import TrailWriter

SHIELDAUDIT = str(Path(hooksd.native_hook_path()).parent / "shieldaudit")
SEPARATOR = b"\x1e"


def node_trail(root: Path, container_id: str, count: int, segment: int = 1024) -> None:
    """Append ``count`` entries (or a few more) with rotation on."""
    settings = StoreSettings(root, max_segment_bytes=segment, keep_segments=0, fsync="never")
    with TrailWriter(settings) as writer:
        for i in range(count):
            writer.append(container_id, {"source": "cli", "action": "test", "detail": f"e{i}"})
        # A copy shows a rotation when the next segment's first line arrives: end on one.
        while (root / "containers" / container_id / "audit.jsonl").stat().st_size == 0:
            writer.append(container_id, {"source": "cli", "action": "test", "detail": "last"})


def wire(node: str, file: str, offset: object, line: str) -> bytes:
    """One message as the collector's rsyslog hands it to collect (deploy/rsyslog templates)."""
    return f"{node} {json.dumps({'file': file, 'offset': offset})} {line}\n".encode()


def shipped(root: Path, node: str = "node-a") -> list[bytes]:
    """The messages rsyslog would hand collect for every line under a node root."""
    out = []
    for cdir in sorted((root / "containers").iterdir()):
        for f in sorted(cdir.iterdir(), key=lambda p: (p.name == "audit.jsonl", p.name)):
            offset = 0
            for line in f.read_bytes().splitlines(keepends=True):
                out.append(wire(node, str(f), offset, line.rstrip(b"\n").decode()))
                offset += len(line)
    return out


def seal_messages(root: Path, node: str = "node-a") -> list[bytes]:
    """The messages for every line of the node's seals file."""
    path = root / "seals" / "seals.jsonl"
    out, offset = [], 0
    for line in path.read_bytes().splitlines(keepends=True):
        out.append(wire(node, str(path), offset, line.rstrip(b"\n").decode()))
        offset += len(line)
    return out


def files_of(root: Path) -> dict[str, bytes]:
    """Every trail file under a root, by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "containers" in p.parts
    }


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the installed ``shieldaudit`` and return the finished process."""
    return subprocess.run(
        [SHIELDAUDIT, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def metric(text: str, name: str) -> int:
    """Return one sample's value from a metrics text (the line starting with ``name``)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")


def fill(path: Path) -> None:
    """Write ``path`` until its filesystem is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            try:
                os.write(fd, b"\0" * 65536)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return
    finally:
        os.close(fd)


def on_tmpfs(directory: Path, kib: int) -> list[str]:
    """A command prefix: run a program in a mount namespace of its own, ``directory`` on a tmpfs.

    The tmpfs (``kib`` KiB) is seen by that program and its children only.
    """
    mount = f'mount -t tmpfs -o size={kib}k,mode=0700 shieldaudit-test "$0" && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, str(directory)]


def tmpfs_of(pid: int, directory: Path, kib: int, timeout: float) -> Path:
    """Wait until process ``pid`` has its tmpfs on ``directory``; return the way to it from here."""
    inside = Path(f"/proc/{pid}/root") / directory.relative_to("/")

    def mounted() -> bool:
        stat = os.statvfs(inside)
        return stat.f_blocks * stat.f_frsize <= kib * 1024

    wait_for(mounted, timeout, f"the tmpfs on {directory} in the namespace of pid {pid}")
    return inside
