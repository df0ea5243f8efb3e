"""The sidecar's metrics: names and types per docs/sidecar.md, every known series at 0, folding."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from shieldaudit import __version__
from shieldaudit.sidecar.metrics import SidecarMetrics, render
from shieldaudit.sidecar.watch.tally import KNOWN_SERIES, Tally, series_of

PLAIN = (
    "shieldaudit_rotations_total",
    "shieldaudit_watched_containers",
    "shieldaudit_parse_errors_total",
    "shieldaudit_hook_errors_total",
    "shieldaudit_integrity_failures_total",
    "shieldaudit_listener_connected",
    "shieldaudit_listener_reconnects_total",
    "shieldaudit_unaudited_starts_total",
    "shieldaudit_hooks_installed",
)


def test_every_series_exported_at_zero():
    """Before anything is read, every metric and every known source/action pair reads 0."""
    registry = CollectorRegistry()
    SidecarMetrics(registry)

    for name in PLAIN:
        assert registry.get_sample_value(name) == 0, name
    for source, action in KNOWN_SERIES:
        labels = {"source": source, "action": action}
        assert registry.get_sample_value("shieldaudit_events_total", labels) == 0
    assert ("hook", "poststop") in KNOWN_SERIES
    assert ("events", "died") in KNOWN_SERIES
    assert registry.get_sample_value("shieldaudit_build_info", {"version": __version__}) == 1


def test_types_in_exposition():
    """The text exposition declares the types of the contract table."""
    registry = CollectorRegistry()
    SidecarMetrics(registry)
    text = render(registry).decode()

    for name, kind in [
        ("shieldaudit_events_total", "counter"),
        ("shieldaudit_rotations_total", "counter"),
        ("shieldaudit_watched_containers", "gauge"),
        ("shieldaudit_parse_errors_total", "counter"),
        ("shieldaudit_hook_errors_total", "counter"),
        ("shieldaudit_integrity_failures_total", "counter"),
        ("shieldaudit_listener_connected", "gauge"),
        ("shieldaudit_listener_reconnects_total", "counter"),
        ("shieldaudit_build_info", "gauge"),
        ("shieldaudit_unaudited_starts_total", "counter"),
        ("shieldaudit_hooks_installed", "gauge"),
    ]:
        assert f"# TYPE {name} {kind}\n" in text
    assert "container_id" not in text


def test_publish_adds_counts_and_folds_unknown_labels():
    """Published counts land on their series; unknown sources/actions become "other"."""
    registry = CollectorRegistry()
    metrics = SidecarMetrics(registry)
    metrics.publish(
        Tally(
            events={("hook", "poststop"): 3, ("events", "x" * 500): 2, (None, 7): 1},
            rotations=2,
            parse_errors=1,
            integrity_failures=4,
            hook_errors=5,
            unaudited_starts=6,
        )
    )
    metrics.set_watched(9)

    def value(name, **labels):
        return registry.get_sample_value(name, labels or None)

    assert value("shieldaudit_events_total", source="hook", action="poststop") == 3
    assert value("shieldaudit_events_total", source="events", action="other") == 2
    assert value("shieldaudit_events_total", source="other", action="other") == 1
    assert value("shieldaudit_rotations_total") == 2
    assert value("shieldaudit_parse_errors_total") == 1
    assert value("shieldaudit_integrity_failures_total") == 4
    assert value("shieldaudit_hook_errors_total") == 5
    assert value("shieldaudit_unaudited_starts_total") == 6
    assert value("shieldaudit_watched_containers") == 9


def test_listener_state_read_at_scrape_time():
    """The listener gauges follow the status callback on every scrape."""
    state = [False, 0]
    registry = CollectorRegistry()
    SidecarMetrics(registry, listener_status=lambda: (state[0], state[1]))
    assert registry.get_sample_value("shieldaudit_listener_connected") == 0
    state[:] = [True, 3]
    assert registry.get_sample_value("shieldaudit_listener_connected") == 1
    assert registry.get_sample_value("shieldaudit_listener_reconnects_total") == 3


def test_hooks_installed_read_at_scrape_time():
    """The hooks gauge follows the manifest check on every scrape (0 without a check)."""
    state = [False]
    registry = CollectorRegistry()
    SidecarMetrics(registry, hooks_check=lambda: (state[0], "why"))
    assert registry.get_sample_value("shieldaudit_hooks_installed") == 0
    state[0] = True
    assert registry.get_sample_value("shieldaudit_hooks_installed") == 1


def test_series_of_is_bounded():
    """Label values come only from the known vocabulary or "other"."""
    assert series_of("hook", "createRuntime") == ("hook", "createRuntime")
    assert series_of("events", "poststop") == ("events", "poststop")
    assert series_of("cli", "anything-at-all") == ("cli", "other")
    assert series_of("evil\n", "start") == ("other", "start")
