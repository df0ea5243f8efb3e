"""The store settings for the hook, from the environment alone (no config file parsing).

:func:`shieldaudit.settings.load_store_settings` is the reference; it imports
``pathlib`` and ``dataclasses``, which cost the hook more than its own work.
This module handles the plain values ``install-hooks`` writes into the hooks.d
``env`` and returns None for anything else, so the reference loader parses it
(or words its error).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

# Mirrors of shieldaudit.settings constants; tests/unit/test_hook_store.py pins them.
DEFAULT_CONFIG_FILE = "/etc/shieldaudit/config.toml"
DEFAULT_ROOT_FOR_ROOT = "/var/lib/shieldaudit"
DEFAULT_MAX_SEGMENT_BYTES = 10 * 1024 * 1024
DEFAULT_KEEP_SEGMENTS = 20
MIN_SEGMENT_BYTES = 256
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
STORE_ENV = (
    "SHIELDAUDIT_ROOT",
    "SHIELDAUDIT_MAX_SEGMENT_BYTES",
    "SHIELDAUDIT_KEEP_SEGMENTS",
    "SHIELDAUDIT_FSYNC",
    "SHIELDAUDIT_KEY_FILE",
    "SHIELDAUDIT_FAIL_CLOSED",
)


class LeanSettings:
    """The store settings, parsed from the environment alone."""

    __slots__ = (
        "fail_closed",
        "fsync",
        "keep_segments",
        "key_file",
        "max_segment_bytes",
        "root",
    )

    def __init__(  # noqa: PLR0917 -- mirrors StoreSettings' positional order
        self,
        root: str,
        max_segment_bytes: int = DEFAULT_MAX_SEGMENT_BYTES,
        keep_segments: int = DEFAULT_KEEP_SEGMENTS,
        fsync: str = "always",
        key_file: str | None = None,
        fail_closed: bool = False,
    ) -> None:
        """Hold the values."""
        self.root = root
        self.max_segment_bytes = max_segment_bytes
        self.keep_segments = keep_segments
        self.fsync = fsync
        self.key_file = key_file
        self.fail_closed = fail_closed


def lean_settings(
    environ: Mapping[str, str],
    uid: int | None = None,
    file_exists: Callable[[str], bool] = os.path.exists,
) -> LeanSettings | None:
    """Parse the store settings from the environment, or None to use the full loader.

    Only plain values are handled (absolute normalised paths, decimal numbers,
    exact keywords); anything else returns None so that
    :func:`shieldaudit.settings.load_store_settings` parses it, or words the
    error. A config file matters only when some setting is not in the
    environment (``install-hooks`` writes them all).
    """
    if not all(name in environ for name in STORE_ENV) and (
        environ.get("SHIELDAUDIT_CONFIG") or file_exists(DEFAULT_CONFIG_FILE)
    ):
        return None
    root = environ.get("SHIELDAUDIT_ROOT")
    if root is None:
        if (os.geteuid() if uid is None else uid) != 0:
            return None  # the default depends on HOME / XDG_STATE_HOME
        root = DEFAULT_ROOT_FOR_ROOT
    if not _plain_path(root):
        return None
    max_bytes = _plain_int(environ.get("SHIELDAUDIT_MAX_SEGMENT_BYTES"), DEFAULT_MAX_SEGMENT_BYTES)
    keep = _plain_int(environ.get("SHIELDAUDIT_KEEP_SEGMENTS"), DEFAULT_KEEP_SEGMENTS)
    fsync = environ.get("SHIELDAUDIT_FSYNC", "always").strip().lower()
    key_file = environ.get("SHIELDAUDIT_KEY_FILE", "").strip()
    fail_closed = environ.get("SHIELDAUDIT_FAIL_CLOSED", "").strip().lower()
    if (
        max_bytes is None
        or max_bytes < MIN_SEGMENT_BYTES
        or keep is None
        or fsync not in {"always", "never"}
        or (key_file and not _plain_path(key_file))
        or fail_closed not in _TRUE | _FALSE
    ):
        return None
    return LeanSettings(root, max_bytes, keep, fsync, key_file or None, fail_closed in _TRUE)


def _plain_path(text: str) -> bool:
    return text.startswith("/") and os.path.normpath(text) == text and not text.startswith("//")


def _plain_int(text: str | None, default: int) -> int | None:
    if text is None:
        return default
    text = text.strip()
    return int(text) if text.isdigit() and text.isascii() else None


def env_fail_closed(environ: Mapping[str, str]) -> bool:
    """Return whether ``SHIELDAUDIT_FAIL_CLOSED`` asks for fail-closed.

    Used when the settings themselves cannot be loaded: a value that is set
    but not a recognised "false" counts as a request to fail closed.
    """
    return environ.get("SHIELDAUDIT_FAIL_CLOSED", "").strip().lower() not in _FALSE
