"""Which module may import which: the direction of the layers, read from the source.

Every ``import`` and ``from … import`` in ``src/shieldaudit`` counts, including
those inside functions and ``TYPE_CHECKING`` blocks: a lazy import is still a
dependency. docs/architecture.md explains the rules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

#: Modules that belong to one process; the store must not depend on any of them.
PROCESS_MODULES = (
    "shieldaudit.cli",
    "shieldaudit.listener",
    "shieldaudit.watch",
    "shieldaudit.sidecar",
    "shieldaudit.server",
    "shieldaudit.metrics",
    "shieldaudit.instance",
    "shieldaudit.hook",
    "shieldaudit.hooksd",
    "shieldaudit.hooksdir",
    "shieldaudit.hookmanifest",
    "shieldaudit.ocistate",
    "shieldaudit.summary",
    "shieldaudit.fleet",
)

#: Imports of the CLI from outside it that exist today, each with why. The
#: fleet side of ``verify``/``ls`` runs the whole CLI once per node copy; it is
#: CLI code living under fleet/ and belongs under cli/ (then this list is empty).
CLI_IMPORTERS_TODAY = {"shieldaudit.fleet.cli"}


def module_name(path: Path, src: Path = SRC) -> str:
    """``src/shieldaudit/store/writer.py`` -> ``shieldaudit.store.writer``."""
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, src: Path = SRC) -> set[str]:
    """Every shieldaudit module ``path`` imports, absolute names (relative ones resolved)."""
    package = module_name(path, src)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from shieldaudit.store import writer`` imports the submodule.
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in names if name == "shieldaudit" or name.startswith("shieldaudit.")}


def within(name: str, package: str) -> bool:
    """Whether module ``name`` is ``package`` or inside it."""
    return name == package or name.startswith(package + ".")


MODULES = {module_name(path): imported(path) for path in sorted(SRC.rglob("*.py"))}


def test_the_source_tree_is_found():
    """The scan sees the packages it judges (a moved tree would otherwise pass vacuously)."""
    assert "shieldaudit.cli" in MODULES
    assert "shieldaudit.store.writer" in MODULES
    assert "shieldaudit.store.layout" in MODULES["shieldaudit.store.writer"]


def test_nothing_imports_the_cli():
    """The CLI is the outermost layer: no module outside it imports it, but the known one."""
    importers = {
        module
        for module, names in MODULES.items()
        if not within(module, "shieldaudit.cli")
        if any(within(name, "shieldaudit.cli") for name in names)
    }
    # Both ways: a new importer fails, and so does an exception that is no longer needed.
    assert importers == CLI_IMPORTERS_TODAY


@pytest.mark.parametrize("process", PROCESS_MODULES)
def test_the_store_imports_no_process_module(process):
    """``shieldaudit.store`` depends only on itself and the core, never on a process's code."""
    offenders = sorted(
        f"{module} imports {name}"
        for module, names in MODULES.items()
        if within(module, "shieldaudit.store")
        for name in names
        if within(name, process)
    )
    assert offenders == []


def test_the_scan_sees_lazy_and_relative_imports(tmp_path):
    """An import inside a function and a relative one both count (so the checks can fail)."""
    package = tmp_path / "shieldaudit" / "store"
    package.mkdir(parents=True)
    sample = package / "sample.py"
    sample.write_text(
        "def f():\n    from shieldaudit.cli import run\n\nfrom ..watch import tailer\n"
    )
    names = imported(sample, src=tmp_path)
    assert {"shieldaudit.cli", "shieldaudit.cli.run", "shieldaudit.watch.tailer"} <= names
