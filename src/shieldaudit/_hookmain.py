"""The command ``install-hooks`` writes: ``python -I -S <this file> STAGE``.

Run as a script, without ``site`` (``-S``) and isolated from the environment
(``-I``), it puts this package's parent directory on ``sys.path`` and runs the
hook. That skips site-packages processing (``.pth`` files) and the console-script
wrapper, the two costs of ``shieldaudit-hook`` that the start path can avoid.
"""

# pathlib costs the hook ~2 ms per container start; os.path is free.
# ruff: noqa: PTH120

import os
import sys


def _main() -> None:
    package_parent = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    if package_parent not in sys.path:
        # Appended, not prepended: nothing in site-packages may shadow the stdlib.
        sys.path.append(package_parent)
    from shieldaudit.hook import main  # noqa: PLC0415 -- sys.path is set just above

    main()


if __name__ == "__main__":
    _main()
