"""Settings: every setting in one model, where values come from, and how each is read.

:class:`Settings` declares every setting once: its type, its rule (the parser
that reads ``10MiB`` or ``1h`` and checks the range, with the wording of its
error), its default and its help. :func:`load_settings` merges the sources
(command-line option > environment ``SHIELDAUDIT_*`` > TOML file > default,
docs/configuration.md) and pydantic validates the result against the model.

Importing this module does not import pydantic: the hook's Python reference
path loads it and must start fast. That path, :func:`load_store_settings`,
merges the same sources with the same :func:`collect` and reads each value
with the same rule, without pydantic, so the two never disagree.
"""

from __future__ import annotations

import functools
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, Literal, TypeAlias

from shieldaudit.core.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from pydantic import GetCoreSchemaHandler, TypeAdapter
    from pydantic_core import CoreSchema

DEFAULT_CONFIG_FILE: Final = Path("/etc/shieldaudit/config.toml")
DEFAULT_MAX_SEGMENT_BYTES: Final = 10 * 1024 * 1024
DEFAULT_KEEP_SEGMENTS: Final = 20
MIN_SEGMENT_BYTES: Final = 256
#: Upper bounds: a value past them is a typo or an attack, never a plan.
MAX_SEGMENT_BYTES: Final = 1024**3
MAX_KEEP_SEGMENTS: Final = 100_000
MAX_POLL_INTERVAL: Final = 3600.0
MAX_GRACE: Final = 3600.0
MAX_PORT: Final = 65535
_SIZE_UNITS: Final = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})


def parse_size(value: object) -> int:
    """Parse a segment size: an integer or a string like ``10MiB``, ``512k``, ``4096``.

    From :data:`MIN_SEGMENT_BYTES` to :data:`MAX_SEGMENT_BYTES` (1 GiB).
    """
    if isinstance(value, bool):
        raise ValueError("expected a byte size such as 10MiB, not a boolean")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip().lower().replace("_", "")
        digits = text.rstrip("abcdefghijklmnopqrstuvwxyz ")
        unit = text[len(digits) :].strip()
        if not digits.isdigit() or not digits.isascii() or unit not in _SIZE_UNITS:
            raise ValueError(
                f"expected a byte size such as 10MiB or 1048576, got {_shown(value)}",
            )
        # Past 30 digits it is too large anyway: do not convert a hostile huge string.
        number = int(digits) * _SIZE_UNITS[unit] if len(digits) <= 30 else MAX_SEGMENT_BYTES + 1
    if number < MIN_SEGMENT_BYTES:
        raise ValueError(f"must be at least {MIN_SEGMENT_BYTES} bytes, got {number}")
    if number > MAX_SEGMENT_BYTES:
        raise ValueError(
            f"must be at most {MAX_SEGMENT_BYTES} bytes (1GiB), got {_shown(value)}",
        )
    return number


def _shown(value: object) -> str:
    """Return a value for an error message, cut so a hostile one stays one short line."""
    return _cut(repr(value) if isinstance(value, str) else str(value), 40)


def _cut(text: str, limit: int) -> str:
    """Return ``text``, shortened with an ellipsis past ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_count(value: object) -> int:
    """Parse a non-negative integer (0 has the meaning the setting gives it)."""
    if isinstance(value, bool):
        raise ValueError("expected a whole number, not a boolean")
    try:
        number = value if isinstance(value, int) else int(str(value).strip())
    except ValueError:
        raise ValueError(f"expected a whole number >= 0, got {_shown(value)}") from None
    if number < 0:
        raise ValueError(f"expected a whole number >= 0, got {number}")
    return number


def parse_keep(value: object) -> int:
    """Parse the sealed segments to keep: 0 (keep all) to :data:`MAX_KEEP_SEGMENTS`."""
    number = parse_count(value)
    if number > MAX_KEEP_SEGMENTS:
        raise ValueError(
            f"expected a whole number from 0 to {MAX_KEEP_SEGMENTS}, got {_shown(number)}",
        )
    return number


def parse_fsync(value: object) -> str:
    """Parse the fsync policy: ``always`` or ``never``."""
    text = str(value).strip().lower()
    if text not in {"always", "never"}:
        raise ValueError(f"expected 'always' or 'never', got {_shown(value)}")
    return text


def parse_bool(value: object) -> bool:
    """Parse a boolean: 1/0, true/false, yes/no, on/off."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected true or false (1/0, yes/no), got {_shown(value)}")


def env_fail_closed(environ: Mapping[str, str]) -> bool:
    """Return whether ``SHIELDAUDIT_FAIL_CLOSED`` asks for fail-closed.

    Used when the settings themselves cannot be loaded (the hook's failure
    path): a value that is set but not a recognised "false" counts as a request
    to fail closed.
    """
    return environ.get("SHIELDAUDIT_FAIL_CLOSED", "").strip().lower() not in _FALSE


def parse_path(value: object) -> Path:
    """Parse a path; it must be absolute so hooks run from any directory agree on it."""
    text = str(value).strip()
    if not text:
        raise ValueError("expected a path, got an empty value")
    path = Path(text).expanduser()
    if not path.is_absolute():
        raise ValueError(f"expected an absolute path, got {_shown(text)}")
    return path


def parse_optional_path(value: object) -> Path | None:
    """Parse a path, or an empty value meaning "not set"."""
    if value is None or str(value).strip() == "":
        return None
    return parse_path(value)


def parse_port(value: object) -> int:
    """Parse a TCP port (0 lets the kernel choose, as tests do)."""
    number = parse_count(value)
    if number > MAX_PORT:
        raise ValueError(f"expected a port from 0 to {MAX_PORT}, got {number}")
    return number


def parse_text(value: object) -> str:
    """Parse a non-empty string."""
    text = str(value).strip()
    if not text:
        raise ValueError("expected a non-empty value")
    return text


#: The URL schemes the Podman client speaks, and what each must name.
SOCKET_SCHEMES: Final = frozenset({"unix", "http+unix"})
HOST_SCHEMES: Final = frozenset({"tcp", "http", "ssh", "http+ssh"})
URL_FORMS: Final = (
    "unix:///run/podman/podman.sock (a socket path), tcp://HOST:PORT or ssh://USER@HOST/SOCKET"
)


def podman_url_problem(url: str) -> str | None:
    """Say what is wrong with a Podman service URL, or None when it is well formed (pure)."""
    from urllib.parse import urlsplit  # noqa: PLC0415 -- not on the hook's path

    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError as exc:
        return str(exc)
    if parts.scheme in SOCKET_SCHEMES:
        return None if (parts.netloc + parts.path).strip("/") else "no socket path"
    if parts.scheme in HOST_SCHEMES:
        return None if parts.hostname else "no host"
    if not parts.scheme:
        return "no scheme"
    return f"scheme {parts.scheme!r} is not one of unix, http+unix, tcp, http, ssh, http+ssh"


def parse_podman_url(value: object) -> str:
    """Parse a Podman service URL: a socket by path, or TCP or SSH to a host."""
    text = str(value).strip()
    problem = "it is empty" if not text else podman_url_problem(text)
    if problem is not None:
        raise ValueError(
            f"expected a Podman service URL such as {URL_FORMS}; "
            f"got {_shown(value)} ({_cut(problem, 80)})"
        )
    return text


def parse_interval(value: object) -> float:
    """Parse a positive number of seconds, at most :data:`MAX_POLL_INTERVAL` (an hour)."""
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {_shown(value)}") from None
    if not 0 < number <= MAX_POLL_INTERVAL:  # also refuses nan and inf
        raise ValueError(
            f"expected a number of seconds above 0 and at most {MAX_POLL_INTERVAL:g}, "
            f"got {_shown(value)}",
        )
    return number


def parse_grace(value: object) -> float:
    """Parse a grace period: seconds from 0 to :data:`MAX_GRACE` (an hour)."""
    if isinstance(value, bool):
        raise ValueError("expected a number of seconds, not a boolean")
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {_shown(value)}") from None
    if not 0 <= number <= MAX_GRACE:
        raise ValueError(
            f"expected a number of seconds from 0 to {MAX_GRACE:g}, got {_shown(value)}",
        )
    return number


_DURATION_UNITS: Final = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: Longest seal interval: a week (the stale-seal alert fires long before).
MAX_SEAL_INTERVAL: Final = 7 * 86400.0


def parse_seal_interval(value: object) -> float:
    """Parse the seal interval: seconds or ``30s``/``10m``/``1h``/``1d``; 0 turns sealing off."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 1h or 0, not a boolean")
    text = str(value).strip().lower()
    unit = text[-1:] if text[-1:] in _DURATION_UNITS else ""
    try:
        number = float(text[: len(text) - len(unit)]) * _DURATION_UNITS[unit]
    except ValueError:
        raise ValueError(
            f"expected a duration such as 1h, 10m or 30s (0 turns sealing off), got {_shown(value)}"
        ) from None
    if number != 0 and not 1 <= number <= MAX_SEAL_INTERVAL:  # also refuses nan and inf
        raise ValueError(
            f"expected 0 (off) or a duration from 1s to 7d, got {_shown(value)}",
        )
    return number


def default_root(uid: int | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Return the default trail root: system-wide for root, XDG state dir otherwise."""
    uid = os.geteuid() if uid is None else uid
    env = os.environ if environ is None else environ
    if uid == 0:
        return Path("/var/lib/shieldaudit")
    state = env.get("XDG_STATE_HOME") or ""
    base = Path(state) if state and Path(state).is_absolute() else Path.home() / ".local/state"
    return base / "shieldaudit"


def default_podman_url(uid: int | None = None, environ: Mapping[str, str] | None = None) -> str:
    """Return the Podman socket for the current user (root: the system socket)."""
    uid = os.geteuid() if uid is None else uid
    env = os.environ if environ is None else environ
    if uid == 0:
        return "unix:///run/podman/podman.sock"
    runtime = env.get("XDG_RUNTIME_DIR") or f"/run/user/{uid}"
    return f"unix://{runtime}/podman/podman.sock"


@dataclass(frozen=True, slots=True)
class Rule:
    """How a setting's raw value is read: its parser and the range it takes.

    In :class:`Settings` a rule is annotation metadata that pydantic applies
    as a before-validator: ``parse`` turns the raw text (``10MiB``, ``1h``,
    ``yes``) into the field's type or raises a one-line ``ValueError``; the
    field's type and the range (``low``/``high``) are then enforced by
    pydantic. The hook's pydantic-free path calls ``parse`` itself; the CLI
    shows the range in ``--help``.
    """

    parse: Callable[[object], object]
    low: float | None = None
    high: float | None = None
    #: Whether ``low`` itself is excluded (a value must be above it).
    low_open: bool = False

    def __get_pydantic_core_schema__(
        self, source: object, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        """Parse first, then check the field's type and range."""
        from pydantic_core import core_schema  # noqa: PLC0415 -- only the model needs pydantic

        schema = handler(source)
        low = None if self.low_open else self.low
        above = self.low if self.low_open else None
        if schema["type"] == "int":
            schema = core_schema.int_schema(
                ge=None if low is None else int(low),
                gt=None if above is None else int(above),
                le=None if self.high is None else int(self.high),
            )
        elif schema["type"] == "float":
            schema = core_schema.float_schema(allow_inf_nan=False, ge=low, gt=above, le=self.high)
        return core_schema.no_info_before_validator_function(self.parse, schema)


#: The kinds of setting: a type, and the :class:`Rule` that reads and checks a raw value.
RootPath: TypeAlias = Annotated[Path, Rule(parse_path)]
OptionalPath: TypeAlias = Annotated[Path | None, Rule(parse_optional_path)]
Size: TypeAlias = Annotated[int, Rule(parse_size, MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES)]
Keep: TypeAlias = Annotated[int, Rule(parse_keep, 0, MAX_KEEP_SEGMENTS)]
Fsync: TypeAlias = Annotated[Literal["always", "never"], Rule(parse_fsync)]
Flag: TypeAlias = Annotated[bool, Rule(parse_bool)]
Text: TypeAlias = Annotated[str, Rule(parse_text)]
PodmanUrl: TypeAlias = Annotated[str, Rule(parse_podman_url)]
Port: TypeAlias = Annotated[int, Rule(parse_port, 0, MAX_PORT)]
Seconds: TypeAlias = Annotated[float, Rule(parse_interval, 0, MAX_POLL_INTERVAL, low_open=True)]
Grace: TypeAlias = Annotated[float, Rule(parse_grace, 0, MAX_GRACE)]
Duration: TypeAlias = Annotated[float, Rule(parse_seal_interval, 0, MAX_SEAL_INTERVAL)]


def _about(text: str) -> dict[str, str]:
    """Field metadata: what the setting is for (pydantic's ``description``; ``--help``)."""
    return {"description": text}


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Every setting, validated: the model of docs/configuration.md.

    Build it with :func:`load_settings`. A field annotated with one of the
    kinds above is a setting: its TOML key is the field name, its environment
    variable ``SHIELDAUDIT_`` and the name in upper case. The annotations are
    names of those kinds, so the hook's path finds each rule without
    evaluating annotations (and without pydantic).
    """

    #: pydantic's configuration for this dataclass: no key outside the model.
    __pydantic_config__: ClassVar[dict[str, object]] = {"extra": "forbid"}

    root: RootPath = field(default_factory=default_root, metadata=_about("trail root directory"))
    max_segment_bytes: Size = field(
        default=DEFAULT_MAX_SEGMENT_BYTES,
        metadata=_about("size at which audit.jsonl is sealed and a new segment starts"),
    )
    keep_segments: Keep = field(
        default=DEFAULT_KEEP_SEGMENTS,
        metadata=_about("sealed segments kept per container (0 keeps all)"),
    )
    fsync: Fsync = field(default="always", metadata=_about("always or never"))
    key_file: OptionalPath = field(
        default=None, metadata=_about("HMAC key file (first line signs; every line verifies)")
    )
    fail_closed: Flag = field(default=False, metadata=_about("hook exits 1 when it cannot record"))
    metrics_addr: Text = field(
        default="127.0.0.1", metadata=_about("sidecar metrics listen address")
    )
    metrics_port: Port = field(default=9469, metadata=_about("sidecar metrics port"))
    podman_url: PodmanUrl = field(
        default_factory=default_podman_url,
        metadata=_about("Podman service URL for the events listener"),
    )
    poll_interval: Seconds = field(
        default=1.0, metadata=_about("sidecar polling interval when inotify is unavailable")
    )
    unaudited_grace: Grace = field(
        default=5.0,
        metadata=_about(
            "seconds a container start may wait for its hook entries before it counts as unaudited"
        ),
    )
    seal_interval: Duration = field(
        default=3600.0,
        metadata=_about("how often the sidecar seals every trail's head (1h; 0 turns it off)"),
    )
    http_timeout: Seconds = field(
        default=5.0,
        metadata=_about("seconds an HTTP client of the sidecar has to send its request"),
    )
    #: Not a setting: where ``key_file`` came from, named when the key file is unusable.
    key_file_source: str = "default"

    def store(self) -> StoreSettings:
        """Return the subset a trail writer needs."""
        return StoreSettings(
            root=self.root,
            max_segment_bytes=self.max_segment_bytes,
            keep_segments=self.keep_segments,
            fsync=self.fsync,
            key_file=self.key_file,
            fail_closed=self.fail_closed,
            key_file_source=self.key_file_source,
        )


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting of :class:`Settings`, as the loaders and the CLI see it."""

    name: str
    env: str
    rule: Rule
    #: The field's type without its metadata: ``int``, ``float``, ``Path | None``, …
    kind: object
    default: Callable[[], object]
    help: str

    @property
    def parse(self) -> Callable[[object], object]:
        """The setting's parser (its rule's)."""
        return self.rule.parse


def _constant(value: object) -> Callable[[], object]:
    """Return a default factory for a plain default value."""
    return lambda: value


def _table() -> tuple[Setting, ...]:
    """Read the settings off the model: every field whose annotation carries a :class:`Rule`."""
    kinds = globals()
    table: list[Setting] = []
    for spec in fields(Settings):
        kind: Any = kinds.get(spec.type) if isinstance(spec.type, str) else spec.type
        rules = [m for m in getattr(kind, "__metadata__", ()) if isinstance(m, Rule)]
        if not rules:
            continue
        factory = spec.default_factory
        default = factory if factory is not MISSING else _constant(spec.default)
        table.append(
            Setting(
                name=spec.name,
                env=f"SHIELDAUDIT_{spec.name.upper()}",
                rule=rules[0],
                kind=kind.__origin__,
                default=default,
                help=spec.metadata["description"],
            )
        )
    return tuple(table)


SETTINGS: Final = _table()
SETTINGS_BY_NAME: Final = {s.name: s for s in SETTINGS}


CONFIG_ENV: Final = "SHIELDAUDIT_CONFIG"


@dataclass(frozen=True, slots=True)
class RawValue:
    """A value before parsing and where it came from (for error messages)."""

    value: object
    source: str


def config_path(option: str | Path | None, environ: Mapping[str, str]) -> tuple[Path, bool]:
    """Return the config file to read and whether it was asked for explicitly.

    An explicitly named file must exist; the default one is read only if present.
    """
    if option is not None and str(option) != "":
        return Path(option), True
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV]), True
    return DEFAULT_CONFIG_FILE, False


def read_config_file(path: Path | None, *, required: bool) -> dict[str, object]:
    """Read the TOML config file; unknown keys and syntax errors are one clear error."""
    if path is None:
        return {}
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise ConfigError("config", str(path), "file not found") from None
        return {}
    except IsADirectoryError:
        raise ConfigError(
            "config", str(path), "is a directory: give the path of a TOML file"
        ) from None
    except OSError as exc:
        problem = exc.strerror or str(exc)
        raise ConfigError("config", str(path), f"cannot read it: {problem}") from None
    import tomllib  # noqa: PLC0415 -- only paid for when a config file exists

    try:
        table = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("config", str(path), f"not valid TOML: {exc}") from None
    unknown = sorted(set(table) - set(SETTINGS_BY_NAME))
    if unknown:
        known = ", ".join(SETTINGS_BY_NAME)
        raise ConfigError(unknown[0], str(path), f"unknown setting; known settings: {known}")
    return table


def collect(
    options: Mapping[str, object | None],
    environ: Mapping[str, str],
    file_values: Mapping[str, object],
    file_name: str = "config file",
) -> dict[str, RawValue]:
    """Merge the sources by precedence; values are still unparsed."""
    merged: dict[str, RawValue] = {}
    for setting in SETTINGS:
        option = options.get(setting.name)
        if option is not None:
            merged[setting.name] = RawValue(option, f"option --{setting.name.replace('_', '-')}")
        elif setting.env in environ:
            merged[setting.name] = RawValue(environ[setting.env], setting.env)
        elif setting.name in file_values:
            merged[setting.name] = RawValue(
                file_values[setting.name], f"{file_name} key {setting.name}"
            )
    return merged


def parse_one(name: str, raw: RawValue | None) -> object:
    """Parse one setting, or return its default; a bad value raises ConfigError."""
    setting = SETTINGS_BY_NAME[name]
    if raw is None:
        return setting.default()
    try:
        return setting.parse(raw.value)
    except ValueError as exc:
        raise ConfigError(name, raw.source, str(exc)) from None


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """What a trail writer needs: :meth:`Settings.store`, or :func:`load_store_settings`."""

    root: Path
    max_segment_bytes: int = DEFAULT_MAX_SEGMENT_BYTES
    keep_segments: int = DEFAULT_KEEP_SEGMENTS
    fsync: str = "always"
    key_file: Path | None = None
    fail_closed: bool = False
    #: Where ``key_file`` came from, for the error a bad key file gives.
    key_file_source: str = "settings"


def sources(
    options: Mapping[str, object | None],
    environ: Mapping[str, str],
    config_option: str | Path | None,
) -> dict[str, RawValue]:
    """Read the config file named by the option, environment or default, then :func:`collect`."""
    path, required = config_path(config_option, environ)
    file_values = read_config_file(path, required=required) if required or path.exists() else {}
    return collect(options, environ, file_values, str(path))


def load_store_settings(
    environ: Mapping[str, str],
    options: Mapping[str, object | None] | None = None,
    config_option: str | Path | None = None,
) -> StoreSettings:
    """Load the writer settings without pydantic (the hook's path): same sources, same rules."""
    raw = sources(options or {}, environ, config_option)
    root = parse_one("root", raw.get("root"))
    max_bytes = parse_one("max_segment_bytes", raw.get("max_segment_bytes"))
    keep = parse_one("keep_segments", raw.get("keep_segments"))
    fsync = parse_one("fsync", raw.get("fsync"))
    key_file = parse_one("key_file", raw.get("key_file"))
    fail_closed = parse_one("fail_closed", raw.get("fail_closed"))
    assert isinstance(root, Path)  # noqa: S101 -- the parsers above guarantee these types
    assert isinstance(max_bytes, int)  # noqa: S101
    assert isinstance(keep, int)  # noqa: S101
    assert isinstance(fsync, str)  # noqa: S101
    assert key_file is None or isinstance(key_file, Path)  # noqa: S101
    assert isinstance(fail_closed, bool)  # noqa: S101
    key_source = raw["key_file"].source if "key_file" in raw else "default"
    return StoreSettings(root, max_bytes, keep, fsync, key_file, fail_closed, key_source)


@functools.cache
def _adapter() -> TypeAdapter[Settings]:
    """Return pydantic's validator of :class:`Settings`, built on first use."""
    from pydantic import TypeAdapter  # noqa: PLC0415 -- kept off the hook's path

    return TypeAdapter(Settings)


def load_settings(
    options: Mapping[str, object | None] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> Settings:
    """Load every setting by precedence: option > environment > TOML file > default.

    ``options`` maps setting names to command-line values (``None``: not given).

    Raises:
        ConfigError: the config file is unusable or a value is invalid (the
            message names the setting and where its value came from).
    """
    from pydantic import ValidationError  # noqa: PLC0415 -- kept off the hook's path

    env = os.environ if environ is None else environ
    raw = sources(options or {}, env, config_file)
    values: dict[str, object] = {name: given.value for name, given in raw.items()}
    if "key_file" in raw:
        values["key_file_source"] = raw["key_file"].source
    try:
        return _adapter().validate_python(values)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        name = str(error["loc"][0]) if error["loc"] else "settings"
        given = raw.get(name)
        problem = error.get("ctx", {}).get("error", error["msg"])
        raise ConfigError(name, given.source if given else "default", str(problem)) from None
