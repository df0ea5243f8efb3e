"""The native hook's own Rust tests run as part of the suite.

``cargo test`` covers what is best pinned inside the crate: SHA-256 against the
FIPS 180-4 examples, HMAC-SHA-256 against the RFC 4231 vectors, the JSON reader
against Python's json (surrogates, control characters, duplicate keys, nesting
and integer bounds), timestamps, clipping, quoting and the annotations rules.
"""

from __future__ import annotations

import shutil
import subprocess

from native_hook import MANIFEST


def test_cargo_test_passes():
    """Every Rust unit test of native/ passes (known vectors included)."""
    cargo = shutil.which("cargo") or "/usr/bin/cargo"
    result = subprocess.run(
        [cargo, "test", "--release", "--quiet", "--manifest-path", str(MANIFEST)],
        capture_output=True,
        timeout=1800,
        check=False,
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, output[-3000:]
    assert "test result: ok" in output
