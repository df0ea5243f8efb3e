"""RFC 3339 timestamps: formatting (hook hot path, stdlib only) and parsing."""

from __future__ import annotations

import time
from datetime import UTC, datetime

_NS_PER_S = 1_000_000_000
_NS_PER_US = 1_000


def format_ns(ns: int) -> str:
    """Format nanoseconds since the epoch as RFC 3339 UTC with microseconds.

    >>> format_ns(1_795_000_000_123_456_789)
    '2026-11-18T11:06:40.123456Z'
    """
    seconds, rest = divmod(ns, _NS_PER_S)
    global _last_prefix  # noqa: PLW0603 -- a one-entry cache: appends come many per second
    cached = _last_prefix  # read once: another thread may replace it meanwhile
    if cached[0] != seconds:
        cached = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(seconds)))
        _last_prefix = cached
    return f"{cached[1]}{rest // _NS_PER_US:06d}Z"


_last_prefix: tuple[int, str] = (-1, "")


def now_ts() -> str:
    """Return the current time as an entry timestamp."""
    return format_ns(time.time_ns())


def parse_ts(value: str) -> datetime:
    """Parse an RFC 3339 timestamp (entries use ``...Z``); raise ValueError when it is not one."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
