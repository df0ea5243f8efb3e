"""Seals: signed, chained records of every trail's head, so deletions and truncations show.

A hash chain proves that what is there was not changed, never that nothing
was removed from its end. A seal records, at one moment, each trail's head
(last ``seq``, its ``mac``, the first sealed segment still kept), the trails
``prune`` removed (tombstones) and the segments retention removed since the
previous seal. Seals are chained like entries (each one's ``prev`` is the
previous seal's ``mac``) and signed with the key entries are signed with.

``<root>/seals/seals.jsonl`` holds one seal per line::

    {"seal":N,"ts":"…","prev":"<mac of seal N-1, or 64 zeros>",["epoch":E,]
     "heads":{"<id>":[seq,"<mac>",first_segment],…},
     "tombstones":{"<id>":[seq,"<mac>"],…},"retired":{"<id>":[segment,…],…},
     "chain":"…","mac":"…"}

``heads`` lists the trails that are new or moved since the previous seal;
folding every seal in order gives each trail's sealed head. A seal never
moves a head back or forgets a trail that vanished without a tombstone: what
it finds wrong it reports and leaves sealed, so tampering stays visible to
every later ``verify``.

With an evolving key the seal is signed with the current epoch's key and
then the key file is replaced by the next epoch's key. The commit point is
that replacement: the seal is first written to ``seals/pending.json``, then
the key advances, then the seal is appended and the pending file removed. A
crash before the key advanced leaves a pending seal of the still-open epoch,
which the next seal discards; a crash after it leaves one of the closed
epoch, which the next seal appends (and ``verify`` counts meanwhile).

The functions that encode, fold and judge seals are pure; file access is in
:func:`seal_now`, :func:`load` and :func:`read_heads`.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, NamedTuple

from shieldaudit.core import ids
from shieldaudit.core.errors import StorageError, UnsafePathError
from shieldaudit.core.timefmt import format_ns
from shieldaudit.store import chain, fskey, layout, pending, tailscan

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from pathlib import Path

    from shieldaudit.core.models import Fields
    from shieldaudit.core.settings import StoreSettings

SEALS_DIR: Final = "seals"
SEALS_FILE: Final = "seals.jsonl"
PENDING_SEAL: Final = "pending.json"
_TAIL_CHUNK: Final = 4096
_SEQ_PREFIX: Final = b'{"seq":'
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_MAX_SEALS_BYTES: Final = 1024**3


class Head(NamedTuple):
    """A trail's head: last ``seq``, its ``mac``, the lowest sealed segment kept (0: none).

    Tuples, not dataclasses: a seal builds and compares one per trail.
    """

    seq: int
    mac: str
    first: int


#: A trail that is there but cannot be read safely (see :func:`read_heads`).
UNREADABLE: Final = Head(-1, "", 0)


class Pin(NamedTuple):
    """A head a seal recorded: entry ``seq`` had ``mac`` when seal ``seal`` (epoch) was made."""

    seq: int
    mac: str
    seal: int
    epoch: int | None


@dataclass(slots=True)
class Sealed:
    """What the seals say of one trail."""

    head: Head
    pins: list[Pin] = field(default_factory=list)


@dataclass(slots=True)
class Fold:
    """The seals folded in order: every trail's sealed head, and what is wrong with the seals."""

    trails: dict[str, Sealed] = field(default_factory=dict)
    tombstones: dict[str, tuple[int, str, int]] = field(default_factory=dict)  # seq, mac, seal
    last: int = 0
    last_mac: str = chain.GENESIS
    last_ts: str = ""
    last_epoch: int | None = None
    count: int = 0
    unchecked: int = 0  # seals of earlier epochs (need the verification key)
    problems: list[str] = field(default_factory=list)  # about the seals themselves


# --- pure: encoding ----------------------------------------------------------


def encode(
    number: int,
    ts: str,
    prev: str,
    *,
    heads: Mapping[str, Head],
    tombstones: Mapping[str, tuple[int, str]],
    retired: Mapping[str, Iterable[int]],
    key: chain.Key | None,
) -> tuple[bytes, str]:
    """Return one seal line (newline included) and its mac (pure)."""
    body: dict[str, object] = {"seal": number, "ts": ts, "prev": prev}
    if key is not None and key.epoch is not None:
        body["epoch"] = key.epoch
    body["heads"] = {cid: [h.seq, h.mac, h.first] for cid, h in sorted(heads.items())}
    body["tombstones"] = {cid: [s, m] for cid, (s, m) in sorted(tombstones.items())}
    body["retired"] = {cid: sorted(set(n)) for cid, n in sorted(retired.items())}
    body["chain"] = chain.alg_name(key)
    return chain.seal(body, key)


def _parse(line: bytes) -> dict[str, object]:
    """Return a seal line's fields; raise ValueError saying what is wrong (pure)."""
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        raise ValueError("not JSON") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    number = value.get("seal")
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise ValueError("missing or invalid seal number")
    for name, kind in (("prev", str), ("chain", str), ("mac", str), ("ts", str)):
        if not isinstance(value.get(name), kind):
            raise ValueError(f"missing or invalid {name}")
    for name in ("heads", "tombstones", "retired"):
        if not isinstance(value.get(name), dict):
            raise ValueError(f"missing or invalid {name}")
    return value


# --- pure: folding ------------------------------------------------------------


def fold(lines: Iterable[bytes], keys: chain.KeyRing) -> Fold:
    """Fold seal lines in order, checking each one's mac, number, link and epoch (pure)."""
    result = Fold()
    for lineno, line in enumerate(lines, 1):
        try:
            record = _parse(line)
        except ValueError as exc:
            result.problems.append(f"seals line {lineno}: not a seal ({exc})")
            continue
        apply(result, line, record, keys)
    return result


def apply(result: Fold, line: bytes, record: Mapping[str, object], keys: chain.KeyRing) -> None:
    """Check one parsed seal against the fold so far and, if it is in order, add it (pure)."""
    number = record["seal"]
    assert isinstance(number, int)  # noqa: S101 -- _parse checked it
    expected = result.last + 1
    name = f"seal {number}"
    if number < expected:
        result.problems.append(f"{name}: out of order (expected seal {expected}): a seal replayed")
        return
    if number > expected:
        gap = f"seal {expected}" if number == expected + 1 else f"seals {expected} to {number - 1}"
        result.problems.append(f"{name}: {gap} missing (removed from the seals)")
    elif record["prev"] != result.last_mac:
        result.problems.append(
            f"{name}: chain broken: prev does not match the mac of seal {result.last} "
            "(a seal was replaced)",
        )
    epoch = record.get("epoch")
    want, why = chain.expected_mac(line, str(record["chain"]), keys, epoch)
    if why == chain.EARLIER_EPOCH:
        result.unchecked += 1
    elif want is None:
        result.problems.append(f"{name}: cannot check: {why}")
    elif record["mac"] != want:
        result.problems.append(f"{name}: modified: its mac does not match its content")
    _check_epoch(result, name, epoch)
    _add(result, number, record, epoch if isinstance(epoch, int) else None)


def _check_epoch(result: Fold, name: str, epoch: object) -> None:
    if epoch is None:
        if result.last_epoch is not None:
            result.problems.append(
                f"{name}: not signed with the evolving key although earlier seals are (downgrade)"
            )
        return
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        result.problems.append(f"{name}: invalid epoch")
        return
    want = 0 if result.last_epoch is None else result.last_epoch + 1
    if epoch != want:
        what = (
            "the seals of an evolving key start at epoch 0"
            if result.last_epoch is None
            else f"the seal before it is epoch {result.last_epoch}"
        )
        result.problems.append(
            f"{name}: signed in epoch {epoch}, but {what}: seals are missing, or the history "
            "was re-created with a later key",
        )


def _add(result: Fold, number: int, record: Mapping[str, object], epoch: int | None) -> None:
    tombstones = record["tombstones"]
    heads = record["heads"]
    retired = record["retired"]
    assert isinstance(tombstones, dict)  # noqa: S101 -- _parse checked them
    assert isinstance(heads, dict)  # noqa: S101
    assert isinstance(retired, dict)  # noqa: S101
    for cid, value in tombstones.items():
        if isinstance(value, list) and len(value) == 2:
            result.trails.pop(cid, None)
            result.tombstones[cid] = (_int(value[0]), str(value[1]), number)
    for cid, value in heads.items():
        if not (isinstance(value, list) and len(value) == 3):
            continue
        head = Head(_int(value[0]), str(value[1]), _int(value[2]))
        sealed = result.trails.get(cid)
        if sealed is None:
            sealed = result.trails[cid] = Sealed(head)
        sealed.head = head
        sealed.pins.append(Pin(head.seq, head.mac, number, epoch))
    _retire(result, retired)
    result.last = number
    result.last_mac = str(record["mac"])
    result.last_ts = str(record["ts"])
    result.last_epoch = epoch if epoch is not None else result.last_epoch
    result.count += 1


def _retire(result: Fold, retired: Mapping[str, object]) -> None:
    for cid, numbers in retired.items():
        sealed = result.trails.get(cid)
        if sealed is None or not isinstance(numbers, list):
            continue
        top = max((_int(n) for n in numbers), default=0)
        if top >= sealed.head.first:
            h = sealed.head
            sealed.head = Head(h.seq, h.mac, top + 1)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def apply_pending(
    result: Fold,
    tombstones: Iterable[Mapping[str, object]],
    retired: Iterable[Mapping[str, object]],
) -> None:
    """Add the removals recorded since the last seal, as the next seal will (pure)."""
    for record in tombstones:
        cid = str(record["container_id"])
        result.trails.pop(cid, None)
        result.tombstones[cid] = (_int(record.get("seq")), str(record.get("mac")), 0)
    by_trail: dict[str, list[object]] = {}
    for record in retired:
        by_trail.setdefault(str(record["container_id"]), []).append(record.get("segment"))
    _retire(result, by_trail)


# --- pure: judging ----------------------------------------------------------------


def compare(result: Fold, current: Mapping[str, Head]) -> tuple[dict[str, Head], dict[str, str]]:
    """Return the heads a new seal records, and what is wrong per trail (pure).

    Wrong: a trail behind its sealed head (tail truncated), at its sealed ``seq``
    with another mac (rewritten), missing sealed segments that retention did not
    record, or gone without a tombstone. A wrong trail keeps its sealed head.
    """
    changes: dict[str, Head] = {}
    problems: dict[str, str] = {}
    for cid, head in current.items():
        sealed = result.trails.get(cid)
        if head.seq < 0 or (sealed is None and head.seq == 0):
            continue  # unreadable (verify says why), or nothing to seal yet
        if sealed is None:
            changes[cid] = head
            continue
        was = sealed.head
        pin = sealed.pins[-1].seal if sealed.pins else result.last
        if head.seq < was.seq:
            problems[cid] = (
                f"tail truncated: the trail ends at seq {head.seq} but seal {pin} "
                f"recorded seq {was.seq}"
            )
        elif head.seq == was.seq and head.mac != was.mac:
            problems[cid] = f"seq {was.seq} differs from seal {pin}: history rewritten"
        elif _segments_missing(was.first, head.first):
            problems[cid] = (
                f"sealed segment {layout.segment_name(max(was.first, 1))} missing "
                "(not removed by retention)"
            )
        elif head != was:
            changes[cid] = head
    for cid, sealed in result.trails.items():
        if cid not in current:
            pin = sealed.pins[-1].seal if sealed.pins else result.last
            problems[cid] = (
                f"trail removed without a tombstone (seal {pin} recorded seq {sealed.head.seq})"
            )
    return changes, problems


def _segments_missing(sealed_first: int, first: int) -> bool:
    """Return whether sealed segments the seals expect are gone (0: no sealed segment)."""
    if sealed_first == 0:
        return first > 1
    return first == 0 or first > sealed_first


def key_problems(result: Fold, series: fskey.Series | None, *, on_host: bool) -> list[str]:
    """Return what is wrong between the seals and the evolving key's epoch (pure).

    On the host, the key file's epoch must be one past the last seal's: a
    missing seal at the end (or a key put back) shows there.
    """
    if series is None or not on_host:
        return []
    expected = 0 if result.last_epoch is None else result.last_epoch + 1
    if series.epoch == expected:
        return []
    if series.epoch > expected:
        gap = (
            f"epoch {expected}"
            if series.epoch == expected + 1
            else f"epochs {expected} to {series.epoch - 1}"
        )
        return [
            f"seals: the signing key is at epoch {series.epoch}: the seals of {gap} are missing"
        ]
    rolled_back = (
        f"seals: the signing key is at epoch {series.epoch} but the seals reach epoch "
        f"{result.last_epoch}: the key file was put back"
    )
    return [rolled_back]


def entry_checker(result: Fold, container_id: str) -> Callable[[int, Fields], str | None]:
    """Return the per-entry check of one trail against its seals (pure).

    An entry at a sealed ``seq`` must have the sealed mac. An entry signed with
    an evolving key must carry the epoch of the first seal that covers it
    (entries are written before the seal that closes their epoch), or, when no
    seal covers it yet, an epoch no seal has closed. A history re-signed with a
    later key fails here even where its macs are good.
    """
    sealed = result.trails.get(container_id)
    pins = sealed.pins if sealed is not None else []
    by_seq = {p.seq: p for p in pins}
    last_epoch = result.last_epoch

    def check(seq: int, entry: Fields) -> str | None:
        wrong_epoch = epoch_problem(seq, entry)
        if wrong_epoch is not None:
            return wrong_epoch
        pin = by_seq.get(seq)
        if pin is not None and entry.get("mac") != pin.mac:
            return f"differs from seal {pin.seal}, which recorded this entry: history rewritten"
        return None

    def epoch_problem(seq: int, entry: Fields) -> str | None:
        epoch = entry.get("epoch")
        if not isinstance(epoch, int) or not str(entry.get("chain", "")).startswith(
            chain.ALG_EVOLVING_PREFIX
        ):
            return None
        cover = next((p for p in pins if p.seq >= seq), None)
        if cover is None:
            if last_epoch is not None and epoch <= last_epoch:
                return (
                    f"signed in epoch {epoch}, which seal {result.last} already closed: "
                    "written or re-signed after its epoch ended"
                )
            return None
        if cover.epoch != epoch:
            return (
                f"signed in epoch {epoch} but first sealed by seal {cover.seal} "
                f"(epoch {cover.epoch}): re-signed with another epoch's key"
            )
        return None

    return check


# --- I/O --------------------------------------------------------------------------


def read_heads(root_fd: int, root: Path) -> dict[str, Head]:
    """Return every trail's head, reading each from the end of its newest segment.

    A trail without a valid entry has ``seq`` 0; one that cannot be read
    safely is :data:`UNREADABLE` (``verify`` reports why on its own): it is
    there, so it is neither sealed nor taken for removed.
    """
    try:
        containers_fd = layout.open_subdir(
            root_fd, layout.CONTAINERS_DIR, layout.containers_path(root), create=False
        )
    except FileNotFoundError:
        return {}
    heads: dict[str, Head] = {}
    try:
        for cid in os.listdir(containers_fd):
            if not ids.is_container_id(cid):
                continue
            try:
                heads[cid] = trail_head(containers_fd, cid, root)
            except (OSError, StorageError, UnsafePathError):
                heads[cid] = UNREADABLE
    finally:
        os.close(containers_fd)
    return heads


def trail_head(containers_fd: int, cid: str, root: Path) -> Head:
    """Return one trail's head (``seq`` 0 when it has no valid entry); raise if it is unsafe.

    The common case costs a handful of system calls and no path objects: a
    seal reads every trail's head, and 10,000 trails must take under a second.
    """
    dir_fd = os.open(cid, _DIR_FLAGS, dir_fd=containers_fd)
    try:
        layout.check_dir(dir_fd, containers_fd, f"{root}/{layout.CONTAINERS_DIR}/{cid}")
        numbers = layout.list_segment_numbers(dir_fd)
        try:
            fd = os.open(layout.ACTIVE_FILE, _FILE_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            fd = -1
        try:
            size = _regular_size(fd, root, cid) if fd >= 0 else 0
            head = _quick_head(fd, size) if size else None
            if head is None:
                end = tailscan.complete_end(fd, size) if size else 0
                head = tailscan.find_head(dir_fd, fd, end, layout.trail_dir(root, cid))
        finally:
            if fd >= 0:
                os.close(fd)
    finally:
        os.close(dir_fd)
    seq, mac = head
    return Head(seq, mac, numbers[0] if numbers else 0)


def _regular_size(fd: int, root: Path, cid: str) -> int:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        shown = layout.trail_dir(root, cid) / layout.ACTIVE_FILE
        raise UnsafePathError(f"{shown} is not a regular file: remove it")
    return st.st_size


def _quick_head(fd: int, size: int) -> tuple[int, str] | None:
    """Return the head from the last 4 KiB of the active segment, when the last entry is there.

    The line is recognised by its fixed frame (``{"seq":N,`` … ``,"mac":"<hex>"}``)
    without decoding it; anything else goes the slow way (:func:`tailscan.find_head`).
    """
    start = max(0, size - _TAIL_CHUNK)
    data = os.pread(fd, size - start, start)
    end = data.rfind(b"\n")
    begin = data.rfind(b"\n", 0, end) if end > 0 else -1
    if end < 0 or (begin < 0 and start > 0):
        return None
    line = data[begin + 1 : end]
    mac = chain.line_mac(line)
    if mac is None or not line.startswith(_SEQ_PREFIX):
        return None
    digits = line[len(_SEQ_PREFIX) : line.find(b",", len(_SEQ_PREFIX))]
    if not digits.isdigit() or digits.startswith(b"0"):
        return None
    return int(digits), mac


def _open_seals_dir(root_fd: int, root: Path, *, create: bool) -> int:
    return layout.open_subdir(root_fd, SEALS_DIR, root / SEALS_DIR, create=create)


def _read_lines(seals_fd: int, root: Path) -> tuple[list[bytes], int]:
    """Return the complete lines of ``seals.jsonl`` and where they end."""
    try:
        fd = layout.open_regular(seals_fd, SEALS_FILE, os.O_RDONLY, root / SEALS_DIR / SEALS_FILE)
    except FileNotFoundError:
        return [], 0
    try:
        size = os.fstat(fd).st_size
        end = tailscan.complete_end(fd, min(size, _MAX_SEALS_BYTES))
        data = os.pread(fd, end, 0)
    finally:
        os.close(fd)
    return [line for line in data.split(b"\n") if line], end


def _read_pending_seal(seals_fd: int) -> bytes | None:
    try:
        fd = os.open(PENDING_SEAL, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=seals_fd)
    except FileNotFoundError:
        return None
    try:
        data = os.read(fd, _MAX_SEALS_BYTES)
    finally:
        os.close(fd)
    return data.rstrip(b"\n") if data.endswith(b"\n") else None


def _pending_applies(result: Fold, line: bytes, series: fskey.Series | None) -> bool:
    """Return whether a pending seal was committed (its key step done) and is not appended yet."""
    try:
        record = _parse(line)
    except ValueError:
        return False
    epoch = record.get("epoch")
    return (
        series is not None
        and record["seal"] == result.last + 1
        and record["prev"] == result.last_mac
        and isinstance(epoch, int)
        and epoch == series.epoch - 1
    )


@dataclass(frozen=True, slots=True)
class Loaded:
    """The seals as ``verify`` sees them, with the removals recorded since the last one."""

    fold: Fold
    present: bool  # whether any seal exists


def load(root: Path, keys: chain.KeyRing, host_series: fskey.Series | None) -> Loaded:
    """Fold the seals, a committed pending seal, and the pending removals (for ``verify``)."""
    root_fd = layout.open_root(root, create=False)
    try:
        try:
            seals_fd = _open_seals_dir(root_fd, root, create=False)
        except FileNotFoundError:
            return Loaded(Fold(), present=False)
        try:
            lines, _ = _read_lines(seals_fd, root)
            result = fold(lines, keys)
            extra = _read_pending_seal(seals_fd)
        finally:
            os.close(seals_fd)
        if extra is not None and _pending_applies(result, extra, host_series):
            apply(result, extra, _parse(extra), keys)
        apply_pending(
            result,
            pending.peek(root_fd, root, pending.TOMBSTONES),
            pending.peek(root_fd, root, pending.RETIRED),
        )
        return Loaded(result, present=result.count > 0)
    finally:
        os.close(root_fd)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one seal did and found."""

    number: int
    ts: str
    trails: int  # trails with an entry
    changed: int
    tombstones: int
    retired: int
    epoch: int | None
    problems: dict[str, str]  # container ID -> what is wrong
    seal_problems: list[str]


def seal_now(settings: StoreSettings, *, clock: Callable[[], int] = time.time_ns) -> Outcome:
    """Write a seal of every trail now (and advance an evolving key); return what it did.

    Holds the seal lock exclusively throughout (:class:`pending.SealLock`): writers with an evolving
    key wait (bounded) and no entry of the epoch being closed is in flight.
    """
    root = settings.root
    root_fd = layout.open_root(root, create=True)
    try:
        with pending.SealLock(root_fd, root, shared=False):
            return _seal_locked(settings, root_fd, clock)
    finally:
        os.close(root_fd)


def _seal_locked(settings: StoreSettings, root_fd: int, clock: Callable[[], int]) -> Outcome:
    root = settings.root
    keys = chain.store_keys(settings)
    series = keys.series
    seals_fd = _open_seals_dir(root_fd, root, create=True)
    records: list[int] = []
    try:
        result, end = _recover(seals_fd, root, keys, series)
        for name in (pending.TOMBSTONES, pending.RETIRED):
            fd = pending.open_state_file(root_fd, root, name)
            records.append(fd)
            pending.lock(fd, f"state/{name}")
        tombstones = pending.read_records(records[0])
        retired = pending.read_records(records[1])
        apply_pending(result, tombstones, retired)
        current = read_heads(root_fd, root)
        changes, problems = compare(result, current)
        ts = format_ns(clock())
        retired_by: dict[str, list[int]] = {}
        for record in retired:
            retired_by.setdefault(str(record["container_id"]), []).append(
                _int(record.get("segment"))
            )
        line, _ = encode(
            result.last + 1,
            ts,
            result.last_mac,
            heads=changes,
            tombstones={
                str(r["container_id"]): (_int(r.get("seq")), str(r.get("mac"))) for r in tombstones
            },
            retired=retired_by,
            key=keys.signer,
        )
        _commit(settings, seals_fd, root, line, end=end, series=series)
        for fd in records:
            if os.fstat(fd).st_size:
                os.ftruncate(fd, 0)  # consumed: the seal above records them
                os.fsync(fd)
    finally:
        for fd in records:
            os.close(fd)
        os.close(seals_fd)
    return Outcome(
        result.last + 1,
        ts,
        len(current),
        len(changes),
        len(tombstones),
        len(retired),
        series.epoch if series is not None else None,
        problems,
        result.problems,
    )


def _recover(
    seals_fd: int, root: Path, keys: chain.KeyRing, series: fskey.Series | None
) -> tuple[Fold, int]:
    """Fold the seals; finish or discard a seal left pending by a crash; return where they end."""
    lines, end = _read_lines(seals_fd, root)
    result = fold(lines, keys)
    extra = _read_pending_seal(seals_fd)
    if extra is not None and _pending_applies(result, extra, series):
        _append(seals_fd, root, extra + b"\n", end)
        end += len(extra) + 1
        apply(result, extra, _parse(extra), keys)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(PENDING_SEAL, dir_fd=seals_fd)
        layout.fsync_dir(seals_fd)
    return result, end


def _commit(
    settings: StoreSettings,
    seals_fd: int,
    root: Path,
    line: bytes,
    *,
    end: int,
    series: fskey.Series | None,
) -> None:
    """Make the seal durable after ``end``; with an evolving key, step the key (the commit)."""
    if series is None:
        _append(seals_fd, root, line, end)
        return
    assert settings.key_file is not None  # noqa: S101 -- an evolving ring comes from a key file
    temp = PENDING_SEAL + ".tmp"
    fd = os.open(
        temp,
        os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
        dir_fd=seals_fd,
    )
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, PENDING_SEAL, src_dir_fd=seals_fd, dst_dir_fd=seals_fd)
    layout.fsync_dir(seals_fd)
    step = fskey.encode(
        fskey.SIGNING_HEADER, series.kid, series.epoch + 1, fskey.evolve(series.secret)
    )
    fskey.replace(settings.key_file, step)  # the commit point: epoch closed, old key gone
    _append(seals_fd, root, line, end)
    os.unlink(PENDING_SEAL, dir_fd=seals_fd)
    layout.fsync_dir(seals_fd)


def _append(seals_fd: int, root: Path, line: bytes, end: int) -> None:
    """Append a seal line durably, cutting a torn line a crash may have left first."""
    shown = root / SEALS_DIR / SEALS_FILE
    fd = layout.open_regular(seals_fd, SEALS_FILE, os.O_RDWR | os.O_CREAT, shown, single_link=True)
    try:
        if os.fstat(fd).st_size != end:
            os.ftruncate(fd, end)
        os.pwrite(fd, line, end)
        os.fsync(fd)
    finally:
        os.close(fd)
    layout.fsync_dir(seals_fd)


def last_seal_time(root: Path) -> float | None:
    """Return when the last seal was made (seconds since the epoch), or None (for metrics)."""
    try:
        root_fd = layout.open_root(root, create=False)
    except StorageError:
        return None
    try:
        seals_fd = _open_seals_dir(root_fd, root, create=False)
    except (FileNotFoundError, StorageError, UnsafePathError):
        os.close(root_fd)
        return None
    try:
        fd = layout.open_regular(seals_fd, SEALS_FILE, os.O_RDONLY, root / SEALS_DIR / SEALS_FILE)
    except (FileNotFoundError, StorageError, UnsafePathError):
        return None
    finally:
        os.close(seals_fd)
        os.close(root_fd)
    try:
        end = tailscan.complete_end(fd, os.fstat(fd).st_size)
        for line in tailscan.reverse_lines(fd, end):
            with contextlib.suppress(ValueError):
                return seconds(str(_parse(line)["ts"]))
    finally:
        os.close(fd)
    return None


def seconds(ts: str) -> float:
    """Return an entry-format timestamp as seconds since the epoch."""
    from datetime import datetime  # noqa: PLC0415 -- only for the metric

    return datetime.fromisoformat(ts).timestamp()
