"""Shared helpers for CLI tests: trails with known content and an in-process ``shieldaudit`` run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from click.testing import CliRunner

from shieldaudit.cli import run
from shieldaudit.core.settings import StoreSettings
from shieldaudit.store.writer import TrailWriter

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path

#: 2026-11-22T10:00:00Z in ns: trails written by these helpers start here.
T0 = 1_795_341_600 * 1_000_000_000
SECOND = 1_000_000_000


def cid(char: str) -> str:
    """Return a container ID made of one repeated hex character."""
    return char * 64


#: The containers of :func:`three_containers`: 'web' twice over time, then 'db'.
WEB_OLD = cid("a")
WEB_NEW = cid("b")
DB = cid("c")


def store(root: Path, **overrides: object) -> StoreSettings:
    """Store settings for tests (fsync off; overrides win)."""
    values: dict[str, object] = {"root": root, "fsync": "never", "max_segment_bytes": 1 << 20}
    values.update(overrides)
    return StoreSettings(**values)  # type: ignore[arg-type]


def write_trail(
    root: Path,
    container_id: str,
    actions: Iterable[str],
    *,
    name: str = "",
    image: str = "",
    start_ns: int = T0,
    step_ns: int = SECOND,
    source: str = "events",
    **overrides: object,
) -> int:
    """Append one entry per action, ``step_ns`` apart from ``start_ns``; return the next time."""
    clock_ns = start_ns
    with TrailWriter(store(root, **overrides)) as writer:
        for action in actions:
            fields = {"source": source, "action": action, "container": name, "image": image}
            writer.append(container_id, fields | {"ts": _ts(clock_ns)})
            clock_ns += step_ns
    return clock_ns


def three_containers(root: Path) -> Path:
    """A root with three containers: 'web' used twice over time, and 'db' still running."""
    write_trail(
        root,
        WEB_OLD,
        ["create", "init", "start", "died", "remove"],
        name="web",
        image="img:1",
        start_ns=T0,
    )
    write_trail(root, DB, ["create", "start"], name="db", image="pg:16", start_ns=T0 + 20 * SECOND)
    write_trail(
        root,
        WEB_NEW,
        ["create", "start", "died"],
        name="web",
        image="img:2",
        start_ns=T0 + 100 * SECOND,
    )
    return root


def podman_run(
    root: Path, container_id: str, start_ns: int, *, hooks: bool = True, name: str = "app"
) -> int:
    """One container run as Podman 4.3 with runc 1.1 writes it: hook entries, then events."""
    if hooks:
        start_ns = write_trail(
            root,
            container_id,
            ["createRuntime", "poststart"],
            name=name,
            source="hook",
            start_ns=start_ns,
            step_ns=SECOND // 100,
        )
    return write_trail(
        root,
        container_id,
        ["init", "start", "died"],
        name=name,
        start_ns=start_ns,
        step_ns=SECOND // 100,
    )


def _ts(ns: int) -> str:
    from shieldaudit.core.timefmt import format_ns  # noqa: PLC0415

    return format_ns(ns)


@dataclass(frozen=True)
class Result:
    """The outcome of one in-process CLI run."""

    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        """Stdout split into lines."""
        return self.out.splitlines()


def invoke(root: Path, *args: str, env: Mapping[str, str] | None = None) -> Result:
    """Run ``shieldaudit --root ROOT ARGS`` in-process through the real error display."""
    runner = CliRunner()
    base: dict[str, str | None] = {"SHIELDAUDIT_CONFIG": None, "SHIELDAUDIT_ROOT": None}
    with runner.isolation(env={**base, **(env or {})}) as (out, err, _):
        code = run(["--root", str(root), *args])
    return Result(code, out.getvalue().decode(), err.getvalue().decode())
