#!/usr/bin/env bash
# End-to-end test of docker-compose.ha.yml with real containers: three etcd
# members, two rules replicas on the log they hold, an instance whose enforcer
# knows both replicas, and a client container. A change through either replica
# reaches the instance's kernel; with one replica stopped, a change through the
# other still does.
# Usage: docker/test-compose-ha.sh [BIN_DIR]   (binaries already built; default target/release)
# Everything runs on the compose project's own network and is removed at the
# end (down -v), also on failure. Without a Docker engine it says so and skips.
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir=${1:-target/release}

if ! docker info >/dev/null 2>&1; then
    echo "compose-ha: skipped, no Docker engine on this machine"
    exit 0
fi
label=compose-ha
# shellcheck source=docker/compose-lib.sh
. docker/compose-lib.sh
export CASSETTE_IMAGE=cassette-firewall:test-ha-$$
export CASSETTE_RULES_A_PORT CASSETTE_RULES_B_PORT
CASSETTE_RULES_A_PORT=$(free_port)
CASSETTE_RULES_B_PORT=$(free_port)
project=cassette-ha-test-$$
dc() { "${compose[@]}" -f docker-compose.ha.yml -p "$project" "$@"; }
compose_up "$bin_dir"

check "rules-a is healthy on the etcd log" healthy rules-a 120
check "rules-b is healthy on the etcd log" healthy rules-b 120
rules_files=(ca.pem server.pem server.key log-signing.key log-trusted-keys.pem etcd-ca.pem etcd-client.pem etcd-client.key)
check "rules-a holds only the CAs' certificates, the server's key pair, the log's keys and its etcd client pair" \
    holds_only rules-a "${rules_files[@]}"
check "rules-b holds only the CAs' certificates, the server's key pair, the log's keys and its etcd client pair" \
    holds_only rules-b "${rules_files[@]}"
for m in etcd-1 etcd-2 etcd-3; do
    check "$m holds only etcd's CA certificate and its own key pair" holds_only "$m" ca.pem "$m.pem" "$m.key"
done
# etcd is on a network of its own: the workloads cannot reach it at all.
reaches_etcd() { # reaches_etcd SERVICE: a TCP connection from SERVICE to etcd-1:2379
    dc exec -T "$1" timeout 3 bash -c 'exec 3<>/dev/tcp/etcd-1/2379' >/dev/null 2>&1
}
check "the client cannot reach etcd" bash -c "$(declare -f reaches_etcd dc); compose=(${compose[*]}); project=$project; ! reaches_etcd client"
check "web-1 cannot reach etcd" bash -c "$(declare -f reaches_etcd dc); compose=(${compose[*]}); project=$project; ! reaches_etcd web-1"
# On its network, etcd speaks TLS and answers only a client certificate from its CA.
etcd_read() { # etcd_read CLIENT_FLAGS...: reads the log from inside rules-a
    dc exec -T rules-a cassette-rules log remove-after 0 --store etcd --etcd-endpoints https://etcd-1:2379 \
        --etcd-ca /pki/etcd-ca.pem --etcd-append-deadline 3s "$@" 2>&1 || true
}
check "etcd answers the replicas' client certificate" bash -c \
    "$(declare -f etcd_read dc); compose=(${compose[*]}); project=$project; etcd_read --etcd-cert /pki/etcd-client.pem --etcd-key /pki/etcd-client.key | grep -Eq 'would remove records|nothing to remove'"
check "etcd refuses a client without a certificate" bash -c \
    "$(declare -f etcd_read dc); compose=(${compose[*]}); project=$project; ! etcd_read | grep -Eq 'would remove records|nothing to remove'"
check "the enforcer holds only the CA certificate and its own key pair" \
    holds_only web-1-enforcer ca.pem enforcer-web-1.pem enforcer-web-1.key
admin_credentials
rpc() { # rpc a|b METHOD JSON: as the admin principal, over TLS, through one replica
    local port=$CASSETTE_RULES_A_PORT
    [ "$1" = b ] && port=$CASSETTE_RULES_B_PORT
    grpcurl "${admin[@]}" -max-time 40 -d "$3" "127.0.0.1:$port" "cassette.firewall.v1.FirewallService/$2"
}
in_sync_on() { # in_sync_on a|b: WaitForSync of web-1's latest revision through that replica
    rpc "$1" WaitForSync '{"instance_id": "web-1", "timeout": "30s"}' | jq -e '.state == "SYNC_STATE_IN_SYNC"' >/dev/null
}
can_connect() { dc exec -T client timeout 3 bash -c "exec 3<>/dev/tcp/web-1/$1" >/dev/null 2>&1; }
cannot_connect() { ! can_connect "$@"; }

rpc a CreateFirewall '{"instance_id": "web-1"}' >/dev/null
check "the enforcer applied the firewall created through rules-a (WaitForSync on rules-b)" in_sync_on b
check "8080 is closed by default" cannot_connect 8080
rule=$(rpc b AddRule '{"instance_id": "web-1", "port": 8080}' | jq -r '.rules[] | select(.port == 8080) | .id')
check "AddRule 8080 through rules-b is applied (WaitForSync on rules-a)" in_sync_on a
check "the replicas follow each other's acks directly, over TLS as spiffe://cassette.local/replica/rules" bash -c \
    "$(declare -f dc); compose=(${compose[*]}); project=$project; for r in rules-a rules-b; do dc logs \$r 2>&1 | grep 'a replica follows this one' | grep -q 'principal=spiffe://cassette.local/replica/rules' || exit 1; done"
check "the client reaches web-1:8080" can_connect 8080

# One replica goes away; the other takes the changes, and the enforcer follows.
dc stop rules-a >/dev/null 2>&1
rpc b UpdateRule "{\"instance_id\": \"web-1\", \"rule_id\": \"$rule\", \"enabled\": false}" >/dev/null
check "with rules-a stopped, disabling 8080 through rules-b is applied" in_sync_on b
check "the client cannot reach web-1:8080 again" cannot_connect 8080
check "the enforcer streams from rules-b now" bash -c \
    "$(declare -f rpc); admin=(${admin[*]}); CASSETTE_RULES_A_PORT=$CASSETTE_RULES_A_PORT; CASSETTE_RULES_B_PORT=$CASSETTE_RULES_B_PORT; rpc b GetFirewall '{\"instance_id\": \"web-1\"}' | jq -e '.sync.enforcerConnected' >/dev/null"
dc start rules-a >/dev/null 2>&1
check "rules-a comes back with the change made while it was away" bash -c \
    "$(declare -f rpc healthy dc); compose=(${compose[*]}); project=$project; admin=(${admin[*]}); CASSETTE_RULES_A_PORT=$CASSETTE_RULES_A_PORT; CASSETTE_RULES_B_PORT=$CASSETTE_RULES_B_PORT; healthy rules-a 120 && rpc a GetFirewall '{\"instance_id\": \"web-1\"}' | jq -e '.rules[] | select(.port == 8080) | .enabled != true' >/dev/null"
# Stopped cleanly, it wrote its projection snapshot (sealed with the log's
# signing key) and started from it, replaying only what rules-b appended.
check "rules-a started from its own projection snapshot" bash -c \
    "$(declare -f dc); compose=(${compose[*]}); project=$project; dc logs rules-a 2>&1 | grep -q 'started from the projection snapshot'"

echo "compose-ha: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
