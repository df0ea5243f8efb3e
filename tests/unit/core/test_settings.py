"""Settings: precedence option > environment > file > default, and one clear error per bad value."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
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


#: For every setting, three valid raw values and what each reads as (file, env, option).
SAMPLES: dict[str, list[tuple[object, object]]] = {
    "root": [("/from/file", Path("/from/file")), ("/env", Path("/env")), ("/opt", Path("/opt"))],
    "max_segment_bytes": [("1MiB", 1024**2), ("4096", 4096), ("2k", 2048)],
    "keep_segments": [(3, 3), ("0", 0), ("100000", 100_000)],
    "fsync": [("never", "never"), (" Always ", "always"), ("NEVER", "never")],
    "key_file": [("/k/file", Path("/k/file")), ("", None), ("/k/opt", Path("/k/opt"))],
    "fail_closed": [(True, True), ("no", False), ("on", True)],
    "metrics_addr": [("0.0.0.0", "0.0.0.0"), ("::1", "::1"), (" 10.0.0.1 ", "10.0.0.1")],  # noqa: S104
    "metrics_port": [(1, 1), ("0", 0), ("65535", 65535)],
    "podman_url": [
        ("unix:///f", "unix:///f"),
        ("unix:///e", "unix:///e"),
        ("tcp://h:1", "tcp://h:1"),
    ],
    "poll_interval": [(0.5, 0.5), ("3600", 3600.0), ("1e-3", 0.001)],
    "unaudited_grace": [(0, 0.0), ("3600", 3600.0), ("2.5", 2.5)],
    "seal_interval": [("10m", 600.0), ("0", 0.0), ("1d", 86400.0)],
    "http_timeout": [(2, 2.0), ("0.25", 0.25), ("3600", 3600.0)],
}


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, int | float) else f'"{value}"'


def test_every_field_of_the_model_is_a_setting():
    """SETTINGS is read off the model: every field but the key file's source, in order."""
    names = [spec.name for spec in dataclasses.fields(core.Settings)]
    assert names[-1] == "key_file_source"
    assert [s.name for s in core.SETTINGS] == names[:-1] == list(SAMPLES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_source_overrides_the_ones_below_it(tmp_path, name):
    """Option > SHIELDAUDIT_* > config file > default, for every setting on its own."""
    (file_raw, from_file), (env_raw, from_env), (option_raw, from_option) = SAMPLES[name]
    setting = core.SETTINGS_BY_NAME[name]
    assert getattr(load_settings({}, {}, _file(tmp_path, "")), name) == setting.default()
    config = _file(tmp_path, f"{name} = {_toml(file_raw)}\n")
    env = {setting.env: str(env_raw)}
    assert getattr(load_settings({}, {}, config), name) == from_file
    assert getattr(load_settings({name: None}, env, config), name) == from_env
    assert getattr(load_settings({name: option_raw}, env, config), name) == from_option


@pytest.mark.parametrize(
    ("options", "env", "text", "expected"),
    [
        (
            {"keep_segments": "-1"},
            {},
            "",
            (
                "invalid setting keep_segments (from option --keep-segments): "
                "expected a whole number >= 0, got -1"
            ),
        ),
        (
            {},
            {"SHIELDAUDIT_METRICS_PORT": "http"},
            "",
            (
                "invalid setting metrics_port (from SHIELDAUDIT_METRICS_PORT): "
                "expected a whole number >= 0, got 'http'"
            ),
        ),
        (
            {},
            {},
            "seal_interval = '5 minutes'\n",
            (
                "invalid setting seal_interval (from {config} key seal_interval): expected a "
                "duration such as 1h, 10m or 30s (0 turns sealing off), got '5 minutes'"
            ),
        ),
        (
            {},
            {},
            "fsync = 1\n",
            "invalid setting fsync (from {config} key fsync): expected 'always' or 'never', got 1",
        ),
        (
            {},
            {},
            "root = ['/a']\n",
            (
                "invalid setting root (from {config} key root): "
                "expected an absolute path, got \"['/a']\""
            ),
        ),
    ],
)
def test_the_error_names_the_setting_and_its_source(tmp_path, options, env, text, expected):
    """The one-line wording for each source: option, environment variable, file key."""
    config = _file(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(options, env, config)
    assert str(caught.value) == expected.format(config=config)
    assert caught.value.exit_code == 2


def test_the_config_file_itself_is_named_when_it_is_unusable(tmp_path):
    """A missing explicit file, a directory, bad TOML: setting ``config``, source the path."""
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as caught:
        load_settings({}, {"SHIELDAUDIT_CONFIG": str(missing)})
    assert str(caught.value) == f"invalid setting config (from {missing}): file not found"
    with pytest.raises(ConfigError) as caught:
        load_settings({}, {}, tmp_path)
    assert str(caught.value).startswith(f"invalid setting config (from {tmp_path}): is a dir")
    with pytest.raises(ConfigError) as caught:
        load_settings({}, {}, _file(tmp_path, "max_segmnt_bytes = 5\n"))
    assert str(caught.value).startswith(
        f"invalid setting max_segmnt_bytes (from {tmp_path / 'config.toml'}): unknown setting; "
        "known settings: root, max_segment_bytes,"
    )


def test_the_default_config_file_is_read_only_when_present(tmp_path, monkeypatch):
    """Without --config or SHIELDAUDIT_CONFIG a missing default file is no error."""
    monkeypatch.setattr(core, "DEFAULT_CONFIG_FILE", tmp_path / "absent.toml")
    assert load_settings({}, {}).keep_segments == core.DEFAULT_KEEP_SEGMENTS
    monkeypatch.setattr(core, "DEFAULT_CONFIG_FILE", _file(tmp_path, "keep_segments = 7\n"))
    assert load_settings({}, {}).keep_segments == 7


NUMBERS = [s for s in core.SETTINGS if s.rule.low is not None or s.rule.high is not None]


@pytest.mark.parametrize("setting", NUMBERS, ids=lambda s: s.name)
def test_every_declared_range_is_the_range_taken(tmp_path, setting):
    """Each number setting: its ends are taken (an open low end is not), just past is refused."""
    config = _file(tmp_path, "")
    low, high = setting.rule.low, setting.rule.high
    assert low is not None
    assert high is not None
    step = 1 if setting.kind is int else 1e-6

    def load(value: float) -> object:
        return getattr(load_settings({}, {setting.env: repr(value)}, config), setting.name)

    assert load(high) == high
    with pytest.raises(ConfigError, match=f"invalid setting {setting.name} \\(from {setting.env}"):
        load(high + step)
    if setting.rule.low_open:
        with pytest.raises(ConfigError, match=setting.name):
            load(low)
    else:
        assert load(low) == low
    with pytest.raises(ConfigError, match=setting.name):
        load(low - step)


def test_pydantic_enforces_the_type_and_range_a_rule_declares():
    """A rule's range and the field's type hold even after a lax parser (the model's own check)."""
    from dataclasses import dataclass  # noqa: PLC0415
    from typing import Annotated, Literal  # noqa: PLC0415

    from pydantic import TypeAdapter, ValidationError  # noqa: PLC0415

    @dataclass
    class Probe:
        count: Annotated[int, core.Rule(lambda v: v, 1, 10)]
        ratio: Annotated[float, core.Rule(lambda v: v, 0, 1, low_open=True)]
        mode: Annotated[Literal["a", "b"], core.Rule(lambda v: v)]

    adapter = TypeAdapter(Probe)
    assert adapter.validate_python({"count": 10, "ratio": 1, "mode": "a"}) == Probe(10, 1.0, "a")
    for bad in ({"count": 11}, {"count": 0}, {"ratio": 0}, {"ratio": float("nan")}, {"mode": "c"}):
        with pytest.raises(ValidationError):
            adapter.validate_python({"count": 5, "ratio": 0.5, "mode": "a", **bad})


def test_the_model_refuses_keys_outside_it():
    """extra='forbid': nothing but the model's fields reaches it."""
    from pydantic import TypeAdapter, ValidationError  # noqa: PLC0415

    with pytest.raises(ValidationError, match="max_segmnt_bytes"):
        TypeAdapter(core.Settings).validate_python({"root": "/r", "max_segmnt_bytes": 5})


def test_the_hook_path_reads_the_same_store_settings(tmp_path):
    """load_store_settings (no pydantic) gives what the model's store() view gives."""
    config = _file(tmp_path, 'max_segment_bytes = "64k"\nfsync = "never"\nkeep_segments = 2\n')
    env = {
        "SHIELDAUDIT_ROOT": str(tmp_path),
        "SHIELDAUDIT_KEY_FILE": "/k",
        "SHIELDAUDIT_FAIL_CLOSED": "yes",
    }
    options = {"keep_segments": "9"}
    expected = load_settings(options, env, config).store()
    assert core.load_store_settings(env, options, config) == expected
    assert expected.key_file_source == "SHIELDAUDIT_KEY_FILE"
    assert expected == core.StoreSettings(
        tmp_path,
        65536,
        9,
        "never",
        Path("/k"),
        fail_closed=True,
        key_file_source=expected.key_file_source,
    )


def test_the_hook_path_does_not_import_pydantic(tmp_path):
    """Importing the module and loading the store settings leaves pydantic unloaded."""
    code = (
        "import sys\n"
        "from shieldaudit.core.settings import load_store_settings\n"
        f"load_store_settings({{'SHIELDAUDIT_ROOT': {str(tmp_path)!r}}}, config_option=None)\n"
        "print(sorted(m for m in sys.modules if m.startswith('pydantic')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_documented_table_is_the_model():
    """docs/configuration.md lists every setting with its environment variable, and no other."""
    docs = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"
    rows = re.findall(r"^\| `(\w+)` \| `(SHIELDAUDIT_\w+)` \|", docs.read_text(), re.MULTILINE)
    assert rows == [(s.name, s.env) for s in core.SETTINGS]


@pytest.mark.parametrize(
    "setting",
    [s for s in core.SETTINGS if s.parse is not core.parse_text],
    ids=lambda s: s.name,
)
@pytest.mark.parametrize("value", ["\n" + "x" * 5000, "tcp://h:" + "9" * 5000 + "x"])
def test_a_hostile_value_is_still_one_short_line(tmp_path, setting, value):
    """A refused 5,000-character value is shown shortened, on one line (any text is an address)."""
    with pytest.raises(ConfigError) as caught:
        load_settings({}, {setting.env: value}, _file(tmp_path, ""))
    message = str(caught.value)
    assert message.startswith(f"invalid setting {setting.name} (from {setting.env}): ")
    assert "\n" not in message
    assert len(message) < 350  # bounded, whatever the length of the value


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("garbage", "no scheme"),
        (" ", "it is empty"),
        ("ftp://host/x", "scheme 'ftp' is not one of unix, http+unix, tcp, http, ssh, http+ssh"),
        ("unix://", "no socket path"),
        ("tcp://:8080", "no host"),
        ("tcp://h:99999", "Port out of range 0-65535"),
    ],
)
def test_a_malformed_podman_url_from_any_source_is_refused(tmp_path, url, problem):
    """The URL rule holds for the environment and the file, not only for listen's --url."""
    config = _file(tmp_path, f'podman_url = "{url}"\n')
    for env, source in (
        ({"SHIELDAUDIT_PODMAN_URL": url}, "SHIELDAUDIT_PODMAN_URL"),
        ({}, f"{config} key podman_url"),
    ):
        with pytest.raises(ConfigError) as caught:
            load_settings({}, env, config)
        assert str(caught.value) == (
            f"invalid setting podman_url (from {source}): expected a Podman service URL such as "
            f"{core.URL_FORMS}; got {url!r} ({problem})"
        )
