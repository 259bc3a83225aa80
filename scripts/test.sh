#!/usr/bin/env bash
# Runs every Proxim test on this machine: the workspace's unit, integration and end-to-end
# tests (installs coturn, openssl, rabbitmq-server and redis-server for the TURN, event and
# state tests when missing), then the Kotlin suite on the JVM (installs the Kotlin compiler and
# JNA when missing).
# The same command CI runs (see .ci/run); the README names it.
set -euo pipefail
cd "$(dirname "$0")/.."

# The TURN tests run a real coturn on loopback and make TLS certificates with openssl; the
# event tests run a real RabbitMQ, the state tests a real Redis.
missing=()
command -v turnserver >/dev/null || missing+=(coturn)
command -v openssl >/dev/null || missing+=(openssl)
ls /usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "== installing ${missing[*]} (TURN, event and state tests)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
# Debian may start coturn, RabbitMQ and Redis as services on install; the tests start their own
# on free ports (and never touch those).

# The same selection and features as the Kotlin suite's build (scripts/test-kotlin.sh) and
# clippy in CI, so dependencies are compiled once.
echo "== cargo test (workspace)"
cargo test --workspace --all-targets --locked --features proxim-bindings/cli
echo "== cargo test --doc"
cargo test --workspace --doc --locked --features proxim-bindings/cli
echo "== Kotlin bindings on the JVM against a real server and desktops"
bash scripts/test-kotlin.sh
