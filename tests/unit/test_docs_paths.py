"""Every repository path and module the documentation names exists, so a move cannot leave it stale.

A path is a word that starts with ``src/``, ``tests/``, ``bench/``, ``deploy/``,
``scripts/``, ``native/`` or ``hooks/`` (not inside a longer path such as ``/usr/src/`` or a
URL; ``../deploy/…`` in a link from docs/ counts). ``{a,b}`` alternatives and
``*`` patterns must each match something; a path with a placeholder (``<module>``,
``…``) is a pattern for the reader, not a file, and is left alone.

A module is a dotted ``shieldaudit.<package>…`` name: its longest prefix that is
a module must exist, and the next name must be defined or imported at that
module's top level (``shieldaudit.store.summary.step``).

A source tree drawn in a code block (one that starts with ``src/shieldaudit/``)
names folders by indentation and files by name: each ``name.py`` it shows must
be in the folder it is drawn in (or below it).
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
DOCUMENTS = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]
PREFIXES = ("src", "tests", "bench", "deploy", "scripts", "native", "hooks")
#: A path: a known top-level folder, then names, ``*`` patterns and ``{a,b}`` alternatives.
PATH = re.compile(
    r"(?:(?<=\.\./)|(?<![\w./~$-]))"
    rf"((?:{'|'.join(PREFIXES)})/(?:\{{[\w.,-]+\}}|[\w.*<>…/-])*)"
)
PLACEHOLDERS = ("<", ">", "…", "...")


PACKAGES = sorted(p.parent.name for p in (SRC / "shieldaudit").glob("*/__init__.py"))
DOTTED = re.compile(rf"(?<![\w.])shieldaudit\.(?:{'|'.join(PACKAGES)}|__version__)(?:\.\w+)*")


def quoted_paths(text: str) -> list[str]:
    """The repository paths in ``text``, trailing sentence punctuation dropped."""
    found = []
    for match in PATH.finditer(text):
        path = match.group(1).rstrip(".")
        if not any(mark in path for mark in PLACEHOLDERS):
            found.append(path)
    return found


def expand(path: str) -> list[str]:
    """``deploy/kube/{a,b}.yaml`` -> ``deploy/kube/a.yaml``, ``deploy/kube/b.yaml``."""
    match = re.search(r"\{([^{}]*)\}", path)
    if match is None:
        return [path]
    head, tail = path[: match.start()], path[match.end() :]
    return [name for choice in match.group(1).split(",") for name in expand(head + choice + tail)]


def exists(path: str, repo: Path = REPO) -> bool:
    """Whether ``path`` (a file, a folder, or a ``*`` pattern) names something in ``repo``."""
    if "*" in path:
        return any(repo.glob(path.rstrip("/")))
    return (repo / path).exists()


@cache
def top_level_names(module: Path) -> frozenset[str]:
    """The names a module defines, assigns or imports at its top level."""
    names: set[str] = set()
    for node in ast.parse(module.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return frozenset(names)


def resolves(dotted: str, src: Path = SRC) -> bool:
    """Whether ``shieldaudit.a.b.name`` is a module, or a name at the top of one."""
    parts = dotted.split(".")
    for length in range(len(parts), 0, -1):
        base = src.joinpath(*parts[:length])
        module = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if module.is_file():
            rest = parts[length:]
            return not rest or rest[0] in top_level_names(module)
    return False


#: In a drawn tree, names sit two columns deeper per level; descriptions start further right.
TREE_STEP = 2
TREE_NAMES_BEFORE = 12


def tree_blocks(text: str) -> list[tuple[int, list[str]]]:
    """Each fenced block that draws the source tree: (its first line's number, its lines)."""
    blocks = []
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if (
            line.startswith("```")
            and number < len(lines)
            and lines[number].startswith("src/shieldaudit/")
        ):
            end = next(i for i in range(number, len(lines)) if lines[i].startswith("```"))
            blocks.append((number + 1, lines[number:end]))
    return blocks


def missing_in_tree(lines: list[str], first: int, repo: Path = REPO) -> list[str]:
    """``line: folder/name.py`` for each file a drawn tree shows where it is not."""
    folders: list[str] = []
    missing = []
    for number, line in enumerate(lines, first):
        indent = len(line) - len(line.lstrip())
        head = line.split(maxsplit=1)[0].rstrip(",") if line.strip() else ""
        if indent < TREE_NAMES_BEFORE and head:
            folders = folders[: indent // TREE_STEP]
            if head.endswith("/"):
                folders.append(head)
        base = repo.joinpath(*folders) if folders else repo
        missing += [
            f"{number}: {''.join(folders)}{name}"
            for name in re.findall(r"(?<![\w/.*-])(\w+\.py)\b", line)
            if not any(base.rglob(name))
        ]
    return missing


def missing_paths(document: Path, repo: Path = REPO) -> list[str]:
    """``line: path`` for every quoted path or module of ``document`` that is not in ``repo``."""
    missing = []
    for number, line in enumerate(document.read_text(encoding="utf-8").splitlines(), 1):
        for quoted in quoted_paths(line):
            missing += [f"{number}: {p}" for p in expand(quoted) if not exists(p, repo)]
        missing += [
            f"{number}: {m.group()}"
            for m in DOTTED.finditer(line)
            if not resolves(m.group(), repo / "src")
        ]
    for first, lines in tree_blocks(document.read_text(encoding="utf-8")):
        missing += missing_in_tree(lines, first, repo)
    return missing


def test_the_scan_finds_paths_and_leaves_other_words():
    """Paths are found in prose, code and links; system paths, URLs and placeholders are not."""
    text = (
        "See `src/shieldaudit/store/writer.py`, [the unit](../deploy/systemd/x.service) and "
        "deploy/kube/{a,b}.yaml. Not /usr/src/linux, https://h/tests/x, ~/tests/y, "
        "$HOME/bench/z or tests/unit/<package>/test_<module>.py; tests are tests."
    )
    assert quoted_paths(text) == [
        "src/shieldaudit/store/writer.py",
        "deploy/systemd/x.service",
        "deploy/kube/{a,b}.yaml",
    ]
    assert expand("deploy/kube/{a,b}.yaml") == ["deploy/kube/a.yaml", "deploy/kube/b.yaml"]


def test_a_stale_path_is_reported(tmp_path):
    """A document naming a file that is not there fails, with the line and the path."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "here.py").write_text("")
    document = tmp_path / "doc.md"
    document.write_text("`tests/here.py`\n`tests/gone.py` and tests/*.py\ntests/{here,away}.py\n")
    assert missing_paths(document, tmp_path) == ["2: tests/gone.py", "3: tests/away.py"]


def test_a_drawn_tree_places_each_file_in_its_folder(tmp_path):
    """Files are looked for in the folder the indentation puts them in, descriptions too."""
    for path in ("src/shieldaudit/core/errors.py", "src/shieldaudit/store/writer.py", "native/x"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("")
    document = tmp_path / "doc.md"
    document.write_text(
        "```\n"
        "src/shieldaudit/\n"
        "  core/         the core\n"
        "    errors.py   errors\n"
        "    writer.py   not here: it is in store/\n"
        "  store/        the store: writer.py\n"
        "                and, on a later line, errors.py (not in store/)\n"
        "native/         errors.py is not in native/ either; *_helpers.py is a pattern\n"
        "```\n"
    )
    assert missing_paths(document, tmp_path) == [
        "5: src/shieldaudit/core/writer.py",
        "7: src/shieldaudit/store/errors.py",
        "8: native/errors.py",
    ]


def test_module_names_resolve_to_a_module_or_a_name_in_one():
    """Modules, packages and their top-level names resolve; a moved or removed one does not."""
    assert resolves("shieldaudit.store")
    assert resolves("shieldaudit.store.summary.step")
    assert resolves("shieldaudit.listener.ListenerStatus")  # imported into the package
    assert resolves("shieldaudit.__version__")
    assert not resolves("shieldaudit.store.nothing_here")
    assert not resolves("shieldaudit.store.summary.no_such_function")
    assert DOTTED.findall("`shieldaudit.service` and shieldaudit.hook.") == ["shieldaudit.hook"]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_quoted_path_exists(document):
    """Each path the document quotes is in the repository (rename it there when a file moves)."""
    missing = missing_paths(document)
    assert not missing, f"{document.name} quotes paths that are not there:\n" + "\n".join(missing)
