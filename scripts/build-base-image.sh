#!/usr/bin/env bash
# Build a minimal Debian base image with python3 from Debian's own packages,
# for building the Containerfile where no registry is reachable:
#
#   podman build --format docker --build-arg BASE_IMAGE=localhost/shieldaudit-base:test .
#
# Usage: scripts/build-base-image.sh [IMAGE]
# IMAGE defaults to localhost/shieldaudit-base:test. The Podman environment
# (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF, ...) is taken from the caller, so
# the test suite builds into its own private storage. Idempotent: does nothing
# when IMAGE already exists in that storage and was built from the same suite
# (label io.shieldaudit.base.suite).
#
# The suite is the host's own Debian release, so the image's python3 is the
# host's: wheels built on the host install in it, and a venv copied out of the
# image runs with the host's /usr/bin/python3 (see docs/deploy.md).
#
# Environment:
#   SUITE    Debian suite (default: VERSION_CODENAME of the host's
#            /etc/os-release, e.g. bookworm on Debian 12, trixie on Debian 13)
#   MIRROR   Debian mirror (default: the first deb.debian.org-style URI of the
#            host's apt sources, else http://deb.debian.org/debian)
#   ROOTFS_CACHE_DIR  a directory: the debootstrapped root filesystem is kept
#            there as rootfs-$SUITE.tar and reused by later runs of the same
#            suite, so repeated test sessions skip the minutes-long debootstrap
#            (default: no cache)
# Needs root (debootstrap) and the debootstrap package when no cache exists.
set -euo pipefail

IMAGE=${1:-localhost/shieldaudit-base:test}
OS_RELEASE=${OS_RELEASE:-/etc/os-release}
ROOTFS_CACHE_DIR=${ROOTFS_CACHE_DIR:-}

host_suite() {
    local codename
    # os-release is shell assignments; read it in a subshell, not into ours.
    codename=$( (. "$OS_RELEASE" && echo "${VERSION_CODENAME:-}") 2>/dev/null || true)
    if [[ -z $codename ]]; then
        echo "build-base-image: cannot tell the host's Debian release from $OS_RELEASE" \
            "(no VERSION_CODENAME): set SUITE, e.g. SUITE=bookworm" >&2
        exit 2
    fi
    echo "$codename"
}
SUITE=${SUITE:-$(host_suite)}
if [[ ! $SUITE =~ ^[a-z][a-z0-9-]*$ ]]; then
    echo "build-base-image: SUITE '$SUITE' is not a Debian suite name (e.g. bookworm)" >&2
    exit 2
fi

if podman image exists "$IMAGE"; then
    built=$(podman image inspect --format '{{index .Labels "io.shieldaudit.base.suite"}}' \
        "$IMAGE" 2>/dev/null || true)
    if [[ $built == "$SUITE" ]]; then
        exit 0
    fi
    echo "build-base-image: $IMAGE was built from '${built:-an unknown suite}'," \
        "rebuilding from $SUITE" >&2
fi

default_mirror() {
    local uri
    # deb822 sources first (Debian 12's default), then the one-line format;
    # the security archive has no "$SUITE" suite, so skip it.
    uri=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources |
        awk '{print $2}' | grep -v -- '-security' | head -n1 || true)
    if [[ -z $uri ]]; then
        uri=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
            awk '{print $2}' | grep -v -- '-security' | grep -i debian | head -n1 || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}
MIRROR=${MIRROR:-$(default_mirror)}

work=$(mktemp -d "${TMPDIR:-/tmp}/shieldaudit-base.XXXXXX")
trap 'rm -rf -- "$work"' EXIT
tarball=$work/rootfs.tar
cache=
if [[ -n $ROOTFS_CACHE_DIR ]]; then
    cache=$ROOTFS_CACHE_DIR/rootfs-$SUITE.tar
fi

if [[ -n $cache && -s $cache ]]; then
    tarball=$cache
else
    if ! command -v debootstrap >/dev/null; then
        echo "build-base-image: debootstrap is missing (apt-get install debootstrap)" >&2
        exit 1
    fi
    rootfs=$work/rootfs
    echo "build-base-image: debootstrap $SUITE from $MIRROR (takes a minute or two)" >&2
    if ! debootstrap --variant=minbase --include=python3,python3-venv \
        "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1; then
        tail -n 30 "$work/debootstrap.log" >&2
        echo "build-base-image: debootstrap failed (log above)" >&2
        exit 1
    fi
    # Downloaded packages, apt lists and docs are dead weight in an image.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    tar --numeric-owner -C "$rootfs" -cf "$tarball" .
    if [[ -n $cache ]]; then
        mkdir -p "$ROOTFS_CACHE_DIR"
        # Into place atomically: a half-written cache would break every later build.
        cp "$tarball" "$cache.tmp.$$"
        mv -f "$cache.tmp.$$" "$cache"
    fi
fi

podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/usr/bin/python3"]' \
    --change "LABEL io.shieldaudit.base.suite=$SUITE" \
    "$tarball" "$IMAGE" >/dev/null
echo "build-base-image: built $IMAGE from Debian $SUITE" >&2
