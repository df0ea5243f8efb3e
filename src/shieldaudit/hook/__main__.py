"""``python -I -B -m shieldaudit.hook STAGE [--fail-closed]``: the reference hook."""

from shieldaudit.hook.run import main

main()
