"""The sidecar's Prometheus metrics: one registry, every series known up front.

The names, types and labels are documented in docs/sidecar.md, "Metrics".

:class:`SidecarMetrics` owns the collectors on a registry passed in (tests pass a
fresh ``CollectorRegistry``); :func:`render` is the pure exposition step. No
metric carries a per-container label: trail counts are unbounded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from shieldaudit import __version__
from shieldaudit.sidecar.watch.tally import KNOWN_SERIES, series_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from prometheus_client.metrics_core import Metric

    from shieldaudit.sidecar.watch.tally import Tally


class ListenerCollector(Collector):
    """Reports the in-process listener's state, read at scrape time."""

    def __init__(self, status: Callable[[], tuple[bool, int]] | None = None) -> None:
        """Read ``(connected, reconnects)`` from ``status``; None means no listener (0, 0)."""
        self.status = status

    def collect(self) -> Iterator[Metric]:
        """Yield the two listener series."""
        connected, reconnects = self.status() if self.status is not None else (False, 0)
        yield GaugeMetricFamily(
            "shieldaudit_listener_connected",
            "1 while the in-process events listener is connected to Podman",
            value=1 if connected else 0,
        )
        yield CounterMetricFamily(
            "shieldaudit_listener_reconnects",
            "Times the events listener reconnected to Podman",
            value=reconnects,
        )


class HooksCollector(Collector):
    """Reports whether the recorded hooks.d files are in place, checked at scrape time."""

    def __init__(self, check: Callable[[], tuple[bool, str]] | None = None) -> None:
        """Ask ``check`` for ``(installed, why not)``; None means unknown (0)."""
        self.check = check

    def collect(self) -> Iterator[Metric]:
        """Yield the gauge."""
        installed = self.check()[0] if self.check is not None else False
        yield GaugeMetricFamily(
            "shieldaudit_hooks_installed",
            "1 while every hooks.d file install-hooks wrote for this root is present and unchanged",
            value=1 if installed else 0,
        )


class SidecarMetrics:
    """Every sidecar metric, registered on ``registry``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        listener_status: Callable[[], tuple[bool, int]] | None = None,
        hooks_check: Callable[[], tuple[bool, str]] | None = None,
        version: str = __version__,
    ) -> None:
        """Register the collectors and export every known series at 0."""
        self.registry = registry
        self.events = Counter(
            "shieldaudit_events",
            "Trail entries read, by source and action",
            ["source", "action"],
            registry=registry,
        )
        for source, action in KNOWN_SERIES:
            self.events.labels(source, action)
        self.rotations = Counter(
            "shieldaudit_rotations",
            "Sealed trail segments read to their end",
            registry=registry,
        )
        self.watched = Gauge(
            "shieldaudit_watched_containers",
            "Container trail directories being watched",
            registry=registry,
        )
        self.parse_errors = Counter(
            "shieldaudit_parse_errors",
            "Trail lines skipped: malformed, oversized or torn",
            registry=registry,
        )
        self.hook_errors = Counter(
            "shieldaudit_hook_errors",
            "Failures recorded by the OCI hook",
            registry=registry,
        )
        self.integrity_failures = Counter(
            "shieldaudit_integrity_failures",
            "Entries that do not continue their container's chain (gap, rewind, bad link)",
            registry=registry,
        )
        self.unaudited_starts = Counter(
            "shieldaudit_unaudited_starts",
            "Container starts reported by Podman's events without their hook entries",
            registry=registry,
        )
        self.last_seal = Gauge(
            "shieldaudit_last_seal_timestamp_seconds",
            "When the last seal of every trail's head was made (0: none yet)",
            registry=registry,
        )
        self.listener = ListenerCollector(listener_status)
        registry.register(self.listener)
        self.hooks = HooksCollector(hooks_check)
        registry.register(self.hooks)
        self.build_info = Gauge(
            "shieldaudit_build_info",
            "Always 1; the version label says which shieldaudit runs",
            ["version"],
            registry=registry,
        )
        self.build_info.labels(version).set(1)

    def publish(self, tally: Tally) -> None:
        """Add counts that a saved checkpoint now covers."""
        folded: dict[tuple[str, str], int] = {}
        for (source, action), count in tally.events.items():
            key = series_of(source, action)
            folded[key] = folded.get(key, 0) + count
        for (source, action), count in folded.items():
            self.events.labels(source, action).inc(count)
        if tally.rotations:
            self.rotations.inc(tally.rotations)
        if tally.parse_errors:
            self.parse_errors.inc(tally.parse_errors)
        if tally.hook_errors:
            self.hook_errors.inc(tally.hook_errors)
        if tally.integrity_failures:
            self.integrity_failures.inc(tally.integrity_failures)
        if tally.unaudited_starts:
            self.unaudited_starts.inc(tally.unaudited_starts)

    def set_watched(self, count: int) -> None:
        """Set the number of watched trails."""
        self.watched.set(count)


def render(registry: CollectorRegistry) -> bytes:
    """Return the registry in the Prometheus text format (pure)."""
    return generate_latest(registry)
