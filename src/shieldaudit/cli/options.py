"""Typed command-line options for settings: click's number types over the settings parsers.

An option that sets a setting (``--metrics-port``, ``--poll-interval``, …) stays
``None`` when it is not given, so the environment, the config file and the
default still apply in that order (docs/configuration.md). When it is given,
the setting's own parser checks it: a bad value is the same one ``Error:
invalid setting NAME (from option --NAME): …`` line as a bad environment
variable, not a usage screen. The click number types make ``--help`` show the
type and the range (``INTEGER RANGE … [0<=x<=65535]``), and the built-in
default is shown as ``[default: 9469]``, as for any other option, without
becoming the option's value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from shieldaudit.core.errors import ConfigError
from shieldaudit.core.settings import SETTINGS_BY_NAME

if TYPE_CHECKING:
    from collections.abc import Callable

    from click.types import OptionHelpExtra


def _parsed(setting: str, value: object, param: click.Parameter | None) -> object:
    """Parse a given option value with the setting's parser, or raise its one-line error."""
    if not isinstance(value, str):  # already converted (click may convert twice)
        return value
    flag = f"--{setting.replace('_', '-')}" if param is None else param.opts[-1]
    try:
        return SETTINGS_BY_NAME[setting].parse(value)
    except ValueError as exc:
        raise ConfigError(setting, f"option {flag}", str(exc)) from None


class SettingInt(click.IntRange):
    """An integer setting: shown as ``INTEGER RANGE``, parsed by the setting's parser."""

    def __init__(self, setting: str, low: int | None = None, high: int | None = None) -> None:
        """Bind to ``setting``; the bounds are what ``--help`` shows (the parser enforces them)."""
        super().__init__(low, high)
        self.setting = setting

    def convert(
        self,
        value: Any,  # noqa: ANN401 -- click's signature
        param: click.Parameter | None,
        ctx: click.Context | None,  # noqa: ARG002 -- click's signature
    ) -> Any:  # noqa: ANN401
        """Parse with the setting's parser."""
        return _parsed(self.setting, value, param)


class SettingFloat(click.FloatRange):
    """A number-of-seconds setting: shown as ``FLOAT RANGE``, parsed by the setting's parser."""

    def __init__(
        self,
        setting: str,
        low: float | None = None,
        high: float | None = None,
        *,
        low_open: bool = False,
    ) -> None:
        """Bind to ``setting``; the bounds are what ``--help`` shows (the parser enforces them)."""
        super().__init__(low, high, min_open=low_open)
        self.setting = setting

    def convert(
        self,
        value: Any,  # noqa: ANN401 -- click's signature
        param: click.Parameter | None,
        ctx: click.Context | None,  # noqa: ARG002 -- click's signature
    ) -> Any:  # noqa: ANN401
        """Parse with the setting's parser."""
        return _parsed(self.setting, value, param)


class SettingOption(click.Option):
    """An option for a setting: its value is ``None`` unless given; ``--help`` shows the default.

    click would show a ``show_default`` string in parentheses, its mark for a
    description; the setting's default is a literal value, shown as such.
    """

    def __init__(self, *args: Any, setting: str, **kwargs: Any) -> None:  # noqa: ANN401 -- click's
        """Bind to ``setting``; ``default`` is always ``None`` (the lower layers apply)."""
        super().__init__(*args, default=None, **kwargs)
        self.setting = setting

    def get_help_extra(self, ctx: click.Context) -> OptionHelpExtra:
        """Add the setting's built-in default to what click shows."""
        extra = super().get_help_extra(ctx)
        value = SETTINGS_BY_NAME[self.setting].default()
        extra["default"] = f"{value:g}" if isinstance(value, float) else str(value)
        return extra


def setting_option(*decls: str, setting: str, **attrs: Any) -> Callable[[Any], Any]:  # noqa: ANN401
    """A ``click.option`` for ``setting`` (see :class:`SettingOption`)."""
    return click.option(*decls, cls=SettingOption, setting=setting, **attrs)
