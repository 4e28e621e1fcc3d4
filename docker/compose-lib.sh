# Shared by docker/test-compose.sh and docker/test-compose-ha.sh (sourced):
# finding docker-compose, a free loopback port, and one assertion at a time.
# Each script defines dc() (its compose command with its file and project)
# and a $label for its output.

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
