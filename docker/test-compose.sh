#!/usr/bin/env bash
# End-to-end test of docker-compose.yml with real containers: the rules
# service, two instances and their enforcer sidecars with real nftables.
# Usage: docker/test-compose.sh [BIN_DIR]   (binaries already built; default target/release)
# Everything it starts runs on the compose project's own network and is removed
# at the end (docker-compose down -v), also on failure. Without a Docker engine
# it says so and skips.
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir=${1:-target/release}

if ! docker info >/dev/null 2>&1; then
    echo "compose: skipped, no Docker engine on this machine"
    exit 0
fi
if command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose
    compose=(docker-compose)
fi

export CASSETTE_IMAGE=cassette-firewall:test-$$
export CASSETTE_RULES_PORT
CASSETTE_RULES_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
project=cassette-test-$$
dc() { "${compose[@]}" -p "$project" "$@"; }
rules=127.0.0.1:$CASSETTE_RULES_PORT
passed=0
failed=0

cleanup() {
    dc down -v --remove-orphans >/dev/null 2>&1 || true
    docker image rm "$CASSETTE_IMAGE" >/dev/null 2>&1 || true
}
trap cleanup EXIT

check() { # check NAME COMMAND...: one assertion
    local name=$1
    shift
    if "$@"; then
        echo "compose: ok: $name"
        passed=$((passed + 1))
    else
        echo "compose: FAILED: $name"
        failed=$((failed + 1))
        dc logs --tail 30 >&2 || true
    fi
}

# The README's "Run with Docker Compose" steps.
./docker/build-base-image.sh
./docker/build-image.sh "$bin_dir"
dc up -d >/dev/null 2>&1 || { dc logs --tail 50 >&2; exit 1; }

healthy() { # waits until the rules service is healthy (60 s at most)
    local id
    id=$(dc ps -q rules)
    for _ in $(seq 120); do
        [ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ] && return 0
        sleep 0.5
    done
    return 1
}
rpc() { # rpc METHOD JSON
    grpcurl -plaintext -max-time 40 -d "$2" "$rules" "cassette.firewall.v1.FirewallService/$1"
}
in_sync() { # waits until INSTANCE's enforcer is connected and in sync (60 s at most)
    for _ in $(seq 120); do
        rpc GetFirewall "{\"instance_id\": \"$1\"}" 2>/dev/null \
            | jq -e '.sync.state == "SYNC_STATE_IN_SYNC" and .sync.enforcerConnected' >/dev/null && return 0
        sleep 0.5
    done
    return 1
}
can_connect() { # can_connect FROM HOST PORT: a TCP connection from FROM's namespace
    dc exec -T "$1" timeout 3 bash -c "exec 3<>/dev/tcp/$2/$3" >/dev/null 2>&1
}
cannot_connect() { ! can_connect "$@"; }
wait_for_sync() {
    rpc WaitForSync "{\"instance_id\": \"$1\", \"timeout\": \"30s\"}" | jq -e '.state == "SYNC_STATE_IN_SYNC"' >/dev/null
}

check "the rules service is healthy" healthy
check "both enforcers applied their firewalls" bash -c "$(declare -f in_sync rpc); rules=$rules; in_sync web-1 && in_sync db-1"
check "web-1 cannot reach db-1:5432 (default firewall)" cannot_connect web-1 db-1 5432
check "db-1 reaches web-1:80 (a default rule)" can_connect db-1 web-1 80

rule=$(rpc AddRule '{"instance_id": "db-1", "port": 5432, "description": "PostgreSQL"}' \
    | jq -r '.rules[] | select(.port == 5432) | .id')
check "AddRule db-1 5432 is applied" wait_for_sync db-1
check "web-1 reaches db-1:5432" can_connect web-1 db-1 5432

rpc UpdateRule "{\"instance_id\": \"db-1\", \"rule_id\": \"$rule\", \"enabled\": false}" >/dev/null
check "disabling it is applied" wait_for_sync db-1
check "web-1 cannot reach db-1:5432 again" cannot_connect web-1 db-1 5432

dc restart db-1-enforcer >/dev/null 2>&1
check "the restarted enforcer is back in sync" bash -c "$(declare -f in_sync rpc); rules=$rules; in_sync db-1"
check "the rule survived in the API (disabled)" bash -c \
    "grpcurl -plaintext -d '{\"instance_id\": \"db-1\"}' $rules cassette.firewall.v1.FirewallService/GetFirewall | jq -e '.rules[] | select(.port == 5432) | .enabled != true' >/dev/null"
check "the rule survived in the kernel (5432 closed)" cannot_connect web-1 db-1 5432
check "the kernel holds the defaults only" bash -c \
    "$(declare -f dc); compose=(${compose[*]}); project=$project; dc exec -T db-1-enforcer nft list set inet cassette tcp_open | grep -q 'elements = { 22, 80, 443 }'"

echo "compose: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
