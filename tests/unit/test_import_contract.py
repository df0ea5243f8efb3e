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

#: The packages, each with the packages it may import besides itself. ``core``
#: holds the format, ``store`` the trails on disk; each process package sits
#: on those two; the sidecar runs a listener in its own process; only the CLI,
#: the outermost layer, may import every process package, and nothing imports it.
LAYERS: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "store": frozenset({"core"}),
    "hook": frozenset({"core", "store"}),
    "listener": frozenset({"core", "store"}),
    "sidecar": frozenset({"core", "store", "listener"}),
    "fleet": frozenset({"core", "store"}),
    "cli": frozenset({"core", "store", "hook", "listener", "sidecar", "fleet"}),
}
#: Modules outside every package: the package's face (its version).
TOP_LEVEL = frozenset({"shieldaudit"})


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


def package_of(name: str) -> str | None:
    """``shieldaudit.store.writer`` -> ``store``; None for the top-level module."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and not parts[1].startswith("_") else None


def test_the_source_tree_is_found():
    """The scan sees the packages it judges (a moved tree would otherwise pass vacuously)."""
    assert "shieldaudit.cli" in MODULES
    assert "shieldaudit.store.writer" in MODULES
    assert "shieldaudit.store.layout" in MODULES["shieldaudit.store.writer"]
    assert {package_of(module) for module in MODULES} - {None} == set(LAYERS)


def test_every_module_lives_in_a_package():
    """No loose modules at the top: the folder names the part a module belongs to."""
    assert {module for module in MODULES if package_of(module) is None} == TOP_LEVEL


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_each_package_imports_only_what_its_layer_allows(package):
    """Core <- store <- processes <- cli, and nothing imports the CLI."""
    allowed = LAYERS[package] | {package}
    offenders = sorted(
        f"{module} imports {name}"
        for module, names in MODULES.items()
        if package_of(module) == package
        for name in names
        if package_of(name) is not None and package_of(name) not in allowed
    )
    assert offenders == []


def test_nothing_imports_the_cli():
    """The CLI is the outermost layer: no module outside it imports it."""
    assert all("cli" not in allowed for name, allowed in LAYERS.items() if name != "cli")


def test_the_scan_sees_lazy_and_relative_imports(tmp_path):
    """An import inside a function and a relative one both count (so the checks can fail)."""
    package = tmp_path / "shieldaudit" / "store"
    package.mkdir(parents=True)
    sample = package / "sample.py"
    sample.write_text(
        "def f():\n    from shieldaudit.cli import run\n\nfrom ..sidecar import app\n"
    )
    names = imported(sample, src=tmp_path)
    assert {"shieldaudit.cli", "shieldaudit.cli.run", "shieldaudit.sidecar.app"} <= names
