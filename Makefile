# Build, check and test shieldaudit. `make test` is what CI runs (.ci/run);
# on a fresh Debian 12 (as root) it installs what is missing, then runs
# everything. Tools are called from the venv by explicit path.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
IMAGE ?= localhost/shieldaudit-test:latest
PYTEST_ARGS ?=

.DEFAULT_GOAL := test
.PHONY: venv deps image lint typecheck unit integration test bench run clean

venv: $(VENV)/.installed

# python3-venv: Debian's python3 cannot `-m venv` without it.
$(BIN)/python:
	scripts/install-test-deps.sh python3-venv
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

deps:
	scripts/install-test-deps.sh

# Into the caller's default Podman storage, for trying things by hand; the
# test suite builds its own copy into private storage (tests/podman_harness.py).
image: deps
	scripts/build-test-image.sh $(IMAGE)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: venv deps image
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

test: deps venv image lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

bench: venv deps image
	$(BIN)/python bench/run_all.py

# On a fresh host: Podman and runc from Debian when missing, the venv, then the
# agent (hooks installed fail-open, sidecar with the listener; see scripts/run-agent.sh).
run: venv
	scripts/install-test-deps.sh podman runc
	VENV=$(abspath $(VENV)) scripts/run-agent.sh

clean:
	rm -rf $(VENV) build dist src/*.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
