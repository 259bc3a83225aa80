#!/usr/bin/env bash
# Runs every Proxim test on this machine: the workspace's unit, integration and end-to-end
# tests (installs coturn and openssl for the TURN tests when missing), then the Kotlin suite on
# the JVM (installs the Kotlin compiler and JNA when missing).
# The same command CI runs (see .ci/run); the README names it.
set -euo pipefail
cd "$(dirname "$0")/.."

# The TURN tests run a real coturn on loopback and make TLS certificates with openssl.
if ! command -v turnserver >/dev/null || ! command -v openssl >/dev/null; then
    echo "== installing coturn and openssl (TURN tests)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq coturn openssl >/dev/null
fi
# Debian starts coturn as a service on install; the tests start their own on free ports.

echo "== cargo test (workspace)"
cargo test --workspace --all-targets --locked
echo "== cargo test --doc"
cargo test --workspace --doc --locked
echo "== Kotlin bindings on the JVM against a real server and desktops"
bash scripts/test-kotlin.sh
