"""Shared pytest configuration for the whole suite."""

import sys
from pathlib import Path

# Make tests/ importable so the harness loads as a plugin whatever the rootdir.
sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest_plugins = ["podman_harness"]
