#!/usr/bin/env bash
# A NAT lab in network namespaces, and the NAT traversal scenarios Proxim must pass in it.
#
#                        pxl-pub  (bridge br0: 198.18.0.1 gw, 198.18.0.2 proxim serve + STUN,
#                          |       198.18.0.3 coturn: STUN/TURN UDP+TCP 3478, TLS 5349;
#                          |       default route into a silent sink, see FIELD-NOTES)
#            +-------------+-------------+
#   pxl-ra  wan 198.18.0.11        wan 198.18.0.12  pxl-rb     NAT routers (iptables per scenario)
#           lan 198.19.1.1         lan 198.19.2.1
#   pxl-ha  eth0 198.19.1.2        eth0 198.19.2.2  pxl-hb     LAN hosts: desktop (A), phone (B)
#
# Addresses come only from 198.18.0.0/15 (RFC 2544 benchmarking space); veths are created
# directly inside the namespaces, so nothing lands in the root namespace.
#
# Usage: scripts/natlab.sh up | down | nat A|B TYPE | list | run [--repeat N] [SCENARIO...]
#        scripts/natlab.sh bench [PROXIM-BENCH ARGS...]
#   up     build the lab (routers as cone NATs) with coturn and `proxim serve` running; leave it up
#   down   stop what `up` started (by PID) and delete the pxl-* namespaces
#   nat    switch a router of a lab that is up: cone, symmetric, fullcone or udp-blocked
#   list   the scenarios
#   run    a fresh lab, the scenarios (default: all; numbers or names), then down; refuses when
#          a lab is up already. Prints a table and, last, `N passed, M failed`; non-zero exit
#          when any failed.
#   bench  a fresh lab, then one `proxim-bench --only proxim` run inside pxl-pub: DC-BULK direct
#          beside DC-BULK through the lab's coturn (UDP, TCP, TLS; REST credentials), and setup
#          times, in one table; then down. $PROXIM_BENCH_BIN, else cargo build -p proxim-bench.
# Needs root; installs what is missing (coturn iptables iproute2 conntrack openssl jq). The proxim
# binary is $PROXIM_BIN, else `cargo build --release --locked -p proxim`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# ---------------------------------------------------------------------------------------------
# The lab's fixed layout
# ---------------------------------------------------------------------------------------------

NS_PUB=pxl-pub
NS_RA=pxl-ra
NS_RB=pxl-rb
NS_HA=pxl-ha
NS_HB=pxl-hb
ALL_NS=("$NS_PUB" "$NS_RA" "$NS_RB" "$NS_HA" "$NS_HB")

PUB_GW=198.18.0.1
SERVER_IP=198.18.0.2
TURN_IP=198.18.0.3
RA_WAN=198.18.0.11
RB_WAN=198.18.0.12
RA_LAN=198.19.1.1
HA_IP=198.19.1.2
RB_LAN=198.19.2.1
HB_IP=198.19.2.2
# The silent default route of the public namespace: a veth whose far end drops everything.
SINK_IP=198.18.254.1
SINK_GW=198.18.254.2
SINK_MAC=02:00:5e:00:53:01

SIGNAL_PORT=8787
SERVER_URL=ws://$SERVER_IP:$SIGNAL_PORT/ws
STUN_PORT=3478
TLS_PORT=5349
TURN_REALM=proxim.lab
FILE_BYTES=$((4 * 1024 * 1024))
# Seconds: the ICE/DTLS/SCTP budget handed to the peers, and the hard bound around each `pair`.
CONNECT_TIMEOUT=${NATLAB_CONNECT_TIMEOUT:-15}
PAIR_BOUND=$((CONNECT_TIMEOUT + 45))

STATE=${NATLAB_STATE:-/run/proxim-natlab}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac

# Errors as one line (no anyhow backtrace even when CI sets RUST_BACKTRACE); info logs from the
# peers (-v) land in the attempt's *.err files.
export RUST_LIB_BACKTRACE=0

log() { echo "== $*" >&2; }
die() {
    echo "natlab: $*" >&2
    echo "0 passed, 1 failed"
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Scenarios: name | NAT A (desktop) | NAT B (phone) | TURN URLs | force relay | expected
# expected: direct (host/srflx/prflx), fail (ICE failed / timed out), relay (either side's
# candidate), relay/tcp|tls (the phone's own candidate is a relay reached over TCP / TLS)
# ---------------------------------------------------------------------------------------------

SCENARIOS=(
    "cone-cone|cone|cone|-|no|direct"
    "fullcone-symmetric|fullcone|symmetric|-|no|direct"
    "symmetric-symmetric|symmetric|symmetric|-|no|fail"
    "symmetric-symmetric-turn|symmetric|symmetric|turn:$TURN_IP:$STUN_PORT|no|relay"
    "cone-cone-force-relay|cone|cone|turn:$TURN_IP:$STUN_PORT|yes|relay"
    "udp-blocked-turn-tcp|cone|udp-blocked|turn:$TURN_IP:$STUN_PORT?transport=tcp|no|relay/tcp"
    "udp-blocked-turn-tls|cone|udp-blocked|turns:$TURN_IP:$TLS_PORT|no|relay/tls"
)

list_scenarios() {
    local i=1 s name a b turn relay expected
    printf '%-3s %-26s %-10s %-12s %-10s %-6s %s\n' "#" SCENARIO "NAT A" "NAT B" EXPECTED RELAY TURN
    for s in "${SCENARIOS[@]}"; do
        IFS='|' read -r name a b turn relay expected <<<"$s"
        printf '%-3s %-26s %-10s %-12s %-10s %-6s %s\n' "$i" "$name" "$a" "$b" "$expected" "$relay" "$turn"
        i=$((i + 1))
    done
}

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------

apt_updated=false
apt_install() {
    if ! $apt_updated; then
        apt-get update -qq
        apt_updated=true
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_tools() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces, iptables, coturn)"
    local missing=() pair tool pkg
    for pair in turnserver:coturn iptables:iptables ip:iproute2 ss:iproute2 conntrack:conntrack \
        openssl:openssl jq:jq sha256sum:coreutils timeout:coreutils; do
        tool=${pair%%:*} pkg=${pair#*:}
        command -v "$tool" >/dev/null || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]}"
        # shellcheck disable=SC2046 # word splitting of the deduplicated list is intended
        apt_install $(printf '%s\n' "${missing[@]}" | sort -u) || die "apt-get install ${missing[*]} failed"
    fi
}

ensure_proxim() {
    if [ -n "${PROXIM_BIN:-}" ]; then
        PROXIM=$PROXIM_BIN
    else
        log "cargo build --release --locked -p proxim"
        cargo build --release --locked -p proxim >&2 || die "cargo build failed"
        PROXIM=$TARGET_DIR/release/proxim
    fi
    [ -x "$PROXIM" ] || die "no proxim binary at $PROXIM"
    # Newer flags (--json on pair; the others on desktop and pair) are used when the binary has
    # them; without --json the human-readable lines are parsed.
    local help dhelp
    help=$("$PROXIM" pair --help 2>&1 || true)
    dhelp=$("$PROXIM" desktop --help 2>&1 || true)
    HAS_JSON=false HAS_FORCE_RELAY=false HAS_TURN_CA=false HAS_CONNECT_TIMEOUT=false
    grep -q -- '--json' <<<"$help" && HAS_JSON=true
    has_both --force-relay && HAS_FORCE_RELAY=true
    has_both --turn-ca && HAS_TURN_CA=true
    has_both --connect-timeout && HAS_CONNECT_TIMEOUT=true
    log "proxim: $PROXIM (json=$HAS_JSON force-relay=$HAS_FORCE_RELAY turn-ca=$HAS_TURN_CA connect-timeout=$HAS_CONNECT_TIMEOUT)"
}

# has_both FLAG: both `pair --help` ($help) and `desktop --help` ($dhelp) list FLAG.
has_both() {
    grep -q -- "$1" <<<"$help" && grep -q -- "$1" <<<"$dhelp"
}

# ---------------------------------------------------------------------------------------------
# Processes started here (by PID) and the namespaces created here
# ---------------------------------------------------------------------------------------------

PIDS=()
# Until this script creates the namespaces, exiting leaves any existing lab alone.
KEEP_LAB=true
WORK=""

# stop_pids PID...: TERM, a bounded wait, then KILL what is left.
stop_pids() {
    local pid i alive
    [ "$#" -gt 0 ] || return 0
    for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
    for i in $(seq 1 50); do
        alive=false
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=true; done
        $alive || break
        sleep 0.1
    done
    for pid in "$@"; do kill -9 "$pid" 2>/dev/null || true; done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

# The pxl-* namespaces that exist now.
lab_namespaces() {
    ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^pxl-' || true
}

# Stop the processes still running inside our namespaces (only ours run there), delete them.
delete_namespaces() {
    local ns pids
    for ns in $(lab_namespaces); do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        # shellcheck disable=SC2086 # a list of PIDs
        [ -z "$pids" ] || stop_pids $pids
        ip netns del "$ns" 2>/dev/null || true
    done
}

on_exit() {
    local status=$?
    if ! $KEEP_LAB; then
        stop_pids "${PIDS[@]}"
        PIDS=()
        delete_namespaces
        if [ -n "$WORK" ] && [ -d "$WORK" ]; then
            if [ "$status" -eq 0 ]; then rm -rf "$WORK"; else log "logs kept in $WORK"; fi
        fi
    fi
    return "$status"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# start NAME NS CMD...: start CMD in namespace NS in the background, output in $WORK/NAME.{out,err}.
start() {
    local name=$1 ns=$2
    shift 2
    ip netns exec "$ns" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" </dev/null &
    PIDS+=($!)
    LAST_PID=$!
}

# forget PID: drop a stopped process from PIDS.
forget() {
    local pid keep=()
    for pid in "${PIDS[@]}"; do [ "$pid" = "$1" ] || keep+=("$pid"); done
    PIDS=("${keep[@]}")
}

# wait_for FILE REGEX WHAT [TENTHS]: bounded wait for a match of REGEX in FILE; print it.
wait_for() {
    local file=$1 regex=$2 what=$3 tenths=${4:-100} match i
    for i in $(seq 1 "$tenths"); do
        match=$(grep -Eo "$regex" "$file" 2>/dev/null | head -n1 || true)
        if [ -n "$match" ]; then
            echo "$match"
            return 0
        fi
        sleep 0.1
    done
    echo "natlab: timed out waiting for $what; $file:" >&2
    tail -n 20 "$file" >&2 || true
    return 1
}

# wait_listen NS PROTO ADDR:PORT WHAT: bounded wait until a socket listens there.
wait_listen() {
    local ns=$1 proto=$2 addr=$3 what=$4 i
    for i in $(seq 1 100); do
        ip netns exec "$ns" ss -Hln"$proto" 2>/dev/null | grep -qF " $addr " && return 0
        sleep 0.1
    done
    echo "natlab: $what is not listening on $addr/$proto" >&2
    return 1
}

# ---------------------------------------------------------------------------------------------
# Topology
# ---------------------------------------------------------------------------------------------

nsx() {
    local ns=$1
    shift
    ip netns exec "$ns" "$@"
}

build_topology() {
    local ns
    [ -z "$(lab_namespaces)" ] || die "pxl-* namespaces exist already: run scripts/natlab.sh down first"
    KEEP_LAB=false
    for ns in "${ALL_NS[@]}"; do
        ip netns add "$ns" || die "cannot create network namespace $ns (ip netns add failed): the NAT lab needs root with CAP_SYS_ADMIN and CAP_NET_ADMIN"
        ip -n "$ns" link set lo up
        # IPv4 only, like the core's gathering: no link-local IPv6 paths around the NATs.
        nsx "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 2>/dev/null || true
    done
    # The public segment: a bridge in pxl-pub, one veth per router.
    ip -n "$NS_PUB" link add br0 type bridge
    ip -n "$NS_PUB" addr add "$PUB_GW/24" dev br0
    ip -n "$NS_PUB" addr add "$SERVER_IP/24" dev br0
    ip -n "$NS_PUB" addr add "$TURN_IP/24" dev br0
    ip -n "$NS_PUB" link set br0 up
    ip link add wan netns "$NS_RA" type veth peer name to-ra netns "$NS_PUB"
    ip link add wan netns "$NS_RB" type veth peer name to-rb netns "$NS_PUB"
    ip -n "$NS_PUB" link set to-ra master br0 up
    ip -n "$NS_PUB" link set to-rb master br0 up
    # The silent default route (FIELD-NOTES: coturn drops an allocation when a relayed send is
    # unroutable): sends to the LANs' private host candidates go into this veth and vanish.
    ip -n "$NS_PUB" link add sink type veth peer name sink-drop
    ip -n "$NS_PUB" addr add "$SINK_IP/30" dev sink
    ip -n "$NS_PUB" link set sink up
    ip -n "$NS_PUB" link set sink-drop up
    ip -n "$NS_PUB" neigh replace "$SINK_GW" lladdr "$SINK_MAC" dev sink nud permanent
    ip -n "$NS_PUB" route add default via "$SINK_GW" dev sink
    # Routers and their LAN hosts.
    router "$NS_RA" "$RA_WAN" "$RA_LAN" "$NS_HA" "$HA_IP"
    router "$NS_RB" "$RB_WAN" "$RB_LAN" "$NS_HB" "$HB_IP"
}

# router NS WAN_IP LAN_IP HOST_NS HOST_IP
router() {
    local ns=$1 wan=$2 lan=$3 host_ns=$4 host_ip=$5
    ip -n "$ns" addr add "$wan/24" dev wan
    ip -n "$ns" link set wan up
    ip -n "$ns" route add default via "$PUB_GW"
    ip link add lan netns "$ns" type veth peer name eth0 netns "$host_ns"
    ip -n "$ns" addr add "$lan/24" dev lan
    ip -n "$ns" link set lan up
    ip -n "$host_ns" addr add "$host_ip/24" dev eth0
    ip -n "$host_ns" link set eth0 up
    ip -n "$host_ns" route add default via "$lan"
    nsx "$ns" sysctl -qw net.ipv4.ip_forward=1
}

# set_nat ROUTER_NS HOST_IP TYPE: cone | symmetric | fullcone | udp-blocked. Flushes conntrack.
set_nat() {
    local ns=$1 host_ip=$2 type=$3
    local ipt=(ip netns exec "$ns" iptables -w 5)
    "${ipt[@]}" -F
    "${ipt[@]}" -t nat -F
    "${ipt[@]}" -P FORWARD DROP
    # A router answers nothing on UDP (no ICMP port unreachable for probes of closed mappings).
    "${ipt[@]}" -A INPUT -i wan -p udp -j DROP
    "${ipt[@]}" -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    case $type in
        cone | fullcone)
            # MASQUERADE keeps the source port: endpoint-independent mapping; conntrack lets in
            # only replies from the address and port sent to: address+port-dependent filtering.
            "${ipt[@]}" -A FORWARD -i lan -j ACCEPT
            "${ipt[@]}" -t nat -A POSTROUTING -o wan -j MASQUERADE
            if [ "$type" = fullcone ]; then
                # Unsolicited UDP to any port goes to the host, same port: endpoint-independent
                # filtering too.
                "${ipt[@]}" -t nat -A PREROUTING -i wan -p udp -j DNAT --to-destination "$host_ip"
                "${ipt[@]}" -A FORWARD -i wan -m conntrack --ctstate DNAT -j ACCEPT
            fi
            ;;
        symmetric)
            # A new random port for every destination: endpoint-dependent mapping.
            "${ipt[@]}" -A FORWARD -i lan -j ACCEPT
            "${ipt[@]}" -t nat -A POSTROUTING -o wan -j MASQUERADE --random-fully
            ;;
        udp-blocked)
            # No UDP at all; TCP only to the signaling server and to coturn's TCP and TLS ports.
            "${ipt[@]}" -A FORWARD -i lan -p tcp -d "$SERVER_IP" --dport "$SIGNAL_PORT" -j ACCEPT
            "${ipt[@]}" -A FORWARD -i lan -p tcp -d "$TURN_IP" -m multiport --dports "$STUN_PORT,$TLS_PORT" -j ACCEPT
            "${ipt[@]}" -t nat -A POSTROUTING -o wan -j MASQUERADE
            ;;
        *) die "unknown NAT type $type" ;;
    esac
    nsx "$ns" conntrack -F >/dev/null 2>&1 || true
}

flush_conntrack() {
    nsx "$NS_RA" conntrack -F >/dev/null 2>&1 || true
    nsx "$NS_RB" conntrack -F >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------------------------------------
# coturn and the signaling server
# ---------------------------------------------------------------------------------------------

# A CA and a server certificate for 198.18.0.3 (IP SAN), made fresh for this lab.
make_certs() {
    local dir=$WORK/tls
    mkdir -p "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=Proxim NAT lab CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=$TURN_IP" -keyout "$dir/turn.key" -out "$dir/turn.csr" 2>/dev/null
    printf '%s\n' "subjectAltName=IP:$TURN_IP" "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$dir/turn.ext"
    openssl x509 -req -in "$dir/turn.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
        -days 2 -extfile "$dir/turn.ext" -out "$dir/turn.pem" 2>/dev/null
    openssl verify -CAfile "$dir/ca.pem" "$dir/turn.pem" >/dev/null || die "the lab certificate does not verify"
    TURN_CA=$dir/ca.pem
}

start_coturn() {
    TURN_SECRET=$(openssl rand -hex 32)
    cat >"$WORK/turnserver.conf" <<EOF
# The NAT lab's coturn (scripts/natlab.sh). Based on deploy/turnserver.conf.
listening-ip=$TURN_IP
relay-ip=$TURN_IP
listening-port=$STUN_PORT
tls-listening-port=$TLS_PORT
min-port=49152
max-port=65535
cert=$WORK/tls/turn.pem
pkey=$WORK/tls/turn.key
no-tlsv1
no-tlsv1_1
no-dtls
use-auth-secret
static-auth-secret=$TURN_SECRET
realm=$TURN_REALM
fingerprint
# The lab's "public" addresses are in 198.18.0.0/15: relaying to them must work. Loopback stays
# denied.
no-multicast-peers
denied-peer-ip=0.0.0.0-0.255.255.255
denied-peer-ip=127.0.0.0-127.255.255.255
denied-peer-ip=::1
# coturn frees a user's quota only a moment after a release: the bench's 50 back-to-back
# relayed setups (one REST user) need room.
user-quota=64
total-quota=1200
no-cli
no-rfc5780
no-software-attribute
pidfile=$WORK/turnserver.pid
userdb=$WORK/turndb
log-file=$WORK/turnserver.log
simple-log
EOF
    chmod 600 "$WORK/turnserver.conf"
    start coturn "$NS_PUB" turnserver -c "$WORK/turnserver.conf"
    if ! { wait_listen "$NS_PUB" u "$TURN_IP:$STUN_PORT" coturn &&
        wait_listen "$NS_PUB" t "$TURN_IP:$STUN_PORT" coturn &&
        wait_listen "$NS_PUB" t "$TURN_IP:$TLS_PORT" coturn; }; then
        tail -n 20 "$WORK/coturn.out" "$WORK/coturn.err" "$WORK/turnserver.log" >&2 || true
        die "coturn did not start"
    fi
}

# start_server LOG TURN_URLS: `proxim serve` in pxl-pub (output in $WORK/LOG.*); STUN on
# 198.18.0.2 (its own responder) and 198.18.0.3 (coturn); TURN REST credentials when TURN_URLS
# is not `-`.
start_server() {
    local name=$1 turn=$2 env_args=(env -u TURN_USERNAME -u TURN_PASSWORD -u TURN_TTL -u STUN_URLS
        -u TURN_URLS -u TURN_SECRET -u TURN_REALM -u PROXIM_STUN_BIND -u PROXIM_NO_STUN
        -u PROXIM_PUBLIC_HOST -u PROXIM_BIND "STUN_URLS=stun:$TURN_IP:$STUN_PORT"
        # --repeat N pairs N times with one desktop's code: no per-code pairing limit.
        "PROXIM_PAIR_ATTEMPTS=0")
    if [ "$turn" != - ]; then
        env_args+=("TURN_URLS=$turn" "TURN_SECRET=$TURN_SECRET" "TURN_REALM=$TURN_REALM")
    fi
    start "$name" "$NS_PUB" "${env_args[@]}" "$PROXIM" serve --bind "$SERVER_IP:$SIGNAL_PORT" \
        --stun-bind "$SERVER_IP:$STUN_PORT" --public-host "$SERVER_IP"
    SERVER_PID=$LAST_PID
    if ! { wait_for "$WORK/$name.err" 'proxim signaling server on' "proxim serve" >/dev/null &&
        wait_listen "$NS_PUB" u "$SERVER_IP:$STUN_PORT" "the embedded STUN responder"; }; then
        die "proxim serve did not start (TURN_URLS=$turn)"
    fi
}

stop_server() {
    if [ -n "${SERVER_PID:-}" ]; then
        stop_pids "$SERVER_PID"
        forget "$SERVER_PID"
        SERVER_PID=""
    fi
}

lab_up() {
    log "building the lab: namespaces ${ALL_NS[*]}"
    build_topology
    set_nat "$NS_RA" "$HA_IP" cone
    set_nat "$NS_RB" "$HB_IP" cone
    make_certs
    log "starting coturn on $TURN_IP (UDP/TCP $STUN_PORT, TLS $TLS_PORT)"
    start_coturn
}

# ---------------------------------------------------------------------------------------------
# One attempt: desktop in LAN A, `proxim pair` with a file in LAN B
# ---------------------------------------------------------------------------------------------

# duration_ms TEXT: a Rust Debug duration (812.3ms, 1.2s, 950µs) in milliseconds.
duration_ms() {
    awk -v d="$1" 'BEGIN {
        if (d ~ /ms$/) { sub(/ms$/, "", d); printf "%.1f", d }
        else if (d ~ /µs$/) { sub(/µs$/, "", d); printf "%.1f", d / 1000 }
        else if (d ~ /ns$/) { sub(/ns$/, "", d); printf "%.1f", d / 1e6 }
        else if (d ~ /s$/) { sub(/s$/, "", d); printf "%.1f", d * 1000 }
    }'
}

# attempt TAG EXPECTED FORCE_RELAY: sets A_OK (matches EXPECTED), A_GOT, A_MS, A_NOTE.
attempt() {
    local tag=$1 expected=$2 force=$3
    local dir=$WORK/$tag
    mkdir -p "$dir/recv"
    A_OK=false A_GOT="?" A_MS="" A_NOTE=""
    flush_conntrack

    local flags=()
    [ "$force" = yes ] && $HAS_FORCE_RELAY && flags+=(--force-relay)
    $HAS_TURN_CA && flags+=(--turn-ca "$TURN_CA")
    $HAS_CONNECT_TIMEOUT && flags+=(--connect-timeout "$CONNECT_TIMEOUT")
    if [ "$force" = yes ] && ! $HAS_FORCE_RELAY; then
        A_NOTE="proxim has no --force-relay"
    fi

    start "$tag/desktop" "$NS_HA" "$PROXIM" -v desktop --accept --once --no-qr --name natlab-desktop \
        --server "$SERVER_URL" --download-dir "$dir/recv" --data-dir "$dir/desktop-data" "${flags[@]}"
    local desktop_pid=$LAST_PID code
    if ! code=$(wait_for "$dir/desktop.out" 'pairing code: [0-9A-Z]+-[0-9A-Z]+' "the desktop's pairing code"); then
        A_GOT="no code" A_NOTE="the desktop did not register"
        stop_pids "$desktop_pid"
        forget "$desktop_pid"
        return 0
    fi
    code=${code#pairing code: }

    local file=$dir/natlab-$tag.bin sha
    head -c "$FILE_BYTES" /dev/urandom >"$file"
    sha=$(sha256sum "$file" | cut -d' ' -f1)

    local pair=(timeout -k 5 "$PAIR_BOUND" ip netns exec "$NS_HB" "$PROXIM" -v pair "$code" --name natlab-phone
        --server "$SERVER_URL" --file "$file" --data-dir "$dir/phone-data" "${flags[@]}")
    $HAS_JSON && pair+=(--json)
    local t0 t1 rc=0
    t0=$(date +%s%N)
    # In the background so that a signal to this script is handled at once (wait is interruptible).
    "${pair[@]}" >"$dir/pair.out" 2>"$dir/pair.err" </dev/null &
    local pair_pid=$!
    PIDS+=("$pair_pid")
    wait "$pair_pid" || rc=$?
    forget "$pair_pid"
    t1=$(date +%s%N)
    local wall_ms=$(((t1 - t0) / 1000000))

    local ok=false path="" local_kind="" relay_proto="" error="" message="" connect_ms=""
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        error=hung message="proxim pair did not finish within ${PAIR_BOUND}s"
    elif $HAS_JSON; then
        local json
        json=$(grep -E '^\{' "$dir/pair.out" | tail -n1 || true)
        if [ -n "$json" ] && jq -e . >/dev/null 2>&1 <<<"$json"; then
            ok=$(jq -r '.ok == true' <<<"$json")
            path=$(jq -r '.path // ""' <<<"$json")
            local_kind=$(jq -r '.local.kind // ""' <<<"$json")
            relay_proto=$(jq -r '.local.relay_protocol // ""' <<<"$json")
            connect_ms=$(jq -r '.connect_ms // "" | tostring' <<<"$json")
            error=$(jq -r '.error // ""' <<<"$json")
            message=$(jq -r '.message // ""' <<<"$json")
            if $ok && [ "$(jq -r '.file.sha256 // ""' <<<"$json")" != "$sha" ]; then
                ok=false error=sha256 message="the desktop verified another SHA-256"
            fi
        else
            error=no_json message="no JSON line on stdout (exit $rc)"
        fi
        [ "$rc" -eq 0 ] || ok=false
    else
        # The CLI before --json: "connected to NAME in 812ms via Srflx (a -> b)" and "sent … verified".
        local line
        line=$(grep -E '^connected to .* in [^ ]+ via [A-Za-z]+' "$dir/pair.out" | head -n1 || true)
        if [ -n "$line" ]; then
            path=$(sed -E 's/.* via ([A-Za-z]+).*/\1/' <<<"$line" | tr '[:upper:]' '[:lower:]')
            connect_ms=$(duration_ms "$(sed -E 's/.* in ([^ ]+) via .*/\1/' <<<"$line")")
        fi
        if [ "$rc" -eq 0 ] && [ -n "$path" ] && grep -q "sha256 $sha verified by the desktop" "$dir/pair.out"; then
            ok=true
        else
            message=$(grep -E '^Error' "$dir/pair.err" | head -n1 || true)
            [ -n "$message" ] || message=$(tail -n1 "$dir/pair.err" 2>/dev/null || true)
            case $message in
                *"connection failed"* | *"timed out"* | *ICE* | *ice*) error=ice_failed ;;
                *"unreachable"*) error=server_unreachable ;;
                *"rejected"*) error=rejected ;;
                *) error=failed ;;
            esac
            [ -n "$path" ] && [ "$rc" -eq 0 ] && error=transfer message="no verified-by-the-desktop line"
        fi
    fi

    # The file on the desktop's disk must be the one sent.
    if $ok; then
        local received="" i
        for i in $(seq 1 50); do
            received=$(find "$dir/recv" -type f -name "$(basename "$file")*" | head -n1)
            [ -n "$received" ] && grep -q "saved .* verified" "$dir/desktop.out" 2>/dev/null && break
            sleep 0.1
        done
        if [ -z "$received" ] || [ "$(sha256sum "$received" | cut -d' ' -f1)" != "$sha" ]; then
            ok=false error=sha256 message="the received file is missing or differs"
        fi
    fi

    # --once: the desktop exits when the phone closes; a bounded wait, then stop it.
    local i
    for i in $(seq 1 30); do kill -0 "$desktop_pid" 2>/dev/null || break; sleep 0.1; done
    stop_pids "$desktop_pid"
    forget "$desktop_pid"
    rm -rf "$file" "$dir/recv" # logs stay (in $WORK when the run fails); the payloads go

    if $ok; then
        # relay/tcp: this side's candidate is a relay reached over TCP; relay(peer): only the
        # other side's candidate is a relay.
        A_GOT=$path
        if [ -n "$relay_proto" ]; then
            A_GOT=$path/$relay_proto
        elif [ "$path" = relay ] && [ -n "$local_kind" ] && [ "$local_kind" != relay ]; then
            A_GOT="relay(peer)"
        fi
        A_MS=""
        [ -z "$connect_ms" ] || A_MS=$(printf '%.1f' "$connect_ms")
        case $expected in
            direct) case $path in host | srflx | prflx) A_OK=true ;; esac ;;
            relay) [ "$path" = relay ] && A_OK=true ;;
            relay/*)
                if [ "$path" = relay ]; then
                    if [ -z "$relay_proto" ] && ! $HAS_JSON; then
                        A_OK=true A_NOTE="relay protocol not reported (no --json)"
                    elif [ "relay/$relay_proto" = "$expected" ]; then
                        A_OK=true
                    fi
                fi
                ;;
        esac
    else
        A_GOT="fail:$error"
        A_MS=$wall_ms.0
        [ -n "$message" ] && A_NOTE=${A_NOTE:+$A_NOTE; }$message
        if [ "$expected" = fail ]; then
            case $error in
                ice_failed | timed_out) [ "$wall_ms" -le $((PAIR_BOUND * 1000)) ] && A_OK=true ;;
            esac
        fi
    fi
    log "$tag: expected $expected, got $A_GOT in ${A_MS:-?} ms${A_NOTE:+ ($A_NOTE)}"
    if ! $A_OK && { [ "${CI:-}" = true ] || [ -n "${NATLAB_VERBOSE:-}" ]; }; then
        local f
        for f in pair.out pair.err desktop.out desktop.err; do
            echo "--- $tag/$f (last lines)" >&2
            tail -n 15 "$dir/$f" >&2 2>/dev/null || true
        done
    fi
}

# ---------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------

# p50 of the numbers given.
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "-"; exit }
        if (NR % 2) printf "%.1f", v[(NR + 1) / 2]; else printf "%.1f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# resolve SCENARIO: its index (0-based) from a number or a name.
resolve() {
    local arg=$1 i name
    if [[ $arg =~ ^[0-9]+$ ]] && [ "$arg" -ge 1 ] && [ "$arg" -le "${#SCENARIOS[@]}" ]; then
        echo $((arg - 1))
        return 0
    fi
    for i in "${!SCENARIOS[@]}"; do
        name=${SCENARIOS[$i]%%|*}
        [ "$name" = "$arg" ] && { echo "$i"; return 0; }
    done
    return 1
}

run_suite() {
    local repeat=$1
    shift
    local picks=() arg idx
    if [ "$#" -eq 0 ]; then
        picks=("${!SCENARIOS[@]}")
    else
        for arg in "$@"; do
            idx=$(resolve "$arg") || die "unknown scenario '$arg' (scripts/natlab.sh list)"
            picks+=("$idx")
        done
    fi

    ensure_tools
    ensure_proxim
    # Another run (or `up`) may be using the lab: never take it over.
    [ -z "$(lab_namespaces)" ] ||
        die "a lab is up already (pxl-* namespaces: another run, or natlab.sh up); scripts/natlab.sh down ends it"
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/proxim-natlab.XXXXXX")
    lab_up

    local rows=() passed=0 failed=0 name a b turn relay expected n times got ok first notes
    for idx in "${picks[@]}"; do
        IFS='|' read -r name a b turn relay expected <<<"${SCENARIOS[$idx]}"
        log "scenario $((idx + 1)) $name: NAT A $a, NAT B $b, TURN $turn, force relay $relay"
        set_nat "$NS_RA" "$HA_IP" "$a"
        set_nat "$NS_RB" "$HB_IP" "$b"
        start_server "server-s$((idx + 1))" "$turn"
        times=() got=() ok=true first="" notes=""
        for n in $(seq 1 "$repeat"); do
            attempt "s$((idx + 1))-$n" "$expected" "$relay"
            $A_OK || ok=false
            [ -n "$first" ] || first=${A_MS:--}
            $A_OK && [ -n "$A_MS" ] && times+=("$A_MS")
            [[ " ${got[*]} " == *" $A_GOT "* ]] || got+=("$A_GOT")
            [ -z "$A_NOTE" ] || [[ $notes == *"$A_NOTE"* ]] || notes=${notes:+$notes; }$A_NOTE
        done
        stop_server
        local p50=-
        [ "$repeat" -gt 1 ] && [ "${#times[@]}" -gt 0 ] && p50=$(median "${times[@]}")
        local result=FAIL
        if $ok; then result=PASS passed=$((passed + 1)); else failed=$((failed + 1)); fi
        local got_text=${got[*]}
        rows+=("$((idx + 1))|$name|$a/$b|$expected|${got_text// /,}|$first|$p50|$result|$notes")
    done
    lab_down_processes

    echo
    printf '%-3s %-26s %-22s %-10s %-24s %10s %10s  %-6s %s\n' "#" SCENARIO "NAT A/B" EXPECTED GOT "CONNECT ms" "P50 ms" RESULT NOTE
    local row c1 c2 c3 c4 c5 c6 c7 c8 c9
    for row in "${rows[@]}"; do
        IFS='|' read -r c1 c2 c3 c4 c5 c6 c7 c8 c9 <<<"$row"
        printf '%-3s %-26s %-22s %-10s %-24s %10s %10s  %-6s %s\n' "$c1" "$c2" "$c3" "$c4" "$c5" "$c6" "$c7" "$c8" "$c9"
    done
    echo "(CONNECT: from starting proxim pair to an open data channel, or to the failure; P50: median of --repeat $repeat)"
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}

# Stop the servers of a run (the namespaces go in on_exit).
lab_down_processes() {
    stop_pids "${PIDS[@]}"
    PIDS=()
}

# ---------------------------------------------------------------------------------------------
# up / down
# ---------------------------------------------------------------------------------------------

cmd_up() {
    ensure_tools
    ensure_proxim
    mkdir -p "$STATE"
    [ -z "$(lab_namespaces)" ] || die "the lab is up already (scripts/natlab.sh down)"
    WORK=$STATE
    lab_up
    start_server server "turn:$TURN_IP:$STUN_PORT,turn:$TURN_IP:$STUN_PORT?transport=tcp,turns:$TURN_IP:$TLS_PORT"
    printf '%s\n' "${PIDS[@]}" >"$STATE/pids"
    KEEP_LAB=true
    cat >&2 <<EOF
== the lab is up (both routers: cone NAT); state and logs in $STATE
   desktop: ip netns exec $NS_HA $PROXIM desktop --accept --no-qr --server $SERVER_URL --turn-ca $TURN_CA --download-dir /tmp/natlab-recv
   phone:   ip netns exec $NS_HB $PROXIM pair CODE --server $SERVER_URL --turn-ca $TURN_CA --file FILE --json
   NAT:     scripts/natlab.sh nat A|B cone|symmetric|fullcone|udp-blocked     down: scripts/natlab.sh down
EOF
}

lab_down() {
    local pids=()
    if [ -f "$STATE/pids" ]; then
        mapfile -t pids <"$STATE/pids"
        stop_pids "${pids[@]}"
    fi
    delete_namespaces
    rm -rf "$STATE"
}

# nat A|B TYPE: switch one router of a lab that is up (cone, symmetric, fullcone, udp-blocked).
cmd_nat() {
    [ "$(id -u)" -eq 0 ] || die "must run as root"
    [ "$#" -eq 2 ] || die "usage: scripts/natlab.sh nat A|B cone|symmetric|fullcone|udp-blocked"
    ip netns list | grep -q "^$NS_RA" || die "the lab is not up (scripts/natlab.sh up)"
    case $1 in
        A | a) set_nat "$NS_RA" "$HA_IP" "$2" ;;
        B | b) set_nat "$NS_RB" "$HB_IP" "$2" ;;
        *) die "no router '$1' (A or B)" ;;
    esac
    log "router $1: $2 (conntrack flushed)"
}

cmd_down() {
    [ "$(id -u)" -eq 0 ] || die "must run as root"
    lab_down
    log "lab down"
}

# bench ARGS...: proxim-bench's Proxim rows inside pxl-pub, the relayed ones through the lab's
# coturn with TURN REST credentials minted here from its secret.
cmd_bench() {
    ensure_tools
    local bench=${PROXIM_BENCH_BIN:-}
    if [ -z "$bench" ]; then
        log "cargo build --release --locked -p proxim-bench"
        cargo build --release --locked -p proxim-bench >&2 || die "cargo build failed"
        bench=$TARGET_DIR/release/proxim-bench
    fi
    [ -x "$bench" ] || die "no proxim-bench binary at $bench"
    [ -z "$(lab_namespaces)" ] ||
        die "a lab is up already (pxl-* namespaces: another run, or natlab.sh up); scripts/natlab.sh down ends it"
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/proxim-natlab.XXXXXX")
    lab_up
    local user pass
    user="$(($(date +%s) + 3600)):natlab-bench"
    pass=$(printf '%s' "$user" | openssl dgst -sha1 -hmac "$TURN_SECRET" -binary | base64)
    log "proxim-bench in $NS_PUB; relay rows through coturn on $TURN_IP"
    nsx "$NS_PUB" env \
        PROXIM_BENCH_TURN_URLS="turn:$TURN_IP:$STUN_PORT,turn:$TURN_IP:$STUN_PORT?transport=tcp,turns:$TURN_IP:$TLS_PORT" \
        PROXIM_BENCH_TURN_USERNAME="$user" PROXIM_BENCH_TURN_PASSWORD="$pass" \
        PROXIM_BENCH_TURN_CA="$TURN_CA" "$bench" --only proxim "$@"
}

# ---------------------------------------------------------------------------------------------

main() {
    local repeat=1 args=()
    while [ "$#" -gt 0 ]; do
        case $1 in
            --repeat) [ "$#" -ge 2 ] || die "--repeat needs a number"; repeat=$2; shift 2 ;;
            --repeat=*) repeat=${1#--repeat=}; shift ;;
            -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
            *) args+=("$1"); shift ;;
        esac
    done
    [[ $repeat =~ ^[1-9][0-9]*$ ]] || die "--repeat wants a positive number, not '$repeat'"
    [ "${#args[@]}" -gt 0 ] || die "usage: scripts/natlab.sh up | down | nat A|B TYPE | list | run [--repeat N] [SCENARIO...]"
    local cmd=${args[0]}
    args=("${args[@]:1}")
    case $cmd in
        up) cmd_up ;;
        down) cmd_down ;;
        list) list_scenarios ;;
        nat) cmd_nat "${args[@]}" ;;
        run) run_suite "$repeat" "${args[@]}" ;;
        bench) cmd_bench "${args[@]}" ;;
        *) die "unknown command '$cmd' (up, down, nat, list, run, bench)" ;;
    esac
}

main "$@"
