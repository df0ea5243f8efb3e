"""The one error hierarchy: every user-facing failure is a ShieldAuditError.

Each class carries the process exit code (1 failure, 2 usage; see docs/cli.md,
"Output conventions"); the message is built once, at the raise site, as one
line saying what was wrong and what to do. The CLI and the hook show it in exactly one place each.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class ShieldAuditError(Exception):
    """Base of every error shieldaudit reports to a person."""

    exit_code: int = EXIT_FAILURE

    def __init__(self, message: str) -> None:
        """Keep the one-line message."""
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        """Return the one-line message."""
        return self.message


class UsageError(ShieldAuditError):
    """Bad usage: a bad option value, an unknown or ambiguous container."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A setting has a bad value; the message names the setting and its source."""

    def __init__(self, setting: str, source: str, problem: str) -> None:
        """Build the message from the setting, where its value came from, and what is wrong."""
        super().__init__(f"invalid setting {setting} (from {source}): {problem}")
        self.setting = setting
        self.source = source


class InvalidContainerIdError(UsageError):
    """A container ID that is not 64 lower-case hex characters; never used as a path."""

    def __init__(self, value: str) -> None:
        """Build the message; the value is shown escaped and shortened."""
        shown = repr(value[:80]) + ("…" if len(value) > 80 else "")
        super().__init__(
            f"invalid container ID {shown}: expected the runtime's full ID, "
            "64 lower-case hex characters",
        )
        self.value = value


class ContainerNotFoundError(UsageError):
    """No trail matches the name or ID prefix."""


class AmbiguousContainerError(UsageError):
    """A name or prefix matches several trails; the message lists them."""


class UnsafePathError(ShieldAuditError):
    """A root writable by group/others, a symlink, or a non-regular trail file."""


class LockTimeoutError(ShieldAuditError):
    """The per-container lock was not obtained within the bounded wait."""


class StorageError(ShieldAuditError):
    """Writing or reading the trail failed (disk full, I/O error, permissions)."""


class IntegrityError(ShieldAuditError):
    """A chain did not verify."""
