"""``tail``: the newest entries merged by time, and the follower across rotations and new trails."""

from __future__ import annotations

import json

from cli_helpers import SECOND, T0, cid, invoke, store, write_trail
from shieldaudit.cli.tail import Follower, follow
from shieldaudit.store.trails import Trails
from shieldaudit.store.writer import TrailWriter

A, B, C = cid("a"), cid("b"), cid("c")


def _interleaved(root):
    """A gets entries at even seconds, B at odd ones: merging by time alternates them."""
    write_trail(root, A, [f"a{i}" for i in range(5)], start_ns=T0, step_ns=2 * SECOND)
    write_trail(root, B, [f"b{i}" for i in range(5)], start_ns=T0 + SECOND, step_ns=2 * SECOND)


def test_tail_merges_all_containers_by_time(tmp_path):
    """`tail -n 4` shows the 4 newest entries of all trails, oldest first, interleaved by time."""
    root = tmp_path / "root"
    _interleaved(root)
    result = invoke(root, "tail", "-n", "4", "--json")
    assert result.code == 0
    assert [json.loads(x)["action"] for x in result.lines] == ["a3", "b3", "a4", "b4"]


def test_tail_of_one_container_and_default_count(tmp_path):
    """`tail CONTAINER` limits to that trail; the default is the last 10 entries."""
    root = tmp_path / "root"
    write_trail(root, A, [f"x{i}" for i in range(15)], name="web")
    write_trail(root, B, ["other"])
    result = invoke(root, "tail", "web", "--json")
    assert [json.loads(x)["action"] for x in result.lines] == [f"x{i}" for i in range(5, 15)]
    human = invoke(root, "tail", "-n", "2")
    assert len(human.lines) == 2
    assert "web" in human.lines[0] or A[:12] in human.lines[0]


def test_tail_zero_and_unknown_container(tmp_path):
    """-n 0 prints nothing; an unknown container is exit 2; a negative count is a usage error."""
    root = tmp_path / "root"
    write_trail(root, A, ["create"])
    assert invoke(root, "tail", "-n", "0").out == ""
    assert invoke(root, "tail", "ghost").code == 2
    assert invoke(root, "tail", "-n", "-1").code == 2


def test_tail_on_an_empty_root_prints_nothing(tmp_path):
    """No root yet: nothing to show, exit 0."""
    result = invoke(tmp_path / "none", "tail")
    assert (result.code, result.out) == (0, "")


def test_follower_sees_appends_rotations_and_new_containers(tmp_path):
    """After the snapshot each poll returns exactly the new entries, across rotations and trails."""
    root = tmp_path / "root"
    _interleaved(root)
    with Trails(root) as trails:
        follower = Follower(trails)
        assert len(follower.start(3)) == 3
        assert follower.poll() == []
        # Small segments: these appends rotate A several times between two polls.
        write_trail(
            root, A, [f"r{i}" for i in range(20)], start_ns=T0 + 60 * SECOND, max_segment_bytes=1200
        )
        assert len(list((root / "containers" / A).glob("audit-*.jsonl"))) >= 3
        got = follower.poll()
        assert [i.entry.action for i in got] == [f"r{i}" for i in range(20)]
        assert [i.seq for i in got] == list(range(6, 26))
        write_trail(root, C, ["create", "start"], start_ns=T0 + 200 * SECOND)
        write_trail(root, B, ["b5"], start_ns=T0 + 100 * SECOND)
        got = follower.poll()
        assert [(i.container_id, i.entry.action) for i in got] == [
            (B, "b5"),
            (C, "create"),
            (C, "start"),
        ]
        assert follower.poll() == []


def test_follower_holds_a_partial_line_until_its_newline(tmp_path):
    """A line being written is not returned until complete, then returned once."""
    root = tmp_path / "root"
    write_trail(root, A, ["create"])
    path = root / "containers" / A / "audit.jsonl"
    with Trails(root) as trails:
        follower = Follower(trails)
        follower.start(10)
        with TrailWriter(store(root)) as writer:
            line = writer.append(A, {"source": "cli", "action": "x"}).line
        # Simulate a reader catching the write half-way: cut the file, poll, restore it.
        full = path.read_bytes()
        path.write_bytes(full[: -len(line) // 2])
        assert follower.poll() == []
        path.write_bytes(full)
        assert [i.entry.action for i in follower.poll()] == ["x"]


def test_follower_of_one_container_ignores_others(tmp_path):
    """Following one container never reports entries of another."""
    root = tmp_path / "root"
    _interleaved(root)
    with Trails(root) as trails:
        follower = Follower(trails, only=A)
        assert {i.container_id for i in follower.start(10)} == {A}
        write_trail(root, B, ["b9"])
        write_trail(root, C, ["c9"])
        write_trail(root, A, ["a9"])
        assert [i.entry.action for i in follower.poll()] == ["a9"]


def test_follower_survives_a_pruned_trail(tmp_path):
    """A followed trail that disappears is dropped, not an error."""
    root = tmp_path / "root"
    write_trail(root, A, ["create"])
    with Trails(root) as trails:
        follower = Follower(trails)
        follower.start(1)
        for f in (root / "containers" / A).iterdir():
            f.unlink()
        (root / "containers" / A).rmdir()
        assert follower.poll() == []


def test_follow_loop_emits_batches_and_backs_off():
    """follow() emits only non-empty batches and sleeps at least the interval, more if slow."""

    class Fake:
        def __init__(self):
            self.batches = [[], ["x"], []]

        def poll(self):
            return self.batches.pop(0)

    emitted, slept = [], []
    ticks = iter([0.0, 0.0, 1.0, 2.0, 2.0, 2.0])
    follow(
        Fake(),
        emitted.append,
        interval=0.25,
        sleep=slept.append,
        clock=lambda: next(ticks),
        polls=3,
    )
    assert emitted == [["x"]]
    assert slept == [0.25, 2.0, 0.25]


def test_tail_human_lines_label_containers_by_name(tmp_path):
    """Across containers each line names its container (short ID until a name is known)."""
    root = tmp_path / "root"
    write_trail(root, A, ["create"], name="web")
    write_trail(root, B, ["create"], start_ns=T0 + SECOND)
    lines = invoke(root, "tail").lines
    assert lines[0].split()[1] == "web"
    assert lines[1].split()[1] == B[:12]
    exact = invoke(root, "tail", "--no-trunc").lines
    assert exact[0].startswith("2026-11-22T10:00:00.000000Z")


def test_follower_picks_up_a_root_created_after_it_started(tmp_path):
    """Following a root that does not exist yet starts printing once trails appear."""
    root = tmp_path / "root"
    with Trails(root) as trails:
        follower = Follower(trails)
        assert follower.start(10) == []
        assert follower.poll() == []
        write_trail(root, A, ["create", "start"])
        assert [i.entry.action for i in follower.poll()] == ["create", "start"]


def test_a_refused_trail_is_warned_about_once_per_run(tmp_path):
    """A trail refused for its mode is one ``Warning:`` line per command run, however often read.

    Resolving a hex query reads every trail (as a prefix, then as a name) and
    the command reads them again; the warning still appears once, and the other
    trails are shown.
    """
    root = tmp_path / "root"
    write_trail(root, A, ["create"], name="web")
    write_trail(root, B, ["start"], name="abc")
    (root / "containers" / A).chmod(0o770)
    for args in (["tail", "-n", "2", "aaaa"], ["tail", "-n", "2", "abc"], ["tail", "-n", "2"]):
        result = invoke(root, *args)
        warnings = [line for line in result.err.splitlines() if line.startswith("Warning:")]
        assert len(warnings) == 1, (args, result.err)
        assert warnings[0].startswith(f"Warning: skipped {A[:12]}: ")
        assert "writable by group or others (mode 0770)" in warnings[0]
