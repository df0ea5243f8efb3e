"""The native ``shieldaudit-hook`` for tests: the installed one if current, else built with cargo.

Tests run the executable exactly as the runtime does (a real process, the
hooks.d environment). An editable install can hold a binary older than the
sources under ``native/``; then it is rebuilt from the sources (``cargo build
--release``, a no-op when nothing changed).
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "native" / "Cargo.toml"
BUILT = REPO / "native" / "target" / "release" / "shieldaudit-hook"
ELF_MAGIC = b"\x7fELF"


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def _newest_source() -> float:
    sources = [MANIFEST, MANIFEST.with_name("Cargo.lock"), *MANIFEST.parent.glob("src/*.rs")]
    return max(p.stat().st_mtime for p in sources if p.exists())


@functools.cache
def native_hook() -> Path:
    """Return the path of a native hook built from the current sources."""
    installed = Path(sysconfig.get_path("scripts")) / "shieldaudit-hook"
    if not MANIFEST.is_file():
        return installed
    if _is_elf(installed) and installed.stat().st_mtime >= _newest_source():
        return installed
    cargo = shutil.which("cargo") or "/usr/bin/cargo"
    subprocess.run(
        [cargo, "build", "--release", "--quiet", "--manifest-path", str(MANIFEST)],
        check=True,
        timeout=1800,
        stdout=sys.stderr,
    )
    return BUILT


# A Podman-shaped bundle and the hooks.d environment, for running the hook by hand.

CID = "c0ffee" * 10 + "c0de"
NO_PYTHON = "/nonexistent/python3"


def podman_bundle(base: Path) -> str:
    """A bundle where Podman puts it, with its config.json and containers/storage's record."""
    bundle = base / "storage" / "overlay-containers" / CID / "userdata"
    bundle.mkdir(parents=True)
    config = {
        "ociVersion": "1.0.2-dev",
        "process": {"args": ["/bin/sh", "-c", "echo hi; sleep 1"], "cwd": "/"},
        "annotations": {"io.container.manager": "libpod"},
    }
    (bundle / "config.json").write_text(json.dumps(config, indent=4))
    meta = json.dumps({"image-name": "docker.io/library/alpine:latest", "name": "web"})
    record = {"id": CID, "names": ["web"], "image": "e" * 64, "metadata": meta}
    (bundle.parent.parent / "containers.json").write_text(
        json.dumps([record], separators=(",", ":"))
    )
    return str(bundle)


def env_for(root: Path, python: str = NO_PYTHON, **extra: str) -> dict[str, str]:
    env = {
        "SHIELDAUDIT_ROOT": str(root),
        "SHIELDAUDIT_MAX_SEGMENT_BYTES": str(10 * 1024 * 1024),
        "SHIELDAUDIT_KEEP_SEGMENTS": "20",
        "SHIELDAUDIT_FSYNC": "always",
        "SHIELDAUDIT_KEY_FILE": "",
        "SHIELDAUDIT_FAIL_CLOSED": "0",
        "SHIELDAUDIT_HOOK_PYTHON": python,
    }
    env.update(extra)
    return env


def run(stage: str, state: bytes, env: dict[str, str], *args: str, **kw: object):
    return subprocess.run(
        [str(native_hook()), stage, *args],
        input=state,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
        **kw,  # type: ignore[arg-type]
    )


def state(bundle: str, status: str = "created", pid: int = 4242) -> bytes:
    return json.dumps(
        {"ociVersion": "1.0.2", "id": CID, "status": status, "pid": pid, "bundle": bundle}
    ).encode()


def entries(root: Path) -> list[dict[str, object]]:
    path = root / "containers" / CID / "audit.jsonl"
    return [json.loads(line) for line in path.read_bytes().splitlines()]
