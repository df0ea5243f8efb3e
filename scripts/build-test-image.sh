#!/usr/bin/env bash
# Build the local test image: busybox-static plus applet symlinks, imported
# with `podman import` (no registry is reachable from the test machines).
#
# Usage: scripts/build-test-image.sh [IMAGE]
# IMAGE defaults to localhost/shieldaudit-test:latest. The Podman environment
# (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF, ...) is taken from the caller, so
# the pytest harness builds into its own private storage. Idempotent: does
# nothing when IMAGE already exists in that storage.
set -euo pipefail

IMAGE=${1:-localhost/shieldaudit-test:latest}
BUSYBOX=${BUSYBOX:-/bin/busybox}
APPLETS=(sh true false echo sleep cat ls env id touch rm mkdir wc head tail yes dd)

if podman image exists "$IMAGE"; then
    exit 0
fi

# The image holds nothing but this binary, so it must be busybox-static's:
# a dynamically linked busybox would need a libc in the image.
if [[ ! -x $BUSYBOX ]] || ldd "$BUSYBOX" >/dev/null 2>&1; then
    echo "build-test-image: $BUSYBOX is missing or not static (apt-get install busybox-static)" >&2
    exit 1
fi

rootfs=$(mktemp -d "${TMPDIR:-/tmp}/shieldaudit-rootfs.XXXXXX")
trap 'rm -rf -- "$rootfs"' EXIT

mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/etc"
chmod 1777 "$rootfs/tmp"
install -m 0755 "$BUSYBOX" "$rootfs/bin/busybox"
for applet in "${APPLETS[@]}"; do
    ln -s busybox "$rootfs/bin/$applet"
done
# `id` and friends print names, not bare numbers, with these two files.
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"

tar --numeric-owner --owner=0 --group=0 -C "$rootfs" -cf - . |
    podman import --quiet \
        --change 'ENV PATH=/bin' \
        --change 'CMD ["/bin/sh"]' \
        - "$IMAGE" >/dev/null
echo "build-test-image: built $IMAGE" >&2
