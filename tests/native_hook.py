"""The native ``shieldaudit-hook`` for tests: the installed one if current, else built with cargo.

Tests run the executable exactly as the runtime does (a real process, the
hooks.d environment). An editable install can hold a binary older than the
sources under ``native/``; then it is rebuilt from the sources (``cargo build
--release``, a no-op when nothing changed).
"""

from __future__ import annotations

import functools
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
