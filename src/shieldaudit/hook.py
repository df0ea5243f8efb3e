"""``shieldaudit-hook STAGE``: the OCI hook, appending one ``source=hook`` entry per stage.

Runs on every container's start path, so it imports only the standard library
and the store; it never hangs (bounded stdin and lock waits).
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Final

from shieldaudit.errors import ShieldAuditError, UsageError
from shieldaudit.settings import load_store_settings
from shieldaudit.store.writer import TrailWriter

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

MAX_STATE_BYTES: Final = 1024 * 1024


def read_state(stream: int, limit: int = MAX_STATE_BYTES) -> dict[str, object]:
    """Read and parse the OCI state JSON from a file descriptor (at most ``limit`` bytes)."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = os.read(stream, 65536)
        if not chunk:
            break
        total += len(chunk)
        if total > limit:
            raise UsageError(f"OCI state on stdin is larger than {limit} bytes")
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data.strip():
        raise UsageError("no OCI state on stdin: the runtime passes it; run as an OCI hook")
    try:
        state = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"OCI state on stdin is not JSON: {exc}") from None
    if not isinstance(state, dict):
        raise UsageError("OCI state on stdin is not a JSON object")
    return state


def run(argv: Sequence[str], environ: Mapping[str, str], stdin_fd: int = 0) -> int:
    """Record one hook invocation; return the exit status."""
    if len(argv) != 1:
        print("usage: shieldaudit-hook STAGE < state.json", file=sys.stderr)
        return 2
    stage = argv[0]
    try:
        settings = load_store_settings(environ)
        state = read_state(stdin_fd)
        container_id = str(state.get("id", ""))
        pid = state.get("pid")
        with TrailWriter(settings) as writer:
            writer.append(
                container_id,
                {
                    "source": "hook",
                    "action": stage,
                    "pid": pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
                },
            )
    except ShieldAuditError as exc:
        print(f"shieldaudit-hook: {exc.message}", file=sys.stderr)
        return 0
    return 0


def main() -> None:
    """Entry point of the ``shieldaudit-hook`` script."""
    sys.exit(run(sys.argv[1:], os.environ))
