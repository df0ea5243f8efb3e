"""The one place errors are shown: exit codes and messages of ``shieldaudit.cli.run``."""

from __future__ import annotations

import errno
from pathlib import Path

import click
import pytest

from shieldaudit import cli
from shieldaudit.cli import verify as verify_module
from shieldaudit.fleet.collect import FLEET_MARKER
from shieldaudit.store import seals
from store_helpers import CID_A, write


def test_ctrl_c_in_any_command_exits_130_without_a_word(tmp_path, monkeypatch, capsys):
    """Ctrl-C inside a command: status 130, nothing but a newline on stderr, no traceback."""
    root = tmp_path / "root"
    write(root, CID_A, 1)

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(verify_module, "verify_container", interrupted)
    status = cli.run(["--root", str(root), "verify"])
    captured = capsys.readouterr()
    assert status == 130
    assert captured.err.strip() == ""
    assert "Aborted" not in captured.err


def _interrupted(*_args, **_kwargs):
    raise KeyboardInterrupt


def _pipe_closed(*_args, **_kwargs):
    raise BrokenPipeError(errno.EPIPE, "Broken pipe")


@pytest.mark.parametrize(("raised", "expected"), [(_interrupted, 130), (_pipe_closed, 0)])
def test_every_command_ends_silently_on_ctrl_c_and_a_closed_pipe(
    tmp_path, monkeypatch, capsys, raised, expected
):
    """Not only the listings: Ctrl-C is 130 and a closed stdout 0, with not even a blank line.

    click alone would print a blank line for Ctrl-C and exit 1 on a closed pipe.
    """
    monkeypatch.setattr(seals, "seal_now", raised)
    status = cli.run(["--root", str(tmp_path / "root"), "seal"])
    captured = capsys.readouterr()
    assert status == expected
    assert (captured.out, captured.err) == ("", "")


def test_ctrl_c_in_one_node_copy_ends_the_whole_fleet_run(tmp_path, monkeypatch, capsys):
    """`verify` over a central directory stops at Ctrl-C: the next node is not read."""
    central = tmp_path / "central"
    for node in ("node-a", "node-b"):
        write(central / node, CID_A, 1)
    (central / FLEET_MARKER).write_text("")
    monkeypatch.setattr(verify_module, "verify_container", _interrupted)
    status = cli.run(["--root", str(central), "verify"])
    captured = capsys.readouterr()
    assert status == 130
    assert captured.out == "== node-a\n"
    assert captured.err == ""


def test_user_error_is_one_line_with_exit_2(tmp_path, capsys):
    """An unknown container: exit 2 and exactly one 'Error:' line."""
    root = tmp_path / "root"
    write(root, CID_A, 1)
    status = cli.run(["--root", str(root), "show", "nosuchname"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1
    assert err[0].startswith("Error: no trail matches 'nosuchname'")


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["frobnicate"], "Error: No such command 'frobnicate': see 'shieldaudit --help'"),
        (["show"], "Error: Missing argument 'CONTAINER': see 'shieldaudit show --help'"),
        (
            ["keys", "init"],
            "Error: Missing option '--verification-key': see 'shieldaudit keys init --help'",
        ),
        (["collect"], "Error: Missing option '--central': see 'shieldaudit collect --help'"),
        (["ls", "--bogus"], "Error: No such option '--bogus': see 'shieldaudit ls --help'"),
        (
            ["show", "x", "--source", "y"],
            (
                "Error: Invalid value for '--source': 'y' is not one of 'hook', 'events', 'cli': "
                "see 'shieldaudit show --help'"
            ),
        ),
    ],
)
def test_a_usage_error_is_one_error_line_with_exit_2(tmp_path, capsys, args, line):
    """Unknown command or option, missing argument or option, bad choice: one line, no usage block.

    The line says what is wrong and where the help is, like every other usage error.
    """
    status = cli.run(["--root", str(tmp_path / "root"), *args])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert captured.err.splitlines() == [line]


@pytest.mark.parametrize("args", [["--help"], ["show", "--help"], ["keys", "init", "-h"]])
def test_help_is_still_the_help(capsys, args):
    """--help prints the usage and the options on stdout, exit 0."""
    status = cli.run(args)
    captured = capsys.readouterr()
    assert status == 0
    assert captured.out.startswith("Usage: shieldaudit")
    assert "Options:" in captured.out
    assert captured.err == ""


def test_a_bare_group_prints_its_help(capsys):
    """`shieldaudit` or `shieldaudit keys` alone: the help, as a usage error (exit 2)."""
    for args in ([], ["keys"]):
        status = cli.run(args)
        captured = capsys.readouterr()
        assert status == 2
        assert "Commands:" in captured.err


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ("directory", "is a directory: give the path of a TOML file"),
        ("file/below/a/file", "cannot read it: Not a directory"),
    ],
)
def test_unusable_config_file_is_one_error_line_with_exit_2(tmp_path, capsys, config, problem):
    """--config naming a directory or an unreadable path: one 'Error:' line, exit 2, no usage."""
    (tmp_path / "directory").mkdir()
    (tmp_path / "file").write_text("")
    path = tmp_path / config
    status = cli.run(["--config", str(path), "--root", str(tmp_path / "root"), "ls"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err == [f"Error: invalid setting config (from {path}): {problem}"]


def test_too_large_setting_in_the_config_file_names_it_and_the_file(tmp_path, capsys):
    """max_segment_bytes = '99999999999999999999GiB' in the file: one line, the key and file."""
    config = tmp_path / "config.toml"
    config.write_text('max_segment_bytes = "99999999999999999999GiB"\n')
    status = cli.run(["--config", str(config), "--root", str(tmp_path / "root"), "ls"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err == [
        (
            f"Error: invalid setting max_segment_bytes (from {config} key max_segment_bytes): "
            "must be at most 1073741824 bytes (1GiB), got '99999999999999999999GiB'"
        )
    ]


@pytest.mark.parametrize(
    ("hooks_dir", "problem"),
    [
        ("file", "{path} is not a directory: give a directory (it is created if missing)"),
        ("file/hooks.d", "{path} is below {base}/file, a file: give a directory"),
        (" ", "is empty: give the hooks.d directory to write to"),
        ("/proc/1/hooks.d", "{path}: this user cannot write /proc/1: run install-hooks as"),
    ],
)
def test_unusable_hooks_dir_is_one_error_line_with_exit_2(tmp_path, capsys, hooks_dir, problem):
    """install-hooks --hooks-dir naming a file, a path below one, nothing, or an unwritable place.

    One 'Error:' line naming the option, exit 2, no usage block, and nothing
    written anywhere (an empty value no longer means the current directory).
    """
    (tmp_path / "file").write_text("")
    path = hooks_dir if hooks_dir.startswith("/") or not hooks_dir.strip() else tmp_path / hooks_dir
    root = tmp_path / "root"
    status = cli.run(["--root", str(root), "install-hooks", "--hooks-dir", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1
    assert err[0].startswith("Error: --hooks-dir ")
    assert problem.format(path=path, base=tmp_path) in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("", "--verification-key is empty: give the file to write the verification key to"),
        ("file/verification", "--verification-key {base}/file/verification: {base}/file is not a"),
        ("missing/verification", "{base}/missing is not a directory: give a file in an existing"),
    ],
)
def test_unusable_verification_key_path_is_one_error_line_with_exit_2(
    tmp_path, capsys, monkeypatch, given, problem
):
    """An empty --verification-key, one below a file or in no directory: one line, exit 2.

    An empty value named the current directory ("already exists"); a path below
    a file failed with exit 1 after the checks. Neither key is written.
    """
    (tmp_path / "file").write_text("")
    key_file = tmp_path / "signing.key"
    target = str(tmp_path / given) if given else ""
    monkeypatch.setenv("SHIELDAUDIT_KEY_FILE", str(key_file))
    status = cli.run(
        ["--root", str(tmp_path / "root"), "keys", "init", "--verification-key", target]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1
    assert err[0].startswith("Error: ")
    assert problem.format(base=tmp_path) in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def _every_command():
    """(path, command) for every command and subcommand, imported as the CLI would."""
    found = []
    ctx = click.Context(cli.cli, info_name="shieldaudit")
    for name in cli.COMMANDS:
        command = cli.cli.get_command(ctx, name)
        found.append((name, command))
        if isinstance(command, click.Group):
            found += [(f"{name} {sub}", c) for sub, c in command.commands.items()]
    return found


def test_help_shows_every_default_the_same_way():
    """An option with a default (a value, or a description of where it comes from) says so.

    Always as click's ``[default: …]``, never only in the help sentence.
    """
    missing = []
    for path, command in _every_command():
        ctx = click.Context(command, info_name=path)
        for param in command.params:
            if not isinstance(param, click.Option) or param.hidden:
                continue
            if "default" in (param.help or "").lower():
                missing.append(f"{path} {param.opts[-1]} (a default in the help sentence)")
            valued = isinstance(param.default, (str, int, float, tuple, list))
            if param.is_flag or not (valued or param.show_default):
                continue  # no default: leaving it out has its own meaning, said in the help
            if "default" not in param.get_help_extra(ctx):
                missing.append(f"{path} {param.opts[-1]}")
    assert missing == []


def test_colour_comes_only_from_click_styling():
    """No command writes escape codes of its own: colour is click.style's, decided at the edge."""
    sources = Path(cli.__file__).parent.glob("*.py")
    escapes = ("\\x1b", "\\033", "\\u001b", "\\e[")
    offenders = [p.name for p in sources if any(e in p.read_text() for e in escapes)]
    assert offenders == []
