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
# when IMAGE already exists in that storage.
#
# Environment:
#   SUITE    Debian suite (default bookworm: python3 is 3.11 there)
#   MIRROR   Debian mirror (default: the first deb.debian.org-style URI of the
#            host's apt sources, else http://deb.debian.org/debian)
#   ROOTFS_CACHE  a tarball path: reused if it exists, written after a
#            debootstrap otherwise, so repeated test sessions skip the
#            minutes-long debootstrap (default: no cache)
# Needs root (debootstrap) and the debootstrap package when no cache exists.
set -euo pipefail

IMAGE=${1:-localhost/shieldaudit-base:test}
SUITE=${SUITE:-bookworm}
ROOTFS_CACHE=${ROOTFS_CACHE:-}

if podman image exists "$IMAGE"; then
    exit 0
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

if [[ -n $ROOTFS_CACHE && -s $ROOTFS_CACHE ]]; then
    tarball=$ROOTFS_CACHE
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
    if [[ -n $ROOTFS_CACHE ]]; then
        mkdir -p "$(dirname "$ROOTFS_CACHE")"
        # Into place atomically: a half-written cache would break every later build.
        cp "$tarball" "$ROOTFS_CACHE.tmp.$$"
        mv -f "$ROOTFS_CACHE.tmp.$$" "$ROOTFS_CACHE"
    fi
fi

podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/usr/bin/python3"]' \
    "$tarball" "$IMAGE" >/dev/null
echo "build-base-image: built $IMAGE" >&2
