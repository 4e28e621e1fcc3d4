#!/usr/bin/env bash
# change -> kernel -> ack with Google's grpcio client (tools/grpcio-bench),
# the performance issue's first row: the rules service (release build, its
# sled log on disk) in this namespace on a Unix socket, its enforcer in a
# network namespace of its own (nftables there, its state file on disk), the
# client in another, both reaching the service through the socket. Prints
# the client's JSON line. Root (namespaces, nftables); installs grpcio and
# grpcio-tools into target/tools/venv. Everything it creates goes on exit.
#
#   sudo ./scripts/bench-grpcio.sh [CHANGES]
set -euo pipefail
cd "$(dirname "$0")/.."
changes=${1:-1000}
[ "$(id -u)" -eq 0 ] || { echo "bench-grpcio.sh needs root (namespaces, nftables)" >&2; exit 1; }
command -v nft >/dev/null || { echo "bench-grpcio.sh needs nftables (apt-get install nftables)" >&2; exit 1; }

venv=target/tools/venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null ||
    "$venv/bin/pip" install -q 'grpcio==1.66.2' 'grpcio-tools==1.66.2' >&2
cargo build --release -q -p cassette-rules -p cassette-enforcer >&2

work=$(mktemp -d -p target bench-grpcio.XXXXXX)
ns_enforcer=cfgrpc-e-$$
ns_client=cfgrpc-c-$$
pids=()
cleanup() {
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    ip netns delete "$ns_enforcer" 2>/dev/null || true
    ip netns delete "$ns_client" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

"$venv/bin/python" -m grpc_tools.protoc -I proto --python_out "$work" --grpc_python_out "$work" \
    proto/cassette/firewall/v1/firewall.proto
ip netns add "$ns_enforcer"
ip netns add "$ns_client"
socket=$work/rules.sock
target/release/cassette-rules --data-dir "$work/data" --listen "unix:$socket" --http-listen off --log warn &
pids+=($!)
for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.1; done
[ -S "$socket" ] || { echo "the rules service did not start" >&2; exit 1; }
ip netns exec "$ns_enforcer" target/release/cassette-enforcer --rules "unix:$socket" \
    --instance bench-1 --backend nft --state-dir "$work/enforcer-state" --log warn &
pids+=($!)
ip netns exec "$ns_client" "$venv/bin/python" tools/grpcio-bench/bench.py \
    --target "unix:$socket" --stubs "$work" --changes "$changes"
