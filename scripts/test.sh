#!/usr/bin/env bash
# Runs every Proxim test on this machine: the workspace's unit, integration and end-to-end tests.
# The same command CI runs (see .ci/run); the README names it.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test (workspace)"
cargo test --workspace --all-targets --locked
echo "== cargo test --doc"
cargo test --workspace --doc --locked
