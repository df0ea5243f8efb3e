"""Command-line options for settings: typed from the settings model, parsed by its rules.

An option that sets a setting (``--metrics-port``, ``--poll-interval``, …) stays
``None`` when it is not given, so the environment, the config file and the
default still apply in that order (docs/configuration.md). When it is given,
the setting's own rule reads it: a bad value is the same ``Error: invalid
setting NAME (from option --NAME): …`` line as a bad environment variable, not
a usage screen. The option's type comes from the model: a number setting shows
``INTEGER RANGE`` or ``FLOAT RANGE`` with its range in ``--help``
(``[0<=x<=65535]``), and the built-in default is shown as ``[default: 9469]``,
as for any other option, without becoming the option's value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from shieldaudit.core.errors import ConfigError
from shieldaudit.core.settings import SETTINGS_BY_NAME

if TYPE_CHECKING:
    from collections.abc import Callable

    from click.types import OptionHelpExtra


def _whole(value: float | None) -> int | None:
    """A range end of a whole-number setting."""
    return None if value is None else int(value)


def _bound(value: float | None) -> float | None:
    """A range end as ``--help`` shows it: ``3600``, not ``3600.0``."""
    return int(value) if value is not None and float(value).is_integer() else value


class _SettingType:
    """The one conversion of every setting type: the setting's rule, or its one-line error."""

    setting: str

    def convert(
        self,
        value: Any,  # noqa: ANN401 -- click's signature
        param: click.Parameter | None,
        ctx: click.Context | None,  # noqa: ARG002 -- click's signature
    ) -> Any:  # noqa: ANN401
        """Read a given value with the setting's rule (click may convert twice: keep a result)."""
        if not isinstance(value, str):
            return value
        flag = f"--{self.setting.replace('_', '-')}" if param is None else param.opts[-1]
        try:
            return SETTINGS_BY_NAME[self.setting].parse(value)
        except ValueError as exc:
            raise ConfigError(self.setting, f"option {flag}", str(exc)) from None


class SettingInt(_SettingType, click.IntRange):
    """A whole-number setting: ``INTEGER RANGE`` with the model's range."""

    def __init__(self, setting: str) -> None:
        """Bind to ``setting``; the range shown is its rule's."""
        rule = SETTINGS_BY_NAME[setting].rule
        super().__init__(_whole(rule.low), _whole(rule.high), min_open=rule.low_open)
        self.setting = setting


class SettingFloat(_SettingType, click.FloatRange):
    """A number-of-seconds setting: ``FLOAT RANGE`` with the model's range."""

    def __init__(self, setting: str) -> None:
        """Bind to ``setting``; the range shown is its rule's."""
        rule = SETTINGS_BY_NAME[setting].rule
        super().__init__(_bound(rule.low), _bound(rule.high), min_open=rule.low_open)
        self.setting = setting


class SettingText(_SettingType, click.types.StringParamType):
    """Any other setting (an address, a URL, a path): text, read by its rule."""

    def __init__(self, setting: str) -> None:
        """Bind to ``setting``."""
        self.setting = setting


def setting_type(setting: str) -> SettingInt | SettingFloat | SettingText:
    """Return the option type for ``setting``, from the type of its field in the model."""
    kind = SETTINGS_BY_NAME[setting].kind
    if kind is int:
        return SettingInt(setting)
    if kind is float:
        return SettingFloat(setting)
    return SettingText(setting)


class SettingOption(click.Option):
    """An option for a setting: its value is ``None`` unless given; ``--help`` shows the default.

    click would show a ``show_default`` string in parentheses, its mark for a
    description; the setting's default is a literal value, shown as such. An
    option whose default depends on the host (``--url``) gives the
    description as ``show_default`` instead.
    """

    def __init__(self, *args: Any, setting: str, **kwargs: Any) -> None:  # noqa: ANN401 -- click's
        """Bind to ``setting``; ``default`` is always ``None`` (the lower layers apply)."""
        kwargs.setdefault("type", setting_type(setting))
        super().__init__(*args, default=None, **kwargs)
        self.setting = setting

    def get_help_extra(self, ctx: click.Context) -> OptionHelpExtra:
        """Add the setting's built-in default to what click shows (unless described)."""
        extra = super().get_help_extra(ctx)
        if isinstance(self.show_default, str):  # a description of where it comes from
            return extra
        value = SETTINGS_BY_NAME[self.setting].default()
        extra["default"] = f"{value:g}" if isinstance(value, float) else str(value)
        return extra


def setting_option(*decls: str, setting: str, **attrs: Any) -> Callable[[Any], Any]:  # noqa: ANN401
    """A ``click.option`` for ``setting``, typed from the model (see :class:`SettingOption`)."""
    return click.option(*decls, cls=SettingOption, setting=setting, **attrs)
