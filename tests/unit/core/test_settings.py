"""Settings: precedence option > environment > file > default, and one clear error per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from shieldaudit.core import settings as core
from shieldaudit.core.errors import ConfigError
from shieldaudit.core.settings import load_settings


def _file(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_when_nothing_is_set(tmp_path):
    """No option, env or file: built-in defaults (docs/configuration.md)."""
    loaded = load_settings({}, {"HOME": str(tmp_path)}, _file(tmp_path, ""))
    assert loaded.max_segment_bytes == 10 * 1024 * 1024
    assert loaded.keep_segments == 20
    assert loaded.fsync == "always"
    assert loaded.key_file is None
    assert loaded.fail_closed is False
    assert (loaded.metrics_addr, loaded.metrics_port) == ("127.0.0.1", 9469)
    assert loaded.unaudited_grace == 5.0
    assert loaded.http_timeout == 5.0


def test_precedence_option_over_env_over_file(tmp_path):
    """Each source overrides the ones below it, setting by setting."""
    config = _file(tmp_path, 'root = "/from/file"\nkeep_segments = 3\nfsync = "never"\n')
    env = {"SHIELDAUDIT_ROOT": "/from/env", "SHIELDAUDIT_KEEP_SEGMENTS": "5"}
    loaded = load_settings({"root": "/from/option"}, env, config)
    assert loaded.root == Path("/from/option")
    assert loaded.keep_segments == 5
    assert loaded.fsync == "never"


def test_config_file_from_environment(tmp_path):
    """SHIELDAUDIT_CONFIG names the file when --config is not given."""
    config = _file(tmp_path, "max_segment_bytes = '1MiB'\n")
    loaded = load_settings({}, {"SHIELDAUDIT_CONFIG": str(config)})
    assert loaded.max_segment_bytes == 1024 * 1024


@pytest.mark.parametrize(
    ("env", "setting", "source"),
    [
        ({"SHIELDAUDIT_FSYNC": "sometimes"}, "fsync", "SHIELDAUDIT_FSYNC"),
        (
            {"SHIELDAUDIT_MAX_SEGMENT_BYTES": "12 parsecs"},
            "max_segment_bytes",
            "SHIELDAUDIT_MAX_SEGMENT_BYTES",
        ),
        (
            {"SHIELDAUDIT_MAX_SEGMENT_BYTES": "10"},
            "max_segment_bytes",
            "SHIELDAUDIT_MAX_SEGMENT_BYTES",
        ),
        ({"SHIELDAUDIT_KEEP_SEGMENTS": "-1"}, "keep_segments", "SHIELDAUDIT_KEEP_SEGMENTS"),
        ({"SHIELDAUDIT_ROOT": "relative/path"}, "root", "SHIELDAUDIT_ROOT"),
        ({"SHIELDAUDIT_FAIL_CLOSED": "perhaps"}, "fail_closed", "SHIELDAUDIT_FAIL_CLOSED"),
        ({"SHIELDAUDIT_METRICS_PORT": "70000"}, "metrics_port", "SHIELDAUDIT_METRICS_PORT"),
        (
            {"SHIELDAUDIT_MAX_SEGMENT_BYTES": "99999999999999999999GiB"},
            "max_segment_bytes",
            "SHIELDAUDIT_MAX_SEGMENT_BYTES",
        ),
        (
            {"SHIELDAUDIT_MAX_SEGMENT_BYTES": "9" * 5000},
            "max_segment_bytes",
            "SHIELDAUDIT_MAX_SEGMENT_BYTES",
        ),
        (
            {"SHIELDAUDIT_MAX_SEGMENT_BYTES": "1025MiB"},
            "max_segment_bytes",
            "SHIELDAUDIT_MAX_SEGMENT_BYTES",
        ),
        ({"SHIELDAUDIT_KEEP_SEGMENTS": "100001"}, "keep_segments", "SHIELDAUDIT_KEEP_SEGMENTS"),
        ({"SHIELDAUDIT_POLL_INTERVAL": "inf"}, "poll_interval", "SHIELDAUDIT_POLL_INTERVAL"),
        ({"SHIELDAUDIT_POLL_INTERVAL": "3601"}, "poll_interval", "SHIELDAUDIT_POLL_INTERVAL"),
        ({"SHIELDAUDIT_UNAUDITED_GRACE": "-1"}, "unaudited_grace", "SHIELDAUDIT_UNAUDITED_GRACE"),
        ({"SHIELDAUDIT_UNAUDITED_GRACE": "5s"}, "unaudited_grace", "SHIELDAUDIT_UNAUDITED_GRACE"),
        ({"SHIELDAUDIT_UNAUDITED_GRACE": "nan"}, "unaudited_grace", "SHIELDAUDIT_UNAUDITED_GRACE"),
        ({"SHIELDAUDIT_UNAUDITED_GRACE": "7200"}, "unaudited_grace", "SHIELDAUDIT_UNAUDITED_GRACE"),
        ({"SHIELDAUDIT_HTTP_TIMEOUT": "0"}, "http_timeout", "SHIELDAUDIT_HTTP_TIMEOUT"),
        ({"SHIELDAUDIT_HTTP_TIMEOUT": "3601"}, "http_timeout", "SHIELDAUDIT_HTTP_TIMEOUT"),
        ({"SHIELDAUDIT_HTTP_TIMEOUT": "inf"}, "http_timeout", "SHIELDAUDIT_HTTP_TIMEOUT"),
    ],
)
def test_bad_value_is_one_error_naming_setting_and_source(tmp_path, env, setting, source):
    """Both loaders (pydantic for the CLI, stdlib for the hook) reject it the same way."""
    config = _file(tmp_path, "")
    with pytest.raises(ConfigError) as caught:
        load_settings({}, env, config)
    message = str(caught.value)
    assert setting in message
    assert source in message
    assert "\n" not in message
    assert len(message) < 200
    if setting in {"fsync", "max_segment_bytes", "keep_segments", "root", "fail_closed"}:
        with pytest.raises(ConfigError, match=setting):
            core.load_store_settings(env, config_option=config)


def test_unknown_key_and_bad_toml_in_file(tmp_path):
    """A typo in the file and a syntax error are each one clear error."""
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings({}, {}, _file(tmp_path, "max_segmnt_bytes = 5\n"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings({}, {}, _file(tmp_path, "root = \n"))
    with pytest.raises(ConfigError, match="file not found"):
        load_settings({}, {}, tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4096", 4096),
        ("1KiB", 1024),
        ("10MiB", 10485760),
        ("2m", 2097152),
        ("1GB", 10**9),
        (512, 512),
    ],
)
def test_size_parser(text, expected):
    """Sizes accept plain bytes and binary/decimal units."""
    assert core.parse_size(text) == expected


def test_default_root_for_root_and_users():
    """Root uses /var/lib/shieldaudit; others the XDG state dir."""
    assert core.default_root(0, {}) == Path("/var/lib/shieldaudit")
    assert core.default_root(1000, {"XDG_STATE_HOME": "/x/state"}) == Path("/x/state/shieldaudit")
    assert core.default_podman_url(0, {}) == "unix:///run/podman/podman.sock"
    assert core.default_podman_url(1000, {"XDG_RUNTIME_DIR": "/run/user/1000"}) == (
        "unix:///run/user/1000/podman/podman.sock"
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_segment_bytes", "1GiB"),
        ("max_segment_bytes", core.MAX_SEGMENT_BYTES),
        ("keep_segments", core.MAX_KEEP_SEGMENTS),
        ("poll_interval", core.MAX_POLL_INTERVAL),
    ],
)
def test_upper_bounds_are_inclusive(tmp_path, name, value):
    """Each documented upper bound is itself accepted; one past it is refused (table above)."""
    loaded = load_settings({name: value}, {}, _file(tmp_path, ""))
    assert getattr(loaded, name) == core.SETTINGS_BY_NAME[name].parse(value)
