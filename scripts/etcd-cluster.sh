#!/usr/bin/env bash
# Runs a three-member etcd cluster on loopback for trying replicas and for
# benchmarks: client URLs http://127.0.0.1:23790, :23791, :23792, data in
# ${ETCD_DATA:-target/etcd-cluster} (kept between runs; delete it to start
# empty). Needs Debian's etcd-server (installed here if missing, as root).
# Ctrl-C stops all three.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v etcd >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server
    else
        echo "etcd-cluster.sh needs etcd: sudo apt-get install etcd-server" >&2
        exit 1
    fi
fi
data=${ETCD_DATA:-target/etcd-cluster}
mkdir -p "$data"
cluster="m0=http://127.0.0.1:23800,m1=http://127.0.0.1:23801,m2=http://127.0.0.1:23802"
pids=()
# SIGTERM, then SIGKILL for any member still there after five seconds.
cleanup() {
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" -eq 0 ] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM
for i in 0 1 2; do
    etcd --name "m$i" --data-dir "$data/m$i" \
        --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
        --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
        --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token cassette-local \
        --auto-compaction-mode revision --auto-compaction-retention 10000 \
        --logger zap --log-level warn >"$data/m$i.log" 2>&1 &
    pids+=($!)
done
echo "etcd cluster: --etcd-endpoints http://127.0.0.1:23790,http://127.0.0.1:23791,http://127.0.0.1:23792"
echo "logs in $data/m*.log; Ctrl-C stops it"
wait -n "${pids[@]}"
