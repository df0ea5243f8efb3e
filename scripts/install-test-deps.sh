#!/usr/bin/env bash
# Install the Debian packages the test suite needs, but only those missing.
#
# Usage: scripts/install-test-deps.sh [PACKAGE...]
# With no arguments, installs the full test set. Runs `apt-get update` at most
# once, and only when something is missing, so a prepared machine needs no
# network at all. Needs root when something is missing.
#
# Only what the tests use is installed: no recommended packages (Debian's
# prometheus recommends the node exporter, whose service and five collector
# timers would keep running), plus the one recommended package that is used
# (see WITH_PODMAN). Packages installed only for their programs (SERVICES_OFF)
# leave nothing enabled or running: their services are kept from starting
# while they are installed, then disabled. Packages that were already
# installed are never touched.
set -euo pipefail

DEFAULT_PACKAGES=(
    python3-venv    # `python3 -m venv` on a stock Debian
    podman
    runc            # crun fails on cgroup v1/hybrid hosts (see docs/development.md)
    busybox-static  # the only binary in the local test image
    inotify-tools
    prometheus      # promtool and a Prometheus server (the test starts its own)
    systemd         # systemd-analyze
    debootstrap
    rsyslog         # rsyslogd for the fleet tests (each test starts its own instances)
    rsyslog-relp    # omrelp/imrelp
)

# Installed along with podman: the pause process of a pod's infra container
# (`podman kube play`), only a recommendation of Debian's podman package.
WITH_PODMAN=(catatonit)

# Installed for their programs only: their services stay disabled and stopped.
SERVICES_OFF=(prometheus rsyslog rsyslog-relp)

if [[ $# -gt 0 ]]; then
    packages=("$@")
else
    packages=("${DEFAULT_PACKAGES[@]}")
fi
for pkg in "${packages[@]}"; do
    if [[ $pkg == podman ]]; then
        packages+=("${WITH_PODMAN[@]}")
    fi
done

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

missing=()
for pkg in "${packages[@]}"; do
    if ! installed "$pkg"; then
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

quiet=()  # the missing packages whose services must stay off
plain=()
for pkg in "${missing[@]}"; do
    if [[ " ${SERVICES_OFF[*]} " == *" $pkg "* ]]; then
        quiet+=("$pkg")
    else
        plain+=("$pkg")
    fi
done

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if [[ ${#plain[@]} -gt 0 ]]; then
    apt-get install -y -qq --no-install-recommends "${plain[@]}"
fi
if [[ ${#quiet[@]} -eq 0 ]]; then
    exit 0
fi

# Their postinst scripts start the service (invoke-rc.d, deb-systemd-invoke):
# a policy-rc.d that forbids every action keeps it from starting at all. An
# existing policy-rc.d is the administrator's and is left alone.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
    trap 'rm -f -- "$policy"' EXIT
    printf '#!/bin/sh\n# install-test-deps.sh: no service starts while it installs\nexit 101\n' \
        >"$policy"
    chmod 0755 "$policy"
fi
apt-get install -y -qq --no-install-recommends "${quiet[@]}"

# The postinst scripts also enable the units and init scripts (started at
# the next boot): disable them, and stop any that runs anyway. systemctl edits
# the links even where systemd is not running (a container, a chroot), init
# scripts of the same name included; without systemctl there is no systemd to
# start the units, and only the links and the init scripts' rc links are undone.
units=()
scripts=()
for pkg in "${quiet[@]}"; do
    while IFS= read -r path; do
        case $path in
        /etc/init.d/*) scripts+=("${path##*/}") ;;
        *) units+=("${path##*/}") ;;
        esac
    done < <(dpkg-query -L "$pkg" |
        grep -E '^((/usr)?/lib/systemd/system/[^/@]+\.(service|socket|timer|path)|/etc/init\.d/[^/]+)$' ||
        true)
done
if [[ -d /run/systemd/system ]]; then
    [[ ${#units[@]} -eq 0 ]] || systemctl disable --now --quiet "${units[@]}"
elif command -v systemctl >/dev/null; then
    [[ ${#units[@]} -eq 0 ]] || systemctl disable --quiet "${units[@]}"
else
    for unit in "${units[@]}"; do
        find /etc/systemd/system -type l -name "$unit" -delete
    done
    for script in "${scripts[@]}"; do
        update-rc.d "$script" disable >/dev/null 2>&1 || true
    done
fi
if [[ ${#units[@]} -gt 0 || ${#scripts[@]} -gt 0 ]]; then
    echo "install-test-deps: left disabled: ${units[*]} ${scripts[*]} (installed for the tests only)" >&2
fi
