"""Parsing the times and ages people type: RFC 3339 instants and relative ages (pure).

``--since``/``--until`` take either an RFC 3339 timestamp (``2026-11-22T10:42:12Z``,
an offset, or a plain date) or a relative age (``30s``, ``10m``, ``2h``, ``7d``,
``1w``) meaning "that long before now". ``prune --older-than`` takes an age
only. Nothing here reads the clock: ``now`` is passed in.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

from shieldaudit.core.errors import UsageError
from shieldaudit.core.timefmt import parse_ts

#: Seconds per unit of a relative age.
UNITS: Final[dict[str, int]] = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_AGE: Final = re.compile(r"(\d{1,9})([smhdw])")
_AGES: Final = re.compile(r"(?:\d{1,9}[smhdw])+")
#: Past this an age means nothing for a trail and would overflow datetime arithmetic.
MAX_AGE: Final = timedelta(days=365 * 1000)
_FORMS: Final = "an RFC 3339 time (2026-11-22T10:42:12Z) or an age like 30s, 10m, 2h, 7d, 1w"


def parse_age(text: str, *, what: str = "age") -> timedelta:
    """Parse a relative age such as ``10m`` or ``1h30m`` (units s, m, h, d, w).

    Raises:
        UsageError: the text is not an age (exit 2).
    """
    value = text.strip().lower()
    pos = 0
    total = 0
    for match in _AGE.finditer(value):
        if match.start() != pos:
            break
        total += int(match.group(1)) * UNITS[match.group(2)]
        pos = match.end()
    if not value or pos != len(value):
        raise UsageError(f"invalid {what} {text!r}: give an age like 30s, 10m, 2h, 7d or 1w")
    age = timedelta(seconds=total)
    if age > MAX_AGE:
        raise UsageError(f"invalid {what} {text!r}: longer than {MAX_AGE.days} days")
    return age


def parse_time(text: str, now: datetime, *, what: str = "time") -> datetime:
    """Parse an RFC 3339 time or a relative age (``now`` minus it) into an aware UTC datetime.

    A time without an offset is taken as UTC; a plain date means its midnight UTC.

    Raises:
        UsageError: neither form (exit 2).
    """
    value = text.strip()
    if _AGES.fullmatch(value.lower()):
        return now.astimezone(UTC) - parse_age(value, what=what)
    try:
        return parse_ts(value)
    except (ValueError, OverflowError):
        raise UsageError(f"invalid {what} {text!r}: give {_FORMS}") from None


def ts_bound(moment: datetime) -> str:
    """Format a bound exactly like entry timestamps, so the two compare as strings.

    >>> ts_bound(datetime(2026, 11, 22, 10, 42, 12, 5, tzinfo=UTC))
    '2026-11-22T10:42:12.000005Z'
    """
    m = moment.astimezone(UTC)
    # Formatted by hand: strftime("%Y") does not zero-pad years before 1000.
    return (
        f"{m.year:04d}-{m.month:02d}-{m.day:02d}T"
        f"{m.hour:02d}:{m.minute:02d}:{m.second:02d}.{m.microsecond:06d}Z"
    )
