"""The entry vocabulary every process shares: who writes an entry, and the hook's stages."""

from __future__ import annotations

from typing import Final

#: Who wrote an entry: the hook, the events listener, or the CLI.
SOURCES: Final = ("hook", "events", "cli")

#: The OCI hook stages (runtime-spec config.md "POSIX-platform Hooks"): the
#: hook's action vocabulary, and with it the sidecar's ``action`` labels.
HOOK_STAGES: Final = (
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
)
