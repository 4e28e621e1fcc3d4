#!/usr/bin/env bash
# End-to-end test of docker-compose.yml with real containers: the PKI, the
# rules service over TLS with its policy, two instances and their enforcer
# sidecars (mutual TLS) with real nftables, and a workload without credentials
# trying to read and change firewalls.
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
label=compose
# shellcheck source=docker/compose-lib.sh
. docker/compose-lib.sh

export CASSETTE_IMAGE=cassette-firewall:test-$$
export CASSETTE_RULES_PORT
CASSETTE_RULES_PORT=$(free_port)
project=cassette-test-$$
dc() { "${compose[@]}" -p "$project" "$@"; }
rules=127.0.0.1:$CASSETTE_RULES_PORT

# The README's "Run with Docker Compose" steps.
compose_up "$bin_dir"

# The admin's credentials, from the operator's volume (as an operator would copy them).
admin_credentials
rpc() { # rpc METHOD JSON: as the admin principal, over TLS
    grpcurl "${admin[@]}" -max-time 40 -d "$2" "$rules" "cassette.firewall.v1.FirewallService/$1"
}
# A workload's view: grpcurl run inside web-1's network namespace (not its
# filesystem: it has no key), aimed at the rules service's address.
rules_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$(dc ps -q rules)")
web1_pid=$(docker inspect -f '{{.State.Pid}}' "$(dc ps -q web-1)")
from_workload() { # from_workload GRPCURL_ARGS...: prints grpcurl's output and error
    nsenter -t "$web1_pid" -n grpcurl -max-time 10 "$@" 2>&1 || true
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

check "the rules service is healthy" healthy rules 60
# Each long-running container holds the CA certificate and its own key pair,
# nothing else: not the CA's key, not the admin's, not another's.
check "the rules service holds only the CA certificate and its own key pair" \
    holds_only rules ca.pem server.pem server.key log-signing.key log-trusted-keys.pem
check "web-1's enforcer holds only the CA certificate and its own key pair" \
    holds_only web-1-enforcer ca.pem enforcer-web-1.pem enforcer-web-1.key
check "db-1's enforcer holds only the CA certificate and its own key pair" \
    holds_only db-1-enforcer ca.pem enforcer-db-1.pem enforcer-db-1.key
# In production the console creates firewalls; here the admin does.
rpc CreateFirewall '{"instance_id": "web-1"}' >/dev/null
rpc CreateFirewall '{"instance_id": "db-1"}' >/dev/null
check "both enforcers applied their firewalls over mutual TLS" bash -c "$(declare -f in_sync rpc); rules=$rules; admin=(${admin[*]}); in_sync web-1 && in_sync db-1"

revision_before=$(rpc GetFirewall '{"instance_id": "db-1"}' | jq -r '.revision')
check "a workload without credentials cannot read a firewall (UNAUTHENTICATED)" bash -c \
    "$(declare -f from_workload); web1_pid=$web1_pid; from_workload -insecure -d '{\"instance_id\": \"db-1\"}' $rules_ip:50051 cassette.firewall.v1.FirewallService/GetFirewall | grep -q 'Code: Unauthenticated'"
check "a workload without credentials cannot change a firewall (UNAUTHENTICATED)" bash -c \
    "$(declare -f from_workload); web1_pid=$web1_pid; from_workload -insecure -d '{\"instance_id\": \"db-1\", \"port\": 5432}' $rules_ip:50051 cassette.firewall.v1.FirewallService/AddRule | grep -q 'Code: Unauthenticated'"
check "a workload cannot talk plaintext to the service" bash -c \
    "$(declare -f from_workload); web1_pid=$web1_pid; ! from_workload -plaintext -d '{\"instance_id\": \"db-1\"}' $rules_ip:50051 cassette.firewall.v1.FirewallService/GetFirewall | grep -q revision"
check "a workload cannot open a sync stream without an enforcer certificate" bash -c \
    "$(declare -f from_workload); web1_pid=$web1_pid; from_workload -insecure -d '{\"hello\": {\"instance_id\": \"db-1\"}}' $rules_ip:50051 cassette.firewall.v1.EnforcerService/Sync | grep -q 'Code: Unauthenticated'"
check "nothing the workload tried changed db-1" bash -c \
    "$(declare -f rpc); rules=$rules; admin=(${admin[*]}); [ \"\$(rpc GetFirewall '{\"instance_id\": \"db-1\"}' | jq -r .revision)\" = $revision_before ]"
check "web-1 cannot reach db-1:5432 (default firewall)" cannot_connect web-1 db-1 5432
check "db-1 reaches web-1:80 (a default rule)" can_connect db-1 web-1 80

rule=$(rpc AddRule '{"instance_id": "db-1", "port": 5432, "description": "PostgreSQL"}' \
    | jq -r '.rules[] | select(.port == 5432) | .id')
check "AddRule db-1 5432 is applied" wait_for_sync db-1
check "web-1 reaches db-1:5432" can_connect web-1 db-1 5432

rpc UpdateRule "{\"instance_id\": \"db-1\", \"rule_id\": \"$rule\", \"enabled\": false}" >/dev/null
check "disabling it is applied" wait_for_sync db-1
check "web-1 cannot reach db-1:5432 again" cannot_connect web-1 db-1 5432
signed_log() { # the log verifies, and a signature by the service's key covers its head
    grpcurl "${admin[@]}" -max-time 40 -d '{}' "$rules" cassette.firewall.v1.AuditService/VerifyLog \
        | jq -e '.ok and .signedHead.sequence == .headSequence and (.signedHead.keyId | length) == 16' >/dev/null
}
check "the rules service signs its log (VerifyLog: ok, its head signed)" signed_log

dc restart db-1-enforcer >/dev/null 2>&1
check "the restarted enforcer is back in sync" bash -c "$(declare -f in_sync rpc); rules=$rules; admin=(${admin[*]}); in_sync db-1"
check "the rule survived in the API (disabled)" bash -c \
    "$(declare -f rpc); rules=$rules; admin=(${admin[*]}); rpc GetFirewall '{\"instance_id\": \"db-1\"}' | jq -e '.rules[] | select(.port == 5432) | .enabled != true' >/dev/null"
check "the rule survived in the kernel (5432 closed)" cannot_connect web-1 db-1 5432
# The open ports of db-1's tcp_open set (each element carries a counter).
ports_json='[.nftables[] | .set? // empty | .elem[]? | if type == "object" then .elem.val else . end]'
check "the kernel holds the defaults only" bash -c \
    "$(declare -f dc); compose=(${compose[*]}); project=$project; dc exec -T db-1-enforcer nft -j list set inet cassette tcp_open | jq -ce '$ports_json' | grep -qx '\[22,80,443\]'"

# The instance reboots while the rules service is down: the enforcer comes
# back on an empty kernel with only its state volume, and must put the user's
# firewall back (SSH closed, 5432 open), not the defaults.
rpc UpdateRule "{\"instance_id\": \"db-1\", \"rule_id\": \"$rule\", \"enabled\": true}" >/dev/null
rpc UpdateRule '{"instance_id": "db-1", "rule_id": "default-ssh", "enabled": false}' >/dev/null
check "opening 5432 and closing SSH on db-1 is applied" wait_for_sync db-1
rules_id=$(dc ps -q rules)
enforcer_id=$(dc ps -q db-1-enforcer)
db1_pid=$(docker inspect -f '{{.State.Pid}}' "$(dc ps -q db-1)")
docker stop "$rules_id" >/dev/null
docker stop "$enforcer_id" >/dev/null
nsenter -t "$db1_pid" -n nft delete table inet cassette
docker start "$enforcer_id" >/dev/null
db1_ports() { nsenter -t "$db1_pid" -n nft -j list set inet cassette tcp_open 2>/dev/null | jq -c "$ports_json"; }
saved_firewall_back() {
    for _ in $(seq 40); do
        [ "$(db1_ports)" = '[80,443,5432]' ] && return 0
        sleep 0.25
    done
    return 1
}
check "with the rules service down, the restarted enforcer restores db-1's own firewall (80, 443, 5432; SSH closed)" saved_firewall_back
check "web-1 reaches db-1:5432 with no control plane" can_connect web-1 db-1 5432
docker start "$rules_id" >/dev/null
check "the rules service is back and db-1 is in sync" bash -c "$(declare -f in_sync rpc); rules=$rules; admin=(${admin[*]}); in_sync db-1"

echo "compose: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
