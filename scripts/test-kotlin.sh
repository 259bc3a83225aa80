#!/usr/bin/env bash
# Kotlin tests of the Proxim bindings on the host JVM, against a real signaling server and real
# desktop peers on loopback:
#   1. installs what is missing (Kotlin compiler from npm into .kotlin-build/, JNA from Debian);
#   2. builds libproxim.so and the pinned uniffi-bindgen, generates the Kotlin bindings;
#   3. compiles bindings + bindings/kotlin-tests with `kotlinc -Werror`;
#   4. starts `proxim serve` and six `proxim desktop`s, each with its own --data-dir (4 accepting
#      and echoing: two shared, one for the trusted-reconnect tests, one whose code the
#      wrong-secret test burns; rejecting; silent);
#   5. runs the suite on the JVM. The last line is `N passed, M failed`; non-zero exit on failure.
# Only the processes started here are stopped (by PID). Usage: scripts/test-kotlin.sh [filter…]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
started_at=$(date +%s)

KOTLIN_VERSION=2.4.20
CACHE=$ROOT/.kotlin-build
KOTLIN_HOME=$CACHE/kotlin-compiler-$KOTLIN_VERSION
JNA_JAR=/usr/share/java/jna.jar
BUILD=$CACHE/host
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

SCRIPT_NAME=test-kotlin
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------

ensure_tools() {
    command -v java >/dev/null || { log "installing a JRE"; apt_install openjdk-17-jre-headless; }
    if [ ! -f "$JNA_JAR" ]; then
        log "installing JNA (libjna-java, libjna-jni)"
        apt_install libjna-java libjna-jni
    fi
    if [ ! -x "$KOTLIN_HOME/bin/kotlinc" ]; then
        command -v npm >/dev/null || { log "installing npm"; apt_install npm; }
        log "installing the Kotlin compiler $KOTLIN_VERSION (npm kotlin-compiler) into $KOTLIN_HOME"
        mkdir -p "$CACHE"
        local tmp
        tmp=$(mktemp -d "$CACHE/download.XXXXXX")
        (cd "$tmp" && npm pack --silent "kotlin-compiler@$KOTLIN_VERSION" >/dev/null && tar xzf ./*.tgz)
        rm -rf "$KOTLIN_HOME"
        mv "$tmp/package" "$KOTLIN_HOME"
        rm -rf "$tmp"
        chmod +x "$KOTLIN_HOME"/bin/*
    fi
}

# ---------------------------------------------------------------------------------------------
# Processes started here, stopped on exit
# ---------------------------------------------------------------------------------------------

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
    exec 7>&-
}
trap cleanup EXIT

# start_desktop NAME [flags…]: start a desktop peer in the background; its stdin is
# $DESKTOP_STDIN (default /dev/null, which makes a prompting desktop reject at once).
start_desktop() {
    local name=$1
    shift
    "$TARGET_DIR/debug/proxim" desktop --server "$SERVER_URL" --name "desk-$name" --no-qr \
        --data-dir "$WORK/$name-data" "$@" <"${DESKTOP_STDIN:-/dev/null}" \
        >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PIDS+=($!)
}

# code_of NAME: the (first) pairing code desktop NAME printed.
code_of() {
    wait_for "$WORK/$1.out" 'pairing code: [0-9A-Z]+-[0-9A-Z]+' "the $1 desktop's pairing code" 300 |
        sed 's/pairing code: //'
}

# link_of NAME: the QR link desktop NAME printed with its first code (`pairing link: …`).
link_of() {
    wait_for "$WORK/$1.out" 'pairing link: proxim://[^[:space:]]+' "the $1 desktop's pairing link" 300 |
        sed 's/pairing link: //'
}

# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------

ensure_tools
log "cargo build (bindings library + uniffi-bindgen, proxim CLI)"
# The workspace with its tests and the same features as scripts/test.sh: after it, nothing is
# compiled again (a `-p` selection would resolve features anew and rebuild the dependencies).
cargo build --locked --workspace --lib --bins --tests --features proxim-bindings/cli

log "generating Kotlin bindings (library mode, host config)"
rm -rf "$BUILD"
mkdir -p "$BUILD/generated"
"$TARGET_DIR/debug/uniffi-bindgen" generate --library "$TARGET_DIR/debug/libproxim.so" \
    --language kotlin --no-format --out-dir "$BUILD/generated" # config: bindings/uniffi.toml

log "kotlinc -Werror (generated bindings + bindings/kotlin-tests)"
LIBS=$JNA_JAR:$KOTLIN_HOME/lib/kotlinx-coroutines-core-jvm.jar:$KOTLIN_HOME/lib/kotlin-stdlib.jar
mapfile -t SOURCES < <(find "$BUILD/generated" bindings/kotlin-tests -name '*.kt' | sort)
"$KOTLIN_HOME/bin/kotlinc" -Werror -cp "$LIBS" "${SOURCES[@]}" -d "$BUILD/tests.jar" 2>&1 |
    grep -v '^OpenJDK 64-Bit Server VM warning' >&2 || true
[ -f "$BUILD/tests.jar" ] || die "kotlinc failed"

# ---------------------------------------------------------------------------------------------
# Peers
# ---------------------------------------------------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/proxim-kotlin.XXXXXX")
log "starting proxim serve and six desktops (work dir $WORK)"
# The suite pairs many times with the same desktops (20 at once among them): no per-code
# pairing limit here.
# The suite reads /api/sessions (with device names) on the public port, with the admin token.
ADMIN_TOKEN=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
PROXIM_ADMIN_TOKEN=$ADMIN_TOKEN "$TARGET_DIR/debug/proxim" serve --bind 127.0.0.1:0 --no-stun \
    --pair-attempts 0 --admin-bind none --expose-device-names >"$WORK/server.out" 2>"$WORK/server.err" &
PIDS+=($!)
ADDR=$(wait_for "$WORK/server.err" 'on 127\.0\.0\.1:[0-9]+' "the server's address" 300) ||
    die "the signaling server did not start"
ADDR=${ADDR#on }
SERVER_URL=ws://$ADDR/ws

mkdir -p "$WORK/downloads"
start_desktop accept --accept --echo --download-dir "$WORK/downloads"
# The server takes at most 16 simultaneous pairing requests per desktop: the 20-phone test
# spreads over two accepting desktops.
start_desktop accept2 --accept --echo --download-dir "$WORK/downloads2"
start_desktop reject --reject --download-dir "$WORK/reject-downloads"
# The silent desktop asks on stdin; a FIFO held open here and never written keeps it waiting.
mkfifo "$WORK/silent.in"
exec 7<>"$WORK/silent.in"
DESKTOP_STDIN=$WORK/silent.in start_desktop silent --download-dir "$WORK/silent-downloads"
# Trusted reconnects go to a desktop of their own, so its trust list holds only their phones.
start_desktop trust --accept --echo --download-dir "$WORK/trust-downloads"
# A wrong secret burns a desktop's code: that test gets a desktop the others do not use.
start_desktop wrong --accept --echo --download-dir "$WORK/wrong-downloads"
ACCEPT_CODE=$(code_of accept) || die "the accepting desktop did not register"
ACCEPT2_CODE=$(code_of accept2) || die "the second accepting desktop did not register"
REJECT_CODE=$(code_of reject) || die "the rejecting desktop did not register"
SILENT_CODE=$(code_of silent) || die "the silent desktop did not register"
TRUST_CODE=$(code_of trust) || die "the trusted-reconnect desktop did not register"
WRONG_CODE=$(code_of wrong) || die "the wrong-secret desktop did not register"
for code in "$ACCEPT_CODE" "$ACCEPT2_CODE" "$REJECT_CODE" "$SILENT_CODE" "$TRUST_CODE" "$WRONG_CODE"; do
    [ -n "$code" ] || die "no pairing code"
done
ACCEPT_LINK=$(link_of accept) || die "the accepting desktop printed no pairing link"

# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------

log "running the Kotlin suite on the JVM"
set +e
PROXIM_SERVER=$SERVER_URL PROXIM_HTTP=http://$ADDR PROXIM_ADMIN_TOKEN=$ADMIN_TOKEN \
    ACCEPT_CODE=$ACCEPT_CODE ACCEPT_DOWNLOADS=$WORK/downloads ACCEPT2_CODE=$ACCEPT2_CODE \
    REJECT_CODE=$REJECT_CODE SILENT_CODE=$SILENT_CODE SILENT_LOG=$WORK/silent.out \
    TRUST_CODE=$TRUST_CODE TRUST_DATA=$WORK/trust-data PROXIM_BIN=$TARGET_DIR/debug/proxim \
    WRONG_CODE=$WRONG_CODE WRONG_LOG=$WORK/wrong.out \
    ACCEPT_LINK=$ACCEPT_LINK WORK_DIR=$WORK \
    timeout 900 java -Djna.library.path="$TARGET_DIR/debug" -cp "$BUILD/tests.jar:$LIBS" \
    ProximTestsKt "$@" | tee "$WORK/suite.out"
status=${PIPESTATUS[0]}
set -e

cleanup
summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$WORK/suite.out" | tail -n1 || true)
if [ "$status" -ne 0 ]; then
    for f in server.err accept.out accept.err reject.out silent.out trust.out trust.err \
        wrong.out wrong.err; do
        echo "--- $f (last lines)" >&2
        tail -n 15 "$WORK/$f" >&2 || true
    done
fi
[ -n "$summary" ] || summary="0 passed, 1 failed"
[ "$status" -eq 0 ] && rm -rf "$WORK"
echo "test-kotlin: $(( $(date +%s) - started_at ))s" >&2
echo "$summary"
exit "$status"
