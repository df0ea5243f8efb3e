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
# The native hook (native/, Rust, standard library only), built by pip through
# setuptools-rust; a source change reinstalls it into $(BIN).
NATIVE_SOURCES := native/Cargo.toml native/Cargo.lock $(wildcard native/src/*.rs)

.DEFAULT_GOAL := test
.PHONY: venv deps toolchain image lint typecheck native unit integration test bench run clean

venv: $(VENV)/.installed

# cargo and rustc (Debian 12's 1.63 suffice) when no cargo is on PATH (rustup's
# is used as it is); rust-clippy for `make native` along with them.
toolchain:
	@command -v cargo >/dev/null 2>&1 || scripts/install-test-deps.sh cargo rustc rust-clippy

# python3-venv: Debian's python3 cannot `-m venv` without it.
$(BIN)/python:
	scripts/install-test-deps.sh python3-venv
	$(PYTHON) -m venv $(VENV)

# The editable install builds the native hook (release) into $(BIN); the check
# after it fails the target if that did not happen.
$(VENV)/.installed: pyproject.toml $(NATIVE_SOURCES) | $(BIN)/python toolchain
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@head -c 4 $(BIN)/shieldaudit-hook | grep -q ELF \
		|| { echo "make: $(BIN)/shieldaudit-hook is not the native hook" >&2; exit 1; }
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

# The crate's own checks: clippy (when installed: Debian packages it as
# rust-clippy) and its unit tests.
native: toolchain
	@if cargo clippy --version >/dev/null 2>&1; then \
		cargo clippy --manifest-path native/Cargo.toml --all-targets -- -D warnings; \
	else \
		echo "make: cargo clippy is not installed; skipping it (apt-get install rust-clippy)" >&2; \
	fi
	cargo test --manifest-path native/Cargo.toml

unit: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: venv deps image
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

test: deps venv image lint typecheck native
	$(BIN)/pytest $(PYTEST_ARGS)

bench: venv deps image
	$(BIN)/python bench/run_all.py

# On a fresh host, as root: what is missing from Debian (cargo and rustc for
# the native hook, Podman, runc, busybox-static for the local busybox image,
# curl for the README's metrics check), then scripts/run-agent.sh: a
# non-editable install of this checkout into /opt/shieldaudit (commands linked
# into /usr/local/bin), the hooks (fail-open) where Podman reads them, a
# container proving they record, then the agent in the foreground until
# Ctrl-C (which exits 0: no make error). Needs no .venv: the checkout can be
# moved or deleted afterwards.
run: toolchain
	scripts/install-test-deps.sh python3-venv podman runc busybox-static curl
	scripts/run-agent.sh

clean:
	rm -rf $(VENV) build dist src/*.egg-info native/target .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
