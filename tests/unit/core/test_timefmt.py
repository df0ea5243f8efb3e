"""Entry timestamps: RFC 3339 UTC with microseconds, exact for any instant, parse round trip."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from shieldaudit.core.timefmt import format_ns, parse_ts

_NS = st.integers(min_value=0, max_value=4_102_444_800 * 10**9)  # until 2100


@given(ns=_NS)
def test_format_matches_datetime_and_round_trips(ns):
    """Any instant formats like datetime would (to the microsecond) and parses back."""
    text = format_ns(ns)
    expected = datetime.fromtimestamp(ns // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert text == f"{expected}.{ns % 10**9 // 1000:06d}Z"
    assert parse_ts(text) == datetime.fromtimestamp(ns // 1000 / 10**6, UTC).replace(
        microsecond=ns % 10**9 // 1000
    )


@given(first=_NS, second=_NS)
def test_cached_second_never_leaks_into_another_second(first, second):
    """The one-second prefix cache gives the right text when calls alternate seconds."""
    for ns in (first, second, first):
        seconds = datetime.fromtimestamp(ns // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        assert format_ns(ns).startswith(seconds + ".")
