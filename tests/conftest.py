"""Shared pytest configuration for the whole suite.

Hypothesis runs the ``deterministic`` profile unless ``--hypothesis-profile``
names another (see docs/development.md, "Property tests"):

- ``deterministic`` (default; what ``make test`` and CI run): the examples are
  derived from each test's source, so a checkout passes or fails the same way
  on every run and every machine; no example database (``.hypothesis/``) can
  keep replaying an old failure; no per-example deadline (a loaded machine is
  not a bug); a failure prints its example and a ``@reproduce_failure`` blob.
- ``explore``: fresh random examples on each run, ten times as many, still
  without a database and with the blob printed, to look for new failures.
"""

import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

# Make tests/ importable so the harness loads as a plugin whatever the rootdir.
sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest_plugins = ["child_signals", "podman_harness"]

settings.register_profile(
    "deterministic",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "explore",
    settings.get_profile("deterministic"),
    derandomize=False,
    max_examples=1000,
)
settings.load_profile("deterministic")
