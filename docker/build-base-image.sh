#!/usr/bin/env bash
# Builds the local base image for the Dockerfiles when no registry can be
# reached: a minimal Debian bookworm made with debootstrap, with nftables,
# iproute2, socat and etcd-server (for docker-compose.ha.yml), imported as
# ${CASSETTE_BASE_IMAGE:-cassette-base:bookworm-2} (the tag changes with the
# package list, so an older base image is not taken for this one).
# Does nothing if that image already exists (pass --force to rebuild).
# Needs root, debootstrap (installed if missing) and a Debian mirror (read from
# this machine's apt sources; override with CASSETTE_DEBIAN_MIRROR).
set -euo pipefail
image=${CASSETTE_BASE_IMAGE:-cassette-base:bookworm-2}
if [ "${1:-}" != "--force" ] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "$image exists"
    exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap
fi
mirror=${CASSETTE_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
    mirror=$(grep -hoE '^(URIs:|deb) +[^ ]*https?://[^ ]+/debian/?( |$)' \
        /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
        | grep -oE 'https?://[^ ]+' | grep -v security | head -1 || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
echo "debootstrap bookworm from $mirror into $root (a few minutes)"
debootstrap --variant=minbase --include=nftables,iproute2,socat,etcd-server bookworm "$root" "$mirror" >/dev/null
# Keep the image small: no apt lists or caches.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*
tar -C "$root" -c . | docker import - "$image" >/dev/null
echo "built $image"
