"""What every subcommand shares: the global options and the settings they resolve to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shieldaudit.core.settings import load_settings

if TYPE_CHECKING:
    import click

    from shieldaudit.core.settings import Settings
    from shieldaudit.store.chain import KeyRing


@dataclass
class AppContext:
    """Global options; settings are loaded (and validated) on first use."""

    root_option: str | None = None
    config_option: str | None = None
    _settings: Settings | None = field(default=None, repr=False)

    def settings(self, **options: object | None) -> Settings:
        """Return the validated settings; command options override everything else.

        The settings are loaded once; a call with options loads them afresh.
        """
        if self._settings is None or options:
            merged: dict[str, object | None] = {"root": self.root_option, **options}
            loaded = load_settings(merged, config_file=self.config_option)
            if options:
                return loaded
            self._settings = loaded
        return self._settings

    def keys(self) -> KeyRing:
        """Return the HMAC key ring from the configured key file (empty when unset)."""
        from shieldaudit.store.chain import store_keys  # noqa: PLC0415

        return store_keys(self.settings().store())


def app(ctx: click.Context) -> AppContext:
    """Return the AppContext of the running command."""
    obj = ctx.find_object(AppContext)
    if obj is None:  # invoked outside the group, e.g. a command tested alone
        obj = AppContext()
        ctx.obj = obj
    return obj
