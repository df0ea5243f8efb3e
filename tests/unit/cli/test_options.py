"""Options that set a setting: typed in --help, None unless given, checked by its parser."""

from __future__ import annotations

import importlib
import math

import click
import pytest
from click.testing import CliRunner

from shieldaudit.cli import COMMANDS, run
from shieldaudit.cli.context import AppContext
from shieldaudit.cli.options import (
    SettingFloat,
    SettingInt,
    SettingOption,
    SettingText,
    setting_option,
)
from shieldaudit.core import settings as core


def _commands() -> list[click.Command]:
    return [getattr(importlib.import_module(m), a) for m, a in COMMANDS.values()]


def _setting_options() -> list[SettingOption]:
    return [p for c in _commands() for p in c.params if isinstance(p, SettingOption)]


def test_sidecar_help_shows_types_ranges_and_defaults(capsys):
    """--help shows numbers (INTEGER/FLOAT RANGE, the range) and the built-in default."""
    assert run(["sidecar", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--metrics-port INTEGER RANGE" in out
    assert "[default: 9469; 0<=x<=65535]" in out
    assert "--poll-interval FLOAT RANGE" in out
    assert "[default: 1; 0<x<=3600]" in out
    assert "[default: 5; 0<=x<=3600]" in out
    assert "[default: 127.0.0.1]" in out
    assert " TEXT " not in out


def test_every_setting_option_is_typed_and_defaults_to_none():
    """Each setting option is typed from the model and has no value of its own."""
    options = _setting_options()
    assert {o.setting for o in options} >= {
        "metrics_addr",
        "metrics_port",
        "poll_interval",
        "unaudited_grace",
        "http_timeout",
    }
    for option in options:
        assert option.default is None
        kind = core.SETTINGS_BY_NAME[option.setting].kind
        expected = {int: SettingInt, float: SettingFloat}.get(kind, SettingText)
        assert type(option.type) is expected
        assert option.type.setting == option.setting


@pytest.mark.parametrize(
    "option",
    [o for o in _setting_options() if isinstance(o.type, SettingInt | SettingFloat)],
    ids=lambda o: o.opts[-1],
)
def test_the_range_shown_is_the_range_the_parser_takes(option):
    """The bounds in --help agree with the setting's parser, at and just past each end."""
    kind = option.type
    assert isinstance(kind, SettingInt | SettingFloat)
    parse = core.SETTINGS_BY_NAME[option.setting].parse
    step = 1 if isinstance(kind, SettingInt) else 1e-6
    low, high = kind.min, kind.max
    assert low is not None
    assert high is not None
    if kind.min_open:
        with pytest.raises(ValueError):
            parse(str(low))
    else:
        assert parse(str(low)) == low
        with pytest.raises(ValueError):
            parse(str(low - step))
    assert math.isclose(float(parse(str(high))), high)
    with pytest.raises(ValueError):
        parse(str(high + step))


@click.command()
@setting_option("--metrics-port", setting="metrics_port")
@click.pass_obj
def _probe(obj: dict[str, object], metrics_port: int | None) -> None:
    obj["given"] = metrics_port
    obj["settings"] = AppContext().settings(metrics_port=metrics_port)


def test_an_unset_option_leaves_the_environment_and_file_in_charge(tmp_path, monkeypatch):
    """Without the option the value is None, so SHIELDAUDIT_METRICS_PORT applies; given, it wins."""
    config = tmp_path / "c.toml"
    config.write_text("metrics_port = 2000\n")
    monkeypatch.setenv("SHIELDAUDIT_CONFIG", str(config))
    monkeypatch.setenv("SHIELDAUDIT_ROOT", str(tmp_path / "root"))
    runner = CliRunner()
    seen: dict[str, object] = {}
    assert runner.invoke(_probe, [], obj=seen).exit_code == 0
    assert seen["given"] is None
    assert seen["settings"].metrics_port == 2000  # type: ignore[attr-defined]
    monkeypatch.setenv("SHIELDAUDIT_METRICS_PORT", "3000")
    assert runner.invoke(_probe, [], obj=seen).exit_code == 0
    assert seen["settings"].metrics_port == 3000  # type: ignore[attr-defined]
    assert runner.invoke(_probe, ["--metrics-port", "4000"], obj=seen).exit_code == 0
    assert seen["given"] == 4000
    assert seen["settings"].metrics_port == 4000  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics-port", "70000"], "metrics_port (from option --metrics-port): expected a port"),
        (["--poll-interval", "0"], "poll_interval (from option --poll-interval): expected a num"),
        (["--http-timeout", "nan"], "http_timeout (from option --http-timeout): expected a num"),
        (["--unaudited-grace", "-1"], "unaudited_grace (from option --unaudited-grace): expec"),
        (["--metrics-addr", " "], "metrics_addr (from option --metrics-addr): expected a non"),
    ],
)
def test_a_bad_value_is_the_settings_one_line_error(tmp_path, capsys, args, message):
    """A bad typed value: one 'Error: invalid setting …' line naming the option, exit 2."""
    code = run(["--root", str(tmp_path / "root"), "sidecar", "--no-listen", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"Error: invalid setting {message}")
    assert err.count("\n") == 1
