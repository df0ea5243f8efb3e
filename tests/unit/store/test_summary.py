"""What ``ls`` derives from a trail's head and tail: lifecycle state, names, tail chain check."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cli_helpers import cid, write_trail
from shieldaudit.store.summary import (
    ROLES,
    START_GRACE_S,
    Role,
    State,
    lifecycle_state,
    summarise,
    tail_links,
)
from shieldaudit.store.trails import Trails
from store_helpers import all_lines

GRACE = START_GRACE_S

# Observed under Podman 4.3 + runc with the hooks and the listener (seq order):
RUNC_CREATE_FAILED = ["create", "createRuntime", "cleanup"]  # podman run /no/such/command
RUN_THEN_PAUSE = ["createRuntime", "create", "poststart", "init", "start", "pause"]


@pytest.mark.parametrize(
    ("actions", "quiet_s", "state"),
    [
        ([], None, State.UNKNOWN),
        (["exec", "health_status"], None, State.UNKNOWN),
        # created, and a runtime create that never went further
        (["create"], 1e6, State.CREATED),
        (["create", "init"], 1e6, State.CREATED),  # podman init, seen by the listener
        (["create", "createRuntime", "init"], 1e6, State.CREATED),
        (["createRuntime"], None, State.CREATED),  # no clock: nothing claimed
        (["createRuntime"], GRACE - 1, State.CREATED),  # a start under way
        (["createRuntime"], GRACE, State.FAILED),  # the create failed without a word
        (["createRuntime", None], 1e6, State.CREATED),  # something followed, unread
        # running, paused
        (["createRuntime", "poststart"], GRACE * 10, State.RUNNING),
        (["create", "init", "start", "exec"], None, State.RUNNING),
        (RUN_THEN_PAUSE, None, State.PAUSED),
        ([*RUN_THEN_PAUSE, "exec", "kill"], None, State.PAUSED),
        ([*RUN_THEN_PAUSE, "unpause"], None, State.RUNNING),
        (["start", "stop", "restart"], None, State.RUNNING),
        (["create", "init", "start", "died", "init", "start"], None, State.RUNNING),
        # exited
        (["start", "died"], None, State.EXITED),
        (["poststart", "poststop"], None, State.EXITED),
        ([*RUN_THEN_PAUSE, "died", "cleanup"], None, State.EXITED),  # stopped while paused
        (["died", "cleanup"], None, State.EXITED),  # the start is not in the trail
        (["create", None, "died"], None, State.EXITED),  # ... or may be in the gap
        # The listener lagging behind the hooks: each source judges its own run.
        (
            ["createRuntime", "poststart", "poststop", "create", "init", "start", "died"],
            None,
            State.EXITED,
        ),
        # failed: a run that ended without its process starting
        (RUNC_CREATE_FAILED, None, State.FAILED),
        (["createRuntime", "poststop"], None, State.FAILED),
        (["create", "cleanup"], None, State.FAILED),
        (["createRuntime", "poststop", "cleanup"], None, State.FAILED),
        (
            ["createRuntime", "poststart", "poststop", "createRuntime", "poststop"],
            None,
            State.FAILED,
        ),
        (["createRuntime", "poststop", "createRuntime", "poststart"], None, State.RUNNING),
        # removed is final
        (["died", "cleanup", "remove"], None, State.REMOVED),
        ([*RUNC_CREATE_FAILED, "remove"], None, State.REMOVED),
        # The listener and the hooks write independently: a poststop may land after remove.
        (["died", "remove", "poststop", "cleanup"], None, State.REMOVED),
    ],
)
def test_lifecycle_state(actions, quiet_s, state):
    """Hook stages and Podman statuses fold into one state (None in actions: entries unread)."""
    assert lifecycle_state(actions, quiet_s) is state


_ACTIONS = st.lists(st.sampled_from([*ROLES, "exec", "kill", "attach", None]))
_QUIET = st.none() | st.floats(min_value=0, max_value=1e7)


@given(_ACTIONS, _QUIET)
def test_lifecycle_state_follows_the_last_telling_action(actions, quiet_s):
    """The last lifecycle action decides the kind of state; 'remove' anywhere wins."""
    state = lifecycle_state(actions, quiet_s)
    telling = [a for a in actions if a is not None and a in ROLES]
    if "remove" in telling:
        assert state is State.REMOVED
        return
    if not telling:
        assert state is State.UNKNOWN
        return
    allowed = {
        Role.CREATE: {State.CREATED, State.FAILED},
        Role.START: {State.RUNNING},
        Role.UNPAUSE: {State.RUNNING},
        Role.PAUSE: {State.PAUSED},
        Role.END: {State.EXITED, State.FAILED},
    }
    assert state in allowed[ROLES[telling[-1]][1]]


@given(_ACTIONS, _QUIET)
def test_failed_only_when_the_trail_shows_a_run_that_never_started(actions, quiet_s):
    """'failed' needs a create in the trail; a source that saw its run start never says it."""
    state = lifecycle_state(actions, quiet_s)
    creates = [a for a in actions if a is not None and ROLES.get(a, ("", None))[1] is Role.CREATE]
    if not creates:
        assert state is not State.FAILED
    # A complete run seen by one source, appended at the end, always reads as exited.
    for run in (["createRuntime", "poststart", "poststop"], ["create", "init", "start", "died"]):
        if "remove" not in actions:
            assert lifecycle_state([*actions, *run], quiet_s) is State.EXITED
    # Non-lifecycle actions after the end change nothing.
    if state is not State.FAILED or quiet_s is None:
        assert lifecycle_state([*actions, "exec", "kill"], None) is lifecycle_state(actions, None)


def test_summary_reads_head_and_tail_only(tmp_path):
    """Entries, times, latest name and image come from the first entry and the last few."""
    root = tmp_path / "root"
    c = cid("a")
    write_trail(root, c, ["create"], name="old", image="img:1")
    write_trail(root, c, [f"x{i}" for i in range(40)], max_segment_bytes=2000)
    write_trail(root, c, ["rename"], name="new")
    with Trails(root) as trails:
        s = trails.summary(c)
    assert s is not None
    assert s.entries == 42
    assert (s.first_seq, s.last_seq) == (1, 42)
    assert s.name == "new"
    assert s.image == "img:1"  # only in the head: still found
    assert s.state is State.CREATED
    assert s.last_action == "rename"
    assert s.tail_ok is True
    assert s.segments > 2


def test_tail_links_detects_edits_gaps_and_reorders(tmp_path):
    """The cheap check catches an edited, missing or swapped tail entry."""
    root = tmp_path / "root"
    write_trail(root, cid("b"), [f"x{i}" for i in range(5)])
    lines = all_lines(root, cid("b"))
    assert tail_links(lines)
    assert not tail_links([*lines[:2], *lines[3:]])
    assert not tail_links([lines[1], lines[0]])
    assert not tail_links([lines[0].replace(b'"x0"', b'"y0"')])
    assert not tail_links([b"garbage"])


def test_summary_of_an_empty_trail():
    """No entries: zero count, unknown state, nothing to judge."""
    s = summarise(cid("c"), None, [], 1)
    assert (s.entries, s.state, s.tail_ok, s.first_ts) == (0, State.UNKNOWN, None, "")


def test_summary_state_across_the_unread_middle_of_a_long_trail(tmp_path):
    """A long run read as head + tail ends "exited", not "failed", though its start is unread.

    And a trail that stopped at the hook's runtime create (entries from
    2026-11-22, long before now) says 'failed'; 'paused' after a pause event.
    """
    root = tmp_path / "root"
    write_trail(root, cid("a"), ["create", "init", "start", *["health_status"] * 20, "died"])
    write_trail(root, cid("b"), ["createRuntime"], source="hook")
    write_trail(root, cid("c"), ["create", "init", "start", "pause", "exec"])
    with Trails(root) as trails:
        states = [trails.summary(cid(c)).state for c in "abc"]
    assert states == [State.EXITED, State.FAILED, State.PAUSED]
