"""``shieldaudit collect`` as omprog runs it: a real process, its stdin protocol, hostile input.

Pins the conversation (``OK`` when ready, ``DEFER_COMMIT`` inside a
transaction, ``OK`` at its commit, ``OK`` per message outside one), that the
copy is rebuilt byte for byte with segment boundaries where the node had them,
that lines arriving out of order wait and are placed, that redeliveries (also
after ``kill -9``) are dropped, and that hostile messages (bad JSON, bad node
names, path tricks in the file field, entries that lie about their container)
are refused, counted and never become paths.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import TYPE_CHECKING

import pytest

from cli_helpers import cid
from fleet_helpers import (
    SHIELDAUDIT,
    cli,
    files_of,
    node_trail,
    seal_messages,
    shipped,
    wire,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


class Collect:
    """A running ``shieldaudit collect`` process speaking omprog's protocol."""

    def __init__(self, central: Path, metrics: Path | None = None) -> None:
        """Start collect and wait for its ready line."""
        args = [SHIELDAUDIT, "collect", "--central", str(central)]
        if metrics is not None:
            args += ["--metrics-file", str(metrics)]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert self.read() == b"OK"

    def read(self) -> bytes:
        """Return collect's next reply."""
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().rstrip(b"\n")

    def send(self, line: bytes) -> bytes:
        """Send one line, return the reply."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line)
        self.proc.stdin.flush()
        return self.read()

    def batch(self, lines: list[bytes]) -> list[bytes]:
        """Send lines as one transaction, return every reply."""
        replies = [self.send(b"BEGIN TRANSACTION\n")]
        replies += [self.send(line) for line in lines]
        replies.append(self.send(b"COMMIT TRANSACTION\n"))
        return replies

    def close(self) -> tuple[int, bytes]:
        """End stdin, return the exit status and stderr."""
        _, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, err


@pytest.fixture
def start_collect(tmp_path: Path) -> Iterator[Callable[..., Collect]]:
    """Start collect processes on ``tmp_path/central``; any still running is killed at the end."""
    started: list[Collect] = []

    def start(metrics: Path | None = None) -> Collect:
        collect = Collect(tmp_path / "central", metrics)
        started.append(collect)
        return collect

    yield start
    for collect in started:
        if collect.proc.poll() is None:
            collect.proc.kill()
            collect.proc.communicate(timeout=60)


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    """Run ``shieldaudit --root ROOT verify``."""
    return cli("--root", root, "verify")


def test_rebuilds_byte_for_byte_out_of_order_and_redelivered(tmp_path, start_collect):
    """The copy equals the node's files, whatever the order and repetition of lines.

    Segments are rebuilt where the node cut them, from lines sent with a rotated
    segment's tail after the new audit.jsonl's head, some lines twice.
    """
    root = tmp_path / "node"
    node_trail(root, cid("1"), 20)
    node_trail(root, cid("2"), 7)
    messages = shipped(root)
    # A rotated segment's last two lines after the next segment's first line.
    first_of_active = next(i for i, m in enumerate(messages) if b"audit.jsonl" in m)
    messages[first_of_active - 2 : first_of_active + 1] = [
        messages[first_of_active],
        *messages[first_of_active - 2 : first_of_active],
    ]
    central = tmp_path / "central"
    collect = start_collect()
    replies = collect.batch(messages)
    assert replies == [b"OK", *[b"DEFER_COMMIT"] * len(messages), b"OK"]
    assert collect.batch(messages[:10])[-1] == b"OK"  # redelivered: dropped
    for message in messages[-3:]:
        assert collect.send(message) == b"OK"
    assert collect.close()[0] == 0
    assert files_of(central / "node-a") == files_of(root)
    assert not (central / "node-a" / "conflicts").exists()
    result = verify(central / "node-a")
    assert result.returncode == 0, result.stdout + result.stderr


def test_kill_9_mid_batch_then_resend(tmp_path, start_collect):
    """Collect killed mid-transaction, the batch sent again to a new one: every line once."""
    root = tmp_path / "node"
    node_trail(root, cid("3"), 30)
    messages = shipped(root)
    central = tmp_path / "central"
    first = start_collect()
    assert first.send(b"BEGIN TRANSACTION\n") == b"OK"
    for message in messages[:20]:
        assert first.send(message) == b"DEFER_COMMIT"
    first.proc.send_signal(signal.SIGKILL)
    first.close()
    second = start_collect()
    assert second.batch(messages)[-1] == b"OK"
    assert second.close()[0] == 0
    assert files_of(central / "node-a") == files_of(root)


def test_hostile_messages_are_refused_counted_and_never_paths(tmp_path, start_collect):
    """Hostile messages are acknowledged, counted by reason, and never written anywhere.

    Bad JSON, bad node names, path tricks and lying entries: resending cannot
    mend them, so they are answered OK and dropped.
    """
    root = tmp_path / "node"
    node_trail(root, cid("4"), 2)
    first = min((root / "containers" / cid("4")).iterdir())
    line = first.read_bytes().splitlines()[0].decode()
    trail = f"/x/containers/{cid('4')}/audit.jsonl"

    def msg(node: str, file: str, entry: str = line, offset: object = 0) -> bytes:
        return wire(node, file, offset, entry)

    hostile = [
        b"node-a {not json\n",
        b"node-a [1,2]\n",
        b"no-space-at-all\n",
        b"node-a " + b"x" * (3 * 1024 * 1024) + b"\n",  # over-long: one answer, no memory
        msg("..", trail),
        msg("../etc", trail),
        msg(".hidden", trail),
        msg("node-a", "/x/containers/../../../etc/audit.jsonl"),
        msg("node-a", f"/x/containers/{cid('4')}/../../passwd"),
        msg("node-a", f"/x/containers/{cid('4')[:63]}A/audit.jsonl"),
        msg("node-a", f"/x/containers/{cid('4')}/audit-1.jsonl"),
        msg("node-a", f"/x/containers/{cid('4')}/notes.txt"),
        msg("node-a", "/x/seals/../seals.jsonl"),
        msg("node-a", f"/x/containers/{cid('5')}/audit.jsonl"),  # the entry is cid('4')'s
        msg("node-a", trail, line.replace('"seq":1', '"seq":-1')),
        msg("node-a", trail, line.replace('"source":"cli"', '"source":"cl\u00ef"')),
        f"node-a {json.dumps({'file': trail, 'offset': 0})}{line}\n".encode(),
        msg("node-a", trail, offset="0"),
        msg("node-a", trail, '{"seq":1,"container_id":"' + cid("4") + '","mac":"zz","prev":"00"}'),
    ]
    central = tmp_path / "central"
    metrics = tmp_path / "collect.prom"
    collect = start_collect(metrics)
    assert [collect.send(m) for m in hostile] == [b"OK"] * len(hostile)
    code, err = collect.close()
    assert code == 0
    assert err.count(b"refused:") == len(hostile), err.decode()
    assert sorted(p.name for p in central.iterdir()) == [".shieldaudit-fleet"]
    assert sorted(os.listdir(tmp_path)) == ["central", "collect.prom", "node"]
    text = metrics.read_text()
    total = sum(
        int(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("shieldaudit_collect_refused_total{")
    )
    assert total == len(hostile)
    assert 'shieldaudit_collect_refused_total{reason="file"} 6' in text


def test_bad_options_are_one_error_line(tmp_path):
    """Bad collect options are one Error line, exit 2, and create nothing.

    A missing --central, one under a missing directory, a metrics file in a
    missing directory, a spool in a missing directory, --once without a spool.
    """
    for args in (
        ["collect"],
        ["collect", "--central", str(tmp_path / "missing" / "central")],
        [
            "collect",
            "--central",
            str(tmp_path / "c"),
            "--metrics-file",
            str(tmp_path / "missing" / "x.prom"),
        ],
        ["collect", "--central", str(tmp_path / "c"), "--spool", str(tmp_path / "missing" / "s")],
        ["collect", "--central", str(tmp_path / "c"), "--once"],
    ):
        result = subprocess.run(
            [SHIELDAUDIT, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.count("Error") == 1
    assert not (tmp_path / "missing").exists()
    assert not (tmp_path / "c").exists()


def seal(root: Path) -> None:
    """Run ``shieldaudit seal`` on a node root."""
    result = cli("--root", root, "seal")
    assert result.returncode == 0, result.stdout + result.stderr


def test_seals_are_rebuilt_and_verify_on_the_copy(tmp_path, start_collect):
    """Seal records ship like trail lines, and a rewritten seal is a conflict.

    The copy's seals file is the node's, verify passes on the copy, and a seal
    rewritten on the node after shipping is a conflict there.
    """
    root = tmp_path / "node"
    node_trail(root, cid("6"), 5)
    seal(root)
    node_trail(root, cid("7"), 4)
    seal(root)
    central = tmp_path / "central"
    collect = start_collect()
    assert collect.batch(shipped(root) + seal_messages(root))[-1] == b"OK"
    assert collect.close()[0] == 0
    copy = central / "node-a"
    assert (copy / "seals" / "seals.jsonl").read_bytes() == (
        root / "seals" / "seals.jsonl"
    ).read_bytes()
    result = verify(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 seal(s)" in result.stdout

    # The node's seals cut back to the first one and a new second seal written.
    path = root / "seals" / "seals.jsonl"
    first = path.read_bytes().splitlines(keepends=True)[0]
    path.write_bytes(first)
    node_trail(root, cid("7"), 1)
    seal(root)
    collect = start_collect()
    assert collect.batch(seal_messages(root))[-1] == b"OK"
    assert collect.close()[0] == 0
    result = verify(copy)
    assert result.returncode == 1, result.stdout
    assert "seals seal 2: CONFLICT" in result.stdout
