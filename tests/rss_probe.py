"""Run a command and report its peak RSS: ``python rss_probe.py OUT CMD...``.

The command's ``ru_maxrss`` (KiB) is written to the file OUT; the probe exits
with the command's status. Tests run the measured command through this small
process rather than directly: a child forked from the large pytest process
would report pytest's own peak RSS, which the kernel carries across exec.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    """Spawn the command, wait for it, write its peak RSS."""
    out, argv = sys.argv[1], sys.argv[2:]
    pid = os.posix_spawn(argv[0], argv, os.environ)
    _, status, usage = os.wait4(pid, 0)
    Path(out).write_text(f"{usage.ru_maxrss}\n")
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
