"""The one place errors are shown: exit codes and messages of ``shieldaudit.cli.run``."""

from __future__ import annotations

from shieldaudit import cli
from shieldaudit.cli import verify as verify_module
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


def test_user_error_is_one_line_with_exit_2(tmp_path, capsys):
    """An unknown container: exit 2 and exactly one 'Error:' line."""
    root = tmp_path / "root"
    write(root, CID_A, 1)
    status = cli.run(["--root", str(root), "show", "nosuchname"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1
    assert err[0].startswith("Error: no trail matches 'nosuchname'")


def test_unknown_command_is_a_usage_error(capsys):
    """An unknown subcommand: exit 2, click's usage message, no traceback."""
    status = cli.run(["frobnicate"])
    err = capsys.readouterr().err
    assert status == 2
    assert "No such command 'frobnicate'" in err
    assert "Traceback" not in err
