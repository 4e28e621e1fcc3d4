#!/usr/bin/env bash
# Runs cassette-firewall on this machine: the rules service on its embedded
# sled log (./cassette-data), serving gRPC on 127.0.0.1:50051. Extra arguments
# go to cassette-rules (see --help). Needs a Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
    echo "cassette-firewall needs a Rust toolchain: see https://rustup.rs" >&2
    exit 1
fi
cargo build --release --locked --bin cassette-rules
cat <<'MSG'
cassette-rules is starting on 127.0.0.1:50051 (Ctrl-C stops it). Try, in another terminal:
  grpcurl -plaintext 127.0.0.1:50051 list
  grpcurl -plaintext -d '{"instance_id": "web-1"}' 127.0.0.1:50051 cassette.firewall.v1.FirewallService/CreateFirewall
More examples in README.md.
MSG
exec target/release/cassette-rules "$@"
