"""A sealing or appending process for crash tests: ``python seal_worker.py MODE ROOT KEY_FILE``.

MODE ``seal`` seals in a loop, printing "ack" after each seal, until killed.
MODE ``append`` appends a batch of entries to a few containers for each line
read on stdin (with a small segment size and retention, so rotation and
retention run too), then prints "idle". Both print "ready" once everything is
imported.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

from shieldaudit.core.settings import StoreSettings
from shieldaudit.store import seals
from shieldaudit.store.writer import TrailWriter

CONTAINERS = ("a" * 64, "b" * 64, "c" * 64)
BATCH = 20


def main() -> None:
    """Seal or append forever, as told on the command line."""
    mode, root, key_file = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    settings = StoreSettings(
        root=root, max_segment_bytes=2048, keep_segments=3, fsync="always", key_file=key_file
    )
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    if mode == "seal":
        while True:
            seals.seal_now(settings)
            sys.stdout.write("ack\n")
            sys.stdout.flush()
    counter = itertools.count()
    with TrailWriter(settings) as writer:
        for _ in sys.stdin:
            for _, i in zip(range(BATCH), counter, strict=False):
                writer.append(
                    CONTAINERS[i % 3], {"source": "cli", "action": "test", "detail": str(i)}
                )
            sys.stdout.write("idle\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
