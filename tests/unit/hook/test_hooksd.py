"""hooks.d files (shieldaudit.hook.hooksd) and the ``install-hooks`` command."""

from __future__ import annotations

import json
import os
import sys
import sysconfig
from pathlib import Path

import pytest
from click.testing import CliRunner

from shieldaudit.cli import cli, run
from shieldaudit.core.errors import StorageError, UsageError
from shieldaudit.core.settings import StoreSettings
from shieldaudit.hook import hooksd

REPO = Path(__file__).resolve().parents[3]
TEMPLATE_PYTHON = "/usr/bin/python3"
TEMPLATE_HOOK = "/usr/bin/shieldaudit-hook"


def doc(stage="poststop", annotation=None, root="/srv/audit", *, fail_closed=False):
    env = hooksd.settings_env(StoreSettings(Path(root)), fail_closed=fail_closed)
    path = hooksd.native_hook_path()
    return hooksd.build_hook(stage, path, env, annotation, fail_closed=fail_closed)


def test_built_document_runs_the_native_hook():
    """The document names the native executable, argv [name, STAGE], and the reference's Python."""
    built = doc("createRuntime")

    hooksd.validate(built)
    hook = built["hook"]
    assert hook["path"] == os.path.abspath(hook["path"])
    assert Path(hook["path"]).name == "shieldaudit-hook"
    assert hook["args"] == ["shieldaudit-hook", "createRuntime"]
    assert built["stages"] == ["createRuntime"]
    assert built["when"] == {"always": True}
    assert "SHIELDAUDIT_ROOT=/srv/audit" in hook["env"]
    assert f"SHIELDAUDIT_HOOK_PYTHON={sys.executable}" in hook["env"]
    assert hook["env"][-1] == hooksd.MANAGED_MARK


def test_fail_closed_is_an_argument_and_a_setting():
    """--fail-closed goes into the argv (visible in ps) and into SHIELDAUDIT_FAIL_CLOSED."""
    hook = doc("poststop", fail_closed=True)["hook"]

    assert hook["args"] == ["shieldaudit-hook", "poststop", "--fail-closed"]
    assert "SHIELDAUDIT_FAIL_CLOSED=1" in hook["env"]


def test_native_hook_is_found_in_this_installation():
    """The native hook pip installed next to this interpreter's scripts is the one named."""
    path = Path(hooksd.native_hook_path())

    assert path.parent == Path(sysconfig.get_path("scripts")).absolute()
    assert path.read_bytes()[:4] == b"\x7fELF"


def test_settings_env_carries_every_store_setting():
    """The env holds root, segment size, retention, fsync, key file and fail-closed."""
    settings = StoreSettings(Path("/r"), 4096, 3, "never", Path("/k"), fail_closed=False)

    env = hooksd.settings_env(settings, fail_closed=True)

    assert env == [
        "SHIELDAUDIT_ROOT=/r",
        "SHIELDAUDIT_MAX_SEGMENT_BYTES=4096",
        "SHIELDAUDIT_KEEP_SEGMENTS=3",
        "SHIELDAUDIT_FSYNC=never",
        "SHIELDAUDIT_KEY_FILE=/k",
        "SHIELDAUDIT_FAIL_CLOSED=1",
        f"SHIELDAUDIT_HOOK_PYTHON={sys.executable}",
        hooksd.MANAGED_MARK,
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("audit", {"^(?:audit)$": "^(?:.*)$"}),
        ("io\\.audit/.*=yes|true", {"^(?:io\\.audit/.*)$": "^(?:yes|true)$"}),
    ],
)
def test_annotation_condition_is_anchored(spec, expected):
    """--annotation KEY[=VALUE] becomes whole-string regexes for key and value."""
    assert hooksd.annotation_when(spec) == {"annotations": expected}


@pytest.mark.parametrize("spec", ["", "=x", "(", "a=(", "(?=x)", "(a)\\1", "x=(?!y)"])
def test_bad_annotation_is_a_usage_error(spec):
    """Empty keys, broken regexes and RE2-incompatible constructs are refused."""
    with pytest.raises(UsageError):
        hooksd.annotation_when(spec)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(version="2.0"), "version"),
        (lambda d: d["hook"].update(path="relative"), "absolute"),
        (lambda d: d["hook"].update(path="/nonexistent/python"), "does not exist"),
        (lambda d: d["hook"].update(args="x"), "args"),
        (lambda d: d["hook"].update(env=["NOEQUALS"]), "NAME=VALUE"),
        (lambda d: d["hook"].update(timeout=0), "timeout"),
        (lambda d: d.update(when={}), "condition"),
        (lambda d: d.update(when={"annotations": {"(": "x"}}), "bad regex"),
        (lambda d: d.update(stages=["prestop"]), "stages"),
        (lambda d: d.update(stages=[]), "stages"),
    ],
)
def test_validate_names_the_problem(mutate, message):
    """Each schema violation (and a missing or non-executable path) is one UsageError."""
    built = doc()
    mutate(built)

    with pytest.raises(UsageError, match=message):
        hooksd.validate(built)


def test_validate_refuses_a_non_executable_path(tmp_path):
    """A path without any execute bit is refused: Podman 4.3 would skip the hook silently."""
    plain = tmp_path / "python"
    plain.write_text("")
    plain.chmod(0o644)
    built = doc()
    built["hook"]["path"] = str(plain)

    with pytest.raises(UsageError, match="not executable"):
        hooksd.validate(built)


@pytest.mark.parametrize("content", [b"#!/bin/sh\nexit 0\n", b"", b"\x7fEL"])
def test_validate_refuses_a_script(tmp_path, content):
    """hooks.d must run a native executable: a script (or anything not ELF) is refused."""
    script = tmp_path / "shieldaudit-hook"
    script.write_bytes(content)
    script.chmod(0o755)
    built = doc()
    built["hook"]["path"] = str(script)

    with pytest.raises(UsageError, match="not a native executable"):
        hooksd.validate(built)


def test_install_writes_atomically_and_reinstalls(tmp_path):
    """install() creates the dir, writes one file per stage, leaves no temp file, reinstalls."""
    hooks_dir = tmp_path / "hooks.d"
    docs = {stage: doc(stage) for stage in hooksd.DEFAULT_STAGES}

    written, removed = hooksd.install(hooks_dir, docs, check=False)
    again, _ = hooksd.install(hooks_dir, {"poststop": doc("poststop", root="/other")}, check=False)

    assert [p.name for p in written] == [hooksd.file_name(s) for s in hooksd.DEFAULT_STAGES]
    assert removed == []
    assert sorted(p.name for p in hooks_dir.iterdir()) == ["shieldaudit-poststop.json"]
    assert again == [hooks_dir / "shieldaudit-poststop.json"]
    stored = json.loads(again[0].read_text())
    assert "SHIELDAUDIT_ROOT=/other" in stored["hook"]["env"]


def test_install_never_overwrites_a_foreign_file(tmp_path):
    """A same-named file not written by install-hooks stops the install before any write."""
    hooks_dir = tmp_path / "hooks.d"
    hooks_dir.mkdir()
    foreign = hooks_dir / "shieldaudit-poststop.json"
    foreign.write_text('{"version": "1.0.0", "hook": {"path": "/bin/true"}}')

    with pytest.raises(UsageError, match="not written by shieldaudit install-hooks"):
        hooksd.install(hooks_dir, {s: doc(s) for s in hooksd.DEFAULT_STAGES}, check=False)

    assert sorted(p.name for p in hooks_dir.iterdir()) == ["shieldaudit-poststop.json"]
    assert "/bin/true" in foreign.read_text()


def test_uninstall_removes_only_managed_files(tmp_path):
    """--uninstall removes this tool's files and keeps every other hook."""
    hooks_dir = tmp_path / "hooks.d"
    hooksd.install(hooks_dir, {"poststop": doc()}, check=False)
    (hooks_dir / "shieldaudit-custom.json").write_text("{}")
    (hooks_dir / "other.json").write_text("{}")

    removed = hooksd.uninstall(hooks_dir)

    assert [p.name for p in removed] == ["shieldaudit-poststop.json"]
    assert sorted(p.name for p in hooks_dir.iterdir()) == ["other.json", "shieldaudit-custom.json"]
    assert hooksd.uninstall(tmp_path / "absent") == []


def test_check_runnable_runs_both_paths(tmp_path):
    """The check runs the native hook and the reference path, each appending to a throwaway root."""
    output = hooksd.check_runnable(doc(root=str(tmp_path / "root")))

    assert "python reference" in output
    assert "native and reference paths wrote one valid chain" in output
    assert not (tmp_path / "root").exists()


def test_check_runnable_reports_a_broken_reference_path():
    """A reference interpreter that cannot run is a StorageError carrying the exit status."""
    broken = doc()
    env = broken["hook"]["env"]
    env[env.index(f"SHIELDAUDIT_HOOK_PYTHON={sys.executable}")] = (
        "SHIELDAUDIT_HOOK_PYTHON=/bin/false"
    )

    with pytest.raises(StorageError, match="failed \\(exit 1\\)"):
        hooksd.check_runnable(broken)


def test_templates_match_what_install_hooks_writes():
    """hooks/*.json equal the generated documents for the packaged paths and default settings."""
    settings = StoreSettings(Path("/var/lib/shieldaudit"))
    env = hooksd.settings_env(settings, python=TEMPLATE_PYTHON)
    templates = sorted((REPO / "hooks").glob("*.json"))

    assert [p.name for p in templates] == sorted(hooksd.file_name(s) for s in hooksd.DEFAULT_STAGES)
    for path in templates:
        stored = json.loads(path.read_text())
        hooksd.validate(stored, check_path=False)
        assert stored == hooksd.build_hook(stored["stages"][0], TEMPLATE_HOOK, env)


def test_cli_install_and_uninstall(tmp_path):
    """`shieldaudit install-hooks` installs (checking the hook runs) and --uninstall removes."""
    hooks_dir = tmp_path / "hooks.d"
    root = tmp_path / "root"
    runner = CliRunner()
    args = ["--root", str(root), "install-hooks", "--hooks-dir", str(hooks_dir)]

    installed = runner.invoke(
        cli, [*args, "--stage", "poststop", "--annotation", "audit", "--fail-closed"]
    )
    stored = json.loads((hooks_dir / "shieldaudit-poststop.json").read_text())
    removed = runner.invoke(cli, [*args, "--uninstall"])

    assert installed.exit_code == 0, installed.output
    assert "installed" in installed.output
    assert stored["when"] == {"annotations": {"^(?:audit)$": "^(?:.*)$"}}
    assert "SHIELDAUDIT_FAIL_CLOSED=1" in stored["hook"]["env"]
    assert stored["hook"]["args"] == ["shieldaudit-hook", "poststop", "--fail-closed"]
    assert f"SHIELDAUDIT_ROOT={root}" in stored["hook"]["env"]
    assert root.is_dir()
    assert removed.exit_code == 0
    assert list(hooks_dir.iterdir()) == []


def test_install_records_a_manifest_that_check_follows(tmp_path):
    """install-hooks records each file's SHA-256; a deleted or edited file, or uninstall, is 0."""
    from shieldaudit.store import manifest as hookmanifest  # noqa: PLC0415

    hooks_dir = tmp_path / "hooks.d"
    other_dir = tmp_path / "other.d"
    root = tmp_path / "root"
    runner = CliRunner()
    assert hookmanifest.check(root)[0] is False  # never installed on this root
    for directory in (hooks_dir, other_dir):
        args = ["--root", str(root), "install-hooks", "--hooks-dir", str(directory)]
        assert runner.invoke(cli, args).exit_code == 0
    listed = hookmanifest.load(root)
    assert listed is not None
    assert len(listed) == 6  # three default stages in each directory
    assert hookmanifest.check(root) == (True, "ok")

    poststart = hooks_dir / "shieldaudit-poststart.json"
    original = poststart.read_bytes()
    poststart.write_bytes(original.replace(b'"always": true', b'"always": false'))
    installed, why = hookmanifest.check(root)
    assert not installed
    assert "changed" in why
    poststart.unlink()
    assert "missing" in hookmanifest.check(root)[1]

    args = ["--root", str(root), "install-hooks", "--hooks-dir", str(hooks_dir)]
    assert runner.invoke(cli, args).exit_code == 0  # reinstalling repairs it
    assert hookmanifest.check(root)[0] is True
    assert runner.invoke(cli, [*args, "--uninstall"]).exit_code == 0
    assert len(hookmanifest.load(root) or {}) == 3  # other.d is still installed
    other = ["--root", str(root), "install-hooks", "--hooks-dir", str(other_dir), "--uninstall"]
    assert runner.invoke(cli, other).exit_code == 0
    assert hookmanifest.load(root) is None
    assert hookmanifest.check(root)[0] is False


def test_cli_refuses_an_unsafe_root(tmp_path):
    """A group-writable root is refused at install time, not at the next container start."""
    root = tmp_path / "root"
    root.mkdir()
    root.chmod(0o770)

    result = CliRunner().invoke(
        cli, ["--root", str(root), "install-hooks", "--hooks-dir", str(tmp_path / "h")]
    )

    assert result.exit_code == 1
    assert not (tmp_path / "h").exists()


@pytest.mark.parametrize("problem", ["missing", "script"])
def test_cli_refuses_without_the_native_hook(tmp_path, monkeypatch, capsys, problem):
    """No native hook (or a script in its place): one Error line, nothing installed."""
    hook = tmp_path / "bin" / "shieldaudit-hook"
    if problem == "script":
        hook.parent.mkdir()
        hook.write_text('#!/bin/sh\nexec python3 -m shieldaudit.hook "$@"\n')
        hook.chmod(0o755)
    monkeypatch.setattr(hooksd, "native_hook_path", lambda: str(hook))
    hooks_dir = tmp_path / "hooks.d"

    status = run(["--root", str(tmp_path / "root"), "install-hooks", "--hooks-dir", str(hooks_dir)])

    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"Error: hook executable {hook} ")
    assert ("does not exist" if problem == "missing" else "not a native executable") in line
    assert not hooks_dir.exists()
