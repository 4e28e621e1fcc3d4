#!/usr/bin/env bash
# Runs cassette-firewall on this machine: the rules service on its embedded sled
# log (./cassette-data), serving gRPC on 127.0.0.1:50051, plus a local enforcer
# for one instance (CASSETTE_INSTANCE, default web-1).
#
# As root, the enforcer programs real nftables inside a network namespace this
# script creates (cassette-demo), so the machine's own firewall is never
# touched; it reaches the rules service through a Unix socket. Without root it
# writes the ruleset to cassette-data/ruleset.nft instead. Ctrl-C stops both
# (the namespace, if this script created it, is removed). Needs a Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
    echo "cassette-firewall needs a Rust toolchain: see https://rustup.rs" >&2
    exit 1
fi
data=${CASSETTE_DATA_DIR:-$PWD/cassette-data}
instance=${CASSETTE_INSTANCE:-web-1}

# One cassette-firewall per data directory and port: say so before anything starts.
if [ -e "$data/db" ] && command -v flock >/dev/null 2>&1 && ! flock -n "$data/db" true; then
    echo "cassette-firewall is already running on $data (another ./scripts/run.sh?):" >&2
    echo "stop it (Ctrl-C in its terminal), or set CASSETTE_DATA_DIR to another directory." >&2
    exit 1
fi
if (exec 3<>/dev/tcp/127.0.0.1/50051) 2>/dev/null; then
    echo "127.0.0.1:50051 is already in use (another ./scripts/run.sh or cassette-rules?): stop it first." >&2
    exit 1
fi

cargo build --release --locked --bin cassette-rules --bin cassette-enforcer --bin cassette

bin=${CARGO_TARGET_DIR:-target}/release
netns=cassette-demo
mkdir -p "$data"
socket="$data/rules.sock"
pids=()
made_netns=
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "$made_netns" ]; then ip netns del "$netns" 2>/dev/null || true; fi
}
trap cleanup EXIT INT TERM

"$bin/cassette-rules" --data-dir "$data" \
    --listen 127.0.0.1:50051 --listen "unix:$socket" &
pids+=($!)
for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.1; done

if [ "$(id -u)" -eq 0 ] && command -v nft >/dev/null && command -v ip >/dev/null; then
    if ! ip netns list | grep -qw "$netns"; then
        ip netns add "$netns"
        ip -n "$netns" link set lo up
        made_netns=1
    fi
    ip netns exec "$netns" "$bin/cassette-enforcer" \
        --rules "unix:$socket" --instance "$instance" --backend nft \
        --state-dir "$data/enforcer-state" &
    where="the nftables table: sudo ip netns exec $netns nft list table inet cassette"
else
    "$bin/cassette-enforcer" --rules "unix:$socket" --instance "$instance" \
        --backend file --ruleset-file "$data/ruleset.nft" \
        --state-dir "$data/enforcer-state" &
    where="the ruleset file: cat $data/ruleset.nft"
fi
pids+=($!)

cat <<MSG

cassette-firewall is running: rules service on 127.0.0.1:50051, enforcer for $instance.
The Firewall page: http://127.0.0.1:8080/instances/$instance (create the firewall first).
Try, in another terminal (more in README.md; grpcurl works too):
  $bin/cassette firewall create $instance
  $bin/cassette rule add $instance 5432 --description PostgreSQL
  $bin/cassette wait $instance
  $bin/cassette firewall get $instance
and look at $where
Ctrl-C stops everything.

MSG
wait -n "${pids[@]}"
