"""What ``ls`` derives from a trail's head and tail: lifecycle state, names, tail chain check."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cli_helpers import cid, write_trail
from shieldaudit.cli.trails import Trails
from shieldaudit.summary import TRANSITIONS, State, lifecycle_state, summarise, tail_links
from store_helpers import all_lines


@pytest.mark.parametrize(
    ("actions", "state"),
    [
        ([], State.UNKNOWN),
        (["exec", "health_status"], State.UNKNOWN),
        (["createRuntime"], State.CREATED),
        (["create", "init"], State.CREATED),
        (["createRuntime", "poststart"], State.RUNNING),
        (["create", "init", "start", "exec"], State.RUNNING),
        (["start", "pause"], State.RUNNING),
        (["start", "died"], State.EXITED),
        (["poststart", "poststop"], State.EXITED),
        (["start", "stop", "restart"], State.RUNNING),
        (["died", "cleanup", "remove"], State.REMOVED),
        # The listener and the hooks write independently: a poststop may land after remove.
        (["died", "remove", "poststop", "cleanup"], State.REMOVED),
    ],
)
def test_lifecycle_state(actions, state):
    """Hook stages and Podman statuses fold into one state; removed is final."""
    assert lifecycle_state(actions) is state


@given(st.lists(st.sampled_from([*TRANSITIONS, "exec", "kill", "attach"])))
def test_lifecycle_state_is_the_last_telling_action_unless_removed(actions):
    """The state is that of the last lifecycle action, except that 'remove' anywhere wins."""
    state = lifecycle_state(actions)
    telling = [a for a in actions if a in TRANSITIONS]
    if "remove" in telling:
        assert state is State.REMOVED
    elif telling:
        assert state is TRANSITIONS[telling[-1]]
    else:
        assert state is State.UNKNOWN


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
