"""``shieldaudit verify``: check every chain (or one container's), exit 0 or 1."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from shieldaudit.cli.complete import container_names
from shieldaudit.cli.context import app
from shieldaudit.cli.fleet import conflict_reports, fleet_verify
from shieldaudit.cli.resolve import resolve_container
from shieldaudit.core.errors import (
    EXIT_FAILURE,
    ConfigError,
    ContainerNotFoundError,
    ShieldAuditError,
    UsageError,
)
from shieldaudit.fleet import check as fleet_check
from shieldaudit.store import chain, fskey, layout, seals
from shieldaudit.store.trails import Trails
from shieldaudit.store.verify import Report, verify_container

if TYPE_CHECKING:
    from shieldaudit.store.chain import KeyRing
    from shieldaudit.store.verify import EntryCheck


def _refuse_empty(
    ctx: click.Context,  # noqa: ARG001 -- click's callback signature
    param: click.Parameter,  # noqa: ARG001
    verification_key: str | None,
) -> str | None:
    """An empty ``--verification-key`` is a usage error, not the same as leaving it out."""
    if verification_key is not None and not verification_key.strip():
        raise UsageError(
            "--verification-key is empty: give the verification key file "
            "that 'shieldaudit keys init' wrote"
        )
    return verification_key


@click.command("verify")
@click.argument("container", required=False, shell_complete=container_names)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per container.")
@click.option(
    "--verification-key",
    "verification_key",
    metavar="FILE",
    default=None,
    callback=_refuse_empty,
    help="The evolving key's verification key: check every epoch, not only the current one.",
)
@click.option(
    "--against",
    metavar="DIRECTORY",
    default=None,
    help="Another copy of this root (a node's central copy, or the node): say where they part.",
)
@click.pass_context
def verify_command(  # noqa: C901, PLR0912 -- one pass over the trails, then the seals' verdict
    ctx: click.Context,
    *,
    container: str | None,
    as_json: bool,
    verification_key: str | None,
    against: str | None,
) -> None:
    """Verify the hash chain of every trail (or of CONTAINER).

    Prints one line per problem (container, segment, seq, what is wrong; the
    first 20 per container, then how many more) and a summary; exits 1 if any
    chain does not hold. CONTAINER is a name (the most
    recent container to bear it) or a unique ID prefix. Notes (history
    shortened by retention, a torn final line) go to stderr.

    With seals (see 'shieldaudit seal'), also checks every trail against the
    seals: a truncated tail, a trail removed without a tombstone, a missing
    sealed segment, a missing, edited or reordered seal. With an evolving key,
    --verification-key FILE checks every epoch; without it only the current
    epoch can be checked, and a note says how much could not.
    """
    context = app(ctx)
    settings = context.settings()
    if against is not None or fleet_check.is_fleet(settings.root):
        ctx.exit(
            fleet_verify(
                settings.root, against, container=container, as_json=as_json, key=verification_key
            )
        )
    host = context.keys()
    keys = host if verification_key is None else _with_verification_key(host, verification_key)
    root = settings.root
    with Trails(root) as trails:
        trails.check_state()  # writers refuse a loose state/: say so here too
        ids = [] if container else trails.ids()
    if container:
        ids = [resolve_container(root, container)]
    fold, sealed_problems = _seal_view(root, keys, host, ids if container else None)
    seal_lines = [*fold.problems, *seals.key_problems(fold, host.series, on_host=True)]
    reports: list[Report] = []
    gone = sorted(set(sealed_problems) - set(ids)) if not container else []
    for container_id in [*ids, *gone]:
        report: Report | None = Report(container_id)
        if container_id not in gone:
            report = _verify_one(
                root,
                container_id,
                keys,
                settings.keep_segments,
                explicit=container is not None,
                check=seals.entry_checker(fold, container_id) if fold.count else None,
            )
        if report is None:
            continue
        if container_id in sealed_problems:
            report.add("seals", None, sealed_problems[container_id])
        reports.append(report)
        if as_json:
            click.echo(json.dumps(_as_dict(report)))
            continue
        for problem in report.problems:
            click.echo(problem.render())
        if report.more_problems:
            click.echo(more_line(report))
        for note in report.notes:
            click.echo(f"{container_id[:12]} note: {note}", err=True)
    failed = [r for r in reports if not r.ok]
    failed += conflict_reports(root)
    unchecked = sum(r.unchecked for r in reports)
    if as_json:
        if fold.count or seal_lines:
            row = {"seals": fold.count, "ok": not seal_lines, "problems": seal_lines}
            click.echo(json.dumps(row | {"unchecked_seals": fold.unchecked}))
    else:
        for line in seal_lines:
            click.echo(line)
        if unchecked or fold.unchecked:
            click.echo(
                f"note: {unchecked} entries and {fold.unchecked} seal(s) signed in earlier epochs "
                "of the evolving key were not checked (this host no longer holds those keys): "
                "run 'shieldaudit verify --verification-key FILE' where the verification key is",
                err=True,
            )
        entries = sum(r.entries for r in reports)
        problems = sum(r.problem_count for r in reports) + len(seal_lines)
        verdict = "FAILED" if failed or seal_lines else "OK"
        sealed = f", {fold.count} seal(s)" if fold.count else ""
        click.echo(
            f"{verdict}: {len(reports)} container(s), {entries} entries{sealed}, "
            f"{problems} problem(s) in {len(failed)} container(s)",
        )
    if failed or seal_lines:
        ctx.exit(EXIT_FAILURE)


def _root_exists(root: Path) -> bool:
    return (root / seals.SEALS_DIR).is_dir() or (root / layout.STATE_DIR).is_dir()


def _seal_view(
    root: Path, keys: KeyRing, host: KeyRing, only: list[str] | None
) -> tuple[seals.Fold, dict[str, str]]:
    """Return the folded seals and, per trail, what they show wrong with it.

    The heads are read before the seals and the pending removals, so a trail
    pruned meanwhile is seen either present or with its tombstone. A trail
    seen removed is looked at once more, in case a seal consumed its
    tombstone between the two reads.
    """
    if not _root_exists(root):
        return seals.Fold(), {}
    first = seals.load(root, keys, host.series).fold
    if not first.count:
        return first, {}  # nothing sealed yet: no head to compare with
    for _ in range(2):
        root_fd = layout.open_root(root, create=False)
        try:
            current = seals.read_heads(root_fd, root)
        finally:
            os.close(root_fd)
        fold = seals.load(root, keys, host.series).fold
        _, problems = seals.compare(fold, current)
        if only is not None:
            problems = {cid: p for cid, p in problems.items() if cid in only}
        if not set(problems) - set(current):
            break
    return fold, problems


def _with_verification_key(host: KeyRing, path_text: str) -> KeyRing:
    """Return the host's ring with the verification key's series (every epoch derivable)."""
    path = Path(path_text).expanduser()
    try:
        header, series = fskey.decode(chain.read_private(path), path)
    except ValueError as exc:
        raise ConfigError("--verification-key", "option", str(exc)) from None
    if header != fskey.VERIFICATION_HEADER:
        raise ConfigError(
            "--verification-key", "option", f"{path} is a signing key, not a verification key"
        )
    if host.series is not None and host.series.kid != series.kid:
        raise ConfigError(
            "--verification-key",
            "option",
            f"{path} verifies key {series.kid}, but this host signs with key {host.series.kid}",
        )
    static = tuple(k for k in host.keys if k.epoch is None)
    return chain.KeyRing((*static, chain.Key(series.secret, series.kid, 0)), series)


def _verify_one(
    root: Path,
    container_id: str,
    keys: KeyRing,
    keep: int,
    *,
    explicit: bool,
    check: EntryCheck | None = None,
) -> Report | None:
    """Verify one trail; verifying all, a vanished trail is skipped and an unsafe one reported."""
    try:
        return verify_container(root, container_id, keys, keep_segments=keep, entry_check=check)
    except ContainerNotFoundError:
        if explicit:
            raise
        return None  # pruned while we were verifying the others
    except ShieldAuditError as exc:
        if explicit:
            raise
        # An unsafe or unreadable trail is a problem of that trail, not the end of the run.
        report = Report(container_id)
        report.add("-", None, exc.message)
        return report


def more_line(report: Report) -> str:
    """Return the line that stands for the problems not printed (pure)."""
    more = report.more_problems
    noun = "problem" if more == 1 else "problems"
    return f"{report.container_id[:12]} … and {more} more {noun} in this trail"


def _as_dict(report: Report) -> dict[str, object]:
    return {
        "container_id": report.container_id,
        "ok": report.ok,
        "entries": report.entries,
        "first_seq": report.first_seq,
        "last_seq": report.last_seq,
        "segments": report.segments,
        "keyed": report.keyed,
        "problems": [
            {"segment": p.segment, "seq": p.seq, "message": p.message} for p in report.problems
        ],
        "problem_count": report.problem_count,
        "notes": report.notes,
    }
