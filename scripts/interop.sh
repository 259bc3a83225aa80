#!/usr/bin/env bash
# Proxim <-> Chromium (libwebrtc) data-channel interop, every scenario of
# tests/interop/interop.mjs, inside a network namespace of its own.
#
# Usage: scripts/interop.sh [--list] [SCENARIO...]        (default: all scenarios)
#
# Needs root (network namespace). Installs what is missing: Debian's chromium, iproute2 and
# jq (apt), playwright-core (npm ci in tests/interop; no browser download). Builds
# proxim-interop (cargo build --release --locked -p proxim-tests --bin proxim-interop) unless
# $PROXIM_INTEROP_BIN names one. Each scenario runs in at most $INTEROP_TIMEOUT s (default 60);
# logs and JSON results go to $INTEROP_LOG_DIR (default $CARGO_TARGET_DIR/interop).
# Prints a table, then `N passed, M failed` last; exits non-zero when any scenario failed.
#
# The namespace pxi-interop has lo and one veth (198.18.90.1/24, default route via
# 198.18.90.2, the veth's silent other end): Chromium gathers no candidate without an address
# and a default route. Both peers live in it and reach each other on 198.18.90.1. IPv6 is off.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

NS=pxi-interop
NS_ADDR=198.18.90.1/24
NS_GW=198.18.90.2
SCENARIO_TIMEOUT=${INTEROP_TIMEOUT:-60}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
LOG_DIR=${INTEROP_LOG_DIR:-$TARGET_DIR/interop}
DRIVER=$ROOT/tests/interop/interop.mjs

SCRIPT_NAME=interop
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

if [ "${1:-}" = "--list" ]; then
    exec node "$DRIVER" --list
fi
[ "$(id -u)" -eq 0 ] || die "needs root (it creates the network namespace $NS)"

# ---------------------------------------------------------------------------------------------
# What the run needs
# ---------------------------------------------------------------------------------------------

install_missing() {
    local missing=()
    command -v chromium >/dev/null || missing+=(chromium)
    command -v ip >/dev/null || missing+=(iproute2)
    command -v jq >/dev/null || missing+=(jq)
    if [ ${#missing[@]} -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        local t=$SECONDS
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
        log "installed in $((SECONDS - t)) s"
    fi
    command -v node >/dev/null || die "node is missing (playwright-core needs node >= 20)"
    local major
    major=$(node -p 'process.versions.node.split(".")[0]')
    [ "$major" -ge 20 ] || die "node $(node --version) is too old: playwright-core needs node >= 20"
    if [ ! -f tests/interop/node_modules/playwright-core/package.json ]; then
        log "npm ci (tests/interop: playwright-core; no browser download)"
        local t=$SECONDS
        (cd tests/interop && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
        log "npm ci in $((SECONDS - t)) s"
    fi
}

build() {
    if [ -n "${PROXIM_INTEROP_BIN:-}" ]; then
        BIN=$PROXIM_INTEROP_BIN
    else
        log "cargo build --release --locked -p proxim-tests --bin proxim-interop"
        cargo build --release --locked -p proxim-tests --bin proxim-interop
        BIN=$TARGET_DIR/release/proxim-interop
    fi
    [ -x "$BIN" ] || die "no proxim-interop binary at $BIN"
}

# ---------------------------------------------------------------------------------------------
# The namespace
# ---------------------------------------------------------------------------------------------

ns_down() {
    if ip netns list | grep -qw "$NS"; then
        # Whatever still runs inside is ours: the namespace was made by this script.
        local pids
        pids=$(ip netns pids "$NS" 2>/dev/null || true)
        for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$NS" 2>/dev/null || true
    fi
}

ns_up() {
    ns_down
    ip netns add "$NS"
    ip netns exec "$NS" sh -c 'echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6; echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6'
    ip -n "$NS" link set lo up
    ip -n "$NS" link add v0 type veth peer name v1
    ip -n "$NS" addr add "$NS_ADDR" dev v0
    ip -n "$NS" link set v0 up
    ip -n "$NS" link set v1 up
    ip -n "$NS" route add default via "$NS_GW" dev v0
}

# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------

install_missing
build
mapfile -t ALL < <(node "$DRIVER" --list | cut -f1)
if [ $# -gt 0 ]; then SELECTED=("$@"); else SELECTED=("${ALL[@]}"); fi
for s in "${SELECTED[@]}"; do
    printf '%s\n' "${ALL[@]}" | grep -qx -- "$s" || die "no scenario $s (scripts/interop.sh --list)"
done

trap ns_down EXIT
ns_up
mkdir -p "$LOG_DIR"
log "chromium $(chromium --version 2>/dev/null | awk '{print $2}'), node $(node --version), logs in $LOG_DIR"

passed=0
failed=0
ROWS=()
for s in "${SELECTED[@]}"; do
    log "scenario $s"
    rc=0
    timeout --kill-after=10 $((SCENARIO_TIMEOUT + 30)) \
        node "$DRIVER" --scenario "$s" --proxim-bin "$BIN" --netns "$NS" \
        --timeout "$SCENARIO_TIMEOUT" --log-dir "$LOG_DIR" --json >"$LOG_DIR/$s.json" || rc=$?
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1))
        result=pass
    else
        failed=$((failed + 1))
        result=FAIL
    fi
    if jq -e . "$LOG_DIR/$s.json" >/dev/null 2>&1; then
        secs=$(jq -r '.seconds | floor' "$LOG_DIR/$s.json")
        why=$(jq -r '[.checks[] | select(.ok | not) | .name + (if .detail != "" then " [" + .detail + "]" else "" end)] | join("; ")' "$LOG_DIR/$s.json")
        jq -r '.checks[] | "   " + (if .ok then "ok  " else "FAIL" end) + " " + .name + (if .detail != "" then ": " + .detail else "" end)' "$LOG_DIR/$s.json" >&2
    else
        secs=-
        why="driver exit $rc without a result (see $LOG_DIR/$s.*)"
    fi
    # A fresh namespace per scenario: nothing left over from the previous one.
    ns_up
    ROWS+=("$(printf '%-36s %-5s %4s  %s' "$s" "$result" "$secs" "${why:0:400}")")
done

echo
printf '%-36s %-5s %4s  %s\n' SCENARIO RESULT SECS "FAILED CHECKS"
for row in "${ROWS[@]}"; do echo "$row"; done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
