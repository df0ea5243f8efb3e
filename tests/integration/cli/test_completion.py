"""Shell completion through click's protocol, run as a shell would.

A subprocess with ``_SHIELDAUDIT_COMPLETE`` and ``COMP_WORDS``/``COMP_CWORD``
set, against a real root written by the store's writer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import cid, write_trail

SHIELDAUDIT = str(Path(sys.executable).parent / "shieldaudit")


@pytest.fixture
def root(tmp_path):
    """A root with two named trails: web (aaaa…) and db (abcc…)."""
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    write_trail(root, cid("a"), ["create", "start"], name="web")
    write_trail(root, "ab" + "c" * 62, ["create"], name="db")
    return root


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIELDAUDIT_")}
    config = tmp_path / "empty.toml"
    config.write_text("")
    env["SHIELDAUDIT_CONFIG"] = str(config)
    env.update(extra)
    return env


def complete(tmp_path: Path, words: list[str], **env: str) -> tuple[list[str], str]:
    """Ask for completions of the last word, as bash's completion function does."""
    result = subprocess.run(
        [SHIELDAUDIT],
        env=_env(
            tmp_path,
            _SHIELDAUDIT_COMPLETE="bash_complete",
            COMP_WORDS=" ".join(["shieldaudit", *words]),
            COMP_CWORD=str(len(words)),
            **env,
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line], result.stderr


@pytest.mark.parametrize("command", ["show", "tail", "verify"])
def test_container_names_complete(tmp_path, root, command):
    """show/tail/verify CONTAINER completes to the names in the trails under --root."""
    assert complete(tmp_path, ["--root", str(root), command, ""]) == (
        ["plain,db", "plain,web"],
        "",
    )
    assert complete(tmp_path, ["--root", str(root), command, "w"]) == (["plain,web"], "")


def test_id_prefixes_complete_to_short_ids(tmp_path, root):
    """A hex prefix completes to the 12-character IDs it matches (and names starting so)."""
    lines, _ = complete(tmp_path, ["--root", str(root), "show", "a"])
    assert lines == ["plain,aaaaaaaaaaaa", "plain,abcccccccccc"]
    lines, _ = complete(tmp_path, ["--root", str(root), "show", "ab"])
    assert lines == ["plain,abcccccccccc"]


def test_the_root_comes_from_the_settings(tmp_path, root):
    """Without --root, completion reads SHIELDAUDIT_ROOT like every command does."""
    lines, _ = complete(tmp_path, ["show", "d"], SHIELDAUDIT_ROOT=str(root))
    assert lines == ["plain,db"]


def test_an_unusable_root_completes_nothing_quietly(tmp_path, root):
    """A missing or group-writable root: no candidates, nothing on stderr, status 0."""
    assert complete(tmp_path, ["--root", str(tmp_path / "none"), "show", ""]) == ([], "")
    root.chmod(0o770)
    assert complete(tmp_path, ["--root", str(root), "show", ""]) == ([], "")


def test_commands_and_options_complete(tmp_path, root):
    """Subcommand names and options come from click (the lazy group lists them all)."""
    lines, _ = complete(tmp_path, ["--root", str(root), "compl"])
    assert lines == ["plain,completion"]
    lines, _ = complete(tmp_path, ["--root", str(root), "tail", "--fo"])
    assert lines == ["plain,--follow"]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_the_script_for_each_shell(tmp_path, shell):
    """``completion SHELL`` prints click's script, wired to _SHIELDAUDIT_COMPLETE."""
    result = subprocess.run(
        [SHIELDAUDIT, "completion", shell],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert f"_SHIELDAUDIT_COMPLETE={shell}_complete" in result.stdout


def test_an_unknown_shell_is_a_usage_error(tmp_path):
    """``completion tcsh``: exit 2, no script."""
    result = subprocess.run(
        [SHIELDAUDIT, "completion", "tcsh"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "tcsh" in result.stderr
