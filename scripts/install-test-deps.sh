#!/usr/bin/env bash
# Install the Debian packages the test suite needs, but only those missing.
#
# Usage: scripts/install-test-deps.sh [PACKAGE...]
# With no arguments, installs the full test set. Runs `apt-get update` at most
# once, and only when something is missing, so a prepared machine needs no
# network at all. Needs root when something is missing. Recommended packages
# are installed too (apt's default), as on the machine the suite was written on.
set -euo pipefail

DEFAULT_PACKAGES=(
    python3-venv    # `python3 -m venv` on a stock Debian
    podman
    runc            # crun fails on this cgroup setup (DESIGN.md section 9)
    busybox-static  # the only binary in the local test image
    inotify-tools
    prometheus      # promtool and a Prometheus server
    systemd         # systemd-analyze
    debootstrap
)

if [[ $# -gt 0 ]]; then
    packages=("$@")
else
    packages=("${DEFAULT_PACKAGES[@]}")
fi

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

echo "install-test-deps: installing ${missing[*]}" >&2
if [[ $(id -u) -ne 0 ]]; then
    echo "install-test-deps: must run as root to install: ${missing[*]}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}"
