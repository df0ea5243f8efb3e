"""The fleet pipeline with real rsyslog: node trails shipped over RELP, rebuilt by collect.

Pins that the shipped ``deploy/rsyslog`` configurations validate and work as
shipped (only paths, port and host name put in): three nodes, each with its
own root, rsyslogd and hooks writing with rotation on, ship to one collector;
every entry arrives exactly once, in the node's segment layout, and verifies;
``collect`` killed with SIGKILL, the collector's rsyslogd killed with SIGKILL
and a node's rsyslogd restarted mid-stream lose and duplicate nothing; a
trail truncated and rewritten on a node after shipping is a conflict that
``verify`` reports centrally and ``verify --against`` reports on the node.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fleet_helpers import fill, metric, on_tmpfs, tmpfs_of
from rsyslog_harness import (
    DEPLOY,
    CollectProcess,
    Rsyslogd,
    collector_config,
    free_port,
    node_config,
    validate,
    wait_for,
)
from shieldaudit.core.settings import StoreSettings
from shieldaudit.hook import hooksd

if TYPE_CHECKING:
    from collections.abc import Iterator

SHIELDAUDIT = str(Path(hooksd.native_hook_path()).parent / "shieldaudit")
NATIVE = str(hooksd.native_hook_path())
STAGES = ("createRuntime", "poststart", "poststop")
SEGMENT_BYTES = 1024  # an entry is ~450 bytes: a rotation every third entry
DEADLINE = 120.0


class Node:
    """A simulated node: a root, its rsyslogd, and the hook writing into it."""

    def __init__(self, base: Path, name: str, port: int) -> None:
        """Make the root and the rsyslogd config; start nothing."""
        self.name = name
        self.root = base / f"{name}-root"
        self.root.mkdir(mode=0o700)
        self.rsyslog = Rsyslogd(
            name,
            base / f"{name}-rsyslog",
            node_config(self.root, base / f"{name}-rsyslog" / "work", name, port),
        )
        settings = StoreSettings(self.root, max_segment_bytes=SEGMENT_BYTES, fsync="always")
        hook = hooksd.build_hook("poststart", NATIVE, hooksd.settings_env(settings))["hook"]
        self.env = dict(item.split("=", 1) for item in hook["env"])

    def hook(self, container_id: str, stage: str) -> None:
        """Run the hook as the runtime does: OCI state on stdin, the hooks.d env."""
        state = {"ociVersion": "1.0.2", "id": container_id, "status": "running", "pid": 4242}
        result = subprocess.run(
            [NATIVE, stage],
            input=json.dumps(state).encode(),
            env=self.env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert (result.returncode, result.stderr) == (0, b""), result

    def write(self, container_ids: list[str], count: int) -> None:
        """Run ``count`` hooks per container, interleaved."""
        for i in range(count):
            for cid in container_ids:
                self.hook(cid, STAGES[i % len(STAGES)])


def lines_of(root: Path) -> dict[str, list[bytes]]:
    """Every trail line under a root, per container, in segment order."""
    out: dict[str, list[bytes]] = {}
    containers = root / "containers"
    if not containers.is_dir():
        return out
    for cdir in sorted(containers.iterdir()):
        out[cdir.name] = [
            line for name in segment_names(cdir) for line in (cdir / name).read_bytes().splitlines()
        ]
    return out


def spool_files(spool: Path) -> list[str]:
    """The spool files present (``spool.<12 digits>``)."""
    return sorted(
        p.name for p in spool.parent.iterdir() if re.fullmatch(r"spool\.[0-9]{12}", p.name)
    )


def segment_names(cdir: Path) -> list[str]:
    names = sorted(n for n in os.listdir(cdir) if n.startswith("audit-"))
    return [*names, "audit.jsonl"] if (cdir / "audit.jsonl").exists() else names


def same_layout(node_root: Path, copy_root: Path) -> None:
    """Check the copy's files are the node's byte for byte.

    The copy's audit.jsonl may still hold the node's last sealed segment: its
    rotation shows when the next entry arrives.
    """
    for cdir in sorted((node_root / "containers").iterdir()):
        copy = copy_root / "containers" / cdir.name
        node_names = segment_names(cdir)
        copy_names = segment_names(copy)
        for name in copy_names[:-1]:
            assert (copy / name).read_bytes() == (cdir / name).read_bytes(), (cdir.name, name)
        rest = node_names[len(copy_names) - 1 :]
        assert (copy / copy_names[-1]).read_bytes() == b"".join(
            (cdir / n).read_bytes() for n in rest
        ), (cdir.name, copy_names, node_names)


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHIELDAUDIT, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


@dataclass
class Fleet:
    """A collector (rsyslogd writing the spool, collect following it) and three nodes."""

    collector: Rsyslogd
    collect: CollectProcess
    central: Path
    spool: Path
    nodes: list[Node]


def collector_rsyslogd(
    tmp_path: Path, port: int, wrapper: list[str] | None = None
) -> tuple[Rsyslogd, Path]:
    """The collector's rsyslogd (not started), a new spool file every second; and its spool."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    spool = spool_dir / "spool"
    collector = Rsyslogd(
        "collector",
        tmp_path / "collector",
        collector_config(spool, tmp_path / "collector" / "work", port, per_second=True),
        wrapper=wrapper or [],
    )
    return collector, spool


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A collector and three nodes, everything on 127.0.0.1; a new spool file every second."""
    port = free_port()
    central = tmp_path / "central"
    collector, spool = collector_rsyslogd(tmp_path, port)
    collect = CollectProcess(SHIELDAUDIT, central, spool, tmp_path / "collect.prom")
    nodes = [Node(tmp_path, name, port) for name in ("node-a", "node-b", "node-c")]
    started = [collector, *(n.rsyslog for n in nodes)]
    try:
        for instance in started:
            instance.start()
        collect.start()
        yield Fleet(collector, collect, central, spool, nodes)
    finally:
        collect.kill()
        for instance in started:
            instance.kill_group()


def test_shipped_configs_validate(tmp_path):
    """Rsyslogd -N1 accepts both shipped files as they are and as the tests fill them in.

    The collector needs no script or command of its own: its spool files are
    named by rsyslog (dynaFile), with no size limit.
    """
    for name in ("node.conf", "collector.conf"):
        text = (
            (DEPLOY / name).read_text(encoding="utf-8").replace("/var/spool/rsyslog", str(tmp_path))
        )
        result = validate(text, tmp_path / name)
        assert result.returncode == 0, result.stderr
    shipped = (DEPLOY / "collector.conf").read_text()
    assert "sizeLimit" not in shipped
    assert "dynaFile=" in shipped
    assert sorted(p.name for p in DEPLOY.iterdir()) == [
        "collector.conf",
        "node.conf",
        "shieldaudit-collect.service",
    ]
    filled = [
        node_config(tmp_path / "r", tmp_path, "node-a", 2514),
        collector_config(tmp_path / "spool", tmp_path, 2514),
        collector_config(tmp_path / "spool", tmp_path, 2514, per_second=True),
    ]
    for i, text in enumerate(filled):
        result = validate(text, tmp_path / f"filled{i}")
        assert result.returncode == 0, result.stderr


def test_three_nodes_every_entry_once_through_kills_and_restarts(fleet):
    """Every entry of three nodes arrives once, in the node layout, and verifies.

    Meanwhile collect and the collector's rsyslogd are killed (SIGKILL) and a
    node's rsyslogd restarts.
    """
    collector, central, nodes = fleet.collector, fleet.central, fleet.nodes
    ids = {n.name: [f"{n.name}-{i}".encode().hex().ljust(64, "0") for i in (1, 2)] for n in nodes}

    def phase(count: int) -> list[threading.Thread]:
        threads = [
            threading.Thread(target=n.write, args=(ids[n.name], count), daemon=True) for n in nodes
        ]
        for t in threads:
            t.start()
        return threads

    def arrived() -> int:
        return sum(len(v) for n in nodes for v in lines_of(central / n.name).values())

    for t in phase(6):
        t.join(DEADLINE)
    wait_for(lambda: arrived() >= 3 * 2 * 6, DEADLINE, "the first entries at the collector")

    # collect killed mid-stream, and started again while new spool files were written:
    # it goes on from its checkpoint and drops what it had applied after it.
    writers = phase(6)
    fleet.collect.stop(signal.SIGKILL)
    for t in writers:
        t.join(DEADLINE)
    fleet.collect.start()
    wait_for(lambda: arrived() >= 3 * 2 * 12, DEADLINE, "entries after collect was killed")

    # The collector's rsyslogd killed mid-stream, then started again.
    writers = phase(6)
    collector.kill_group()
    collector.start()
    for t in writers:
        t.join(DEADLINE)

    # A node's rsyslogd restarted while its trails keep growing (and rotating).
    writers = phase(6)
    nodes[1].rsyslog.stop()
    nodes[1].rsyslog.start()
    for t in writers:
        t.join(DEADLINE)

    total = 3 * 2 * 24
    wait_for(lambda: arrived() >= total, DEADLINE, f"all {total} entries at the collector")
    for node in nodes:
        node_lines = lines_of(node.root)
        copy_lines = lines_of(central / node.name)
        assert node_lines == copy_lines, node.name  # every line once, in order
        same_layout(node.root, central / node.name)
        result = cli("--root", central / node.name, "verify")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "OK: 2 container(s), 48 entries" in result.stdout
        against = cli("--root", node.root, "verify", "--against", central / node.name)
        assert against.returncode == 0, against.stdout + against.stderr
    fleet_verify = cli("--root", central, "verify")
    assert fleet_verify.returncode == 0, fleet_verify.stdout + fleet_verify.stderr
    assert [line for line in fleet_verify.stdout.splitlines() if line.startswith("== ")] == [
        "== node-a",
        "== node-b",
        "== node-c",
    ]
    listing = cli("--root", central, "ls")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.count("== node-") == 3
    metrics = (collector.base.parent / "collect.prom").read_text()
    assert "shieldaudit_collect_conflicts_total 0" in metrics
    # rsyslog wrote many spool files (one a second); collect removes each it has
    # applied once a later one exists and rsyslog has closed it.
    assert "shieldaudit_collect_spool_torn_total" in metrics
    wait_for(lambda: len(spool_files(fleet.spool)) == 1, DEADLINE, "the read files to be removed")


def test_trail_rewritten_after_shipping_is_a_conflict(fleet):
    """A node's trail cut back and written again after shipping is a conflict, seen centrally.

    The central copy keeps the shipped history, verify there reports the
    conflict (short ID, seq), the metric counts it, and verify --against on
    the node says where the histories part.
    """
    collector, central, nodes = fleet.collector, fleet.central, fleet.nodes
    node = nodes[0]
    cid = "c0ffee" + "0" * 57 + "1"
    node.env["SHIELDAUDIT_MAX_SEGMENT_BYTES"] = str(1024 * 1024)  # one segment: cut in place
    node.write([cid], 10)
    copy = central / node.name
    wait_for(lambda: len(lines_of(copy).get(cid, [])) == 10, DEADLINE, "10 entries shipped")

    active = node.root / "containers" / cid / "audit.jsonl"
    kept = b"".join(active.read_bytes().splitlines(keepends=True)[:4])
    os.truncate(active, len(kept))
    node.write([cid], 9)  # seq 5 to 13 again, other entries

    conflicts = copy / "conflicts" / "conflicts.jsonl"
    wait_for(conflicts.exists, DEADLINE, "the conflict to be kept aside")
    assert len(lines_of(copy)[cid]) == 10  # the shipped history is kept as it was
    result = cli("--root", copy, "verify")
    assert result.returncode == 1, result.stdout
    assert f"{cid[:12]} seq " in result.stdout
    assert "CONFLICT" in result.stdout
    wait_for(
        lambda: (
            "shieldaudit_collect_conflicts_total 0"
            not in (collector.base.parent / "collect.prom").read_text()
        ),
        DEADLINE,
        "the conflict metric",
    )
    against = cli("--root", node.root, "verify", "--against", copy)
    assert against.returncode == 1, against.stdout
    assert f"{cid[:12]} seq 5: histories part here" in against.stdout
    reverse = cli("--root", copy, "verify", "--against", node.root)
    assert reverse.returncode == 1, reverse.stdout
    assert f"{cid[:12]} seq 5: histories part here" in reverse.stdout
    fleet_verify = cli("--root", central, "verify")
    assert fleet_verify.returncode == 1


def test_shipped_config_writes_one_spool_file_per_utc_minute(tmp_path):
    """The collector config as shipped (only paths, port, host name put in) names files by minute.

    Lines shipped through it arrive once, from ``spool.YYYYMMDDhhmm`` files
    named after the UTC minute rsyslog wrote them in.
    """
    port = free_port()
    spool = tmp_path / "spool" / "spool"
    spool.parent.mkdir(mode=0o700)
    collector = Rsyslogd(
        "collector",
        tmp_path / "collector",
        collector_config(spool, tmp_path / "collector" / "work", port),
    )
    collect = CollectProcess(SHIELDAUDIT, tmp_path / "central", spool, tmp_path / "collect.prom")
    node = Node(tmp_path, "node-a", port)
    cid = "ab" * 32
    try:
        collector.start()
        collect.start()
        node.rsyslog.start()
        before = time.strftime("%Y%m%d%H%M", time.gmtime())
        node.write([cid], 5)
        copy = tmp_path / "central" / "node-a"
        wait_for(lambda: len(lines_of(copy).get(cid, [])) == 5, DEADLINE, "5 entries centrally")
        after = time.strftime("%Y%m%d%H%M", time.gmtime())
        names = spool_files(spool)
        assert names, "no spool file"
        assert all(f"spool.{before}" <= name <= f"spool.{after}" for name in names), names
        assert lines_of(copy) == lines_of(node.root)
    finally:
        collect.kill()
        node.rsyslog.kill_group()
        collector.kill_group()


def test_spool_disk_full_loses_lines_rsyslog_acknowledged_and_a_resend_restores_them(tmp_path):
    """Measured: with the spool's disk full, rsyslog drops lines it acknowledged; a resend mends it.

    rsyslog 8.2302's omfile maps a failed write (ENOSPC) to neither a retry
    nor a refusal: it logs "message lost" and imrelp acknowledges the line,
    so the node lets go of it (docs/operations.md, "When a part stops"). The
    collector's rsyslogd (and collect) run in a mount namespace of their own
    with the spool directory on a 1 MiB tmpfs; a filler file takes all of it
    while the node writes. The copy then has a gap, which collect shows as
    waiting lines. Once space is freed, the node's rsyslog restarted without
    its imfile positions sends every line again: each is in the copy once.
    """
    port = free_port()
    spool_dir = tmp_path / "spool"
    collector, spool = collector_rsyslogd(tmp_path, port, on_tmpfs(spool_dir, 1024))
    node = Node(tmp_path, "node-a", port)
    central = tmp_path / "central"
    prom = tmp_path / "collect.prom"
    cid = "cd" * 32
    collect: CollectProcess | None = None
    try:
        collector.start()
        assert collector.proc is not None
        inside = tmpfs_of(collector.proc.pid, spool_dir, 1024, DEADLINE)
        collect = CollectProcess(
            SHIELDAUDIT,
            central,
            spool,
            prom,
            wrapper=["nsenter", f"--mount=/proc/{collector.proc.pid}/ns/mnt", "--"],
        )
        collect.start()
        node.rsyslog.start()
        node.write([cid], 3)
        copy = central / "node-a"
        wait_for(lambda: len(lines_of(copy).get(cid, [])) == 3, DEADLINE, "3 entries centrally")

        filler = inside / "filler"
        fill(filler)
        node.write([cid], 30)
        wait_for(
            lambda: collector.log().count("message lost, could not be processed") >= 5,
            DEADLINE,
            "rsyslog to drop lines on the full disk",
        )
        assert "No space left on device" in collector.log()
        filler.unlink()
        node.write([cid], 3)  # after the gap: collect holds them back, waiting for it
        wait_for(
            lambda: metric(prom.read_text(), "shieldaudit_collect_waiting_entries") > 0,
            DEADLINE,
            "collect to wait for the lost lines",
        )
        assert len(lines_of(copy)[cid]) < 36

        # The remedy: the node sends its trails again from their start.
        node.rsyslog.stop()
        for state in node.rsyslog.work.glob("imfile-state*"):
            state.unlink()
        node.rsyslog.start()
        wait_for(lambda: len(lines_of(copy).get(cid, [])) >= 36, DEADLINE, "all 36 entries")
        assert lines_of(copy) == lines_of(node.root)  # every line once, in order
        same_layout(node.root, copy)
        assert not (copy / "conflicts").exists()
    finally:
        if collect is not None:
            collect.kill()
        node.rsyslog.kill_group()
        collector.kill_group()
