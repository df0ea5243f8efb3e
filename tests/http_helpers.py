"""Waiting on real processes over HTTP: a free port, a GET, a Prometheus scrape, a bounded poll."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

DEADLINE_S = 60.0
T = TypeVar("T")


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str) -> tuple[int, str] | None:
    """GET ``url``: (status, body), or None when nothing answers yet."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 -- http://127.0.0.1 only
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        exc.close()
        return exc.code, body
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
    """Parse ``/metrics`` into {(sample name, labels): value}, or None if it does not answer."""
    answer = http_get(f"http://127.0.0.1:{port}/metrics")
    if answer is None or answer[0] != 200:
        return None
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer[1])
        for sample in family.samples
    }


def sample(metrics: dict | None, name: str, **labels: str) -> float | None:
    """Return one sample's value from :func:`scrape`'s result (None if absent)."""
    if metrics is None:
        return None
    return metrics.get((name, frozenset(labels.items())))


def wait_for(
    probe: Callable[[], T | None],
    what: str,
    diagnose: Callable[[], str],
    alive: Callable[[], bool] = lambda: True,
    deadline_s: float = DEADLINE_S,
) -> T:
    """Poll ``probe`` until it returns something truthy (60 s deadline unless told).

    Fails at once when ``alive`` says the process under test is gone.
    """
    deadline = time.monotonic() + deadline_s
    while True:
        value = probe()
        if value:
            return value
        if not alive():
            pytest.fail(
                f"gave up waiting for {what}: it is not running\n{diagnose()}", pytrace=False
            )
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{diagnose()}", pytrace=False)
        time.sleep(0.2)


def trail_root(tmp_path: Path) -> Path:
    """A fresh, private (0700) trail root."""
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    return root
