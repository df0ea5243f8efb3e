"""Validated settings for the CLI, sidecar and listener (pydantic over :mod:`.settings`).

Every value is parsed by the same function the hook uses, so the two can never
disagree; a bad value becomes one :class:`~shieldaudit.core.errors.ConfigError` that
names the setting and where its value came from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from shieldaudit.core import settings as core
from shieldaudit.core.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping


class Settings(BaseModel):
    """Every setting, validated (the table in docs/configuration.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    root: Annotated[Path, BeforeValidator(core.parse_path)]
    max_segment_bytes: Annotated[int, BeforeValidator(core.parse_size)]
    keep_segments: Annotated[int, BeforeValidator(core.parse_keep)]
    fsync: Annotated[Literal["always", "never"], BeforeValidator(core.parse_fsync)]
    key_file: Annotated[Path | None, BeforeValidator(core.parse_optional_path)]
    fail_closed: Annotated[bool, BeforeValidator(core.parse_bool)]
    metrics_addr: Annotated[str, BeforeValidator(core.parse_text)]
    metrics_port: Annotated[int, BeforeValidator(core.parse_port)]
    podman_url: Annotated[str, BeforeValidator(core.parse_text)]
    poll_interval: Annotated[float, BeforeValidator(core.parse_interval)]
    http_timeout: Annotated[float, BeforeValidator(core.parse_interval)]
    #: Where key_file came from (not a setting): named when the key file is unusable.
    key_file_source: str = "default"
    unaudited_grace: Annotated[float, BeforeValidator(core.parse_grace)]
    seal_interval: Annotated[float, BeforeValidator(core.parse_seal_interval)]

    def store(self) -> core.StoreSettings:
        """Return the subset a trail writer needs."""
        return core.StoreSettings(
            root=self.root,
            max_segment_bytes=self.max_segment_bytes,
            keep_segments=self.keep_segments,
            fsync=self.fsync,
            key_file=self.key_file,
            fail_closed=self.fail_closed,
            key_file_source=self.key_file_source,
        )


def load_settings(
    options: Mapping[str, object | None] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> Settings:
    """Load settings by precedence: option > environment > TOML file > default.

    Raises:
        ConfigError: a value is invalid (the message names it and its source).
    """
    env = os.environ if environ is None else environ
    path, required = core.config_path(config_file, env)
    file_values = (
        core.read_config_file(path, required=required) if required or path.exists() else {}
    )
    raw = core.collect(options or {}, env, file_values, str(path))
    values: dict[str, object] = {}
    for setting in core.SETTINGS:
        given = raw.get(setting.name)
        values[setting.name] = setting.default() if given is None else given.value
    if "key_file" in raw:
        values["key_file_source"] = raw["key_file"].source
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else "settings"
        given = raw.get(name)
        source = given.source if given is not None else "default"
        message = str(error.get("ctx", {}).get("error", error["msg"]))
        raise ConfigError(name, source, message) from None
