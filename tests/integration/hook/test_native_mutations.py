"""A randomized mutation run of the native hook: hostile bytes never crash it.

Real-shaped inputs (runc, crun and Podman states, a Podman bundle's
config.json, containers/storage's containers.json, an existing trail, a key
file) are mutated (bit flips, truncations, splices of one file into another,
repeated and deleted runs of bytes) and the native ``shieldaudit-hook`` runs on
each as the runtime runs it. Whatever the input, the process must end by
itself with exit status 0 or 1 (never a signal), print at most one line on
stderr (exactly one when it exits 1), and never a panic message. The run is
deterministic (a fixed seed) and bounded (a fixed number of cases).

The hand-over target is either ``/bin/true`` (an exec that succeeds, so the
native process's own part is what is tested) or a path that does not exist
(the native failure report for an impossible hand-over).
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

from native_hook import native_hook
from shieldaudit.core.settings import StoreSettings
from shieldaudit.store.writer import TrailWriter

CID = "5f2d7ad2c0a0b1f5a9d2e1c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8"
CASES = 1200
SEED = 20261202

CONFIG = {
    "ociVersion": "1.0.2-dev",
    "process": {
        "user": {"uid": 0, "gid": 0},
        "args": ["/bin/sh", "-c", "echo 'hello world' && sleep 1"],
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin", "TERM=xterm"],
        "cwd": "/",
        "capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL"]},
    },
    "root": {"path": "/var/lib/containers/storage/overlay/abc/merged"},
    "hostname": "5f2d7ad2c0a0",
    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
    "annotations": {
        "io.container.manager": "libpod",
        "io.podman.annotations.autoremove": "TRUE",
        "org.opencontainers.image.stopSignal": "15",
    },
    "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}]},
}


def containers_json() -> bytes:
    meta = json.dumps({"image-name": "docker.io/library/alpine:latest", "name": "web-1"})
    records = [
        {
            "id": "1" * 64,
            "names": ["other"],
            "image": "2" * 64,
            "layer": "3" * 64,
            "metadata": "{}",
        },
        {
            "id": CID,
            "names": ["web-1"],
            "image": "a1b2" * 16,
            "layer": "4" * 64,
            "metadata": meta,
            "created": "2026-11-22T10:42:12.211996Z",
            "flags": {"MountLabel": ""},
        },
    ]
    return json.dumps(records, separators=(",", ":")).encode()


def states(bundle: str) -> list[bytes]:
    """States as runc (createRuntime, poststart), crun and Podman's poststop write them."""
    docs: list[dict[str, object]] = [
        {"ociVersion": "1.0.2", "id": CID, "status": "creating", "pid": 4242, "bundle": bundle},
        {
            "ociVersion": "1.0.2-dev",
            "id": CID,
            "status": "running",
            "pid": 4242,
            "bundle": bundle,
            "annotations": {"io.container.manager": "libpod"},
        },
        {"ociVersion": "1.0.0", "id": CID, "status": "created", "pid": 0, "bundlePath": bundle},
        {"ociVersion": "1.0.2", "id": CID, "status": "stopped", "bundle": bundle},
    ]
    return [json.dumps(d).encode() for d in docs]


def mutate(rng: random.Random, data: bytes, donors: list[bytes]) -> bytes:
    """Apply one to three random mutations."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(6)
        at = rng.randrange(len(out) + 1)
        if kind == 0 and out:  # bit flips
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(len(out))
                out[i] ^= 1 << rng.randrange(8)
        elif kind == 1:  # truncation
            out = out[:at]
        elif kind == 2:  # a splice from another real file
            donor = rng.choice(donors)
            start = rng.randrange(len(donor) + 1)
            out[at:at] = donor[start : start + rng.randint(1, 200)]
        elif kind == 3 and out:  # a run of bytes repeated
            end = min(len(out), at + rng.randint(1, 50))
            out[at:at] = out[at:end] * rng.randint(1, 40)
        elif kind == 4:  # a run of bytes deleted
            del out[at : at + rng.randint(1, 50)]
        else:  # a hostile byte: control, quote, backslash, brace, non-UTF-8
            out[at:at] = bytes([rng.choice(b'\x00\x01\x1f"\\{}[]:,\xff\xc3\xed\xa0')])
    return bytes(out)


def template(base: Path) -> tuple[Path, str]:
    """A trail with a few entries, plus the bundle files; returns (root, bundle)."""
    root = base / "root"
    with TrailWriter(StoreSettings(root, fsync="never")) as writer:
        for action in ("createRuntime", "poststart"):
            writer.append(CID, {"source": "hook", "action": action, "pid": 4242})
        writer.append(CID, {"source": "events", "action": "died", "exit_code": 0})
    bundle = base / "storage" / "overlay-containers" / CID / "userdata"
    bundle.mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps(CONFIG, indent=4))
    (bundle.parent.parent / "containers.json").write_bytes(containers_json())
    key = base / "key"
    key.write_bytes(b"a-signing-key-of-32-bytes-length\n")
    key.chmod(0o600)
    return root, str(bundle)


def test_mutated_inputs_end_cleanly(tmp_path):
    """1,200 mutated states, bundle files, trails and key files end cleanly.

    The native hook always exits 0 or 1 by itself, with at most one stderr line
    (one when it exits 1), and never a panic message.
    """
    binary = native_hook()
    rng = random.Random(SEED)
    base = tmp_path / "template"
    root, bundle = template(base)
    bundle_dir = Path(bundle)
    config = (bundle_dir / "config.json").read_bytes()
    records = (bundle_dir.parent.parent / "containers.json").read_bytes()
    trail = (root / "containers" / CID / "audit.jsonl").read_bytes()
    seeds = states(bundle)
    donors = [*seeds, config, records, trail]
    outcomes = {0: 0, 1: 0}
    for number in range(CASES):
        work = tmp_path / "work"
        shutil.copytree(base, work, symlinks=True)
        try:
            wbundle = str(work / bundle_dir.relative_to(base))
            state = rng.choice(seeds).replace(bundle.encode(), wbundle.encode())
            targets = rng.sample(["state", "state", "config", "records", "trail", "key"], 2)
            if "state" in targets:
                state = mutate(rng, state, donors)
            if "config" in targets:
                (Path(wbundle) / "config.json").write_bytes(mutate(rng, config, donors))
            if "records" in targets:
                path = Path(wbundle).parent.parent / "containers.json"
                path.write_bytes(mutate(rng, records, donors))
            if "trail" in targets:
                path = work / "root" / "containers" / CID / "audit.jsonl"
                path.write_bytes(mutate(rng, trail, donors))
            keyed = "key" in targets or rng.random() < 0.3
            if "key" in targets:
                (work / "key").write_bytes(
                    mutate(rng, b"a-signing-key-of-32-bytes-length\n", donors)
                )
            env = {
                "SHIELDAUDIT_ROOT": str(work / "root"),
                "SHIELDAUDIT_MAX_SEGMENT_BYTES": "10485760",
                "SHIELDAUDIT_KEEP_SEGMENTS": "20",
                "SHIELDAUDIT_FSYNC": "never",
                "SHIELDAUDIT_KEY_FILE": str(work / "key") if keyed else "",
                "SHIELDAUDIT_FAIL_CLOSED": rng.choice(["0", "1"]),
                "SHIELDAUDIT_HOOK_PYTHON": rng.choice(["/bin/true", "/nonexistent/python3"]),
            }
            stage = rng.choice(["createRuntime", "poststart", "poststop", "poststop", "bogus"])
            proc = subprocess.run(
                [str(binary), stage],
                input=state,
                env=env,
                capture_output=True,
                timeout=60,
                check=False,
            )
            lines = proc.stderr.decode("utf-8", "replace").splitlines()
            shown = f"case {number}: exit {proc.returncode}, stderr {proc.stderr[:300]!r}"
            assert proc.returncode in {0, 1}, shown
            assert len(lines) <= 1, shown
            assert proc.returncode == 0 or len(lines) == 1, shown
            assert b"panicked" not in proc.stderr, shown
            assert all(line.startswith("shieldaudit-hook ") for line in lines), shown
            outcomes[proc.returncode] += 1
        finally:
            shutil.rmtree(work, ignore_errors=True)
    # Both outcomes occur: the mutations reach the failure paths and the write path.
    assert outcomes[0] > 100
    assert outcomes[1] > 100
