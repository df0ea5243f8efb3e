"""A trail-writing process for multi-process tests: ``python store_worker.py ROOT ID COUNT SEG``.

COUNT < 0 appends forever (until killed). Each entry's detail names the worker
and its counter, so tests can check every acknowledged entry is present once.
Prints "ack <detail>" after each append returns (the entry is then durable).
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

from shieldaudit.core.settings import StoreSettings
from shieldaudit.store.writer import TrailWriter


def main() -> None:
    """Append entries as told on the command line."""
    root, container_id, count, segment = (
        sys.argv[1],
        sys.argv[2],
        int(sys.argv[3]),
        int(sys.argv[4]),
    )
    fsync = sys.argv[5] if len(sys.argv) > 5 else "never"
    name = f"w{os.getpid()}"
    settings = StoreSettings(
        root=Path(root), max_segment_bytes=segment, keep_segments=0, fsync=fsync
    )
    counter = itertools.count() if count < 0 else range(count)
    # The lock wait is bounded at 2 s in production; 16 workers appending in a
    # tight loop on a loaded machine can starve one for longer, and these tests
    # pin what contention does to the trail, not the bound.
    with TrailWriter(settings, lock_timeout=120) as writer:
        for i in counter:
            detail = f"{name}-{i}"
            writer.append(container_id, {"source": "cli", "action": "test", "detail": detail})
            sys.stdout.write(f"ack {detail}\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
