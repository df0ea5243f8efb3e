"""The hook process: the reference path, what it reads from the runtime, its hooks.d files.

:mod:`.run` is the Python reference path, :mod:`.ocistate` reads the runtime's
state and bundle, :mod:`.hooksd` and :mod:`.hooksdir` write the hooks.d files
that make the runtime call the hook, where the engine reads them.

``python -I -B -m shieldaudit.hook STAGE`` runs :func:`shieldaudit.hook.run.main`. This
package's ``__init__`` imports nothing: the hook pays only for what it uses.
"""
