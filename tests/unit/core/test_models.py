"""The Entry model readers decode lines into, and the WatchEvent projection."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shieldaudit.core.models import Entry, WatchEvent

CID = "f" * 64
LINE = (
    '{"seq":2,"ts":"2026-11-22T10:42:12.211996Z","source":"events","action":"start",'
    '"container":"web","container_id":"' + CID + '","image":"","pid":null,"exit_code":null,'
    '"dest":"","detail":"","event_time_ns":5,"prev":"' + "0" * 64 + '","chain":"sha256",'
    '"mac":"' + "a" * 64 + '"}'
)


def test_entry_reads_like_a_dict_of_the_stored_json():
    """Fields and extra keys through get() and [], as the stored JSON object would give them."""
    entry = Entry.model_validate_json(LINE)
    assert entry.get("action") == entry["action"] == entry.action == "start"
    assert entry.get("event_time_ns") == entry["event_time_ns"] == 5
    assert entry.get("pid") is None
    assert entry.get("missing") is None
    assert entry.get("missing", 0) == 0
    with pytest.raises(KeyError, match="missing"):
        entry["missing"]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"seq":2', '"seq":true'),
        ('"seq":2', '"seq":"2"'),
        ('"seq":2', '"seq":0'),
        ('"pid":null', '"pid":1.5'),
        ('"source":"events"', '"source":"other"'),
        ('"ts":"2026-11-22T10:42:12.211996Z"', '"ts":"2026-11-22T10:42:12"'),
        ('"mac":"' + "a" * 64, '"mac":"' + "A" * 64),
    ],
)
def test_entry_is_strict(old, new):
    """No coercion: what the writers never write is refused."""
    assert old in LINE
    with pytest.raises(ValidationError):
        Entry.model_validate_json(LINE.replace(old, new))


def test_watch_event_from_an_entry_or_a_dict():
    """The --emit projection takes an Entry or a plain dict alike."""
    entry = Entry.model_validate_json(LINE)
    from_entry = WatchEvent.from_entry(entry)
    assert from_entry == WatchEvent.from_entry(entry.model_dump())
    assert (from_entry.seq, from_entry.action, from_entry.container) == (2, "start", "web")
