# Shared by docker/test-compose.sh and docker/test-compose-ha.sh (sourced):
# finding docker-compose, a free loopback port, bringing the project up (and
# down again on exit), waiting for a healthy service, the admin's
# credentials, and one assertion at a time. Each script defines dc() (its
# compose command with its file and project), $CASSETTE_IMAGE and a $label
# for its output.

if command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose
    compose=(docker-compose)
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

passed=0
failed=0
check() { # check NAME COMMAND...: one assertion
    local name=$1
    shift
    if "$@"; then
        echo "$label: ok: $name"
        passed=$((passed + 1))
    else
        echo "$label: FAILED: $name"
        failed=$((failed + 1))
        dc logs --tail 30 >&2 || true
    fi
}

# compose_up BIN_DIR: builds the images and starts the project; on exit the
# project, its volumes, the image and $creds (a temporary directory for the
# admin's credentials) are removed, also on failure.
compose_up() {
    creds=$(mktemp -d)
    trap compose_down EXIT
    ./docker/build-base-image.sh
    ./docker/build-image.sh "$1"
    dc up -d >/dev/null 2>&1 || { dc logs --tail 50 >&2; exit 1; }
}

compose_down() {
    dc down -v --remove-orphans >/dev/null 2>&1 || true
    docker image rm "$CASSETTE_IMAGE" >/dev/null 2>&1 || true
    rm -rf "$creds"
}

holds_only() { # holds_only SERVICE FILE...: SERVICE's /pki holds exactly these, keys 0400
    local want got
    want=$(printf '%s\n' "${@:2}" | sort | tr '\n' ' ')
    got=$(dc exec -T "$1" sh -c 'ls /pki' | sort | tr '\n' ' ')
    [ "$got" = "$want" ] || { echo "$1 holds: $got" >&2; return 1; }
    [ -z "$(dc exec -T "$1" sh -c 'find /pki -name "*.key" ! -perm 0400')" ]
}

healthy() { # healthy SERVICE SECONDS: waits until SERVICE is healthy
    local id
    id=$(dc ps -q "$1")
    for _ in $(seq $(($2 * 2))); do
        [ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ] && return 0
        sleep 0.5
    done
    return 1
}

# admin_credentials: copies the admin principal's certificate, key and the CA
# from the operator's volume (pki-operator, which only the one-shot pki step
# mounts) into $creds, as an operator would, and sets admin=(grpcurl's flags).
admin_credentials() {
    dc run --rm -T --no-deps pki tar -C /out/operator -cf - . 2>/dev/null | tar -C "$creds" -xf -
    admin=(-cacert "$creds/ca.pem" -cert "$creds/principal-admin.pem" -key "$creds/principal-admin.key")
}
