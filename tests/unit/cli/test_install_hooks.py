"""``shieldaudit install-hooks``: the self-check it runs before any file is moved into place."""

from __future__ import annotations

import json

import pytest

from cli_helpers import invoke


@pytest.mark.parametrize("keep", ["0", "1"])
def test_self_check_reads_every_segment_of_a_tiny_segment_size(tmp_path, keep):
    """With 256-byte segments each check entry lands in its own segment: the check still passes.

    The check used to read audit.jsonl alone, and failed as soon as an entry
    had been rotated into a sealed segment; retention (keep_segments) must not
    make it fail either.
    """
    hooks_dir = tmp_path / "hooks.d"
    env = {"SHIELDAUDIT_MAX_SEGMENT_BYTES": "256", "SHIELDAUDIT_KEEP_SEGMENTS": keep}
    result = invoke(
        tmp_path / "root",
        "install-hooks",
        "--hooks-dir",
        str(hooks_dir),
        "--stage",
        "poststop",
        env=env,
    )
    assert result.code == 0, result.err
    assert result.err == ""
    assert result.lines[-1].startswith("installed 1 hooks into ")
    stored = json.loads((hooks_dir / "shieldaudit-poststop.json").read_text())
    assert "SHIELDAUDIT_MAX_SEGMENT_BYTES=256" in stored["hook"]["env"]
