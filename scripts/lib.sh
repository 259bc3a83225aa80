# shellcheck shell=bash
# Helpers shared by the scripts in scripts/ (sourced, not run). The sourcing script sets
# SCRIPT_NAME first: it prefixes error messages.

# log MESSAGE…: a progress line on stderr.
log() { echo "== $*" >&2; }

# die MESSAGE…: the error on stderr, a `0 passed, 1 failed` summary on stdout, exit 1.
die() {
    echo "${SCRIPT_NAME:-proxim}: $*" >&2
    echo "0 passed, 1 failed"
    exit 1
}

# apt_install PACKAGE…: install Debian packages (through sudo when not root); updates the package
# lists once per run.
apt_updated=false
apt_install() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if ! $apt_updated; then
        $sudo apt-get update -qq
        apt_updated=true
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# wait_for FILE REGEX WHAT [TENTHS]: bounded wait (TENTHS tenths of a second, default 100) until
# FILE has a match of REGEX; print the first one. On timeout: say what was awaited, show the end
# of FILE, return 1.
wait_for() {
    local file=$1 regex=$2 what=$3 tenths=${4:-100} match _
    for _ in $(seq 1 "$tenths"); do
        match=$(grep -Eo "$regex" "$file" 2>/dev/null | head -n1 || true)
        if [ -n "$match" ]; then
            echo "$match"
            return 0
        fi
        sleep 0.1
    done
    echo "${SCRIPT_NAME:-proxim}: timed out waiting for $what; $file:" >&2
    tail -n 40 "$file" >&2 || true
    return 1
}
