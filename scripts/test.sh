#!/usr/bin/env bash
# Runs every Proxim test on this machine: the workspace's unit, integration and end-to-end
# tests, then the Kotlin suite on the JVM (installs the Kotlin compiler and JNA when missing).
# The same command CI runs (see .ci/run); the README names it.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test (workspace)"
cargo test --workspace --all-targets --locked
echo "== cargo test --doc"
cargo test --workspace --doc --locked
echo "== Kotlin bindings on the JVM against a real server and desktops"
bash scripts/test-kotlin.sh
