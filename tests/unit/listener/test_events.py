"""Pins the pure mapping from a Podman event to trail-entry fields (shieldaudit.listener.events)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from shieldaudit.listener.events import (
    MAX_DETAIL_CHARS,
    SKIP_BAD_ID,
    SKIP_MALFORMED,
    SKIP_NOT_CONTAINER,
    EventKey,
    Mapped,
    PodmanEvent,
    Skipped,
    decode_line,
    map_event,
    refusal,
)

CID = "3f7863f5468984084bdc5a271e0df29839182490d5226d3395122a19d579b196"
IMAGE = "localhost/shieldaudit-test:latest"


def podman_event(status: str = "died", **overrides: object) -> dict[str, object]:
    """An event as Podman 4.3's /libpod/events sends it (copied from a real stream)."""
    event: dict[str, object] = {
        "status": status,
        "id": CID,
        "from": IMAGE,
        "Type": "container",
        "Action": status,
        "Actor": {
            "ID": CID,
            "Attributes": {
                "containerExitCode": "3",
                "image": IMAGE,
                "name": "web",
                "podId": "",
            },
        },
        "scope": "local",
        "time": 1795458373,
        "timeNano": 1795458373910091721,
    }
    event.update(overrides)
    return event


def test_died_event_maps_to_entry_fields():
    """A died event gives action, name, image, exit code, the event's own ts and its key."""
    result = map_event(podman_event("died"))

    assert isinstance(result, Mapped)
    assert result.key == EventKey(CID, "died", 1795458373910091721)
    assert result.fields == {
        "ts": "2026-11-23T18:26:13.910091Z",
        "source": "events",
        "action": "died",
        "container": "web",
        "image": IMAGE,
        "pid": None,
        "exit_code": 3,
        "detail": "",
        "event_time_ns": 1795458373910091721,
    }


def test_exit_code_only_on_statuses_that_carry_one():
    """Podman sends containerExitCode "0" on every event; only died/exec_died keep it."""
    create = map_event(podman_event("create"))
    exec_died = map_event(podman_event("exec_died"))

    assert isinstance(create, Mapped)
    assert create.fields["exit_code"] is None
    assert isinstance(exec_died, Mapped)
    assert exec_died.fields["exit_code"] == 3


def test_health_status_is_kept():
    """A health_status event records the status Podman puts at the top level."""
    result = map_event(podman_event("health_status", HealthStatus="healthy"))

    assert isinstance(result, Mapped)
    assert result.fields["health_status"] == "healthy"
    assert result.fields["action"] == "health_status"


def test_labels_and_unknown_keys_go_to_detail_sorted_and_quoted():
    """What has no column (labels, unknown top-level keys) is kept as sorted key=value pairs."""
    event = podman_event("start", Extra="x y")
    event["Actor"] = {
        "ID": CID,
        "Attributes": {"name": "web", "image": IMAGE, "tier": "db", "podId": "", "note": 'a "b"'},
    }

    result = map_event(event)

    assert isinstance(result, Mapped)
    assert result.fields["detail"] == 'Extra="x y" note="a \\"b\\"" tier=db'


def test_detail_is_bounded():
    """Huge labels cannot make an entry exceed the writer's size limit."""
    event = podman_event("start")
    event["Actor"] = {"ID": CID, "Attributes": {"big": "x" * 100_000}}

    result = map_event(event)

    assert isinstance(result, Mapped)
    assert len(str(result.fields["detail"])) == MAX_DETAIL_CHARS


def test_action_falls_back_to_action_field_and_time_to_seconds():
    """Without status/timeNano the Action and whole-second time are used."""
    event = podman_event("stop")
    del event["status"]
    del event["timeNano"]

    result = map_event(event)

    assert isinstance(result, Mapped)
    assert result.key == EventKey(CID, "stop", 1795458373 * 10**9)


def test_non_container_event_is_ignored():
    """Image, pod, volume… events are skipped as not_container."""
    result = map_event(podman_event("pull", Type="image"))

    assert result == Skipped(SKIP_NOT_CONTAINER, "event type 'image'")


def test_id_that_is_not_64_hex_is_skipped():
    """An actor ID that is not a full container ID never becomes a path."""
    event = podman_event("start")
    event["Actor"] = {"ID": "../../etc", "Attributes": {}}

    result = map_event(event)

    assert isinstance(result, Skipped)
    assert result.reason == SKIP_BAD_ID


def test_missing_status_or_time_is_malformed():
    """An event without a status or a time is counted as malformed."""
    no_status = podman_event()
    del no_status["status"]
    del no_status["Action"]
    no_time = podman_event()
    del no_time["time"]
    del no_time["timeNano"]

    assert isinstance(map_event(no_status), Skipped)
    assert map_event(no_status).reason == SKIP_MALFORMED  # type: ignore[union-attr]
    assert map_event(no_time) == Skipped(SKIP_MALFORMED, "no time")


def test_decode_line_refuses_non_objects():
    """A line that is not a JSON object is malformed, never an exception."""
    assert isinstance(decode_line(b"{not json"), Skipped)
    assert isinstance(decode_line(b"[1, 2]"), Skipped)
    assert isinstance(decode_line(b"\xff\xfe"), Skipped)
    assert decode_line(json.dumps(podman_event()).encode()) == podman_event()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "status",
                "Action",
                "Type",
                "id",
                "Actor",
                "time",
                "timeNano",
                "HealthStatus",
                "from",
                "x",
            ]
        ),
        _json,
    )
)
def test_any_object_maps_or_skips_without_raising(event):
    """Whatever JSON object arrives, the mapping returns Mapped or Skipped, never raises."""
    result = map_event(event)

    assert isinstance(result, Mapped | Skipped)
    if isinstance(result, Mapped):
        assert len(result.key.container_id) == 64
        json.dumps(result.fields)


def _without(event: dict[str, object], *keys: str) -> dict[str, object]:
    return {k: v for k, v in event.items() if k not in keys}


@pytest.mark.parametrize(
    ("event", "refused"),
    [
        (podman_event(Type="volume"), Skipped(SKIP_NOT_CONTAINER, "event type 'volume'")),
        (podman_event(Type=None), Skipped(SKIP_NOT_CONTAINER, "event type 'None'")),
        (
            podman_event(Type=["container"]),
            Skipped(SKIP_NOT_CONTAINER, "event type \"['container']\""),
        ),
        (podman_event(status=""), Skipped(SKIP_MALFORMED, "no status")),
        (podman_event(status="x" * 65), Skipped(SKIP_MALFORMED, "no status")),
        (podman_event(status=5), Skipped(SKIP_MALFORMED, "no status")),
        (podman_event(status=None, Action="start"), Skipped(SKIP_MALFORMED, "no status")),
        (_without(podman_event(Action=["x"]), "status"), Skipped(SKIP_MALFORMED, "no status")),
        (podman_event(Actor={"ID": None}), Skipped(SKIP_BAD_ID, "container ID 'None'")),
        (
            podman_event(Actor={"ID": CID.upper()}),
            Skipped(SKIP_BAD_ID, f"container ID {CID.upper()!r}"),
        ),
        (
            podman_event(Actor="web", id=CID[:12]),
            Skipped(SKIP_BAD_ID, f"container ID {CID[:12]!r}"),
        ),
        (podman_event(Actor={"ID": 7}), Skipped(SKIP_BAD_ID, "container ID '7'")),
        (podman_event(timeNano=0, time=-1), Skipped(SKIP_MALFORMED, "no time")),
        (podman_event(timeNano=True, time=True), Skipped(SKIP_MALFORMED, "no time")),
        (
            podman_event(timeNano="1795458373910091721", time="1"),
            Skipped(SKIP_MALFORMED, "no time"),
        ),
        # Several problems: the first in the order type, status, ID, time is the reason.
        (
            podman_event(Type="image", status="", timeNano=None, time=None),
            Skipped(SKIP_NOT_CONTAINER, "event type 'image'"),
        ),
        (
            podman_event(status="", Actor={"ID": "x"}, timeNano=None, time=None),
            Skipped(SKIP_MALFORMED, "no status"),
        ),
        (
            podman_event(Actor={"ID": "x"}, timeNano=None, time=None),
            Skipped(SKIP_BAD_ID, "container ID 'x'"),
        ),
    ],
)
def test_refused_shapes_give_one_reason(event, refused):
    """An event the listener cannot record is refused with one reason, never an exception."""
    assert map_event(event) == refused


def test_odd_but_recordable_shapes_are_kept():
    """Fields the listener does not need may be odd: a non-object Actor or Attributes is ignored."""
    odd_attributes = map_event(podman_event(Actor={"ID": CID, "Attributes": [1]}))
    actor_string = map_event(podman_event(Actor="x"))
    bad_action = map_event(podman_event(Action=5))
    bad_nano = map_event(podman_event(timeNano="soon"))

    assert isinstance(odd_attributes, Mapped)
    assert odd_attributes.fields["container"] == ""
    assert isinstance(actor_string, Mapped)
    assert actor_string.key.container_id == CID
    assert isinstance(bad_action, Mapped)
    assert bad_action.fields["action"] == "died"
    assert isinstance(bad_nano, Mapped)
    assert bad_nano.key.time_ns == 1795458373 * 10**9


def test_podman_event_is_the_validated_boundary():
    """PodmanEvent.of normalises Podman's shape; ValidationError carries the reason's field."""
    valid = PodmanEvent.of(podman_event("start", HealthStatus="healthy"))

    assert (valid.type, valid.status, valid.container_id) == ("container", "start", CID)
    assert (valid.time_ns, valid.image, valid.health) == (1795458373910091721, IMAGE, "healthy")
    with pytest.raises(ValidationError) as caught:
        PodmanEvent.of(podman_event(Type="pod"))
    assert refusal(caught.value) == Skipped(SKIP_NOT_CONTAINER, "event type 'pod'")
