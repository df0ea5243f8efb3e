"""The audit store: the one place that knows the on-disk trail format (docs/format.md).

Submodules: :mod:`.layout` (paths, IDs, safe opening, locks), :mod:`.chain`
(serialisation and chain links), :mod:`.writer` (append, rotation, retention,
torn-tail recovery), :mod:`.tailscan` (reading from a segment's end),
:mod:`.reader` (streaming reads) and :mod:`.verify`.
This package's ``__init__`` imports nothing: the hook pays only for what it uses.
"""
