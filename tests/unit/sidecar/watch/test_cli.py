"""``shieldaudit sidecar`` as a command: options, and errors shown as one line."""

from __future__ import annotations

import socket

from shieldaudit.cli import run


def test_help_lists_the_contract_options(capsys):
    """--help shows every documented option (docs/sidecar.md)."""
    assert run(["sidecar", "--help"]) == 0
    out = capsys.readouterr().out
    for option in (
        "--no-listen",
        "--metrics-addr",
        "--metrics-port",
        "--emit",
        "--from-end",
        "--poll-interval",
    ):
        assert option in out


def test_bad_port_is_a_usage_error(tmp_path, capsys, monkeypatch):
    """An invalid port is one 'Error:' line naming the setting, exit 2."""
    (tmp_path / "empty.toml").write_text("")
    monkeypatch.setenv("SHIELDAUDIT_CONFIG", str(tmp_path / "empty.toml"))
    code = run(["--root", str(tmp_path / "root"), "sidecar", "--no-listen", "--metrics-port", "x"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("Error:")
    assert "metrics_port" in err
    assert err.count("\n") == 1


def test_port_in_use_is_one_error_line(tmp_path, capsys):
    """A metrics port already taken fails at start with one line, exit 1, no traceback."""
    (tmp_path / "empty.toml").write_text("")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = run(
            [
                "--root",
                str(tmp_path / "root"),
                "--config",
                str(tmp_path / "empty.toml"),
                "sidecar",
                "--no-listen",
                "--metrics-port",
                str(port),
            ]
        )
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"Error: cannot listen on 127.0.0.1:{port}")
    assert err.count("\n") == 1
