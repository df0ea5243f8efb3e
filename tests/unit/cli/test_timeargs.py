"""Parsing --since/--until/--older-than: RFC 3339 or a relative age; bounds compare as strings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from shieldaudit.cli.timeargs import UNITS, parse_age, parse_time, ts_bound
from shieldaudit.core.errors import UsageError
from shieldaudit.core.timefmt import format_ns

NOW = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
moments = st.datetimes(
    min_value=datetime(1, 1, 1),  # noqa: DTZ001 -- hypothesis wants naive bounds
    max_value=datetime(9999, 12, 31),  # noqa: DTZ001
    timezones=st.just(UTC),
)
# At most 4 parts of at most 10,000 weeks each: within the 1000-year limit.
ages = st.lists(
    st.tuples(st.integers(0, 10_000), st.sampled_from(sorted(UNITS))), min_size=1, max_size=4
)


@given(ages)
def test_age_is_the_sum_of_its_parts(parts):
    """'1h30m' style ages add up, in any unit order."""
    text = "".join(f"{n}{u}" for n, u in parts)
    assert parse_age(text) == timedelta(seconds=sum(n * UNITS[u] for n, u in parts))
    assert parse_time(text, NOW) == NOW - parse_age(text)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("10m", 600), ("2h", 7200), ("7d", 604800), ("1W", 604800)]
)
def test_documented_ages(text, seconds):
    """The units in the docs mean what they say (case-insensitive)."""
    assert parse_age(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["", "10", "m", "-5m", "5 m", "1.5h", "10y", "5mx", "99999999999d"])
def test_bad_ages_are_usage_errors(bad):
    """Anything else is a usage error (exit 2) naming the value."""
    with pytest.raises(UsageError) as info:
        parse_age(bad, what="--older-than")
    assert info.value.exit_code == 2
    assert "--older-than" in info.value.message


def ns_since_epoch(moment: datetime) -> int:
    """Exact nanoseconds since the epoch (``timestamp()`` is a float: off by 1 s in year 6326)."""
    return (moment - EPOCH) // timedelta(microseconds=1) * 1000


# The float oracle's falsifying example: the last microsecond of a far-future second.
@example(datetime(6326, 1, 1, 0, 0, 0, 999_999, tzinfo=UTC))
@given(moments)
def test_rfc3339_round_trips_and_matches_entry_format(moment):
    """A bound is formatted exactly like entry timestamps and parses back to itself."""
    bound = ts_bound(moment)
    assert len(bound) == 27
    assert parse_time(bound, NOW) == moment
    if moment.year >= 1970:  # format_ns takes ns since the epoch
        assert bound == format_ns(ns_since_epoch(moment))


@given(moments, moments)
def test_string_order_of_bounds_is_time_order(a, b):
    """Entry-format timestamps compare as strings exactly as the times compare."""
    assert (ts_bound(a) < ts_bound(b)) == (a < b)


def test_offsets_and_dates():
    """Offsets convert to UTC; a date alone is midnight UTC; no offset means UTC."""
    assert parse_time("2026-11-22T12:00:00+02:00", NOW) == datetime(2026, 11, 22, 10, tzinfo=UTC)
    assert parse_time("2026-11-22", NOW) == datetime(2026, 11, 22, tzinfo=UTC)
    assert parse_time("2026-11-22T10:00:00", NOW) == datetime(2026, 11, 22, 10, tzinfo=UTC)
    local = NOW.astimezone(timezone(timedelta(hours=5)))
    assert parse_time("1h", local) == NOW - timedelta(hours=1)


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-01", "10", "", "now"])
def test_bad_times_are_usage_errors(bad):
    """A value that is neither form is exit 2 with a message showing both forms."""
    with pytest.raises(UsageError) as info:
        parse_time(bad, NOW, what="--since")
    assert "RFC 3339" in info.value.message
    assert "--since" in info.value.message
