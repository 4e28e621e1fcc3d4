#!/usr/bin/env bash
# Builds the cassette-firewall image (${CASSETTE_IMAGE:-cassette-firewall:local})
# from binaries already built in BIN_DIR (default target/release), stripped.
# Uses the local base image from build-base-image.sh when it exists, else
# debian:bookworm-slim (set CASSETTE_BASE_IMAGE to choose).
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir=${1:-target/release}
image=${CASSETTE_IMAGE:-cassette-firewall:local}
base=${CASSETTE_BASE_IMAGE:-cassette-base:bookworm-2}
docker image inspect "$base" >/dev/null 2>&1 || base=debian:bookworm-slim
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
for binary in cassette-rules cassette-enforcer; do
    [ -x "$bin_dir/$binary" ] || { echo "$bin_dir/$binary is not built (cargo build --release --bins)" >&2; exit 1; }
    strip -o "$context/$binary" "$bin_dir/$binary"
done
cp docker/Dockerfile "$context/"
docker build -q --build-arg "BASE=$base" -t "$image" "$context" >/dev/null 2>"$context.log" \
    || { cat "$context.log" >&2; rm -f "$context.log"; exit 1; }
rm -f "$context.log"
echo "built $image from $bin_dir on $base"
