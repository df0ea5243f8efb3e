"""Pins the sidecar's wiring helpers (shieldaudit.sidecar.app): the --emit line."""

from __future__ import annotations

import io
import json

import pytest

from shieldaudit.core.models import WatchEvent
from shieldaudit.sidecar.app import line_emitter, watch_event

CID = "ab" * 32


def projection_before_the_model(entry: dict[str, object]) -> bytes:
    """The --emit line as it was built by hand before WatchEvent produced it."""
    event: dict[str, object] = {
        k: entry.get(k) or "" for k in ("ts", "source", "action", "container", "container_id")
    }
    event["seq"] = entry.get("seq")
    for k in ("dest", "detail"):
        event[k] = entry.get(k) or ""
    return json.dumps(event, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


ENTRIES = [
    {
        "seq": 7,
        "ts": "2026-11-23T10:42:12.211996Z",
        "source": "hook",
        "action": "poststop",
        "container": "web",
        "container_id": CID,
        "image": "localhost/x:latest",
        "pid": 12,
        "exit_code": None,
        "prev": "0" * 64,
        "chain": "k1",
        "mac": "f" * 64,
    },
    {"seq": 1, "source": "events", "action": "start", "container_id": CID},
    {"seq": 2, "container": "wéb ☃ \u2028", "detail": 'a "quoted" \\ detail', "dest": "/d"},
    {"seq": 3, "container": None, "dest": "", "detail": None, "extra": {"x": 1}},
    {"seq": 10**30, "ts": "2026-11-23T10:42:12Z", "source": "sidecar", "action": "unaudited_start"},
]


@pytest.mark.parametrize("entry", ENTRIES)
def test_emit_line_is_byte_identical_to_the_hand_built_one(entry):
    """WatchEvent produces exactly the bytes the hand-built projection produced."""
    assert watch_event(entry) == projection_before_the_model(entry)


def test_emit_line_round_trips_through_the_model():
    """A line parses back into the same WatchEvent, keys in the documented order."""
    line = watch_event(ENTRIES[0])
    event = WatchEvent.model_validate_json(line)

    assert event == WatchEvent.from_entry(ENTRIES[0])
    assert list(json.loads(line)) == [
        "ts",
        "source",
        "action",
        "container",
        "container_id",
        "seq",
        "dest",
        "detail",
    ]
    assert line.isascii()


def test_odd_values_become_text_and_a_bad_seq_is_refused():
    """A text field holding a non-string (a foreign writer) is its JSON text; seq must be an int."""
    event = WatchEvent.from_entry({"seq": 4, "container": {"b": 1, "a": [2]}, "detail": 5})

    assert (event.container, event.detail, event.dest) == ('{"b":1,"a":[2]}', "5", "")
    with pytest.raises(ValueError, match="seq"):
        WatchEvent.from_entry({"seq": "4"})


def test_line_emitter_writes_and_flushes_one_line_per_entry():
    """The emitter writes one line per call."""
    stream = io.BytesIO()
    emit = line_emitter(stream)
    emit(ENTRIES[0])
    emit(ENTRIES[1])

    assert stream.getvalue().splitlines(keepends=True) == [watch_event(e) for e in ENTRIES[:2]]
