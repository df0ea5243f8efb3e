"""The wheel: pip builds the native hook and ships it as the ``shieldaudit-hook`` script.

Builds the wheel with pip (build isolation, setuptools-rust, the ``cargo`` on
PATH) from a copy of what a source distribution holds (pip builds in the tree
it is given, so the checkout is left alone), looks inside it, installs it into
a fresh venv (not editable) and runs the installed hook as a person would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from shieldaudit import __version__

REPO = Path(__file__).resolve().parents[3]
CID = "f0" * 32


def test_wheel_ships_the_native_hook_and_a_fresh_install_runs_it(tmp_path):
    """The wheel holds an ELF ``shieldaudit-hook`` and the licence; a venv install records."""
    source = tmp_path / "source"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "target")
    for name in ("src", "native"):
        shutil.copytree(REPO / name, source / name, ignore=skip)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
        check=True,
        capture_output=True,
        timeout=900,
    )
    (wheel,) = wheels.glob("shieldaudit-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        script = archive.getinfo(f"shieldaudit-{__version__}.data/scripts/shieldaudit-hook")
        magic = archive.read(script)[:4]
        entry_points = archive.read(f"shieldaudit-{__version__}.dist-info/entry_points.txt")
        metadata = archive.read(f"shieldaudit-{__version__}.dist-info/METADATA").decode()
        licence = archive.read(f"shieldaudit-{__version__}.dist-info/licenses/LICENSE")
        names = archive.namelist()
    assert magic == b"\x7fELF"
    assert (script.external_attr >> 16) & 0o111
    assert b"shieldaudit-hook" not in entry_points
    assert not [n for n in names if n.endswith("_hookmain.py") or "native/" in n]
    # PEP 639: an SPDX expression, and the licence text itself in the wheel.
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert licence == (REPO / "LICENSE").read_bytes()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    hook = venv / "bin" / "shieldaudit-hook"
    root = tmp_path / "root"
    state = {"ociVersion": "1.0.2", "id": CID, "status": "created", "pid": 7}
    result = subprocess.run(
        [str(hook), "poststart"],
        input=json.dumps(state).encode(),
        env={"SHIELDAUDIT_ROOT": str(root)},
        capture_output=True,
        timeout=60,
        check=False,
    )

    assert hook.read_bytes()[:4] == b"\x7fELF"
    assert (result.returncode, result.stderr) == (0, b"")
    (line,) = (root / "containers" / CID / "audit.jsonl").read_bytes().splitlines()
    assert json.loads(line)["action"] == "poststart"
