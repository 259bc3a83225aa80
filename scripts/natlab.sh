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
#   pxl-rc  wan 198.18.0.13, lan 198.19.3.1: a third router ("cellular", cone NAT) whose LAN is
#           the phone's eth1, down and without an address until the phone switches networks
#           (198.19.3.2; its address behind router B then goes away).
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
#        scripts/natlab.sh up --link PROFILE [--link-on A|B|AB] | link A|B|AB PROFILE|off
#        scripts/natlab.sh netem-check | lossy [--quick] [--rtt LIST] [--loss LIST] [--rate LIST]
#   link   put proxim-netem (a userspace link emulator: the kernel has no netem) on router A's
#          and/or B's LAN link instead of the veth, or take it off (`up --link` does it at start).
#          PROFILE: rtt=50ms[,loss=1%][,rate=20mbit|unlimited][,jitter=2ms] (delay RTT/2 each way,
#          the loss and rate each way, queue one RTT at the rate), or a proxim-netem spec for both
#          directions (delay=10ms,ge=1%,30%), or UP;DOWN specs (host->router;router->host).
#   netem-check  the emulator measured end to end in the lab: capacity (iperf3, no impairment),
#          delay and jitter (ping), loss and Gilbert-Elliott loss (iperf3 UDP), rate (iperf3 TCP);
#          a table and `N passed, M failed`; non-zero exit when a figure is off.
#   lossy  the LOSSY benchmark: per profile (RTT x loss x rate on router A's LAN link, cone/cone,
#          direct) Proxim's file transfer, TCP CUBIC and BBR (iperf3), Chromium -> Chromium
#          ($CHROMIUM_C2C), the legacy peer ($PROXIM_LEGACY_BIN), stalls and open times; one table
#          and goal lines. Full: 75 profiles (RTT 1,20,50,100,200 ms x loss 0,0.5,1,2,5 % x rate
#          unlimited,100,20 Mbit/s), ~75 min (~100 with the legacy row); --quick: 20 ms x 0,2 % x
#          100 Mbit/s, ~2 min.
#          Exit 0 even when goals fail; non-zero when something could not be measured.
# Needs root; installs what is missing (coturn iptables iproute2 conntrack openssl jq iperf3
# iputils-ping). The proxim binary is $PROXIM_BIN, else `cargo build --release --locked -p proxim`;
# proxim-netem is $PROXIM_NETEM_BIN, else `cargo build --release --locked -p proxim-netem`.
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
NS_RC=pxl-rc
ALL_NS=("$NS_PUB" "$NS_RA" "$NS_RB" "$NS_HA" "$NS_HB" "$NS_RC")

PUB_GW=198.18.0.1
SERVER_IP=198.18.0.2
TURN_IP=198.18.0.3
RA_WAN=198.18.0.11
RB_WAN=198.18.0.12
RA_LAN=198.19.1.1
HA_IP=198.19.1.2
RB_LAN=198.19.2.1
HB_IP=198.19.2.2
RC_WAN=198.18.0.13
RC_LAN=198.19.3.1
HB_CELL_IP=198.19.3.2
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
BLACKOUT_FILE_BYTES=$((64 * 1024 * 1024))
BLACKOUT_AT=$((8 * 1024 * 1024))
SERVER_DOWN=1
DESKTOP_DOWN=1
# Seconds `pair --resume-for` keeps trying after the desktop restarted.
RESUME_FOR=90
DEAD_PATH_BOUND=40
# Seconds: the ICE/DTLS/SCTP budget handed to the peers, and the hard bound around each `pair`.
CONNECT_TIMEOUT=${NATLAB_CONNECT_TIMEOUT:-15}
PAIR_BOUND=$((CONNECT_TIMEOUT + 45))

STATE=${NATLAB_STATE:-/run/proxim-natlab}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac

# Errors as one line (no anyhow backtrace even when CI sets RUST_BACKTRACE); info logs from the
# peers (-v) land in the attempt's *.err files.
export RUST_LIB_BACKTRACE=0

SCRIPT_NAME=natlab
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---------------------------------------------------------------------------------------------
# Scenarios: name | NAT A (desktop) | NAT B (phone) | TURN URLs | force relay | expected [| event]
# expected: direct (host/srflx/prflx), fail (ICE failed / timed out), relay (either side's
# candidate), relay/tcp|tls (the phone's own candidate is a relay reached over TCP / TLS)
# event: blackoutN — once the desktop has BLACKOUT_AT bytes of a BLACKOUT_FILE_BYTES file, the
# phone's router forwards nothing (either way, signaling included) for N seconds; the transfer
# must finish with the right SHA-256, and the note gives how long after the link came back
# the desktop's file grew again (p50/max over --repeat).
# event: server-kill — at the same point `proxim serve` is killed (SIGKILL) and started again
# SERVER_DOWN s later; the transfer must go on meanwhile (the peers talk directly) and finish
# with the right SHA-256; the note gives the bytes the desktop received while the server was down.
# event: switch — at the same point the phone moves to another network: its eth1 behind router C
# gets 198.19.3.2 and the default route, and its address behind router B goes away; `proxim
# pair` notices (it watches its addresses), probes and resumes its signaling session, restarts
# ICE over it; the transfer must finish with the right SHA-256, and the note gives how long
# after the switch the desktop's file grew again (p50/max over --repeat).
# event: dead-path — at the same point router B forwards nothing, for good; expected `lost`:
# `pair` fails with a clear error (connectivity lost) within DEAD_PATH_BOUND s of the cut, and
# the desktop keeps what arrived as a part file (for a later resume); the note gives how long it
# took and what it said.
# event: switch-symmetric — the switch above, to a router C that is a symmetric NAT (a cellular
# carrier's): no direct path works from there, so the phone's TURN relay, allocated from router
# B's network, is allocated again from router C's and carries the rest; the transfer must finish
# with the right SHA-256 over a relay (`path_end`), and the note gives the recovery time.
# event: desktop-restart — at the same point the desktop process is killed (SIGKILL) and started
# again DESKTOP_DOWN s later (same data and download directories); `pair --resume-for` notices
# the connection is gone, reconnects to the trusted desktop (no code) and resends the file,
# which resumes from the desktop's part file; it must finish with the right SHA-256 and have
# resumed (not restarted); the note gives how long after the kill data flowed again and the
# bytes sent twice: handed to the channel beyond what the desktop kept (the phone's send buffer
# included), and over the wire (what the desktop had acknowledged beyond what it kept, plus
# what was in flight).
# ---------------------------------------------------------------------------------------------

SCENARIOS=(
    "cone-cone|cone|cone|-|no|direct"
    "fullcone-symmetric|fullcone|symmetric|-|no|direct"
    "symmetric-symmetric|symmetric|symmetric|-|no|fail"
    "symmetric-symmetric-turn|symmetric|symmetric|turn:$TURN_IP:$STUN_PORT|no|relay"
    "cone-cone-force-relay|cone|cone|turn:$TURN_IP:$STUN_PORT|yes|relay"
    "udp-blocked-turn-tcp|cone|udp-blocked|turn:$TURN_IP:$STUN_PORT?transport=tcp|no|relay/tcp"
    "udp-blocked-turn-tls|cone|udp-blocked|turns:$TURN_IP:$TLS_PORT|no|relay/tls"
    "cone-cone-blackout-10s|cone|cone|-|no|direct|blackout10"
    "cone-cone-server-kill|cone|cone|-|no|direct|server-kill"
    "cone-cone-dead-path|cone|cone|-|no|lost|dead-path"
    "cone-cone-network-switch|cone|cone|-|no|direct|switch"
    "cone-cone-desktop-restart|cone|cone|-|no|direct|desktop-restart"
    "cone-to-symmetric-turn|cone|cone|turn:$TURN_IP:$STUN_PORT|no|direct|switch-symmetric"
)

list_scenarios() {
    local i=1 s name a b turn relay expected event
    printf '%-3s %-26s %-10s %-12s %-10s %-6s %-24s %s\n' "#" SCENARIO "NAT A" "NAT B" EXPECTED RELAY TURN EVENT
    for s in "${SCENARIOS[@]}"; do
        IFS='|' read -r name a b turn relay expected event <<<"$s"
        printf '%-3s %-26s %-10s %-12s %-10s %-6s %-24s %s\n' "$i" "$name" "$a" "$b" "$expected" "$relay" "$turn" "${event:--}"
        i=$((i + 1))
    done
}

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------

ensure_tools() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces, iptables, coturn)"
    local missing=() pair tool pkg
    for pair in turnserver:coturn iptables:iptables ip:iproute2 ss:iproute2 conntrack:conntrack \
        openssl:openssl jq:jq sha256sum:coreutils timeout:coreutils iperf3:iperf3 ping:iputils-ping; do
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

# received_matches DIR FILE SHA TENTHS: bounded wait (TENTHS tenths of a second) for the desktop
# in DIR to save FILE and say it verified it; true when the file in DIR/recv has SHA-256 SHA.
received_matches() {
    local dir=$1 file=$2 sha=$3 tenths=$4 received="" _
    for _ in $(seq 1 "$tenths"); do
        received=$(find "$dir/recv" -maxdepth 1 -type f -name "$(basename "$file")*" | head -n1)
        [ -n "$received" ] && cat "$dir"/desktop*.out 2>/dev/null | grep -q "saved .* verified" && break
        sleep 0.1
    done
    [ -n "$received" ] && [ "$(sha256sum "$received" | cut -d' ' -f1)" = "$sha" ]
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
    local r
    for r in "$NS_RA" "$NS_RB" "$NS_RC"; do
        ip link add wan netns "$r" type veth peer name "to-${r#*-}" netns "$NS_PUB"
        ip -n "$NS_PUB" link set "to-${r#*-}" master br0 up
    done
    # The silent default route (FIELD-NOTES: coturn drops an allocation when a relayed send is
    # unroutable): sends to the LANs' private host candidates go into this veth and vanish.
    ip -n "$NS_PUB" link add sink type veth peer name sink-drop
    ip -n "$NS_PUB" addr add "$SINK_IP/30" dev sink
    ip -n "$NS_PUB" link set sink up
    ip -n "$NS_PUB" link set sink-drop up
    ip -n "$NS_PUB" neigh replace "$SINK_GW" lladdr "$SINK_MAC" dev sink nud permanent
    ip -n "$NS_PUB" route add default via "$SINK_GW" dev sink
    # Routers and their LAN hosts.
    router "$NS_RA" "$RA_WAN" "$RA_LAN" "$NS_HA" eth0 "$HA_IP"
    router "$NS_RB" "$RB_WAN" "$RB_LAN" "$NS_HB" eth0 "$HB_IP"
    # Router C, the phone's other network: its LAN is the phone's eth1, not up yet.
    router "$NS_RC" "$RC_WAN" "$RC_LAN" "$NS_HB" eth1 -
}

# The phone moves to router C's network: the new address first, then the old one goes (as a
# phone whose Wi-Fi drops after cellular came up).
switch_phone_to_c() {
    ip -n "$NS_HB" addr add "$HB_CELL_IP/24" dev eth1
    ip -n "$NS_HB" link set eth1 up
    ip -n "$NS_HB" route replace default via "$RC_LAN" dev eth1
    ip -n "$NS_HB" addr del "$HB_IP/24" dev eth0
}

# Back behind router B (idempotent: after a switch, or after one cut short).
restore_phone_network() {
    ip -n "$NS_HB" addr del "$HB_CELL_IP/24" dev eth1 2>/dev/null || true
    ip -n "$NS_HB" link set eth1 down 2>/dev/null || true
    ip -n "$NS_HB" addr replace "$HB_IP/24" dev eth0
    ip -n "$NS_HB" route replace default via "$RB_LAN" dev eth0
}

# router NS WAN_IP LAN_IP HOST_NS HOST_IF HOST_IP: the router's WAN on the public bridge, its
# LAN a veth to HOST_IF in HOST_NS; HOST_IP `-` leaves the host's side down, without an address.
router() {
    local ns=$1 wan=$2 lan=$3 host_ns=$4 host_if=$5 host_ip=$6
    ip -n "$ns" addr add "$wan/24" dev wan
    ip -n "$ns" link set wan up
    ip -n "$ns" route add default via "$PUB_GW"
    ip link add lan netns "$ns" type veth peer name "$host_if" netns "$host_ns"
    ip -n "$ns" addr add "$lan/24" dev lan
    ip -n "$ns" link set lan up
    if [ "$host_ip" != - ]; then
        ip -n "$host_ns" addr add "$host_ip/24" dev "$host_if"
        ip -n "$host_ns" link set "$host_if" up
        ip -n "$host_ns" route add default via "$lan"
    fi
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
    nsx "$NS_RC" conntrack -F >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------------------------------------
# The link emulator on a router's LAN link (proxim-netem; the kernel has no netem qdisc)
# ---------------------------------------------------------------------------------------------
#
# `link_on A UP DOWN` replaces the veth between router A and host A with two TUN devices that
# proxim-netem joins: it creates `eth0` and `lan` inside the router's namespace, then `eth0` is
# moved into the host's namespace (its open descriptor keeps working) and both get the veth's
# addresses and routes back. UP is what happens host -> router (proxim-netem's a->b), DOWN
# router -> host (b->a). The router's iptables rules name `lan`/`wan`, so they apply unchanged,
# and its conntrack sees every packet once. `link_off A` stops the emulator (its devices vanish
# with it) and puts a veth back.

declare -A NETEM_PID=()
declare -A NETEM_LOG=()

ensure_netem() {
    [ -z "${NETEM:-}" ] || return 0
    if [ -n "${PROXIM_NETEM_BIN:-}" ]; then
        NETEM=$PROXIM_NETEM_BIN
    else
        log "cargo build --release --locked -p proxim-netem"
        cargo build --release --locked -p proxim-netem >&2 || die "cargo build -p proxim-netem failed"
        NETEM=$TARGET_DIR/release/proxim-netem
    fi
    [ -x "$NETEM" ] || die "no proxim-netem binary at $NETEM"
}

# link_vars A|B: L_SIDE, L_R (router ns), L_H (host ns), L_LAN (router's LAN address), L_IP.
link_vars() {
    case $1 in
        A | a) L_SIDE=A L_R=$NS_RA L_H=$NS_HA L_LAN=$RA_LAN L_IP=$HA_IP ;;
        B | b) L_SIDE=B L_R=$NS_RB L_H=$NS_HB L_LAN=$RB_LAN L_IP=$HB_IP ;;
        *) die "no router '$1' (A or B)" ;;
    esac
}

# host_link_up: addresses and routes of the host<->router link named by link_vars.
host_link_up() {
    ip -n "$L_H" addr add "$L_IP/24" dev eth0
    ip -n "$L_H" link set eth0 up
    ip -n "$L_H" route add default via "$L_LAN"
    ip -n "$L_R" addr add "$L_LAN/24" dev lan
    ip -n "$L_R" link set lan up
}

# link_on A|B UP_SPEC DOWN_SPEC [SEED]: the emulator on that LAN link (restarted if running).
link_on() {
    link_vars "$1"
    local up=$2 down=$3 seed=${4:-1} side
    side=$L_SIDE
    link_stop "$side"
    ip -n "$L_R" link del lan 2>/dev/null || true
    NETEM_RUNS=$((${NETEM_RUNS:-0} + 1))
    local name=netem-$side-$NETEM_RUNS
    # Real-time priority: on a machine busy with builds a nice-0 (even nice -10) emulator waits
    # for the CPU and adds tens of ms to 10 % of the packets (measured: ping p90 45-49 ms instead
    # of 40.4 ms at delay=20ms each way; with SCHED_FIFO p99 41-43 ms). It sleeps between packets
    # and the kernel's RT throttling keeps 5 % of the CPU for everyone else.
    start "$name" "$L_R" chrt -f 10 "$NETEM" --dev-a eth0 --dev-b lan --a-to-b "$up" --b-to-a "$down" --seed "$seed"
    NETEM_PID[$side]=$LAST_PID
    NETEM_LOG[$side]=$WORK/$name
    if ! wait_for "$WORK/$name.out" '^ready' "proxim-netem on link $side" >/dev/null; then
        tail -n 5 "$WORK/$name.err" >&2 || true
        die "proxim-netem did not start on link $side (spec a->b '$up', b->a '$down')"
    fi
    ip -n "$L_R" link set eth0 netns "$L_H"
    host_link_up
    # Room for bursts while the emulator waits for the CPU (a TUN device queues 500 by default).
    ip -n "$L_H" link set eth0 txqueuelen 10000
    ip -n "$L_R" link set lan txqueuelen 10000
    log "link $side ($L_H <-> $L_R) through proxim-netem: host->router $up; router->host $down"
}

# link_stop A|B: stop that link's emulator, if one runs; its final counters go to the log.
link_stop() {
    local side=$1 pid=${NETEM_PID[$1]:-}
    [ -n "$pid" ] || return 0
    stop_pids "$pid"
    forget "$pid"
    NETEM_PID[$side]=""
    LINK_COUNTERS=$(grep -E '^\{' "${NETEM_LOG[$side]}.out" 2>/dev/null | tail -n1 || true)
}

# link_off A|B: the emulator gone, a plain veth back.
link_off() {
    link_vars "$1"
    link_stop "$L_SIDE"
    ip -n "$L_R" link del lan 2>/dev/null || true
    ip link add lan netns "$L_R" type veth peer name eth0 netns "$L_H"
    host_link_up
}

# link_profile PROFILE: sets LINK_UP and LINK_DOWN (proxim-netem specs) from
#   rtt=20ms[,loss=2%][,rate=100mbit|unlimited][,jitter=1ms]  both directions get delay RTT/2,
#                  the loss, the rate with a queue of one RTT at that rate (at least 10 ms)
#   SPEC           a proxim-netem spec, both directions (e.g. delay=10ms,ge=1%,30%)
#   UP;DOWN        two proxim-netem specs: host->router, router->host
link_profile() {
    local profile=$1
    case $profile in
        *";"*) LINK_UP=${profile%%;*} LINK_DOWN=${profile#*;} ;;
        rtt=* | *,rtt=*)
            local item key value rtt_us="" loss="" rate="" jitter="" spec
            IFS=',' read -ra items <<<"$profile"
            for item in "${items[@]}"; do
                key=${item%%=*} value=${item#*=}
                case $key in
                    rtt) rtt_us=$(to_micros "$value") || die "--link: bad rtt '$value' (e.g. 20ms)" ;;
                    loss) loss=$value ;;
                    rate) rate=$value ;;
                    jitter) jitter=$value ;;
                    *) die "--link: profile key '$key' unknown (rtt, loss, rate, jitter; or give a proxim-netem spec)" ;;
                esac
            done
            spec="delay=$((rtt_us / 2))us"
            [ -z "$jitter" ] || spec+=",jitter=$jitter"
            [ -z "$loss" ] || spec+=",loss=$loss"
            if [ -n "$rate" ] && [ "$rate" != unlimited ] && [ "$rate" != 0 ]; then
                local queue_us=$((rtt_us > 10000 ? rtt_us : 10000))
                spec+=",rate=$rate,queue=${queue_us}us"
            fi
            LINK_UP=$spec LINK_DOWN=$spec
            ;;
        *) LINK_UP=$profile LINK_DOWN=$profile ;;
    esac
}

# to_micros 20ms|1.5s|500us: microseconds (integer).
to_micros() {
    awk -v d="$1" 'BEGIN {
        if (d ~ /^[0-9.]+us$/) { sub(/us$/, "", d); printf "%d", d }
        else if (d ~ /^[0-9.]+ms$/) { sub(/ms$/, "", d); printf "%d", d * 1000 }
        else if (d ~ /^[0-9.]+s$/) { sub(/s$/, "", d); printf "%d", d * 1e6 }
        else exit 1
    }'
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
    SERVER_PID=$LAST_PID SERVER_NAME=$name SERVER_TURN=$turn
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
    set_nat "$NS_RC" "$HB_CELL_IP" cone
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

# received_bytes DIR: bytes in the desktop's download directory so far (part files included,
# not the receiver's .proxim state).
received_bytes() {
    find "$1/recv" -path "$1/recv/.proxim" -prune -o -type f -printf '%s\n' 2>/dev/null |
        awk '{ n += $1 } END { print n + 0 }'
}

# part_bytes DIR: bytes in the desktop's part files (what it keeps for a resume).
part_bytes() {
    find "$1/recv" -maxdepth 1 -type f -name '.*.part' -printf '%s\n' 2>/dev/null |
        awk '{ n += $1 } END { print n + 0 }'
}

# until_event_point DIR PAIR_PID: wait (at most 30 s) until the desktop in DIR has BLACKOUT_AT
# bytes, the point where an event strikes; fails when the transfer ended first.
until_event_point() {
    local dir=$1 pair_pid=$2 i
    for i in $(seq 1 3000); do
        [ "$(received_bytes "$dir")" -ge "$BLACKOUT_AT" ] && return 0
        kill -0 "$pair_pid" 2>/dev/null || return 1
        sleep 0.01
    done
}

# recovery_after DIR SINCE_NS BEFORE: writes to DIR/recovery_ms the milliseconds from SINCE_NS
# to the desktop's file growing past BEFORE bytes, or "none" when it does not within 60 s.
recovery_after() {
    local dir=$1 since=$2 before=$3 i now
    for i in $(seq 1 6000); do
        if [ "$(received_bytes "$dir")" -gt "$before" ]; then
            now=$(date +%s%N)
            echo $(((now - since) / 1000000)) >"$dir/recovery_ms"
            return 0
        fi
        sleep 0.01
    done
    echo none >"$dir/recovery_ms"
}

# blackout DIR SECONDS PAIR_PID: once the desktop in DIR has BLACKOUT_AT bytes, drop everything
# router B forwards for SECONDS, then let it through again; writes the milliseconds from then to
# the first new byte on the desktop's disk to DIR/recovery_ms ("none" when nothing came within
# 60 s, "missed" when the transfer ended before the blackout could start).
blackout() {
    local dir=$1 seconds=$2 pair_pid=$3 at restored before
    until_event_point "$dir" "$pair_pid" || { echo missed >"$dir/recovery_ms"; return 0; }
    at=$(received_bytes "$dir")
    ip netns exec "$NS_RB" iptables -I FORWARD 1 -j DROP
    log "blackout: router B forwards nothing for ${seconds}s (the desktop had $at bytes)"
    sleep "$seconds"
    before=$(received_bytes "$dir")
    ip netns exec "$NS_RB" iptables -D FORWARD 1
    restored=$(date +%s%N)
    recovery_after "$dir" "$restored" "$before"
}

# network_switch DIR PAIR_PID: once the desktop in DIR has BLACKOUT_AT bytes, the phone moves to
# router C's network; writes the milliseconds from the switch to the first byte on the desktop's
# disk after what was in flight (sampled 100 ms after the switch: nothing can come over the new
# path that soon) to DIR/recovery_ms ("none" within 60 s, "missed" when the transfer ended first).
network_switch() {
    local dir=$1 pair_pid=$2 switched before
    until_event_point "$dir" "$pair_pid" || { echo missed >"$dir/recovery_ms"; return 0; }
    switch_phone_to_c
    switched=$(date +%s%N)
    log "network switch: the phone is now $HB_CELL_IP behind router C (the desktop had $(received_bytes "$dir") bytes)"
    sleep 0.1
    before=$(received_bytes "$dir")
    recovery_after "$dir" "$switched" "$before"
}

# cut_for_good DIR PAIR_PID: once the desktop in DIR has BLACKOUT_AT bytes, router B forwards
# nothing from then on; writes the time of the cut (ns since the epoch) to DIR/cut_ns.
cut_for_good() {
    local dir=$1 pair_pid=$2
    until_event_point "$dir" "$pair_pid" || return 0
    ip netns exec "$NS_RB" iptables -I FORWARD 1 -j DROP
    date +%s%N >"$dir/cut_ns"
    log "dead path: router B forwards nothing from now on (the desktop had $(received_bytes "$dir") bytes)"
}

# server_kill_during DIR PAIR_PID: once the desktop in DIR has BLACKOUT_AT bytes, kill the
# signaling server (SIGKILL) and start it again SERVER_DOWN s later; sets A_EVENT to the bytes
# the desktop received meanwhile ("missed" when the transfer ended first). Runs in this shell,
# so the restarted server is in PIDS and stopped with the scenario.
server_kill_during() {
    local dir=$1 pair_pid=$2 before after
    A_EVENT=missed
    until_event_point "$dir" "$pair_pid" || return 0
    kill -0 "$pair_pid" 2>/dev/null || return 0
    before=$(received_bytes "$dir")
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    forget "$SERVER_PID"
    log "server-kill: proxim serve killed (SIGKILL) with the desktop at $before bytes"
    sleep "$SERVER_DOWN"
    after=$(received_bytes "$dir")
    start_server "$SERVER_NAME-restarted" "$SERVER_TURN"
    A_EVENT=$((after - before))
    log "server-kill: server back after ${SERVER_DOWN}s; the desktop received $A_EVENT bytes meanwhile"
}

# desktop_restart_during DIR PAIR_PID: once the desktop in DIR has BLACKOUT_AT bytes, kill it
# (SIGKILL) and start it again DESKTOP_DOWN s later with the same arguments (DESKTOP_ARGS);
# DESKTOP_PID follows. Writes the milliseconds from the kill to the desktop's files growing
# again to DIR/recovery_ms (in the background: "none" within 60 s, "missed" when the transfer
# ended first). Runs in this shell, so the new desktop is in PIDS.
desktop_restart_during() {
    local dir=$1 pair_pid=$2 killed before
    until_event_point "$dir" "$pair_pid" || { echo missed >"$dir/recovery_ms"; return 0; }
    kill -9 "$DESKTOP_PID" 2>/dev/null || true
    wait "$DESKTOP_PID" 2>/dev/null || true
    forget "$DESKTOP_PID"
    killed=$(date +%s%N)
    log "desktop-restart: the desktop was killed (SIGKILL) with $(part_bytes "$dir") bytes in its part file"
    sleep "$DESKTOP_DOWN"
    before=$(received_bytes "$dir")
    start "${DESKTOP_TAG}2" "$NS_HA" "${DESKTOP_ARGS[@]}"
    DESKTOP_PID=$LAST_PID
    log "desktop-restart: the desktop started again"
    recovery_after "$dir" "$killed" "$before" &
    RECOVERY_PID=$!
    PIDS+=("$RECOVERY_PID")
}

# attempt TAG EXPECTED FORCE_RELAY [EVENT]: sets A_OK (matches EXPECTED), A_GOT, A_MS, A_NOTE,
# and A_RECOVERY_MS after a blackout.
attempt() {
    local tag=$1 expected=$2 force=$3 event=${4:-}
    local dir=$WORK/$tag
    mkdir -p "$dir/recv"
    A_OK=false A_GOT="?" A_MS="" A_NOTE="" A_RECOVERY_MS="" A_EVENT="" A_WIRE=""
    local bytes=$FILE_BYTES
    [ -z "$event" ] || bytes=$BLACKOUT_FILE_BYTES
    flush_conntrack

    local flags=()
    [ "$force" = yes ] && $HAS_FORCE_RELAY && flags+=(--force-relay)
    $HAS_TURN_CA && flags+=(--turn-ca "$TURN_CA")
    $HAS_CONNECT_TIMEOUT && flags+=(--connect-timeout "$CONNECT_TIMEOUT")
    if [ "$force" = yes ] && ! $HAS_FORCE_RELAY; then
        A_NOTE="proxim has no --force-relay"
    fi

    DESKTOP_ARGS=("$PROXIM" -v desktop --accept --once --no-qr --name natlab-desktop
        --server "$SERVER_URL" --download-dir "$dir/recv" --data-dir "$dir/desktop-data" "${flags[@]}")
    DESKTOP_TAG=$tag/desktop
    start "$DESKTOP_TAG" "$NS_HA" "${DESKTOP_ARGS[@]}"
    DESKTOP_PID=$LAST_PID
    local desktop_pid=$LAST_PID code
    if ! code=$(wait_for "$dir/desktop.out" 'pairing code: [0-9A-Z]+-[0-9A-Z]+' "the desktop's pairing code"); then
        A_GOT="no code" A_NOTE="the desktop did not register"
        stop_pids "$desktop_pid"
        forget "$desktop_pid"
        return 0
    fi
    code=${code#pairing code: }

    local file=$dir/natlab-$tag.bin sha
    head -c "$bytes" /dev/urandom >"$file"
    sha=$(sha256sum "$file" | cut -d' ' -f1)

    local bound=$PAIR_BOUND resume=()
    if [ "$event" = desktop-restart ]; then
        bound=$((PAIR_BOUND + RESUME_FOR)) resume=(--resume-for "$RESUME_FOR")
    fi
    local pair=(timeout -k 5 "$bound" ip netns exec "$NS_HB" "$PROXIM" -v pair "$code" --name natlab-phone
        --server "$SERVER_URL" --file "$file" --data-dir "$dir/phone-data" "${resume[@]}" "${flags[@]}")
    $HAS_JSON && pair+=(--json)
    local t0 t1 rc=0
    t0=$(date +%s%N)
    # In the background so that a signal to this script is handled at once (wait is interruptible).
    "${pair[@]}" >"$dir/pair.out" 2>"$dir/pair.err" </dev/null &
    local pair_pid=$!
    PIDS+=("$pair_pid")
    local blackout_pid=""
    if [[ $event == blackout* ]]; then
        blackout "$dir" "${event#blackout}" "$pair_pid" &
        blackout_pid=$!
        PIDS+=("$blackout_pid")
    elif [ "$event" = dead-path ]; then
        cut_for_good "$dir" "$pair_pid" &
        blackout_pid=$!
        PIDS+=("$blackout_pid")
    elif [[ $event == switch* ]]; then
        network_switch "$dir" "$pair_pid" &
        blackout_pid=$!
        PIDS+=("$blackout_pid")
    fi
    [ "$event" != server-kill ] || server_kill_during "$dir" "$pair_pid"
    RECOVERY_PID=""
    [ "$event" != desktop-restart ] || desktop_restart_during "$dir" "$pair_pid"
    wait "$pair_pid" || rc=$?
    forget "$pair_pid"
    if [ -n "$RECOVERY_PID" ]; then
        wait "$RECOVERY_PID" || true
        forget "$RECOVERY_PID"
    fi
    [ "$event" != desktop-restart ] || A_RECOVERY_MS=$(cat "$dir/recovery_ms" 2>/dev/null || echo none)
    desktop_pid=$DESKTOP_PID
    if [ -n "$blackout_pid" ]; then
        wait "$blackout_pid" || true
        forget "$blackout_pid"
        # Never leave the router dark (a blackout cut short).
        while ip netns exec "$NS_RB" iptables -C FORWARD -j DROP 2>/dev/null; do
            ip netns exec "$NS_RB" iptables -D FORWARD -j DROP
        done
        [[ $event != switch* ]] || restore_phone_network
        [[ $event != blackout* && $event != switch* ]] ||
            A_RECOVERY_MS=$(cat "$dir/recovery_ms" 2>/dev/null || echo none)
    fi
    t1=$(date +%s%N)
    local wall_ms=$(((t1 - t0) / 1000000))

    local ok=false path="" local_kind="" relay_proto="" error="" message="" connect_ms=""
    local resumed_from=0 cut_progress="" cut_acked="" cut_in_flight=0 path_end=""
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        error=hung message="proxim pair did not finish within ${bound}s"
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
            resumed_from=$(jq -r '.file.resumed_from // 0' <<<"$json")
            path_end=$(jq -r '.path_end // ""' <<<"$json")
            cut_progress=$(jq -r '.file.cuts[0].progress_bytes // ""' <<<"$json")
            cut_acked=$(jq -r '.file.cuts[0].acked_bytes // ""' <<<"$json")
            cut_in_flight=$(jq -r '.file.cuts[0].in_flight_bytes // 0' <<<"$json")
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
        if ! received_matches "$dir" "$file" "$sha" 50; then
            ok=false error=sha256 message="the received file is missing or differs"
        fi
    fi

    # --once: the desktop exits when the phone closes; a bounded wait, then stop it.
    local i
    for i in $(seq 1 30); do kill -0 "$desktop_pid" 2>/dev/null || break; sleep 0.1; done
    stop_pids "$desktop_pid"
    forget "$desktop_pid"
    local kept_part
    kept_part=$(part_bytes "$dir")
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
        if [ "$expected" = lost ]; then
            if [ -s "$dir/cut_ns" ]; then
                A_EVENT=$(((t1 - $(cat "$dir/cut_ns")) / 1000000))
                if [ "$A_EVENT" -le $((DEAD_PATH_BOUND * 1000)) ] && [ -n "$message" ]; then
                    A_OK=true
                    if [ "$kept_part" -gt 0 ]; then
                        A_NOTE=${A_NOTE:+$A_NOTE; }"part file kept: $kept_part bytes"
                    else
                        A_OK=false A_NOTE=${A_NOTE:+$A_NOTE; }"the desktop kept no part file"
                    fi
                else
                    A_NOTE=${A_NOTE:+$A_NOTE; }"no clear error within ${DEAD_PATH_BOUND}s of the cut (${A_EVENT} ms)"
                fi
            else
                A_NOTE=${A_NOTE:+$A_NOTE; }"the path was never cut (the transfer ended first)"
            fi
        fi
    fi
    if [ "$event" = desktop-restart ] && $A_OK; then
        if [ "$resumed_from" -gt 0 ] 2>/dev/null && [[ $cut_progress =~ ^[0-9]+$ ]]; then
            A_EVENT=$((cut_progress > resumed_from ? cut_progress - resumed_from : 0))
            # Over the wire: what the desktop had acknowledged beyond what it kept, plus what
            # was in flight (SCTP's counters, sampled every 100 ms).
            A_WIRE=""
            if [[ $cut_acked =~ ^[0-9]+$ ]]; then
                A_WIRE=$(((cut_acked > resumed_from ? cut_acked - resumed_from : 0) + cut_in_flight))
            fi
            log "$tag: resumed at $resumed_from bytes; $A_EVENT bytes handed to the channel twice, ${A_WIRE:-?} over the wire"
        else
            A_OK=false
            A_NOTE=${A_NOTE:+$A_NOTE; }"desktop-restart: not resumed (resumed_from ${resumed_from:-?}, cut at ${cut_progress:-?})"
        fi
    fi
    if [ "$event" = switch-symmetric ] && $A_OK && [ "$path_end" != relay ]; then
        A_OK=false
        A_NOTE=${A_NOTE:+$A_NOTE; }"after the switch to a symmetric NAT the path is ${path_end:-unknown}, not a relay"
    fi
    if [[ $event == blackout* || $event == switch* || $event == desktop-restart ]]; then
        case $A_RECOVERY_MS in
            '' | none | missed)
                A_OK=false
                A_NOTE=${A_NOTE:+$A_NOTE; }"$event: ${A_RECOVERY_MS:-not run} (no recovery measured)"
                ;;
            *) log "$tag: data again ${A_RECOVERY_MS} ms after the $event" ;;
        esac
    fi
    if [ "$event" = server-kill ] && ! [[ $A_EVENT =~ ^[0-9]+$ ]]; then
        A_OK=false
        A_NOTE=${A_NOTE:+$A_NOTE; }"server-kill: ${A_EVENT:-not run} (the transfer ended before the kill)"
    fi
    log "$tag: expected $expected, got $A_GOT in ${A_MS:-?} ms${A_NOTE:+ ($A_NOTE)}"
    if ! $A_OK && { [ "${CI:-}" = true ] || [ -n "${NATLAB_VERBOSE:-}" ]; }; then
        local f
        for f in pair.out pair.err desktop.out desktop.err desktop2.out desktop2.err; do
            [ -e "$dir/$f" ] || continue
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

    local rows=() passed=0 failed=0 name a b turn relay expected event n times got ok first notes
    local recoveries moved lost_after resent wire
    for idx in "${picks[@]}"; do
        IFS='|' read -r name a b turn relay expected event <<<"${SCENARIOS[$idx]}"
        log "scenario $((idx + 1)) $name: NAT A $a, NAT B $b, TURN $turn, force relay $relay"
        set_nat "$NS_RA" "$HA_IP" "$a"
        set_nat "$NS_RB" "$HB_IP" "$b"
        if [ "$event" = switch-symmetric ]; then
            set_nat "$NS_RC" "$HB_CELL_IP" symmetric
        else
            set_nat "$NS_RC" "$HB_CELL_IP" cone
        fi
        start_server "server-s$((idx + 1))" "$turn"
        times=() got=() ok=true first="" notes="" recoveries=() moved=() lost_after=() resent=() wire=()
        for n in $(seq 1 "$repeat"); do
            attempt "s$((idx + 1))-$n" "$expected" "$relay" "$event"
            [[ $A_RECOVERY_MS =~ ^[0-9]+$ ]] && recoveries+=("$A_RECOVERY_MS")
            if [[ $A_EVENT =~ ^[0-9]+$ ]]; then
                case $event in
                    server-kill) moved+=("$A_EVENT") ;;
                    dead-path) lost_after+=("$A_EVENT") ;;
                    desktop-restart)
                        resent+=("$A_EVENT")
                        [ -z "$A_WIRE" ] || wire+=("$A_WIRE")
                        ;;
                esac
            fi
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
        if [ "${#recoveries[@]}" -gt 0 ]; then
            local worst
            worst=$(printf '%s\n' "${recoveries[@]}" | sort -g | tail -n1)
            local after="a ${event#blackout} s blackout"
            [[ $event != switch* ]] || after="the network switch"
            [ "$event" != desktop-restart ] || after="the desktop was killed"
            notes="data again $(median "${recoveries[@]}") ms (p50), $worst ms (max) after $after, n=${#recoveries[@]}${notes:+; $notes}"
        fi
        if [ "${#lost_after[@]}" -gt 0 ]; then
            local longest
            longest=$(printf '%s\n' "${lost_after[@]}" | sort -g | tail -n1)
            notes="failed $(median "${lost_after[@]}") ms (p50), $longest ms (max) after the cut, n=${#lost_after[@]}${notes:+; $notes}"
        fi
        if [ "${#resent[@]}" -gt 0 ]; then
            local most
            most=$(printf '%s\n' "${resent[@]}" | sort -g | tail -n1)
            notes="${notes:+$notes; }resumed, handed to the channel twice $((most / 1024)) KiB (max)"
            if [ "${#wire[@]}" -gt 0 ]; then
                local p50w maxw
                p50w=$(median "${wire[@]}")
                maxw=$(printf '%s\n' "${wire[@]}" | sort -g | tail -n1)
                notes="$notes, over the wire $(awk -v b="$p50w" 'BEGIN { printf "%d", b / 1024 }') KiB (p50), $((maxw / 1024)) KiB (max)"
            fi
            notes="$notes, n=${#resent[@]}"
        fi
        if [ "${#moved[@]}" -gt 0 ]; then
            local least
            least=$(printf '%s\n' "${moved[@]}" | sort -g | head -n1)
            notes="with the server down ${SERVER_DOWN} s the desktop still received $((least / 1024)) KiB (least), n=${#moved[@]}${notes:+; $notes}"
        fi
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
    local profile="" sides=A
    while [ "$#" -gt 0 ]; do
        case $1 in
            --link) profile=${2:?--link needs a profile}; shift 2 ;;
            --link-on) sides=${2:?--link-on needs A, B or AB}; shift 2 ;;
            *) die "up: unknown argument '$1' (--link PROFILE, --link-on A|B|AB)" ;;
        esac
    done
    [[ $sides =~ ^(A|B|AB|BA)$ ]] || die "--link-on wants A, B or AB, not '$sides'"
    ensure_tools
    ensure_proxim
    [ -z "$profile" ] || ensure_netem
    mkdir -p "$STATE"
    [ -z "$(lab_namespaces)" ] || die "the lab is up already (scripts/natlab.sh down)"
    WORK=$STATE
    lab_up
    start_server server "turn:$TURN_IP:$STUN_PORT,turn:$TURN_IP:$STUN_PORT?transport=tcp,turns:$TURN_IP:$TLS_PORT"
    if [ -n "$profile" ]; then
        link_profile "$profile"
        local side i
        for ((i = 0; i < ${#sides}; i++)); do
            side=${sides:i:1}
            link_on "$side" "$LINK_UP" "$LINK_DOWN"
            echo "${NETEM_PID[$side]}" >"$STATE/netem-$side.pid"
        done
    fi
    printf '%s\n' "${PIDS[@]}" >"$STATE/pids"
    KEEP_LAB=true
    cat >&2 <<EOF
== the lab is up (both routers: cone NAT); state and logs in $STATE
   desktop: ip netns exec $NS_HA $PROXIM desktop --accept --no-qr --server $SERVER_URL --turn-ca $TURN_CA --download-dir /tmp/natlab-recv
   phone:   ip netns exec $NS_HB $PROXIM pair CODE --server $SERVER_URL --turn-ca $TURN_CA --file FILE --json
   NAT:     scripts/natlab.sh nat A|B cone|symmetric|fullcone|udp-blocked     down: scripts/natlab.sh down
   link:    scripts/natlab.sh link A|B 'rtt=50ms,loss=1%,rate=20mbit' | off   (the emulator on a LAN link)
EOF
}

# link A|B|AB PROFILE|off: put the emulator on a LAN link of a lab that is up (or take it off).
cmd_link() {
    [ "$(id -u)" -eq 0 ] || die "must run as root"
    [ "$#" -eq 2 ] || die "usage: scripts/natlab.sh link A|B|AB PROFILE|off"
    [[ $1 =~ ^(A|B|AB|BA)$ ]] || die "no link '$1' (A, B or AB)"
    ip netns list | grep -q "^$NS_RA" || die "the lab is not up (scripts/natlab.sh up)"
    KEEP_LAB=true
    WORK=$STATE
    [ "$2" = off ] || ensure_netem
    [ "$2" = off ] || link_profile "$2"
    local side pid i
    for ((i = 0; i < ${#1}; i++)); do
        side=${1:i:1}
        pid=$(cat "$STATE/netem-$side.pid" 2>/dev/null || true)
        NETEM_PID[$side]=$pid
        NETEM_LOG[$side]=$STATE/netem-$side-old
        if [ "$2" = off ]; then
            if [ -n "$pid" ]; then link_off "$side"; fi
            rm -f "$STATE/netem-$side.pid"
            log "link $side: plain veth"
        else
            link_on "$side" "$LINK_UP" "$LINK_DOWN"
            echo "${NETEM_PID[$side]}" >"$STATE/netem-$side.pid"
            echo "${NETEM_PID[$side]}" >>"$STATE/pids"
        fi
    done
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
# netem-check: the emulator measured end to end (delay, loss, rate, capacity)
# ---------------------------------------------------------------------------------------------

IPERF_PORT=5201

# check NAME WHAT MEASURED OK: one line of the netem-check table.
CHECKS=()
CHECK_FAILED=0
check() {
    local result=PASS
    if ! $4; then result=FAIL CHECK_FAILED=$((CHECK_FAILED + 1)); fi
    CHECKS+=("$1|$2|$3|$result")
    log "$1: $3 (want $2) $result"
}

# within X LO HI: LO <= X <= HI (floating point).
within() {
    awk -v x="$1" -v lo="$2" -v hi="$3" 'BEGIN { exit !(x != "" && x >= lo && x <= hi) }'
}

# iperf_a TAG ARGS...: iperf3 from host A to router A's LAN address (only the emulated link in
# between), JSON in $WORK/TAG.json.
iperf_a() {
    local tag=$1
    shift
    timeout -k 5 60 ip netns exec "$NS_HA" iperf3 -c "$RA_LAN" -p "$IPERF_PORT" -J "$@" \
        >"$WORK/$tag.json" 2>"$WORK/$tag.err" || true
}

# ping_stats COUNT: COUNT pings from host A to router A, 50 ms apart: PING_P10/P50/P90 and
# PING_TEXT (ms).
ping_stats() {
    local stats
    stats=$(ip netns exec "$NS_HA" ping -n -c "$1" -i 0.05 "$RA_LAN" 2>/dev/null | grep -o 'time=[0-9.]*' |
        cut -d= -f2 | sort -g | awk '{ v[NR] = $1 } END {
            if (NR == 0) { print "- - - - - 0"; exit }
            printf "%s %s %s %s %s %d", v[1], v[int(NR * 0.1) + 1], v[int(NR * 0.5) + 1], v[int(NR * 0.9)], v[NR], NR }')
    local min max n
    read -r min PING_P10 PING_P50 PING_P90 max n <<<"$stats"
    PING_TEXT="min $min p10 $PING_P10 p50 $PING_P50 p90 $PING_P90 max $max ms ($n/$1)"
}

cmd_netem_check() {
    ensure_tools
    ensure_netem
    [ -z "$(lab_namespaces)" ] ||
        die "a lab is up already (pxl-* namespaces: another run, or natlab.sh up); scripts/natlab.sh down ends it"
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/proxim-natlab.XXXXXX")
    log "building the lab (no servers): namespaces ${ALL_NS[*]}"
    build_topology
    set_nat "$NS_RA" "$HA_IP" cone
    set_nat "$NS_RB" "$HB_IP" cone
    start iperf3-ra "$NS_RA" iperf3 -s -B "$RA_LAN" -p "$IPERF_PORT"
    wait_listen "$NS_RA" t "$RA_LAN:$IPERF_PORT" "iperf3 -s" || die "iperf3 -s did not start"

    local v v2 pps PING_P10 PING_P50 PING_P90 PING_TEXT
    # 1. Capacity with no impairment: TCP both ways, UDP 1200 B as fast as iperf3 sends, and
    #    UDP 1200 B at 100 Mbit/s, which must pass without loss.
    link_on A none none
    iperf_a cap-tcp -t 5
    v=$(jq -r '.end.sum_received.bits_per_second / 1e6 | floor' "$WORK/cap-tcp.json" 2>/dev/null || true)
    check "capacity TCP host->router" ">= 100 Mbit/s" "${v:-?} Mbit/s" "$(within "${v:-}" 100 1e9 && echo true || echo false)"
    iperf_a cap-tcp-r -t 5 -R
    v=$(jq -r '.end.sum_received.bits_per_second / 1e6 | floor' "$WORK/cap-tcp-r.json" 2>/dev/null || true)
    check "capacity TCP router->host" ">= 100 Mbit/s" "${v:-?} Mbit/s" "$(within "${v:-}" 100 1e9 && echo true || echo false)"
    iperf_a cap-udp -u -l 1200 -b 0 -w 4M -t 5
    v=$(jq -r '(.end.sum.packets - .end.sum.lost_packets) / .end.sum.seconds | floor' "$WORK/cap-udp.json" 2>/dev/null || true)
    v2=$(jq -r '(.end.sum.packets - .end.sum.lost_packets) * 1200 * 8 / .end.sum.seconds / 1e6 | floor' "$WORK/cap-udp.json" 2>/dev/null || true)
    pps=$v
    check "capacity UDP 1200 B, unpaced" ">= 10417 pps (100 Mbit/s)" "${v:-?} pps delivered (${v2:-?} Mbit/s of payload; lost $(jq -r '.end.sum.lost_percent | . * 100 | round / 100' "$WORK/cap-udp.json" 2>/dev/null || echo ?) %)" \
        "$(within "${v:-}" 10417 1e12 && echo true || echo false)"
    iperf_a cap-udp100 -u -l 1200 -b 100M -w 4M -t 5
    v=$(jq -r '.end.sum.lost_percent' "$WORK/cap-udp100.json" 2>/dev/null || true)
    check "UDP 1200 B at 100 Mbit/s: loss" "<= 0.1 %" "${v:-?} %" "$(within "${v:-}" 0 0.1 && echo true || echo false)"
    link_stop A
    log "emulator counters (capacity runs): $LINK_COUNTERS"

    # 2. Delay: 20 ms each way, ping RTT 40 ms; with 5 ms jitter each way the median stays and
    #    the spread shows (the sum of two uniform ±5 ms draws: p10..p90 = 11.1 ms). Medians and
    #    percentiles, not the mean: one ping delayed by a busy machine must not decide. The
    #    jittered median may sit up to ~2 ms above the plain one (40.7 ms here): a CI-like run
    #    on 2026-12-02 measured 42.0 ms with the spread right (10.8 ms).
    link_on A delay=20ms delay=20ms
    ping_stats 200
    check "delay=20ms each way: ping RTT" "p50 39.8..41.0 ms" "$PING_TEXT" "$(within "$PING_P50" 39.8 41.0 && echo true || echo false)"
    link_on A delay=20ms,jitter=5ms delay=20ms,jitter=5ms
    ping_stats 400
    v=$(awk -v a="$PING_P10" -v b="$PING_P90" 'BEGIN { printf "%.1f", b - a }')
    check "jitter=5ms each way: ping RTT" "p50 38.5..42.5, p90-p10 9.5..12.5 ms" "$PING_TEXT, p90-p10 $v" \
        "$(within "$PING_P50" 38.5 42.5 && within "$v" 9.5 12.5 && echo true || echo false)"

    # 3. Loss, one direction only: UDP host->router.
    link_on A loss=5% none
    iperf_a loss-udp -u -l 1200 -b 10M -t 4
    v=$(jq -r '.end.sum.lost_percent' "$WORK/loss-udp.json" 2>/dev/null || true)
    check "loss=5% host->router: UDP loss" "4.0..6.0 %" "${v:-?} % of $(jq -r '.end.sum.packets' "$WORK/loss-udp.json" 2>/dev/null || echo ?)" \
        "$(within "${v:-}" 4.0 6.0 && echo true || echo false)"
    link_on A ge=1%,25% none
    iperf_a ge-udp -u -l 1200 -b 10M -t 4
    v=$(jq -r '.end.sum.lost_percent' "$WORK/ge-udp.json" 2>/dev/null || true)
    check "ge=1%,25% host->router: UDP loss" "2.5..5.2 % (mean 3.85)" "${v:-?} %" "$(within "${v:-}" 2.5 5.2 && echo true || echo false)"

    # 4. Rate: 20 Mbit/s each way with a 50 ms queue, TCP host->router.
    link_on A rate=20mbit,queue=50ms rate=20mbit,queue=50ms
    iperf_a rate-tcp -t 6
    v=$(jq -r '.end.sum_received.bits_per_second / 1e6 | . * 10 | round / 10' "$WORK/rate-tcp.json" 2>/dev/null || true)
    check "rate=20mbit: TCP goodput" "17.0..20.0 Mbit/s" "${v:-?} Mbit/s" "$(within "${v:-}" 17.0 20.0 && echo true || echo false)"
    link_stop A
    log "emulator counters (rate run): $LINK_COUNTERS"

    echo
    printf '%-40s %-30s %-60s %s\n' CHECK WANT MEASURED RESULT
    local row c1 c2 c3 c4
    for row in "${CHECKS[@]}"; do
        IFS='|' read -r c1 c2 c3 c4 <<<"$row"
        printf '%-40s %-30s %-60s %s\n' "$c1" "$c2" "$c3" "$c4"
    done
    echo "(through proxim-netem on router A's LAN link, host A <-> router A; capacity: ${pps:-?} packets/s of 1200 B UDP)"
    echo "$((${#CHECKS[@]} - CHECK_FAILED)) passed, $CHECK_FAILED failed"
    lab_down_processes
    [ "$CHECK_FAILED" -eq 0 ]
}

# ---------------------------------------------------------------------------------------------
# lossy: the LOSSY benchmark (Proxim vs TCP CUBIC/BBR vs Chromium on emulated lossy links)
# ---------------------------------------------------------------------------------------------

LOSSY_RTTS_FULL="1,20,50,100,200"
LOSSY_LOSSES_FULL="0,0.5,1,2,5"
LOSSY_RATES_FULL="unlimited,100,20"

# bin_flags BIN: BIN_FLAGS, the flags both `pair` and `desktop` of that binary take here.
declare -A BIN_FLAGS_CACHE=()
bin_flags() {
    local bin=$1 help dhelp
    if [ -z "${BIN_FLAGS_CACHE[$bin]+set}" ]; then
        help=$("$bin" pair --help 2>&1 || true)
        dhelp=$("$bin" desktop --help 2>&1 || true)
        grep -q -- '--json' <<<"$help" || die "$bin: pair has no --json (the LOSSY benchmark reads it)"
        BIN_FLAGS_CACHE[$bin]=""
        has_both --connect-timeout && BIN_FLAGS_CACHE[$bin]="--connect-timeout $LOSSY_CONNECT_TIMEOUT"
    fi
    read -ra BIN_FLAGS <<<"${BIN_FLAGS_CACHE[$bin]}"
}

# lossy_pair BIN TAG BYTES BOUND: desktop (BIN) in pxl-ha, `BIN pair --json` in pxl-hb with a
# random file of BYTES (0: a message only), bounded by BOUND seconds. Sets P_OK, P_ERR, P_OPEN
# (open_after_answer_ms, else connect_ms), P_OPEN_FIELD, P_MBS (file bytes / transfer time),
# P_SECS, P_STALL (file.max_stall_ms or empty); P_CONNECT_FAILED when the channel did not open
# within the connect timeout.
lossy_pair() {
    local bin=$1 tag=$2 bytes=$3 bound=$4
    local dir=$WORK/$tag
    mkdir -p "$dir/recv"
    P_OK=false P_ERR="" P_OPEN="" P_OPEN_FIELD="" P_MBS="" P_SECS="" P_STALL="" P_CONNECT_FAILED=false
    bin_flags "$bin"
    start "$tag/desktop" "$NS_HA" "$bin" -v desktop --accept --once --no-qr --name lossy-desktop \
        --server "$SERVER_URL" --download-dir "$dir/recv" --data-dir "$dir/desktop-data" "${BIN_FLAGS[@]}"
    local desktop_pid=$LAST_PID code
    if ! code=$(wait_for "$dir/desktop.out" 'pairing code: [0-9A-Z]+-[0-9A-Z]+' "the desktop's pairing code" 600); then
        P_ERR="$tag: the desktop did not register"
        stop_pids "$desktop_pid"
        forget "$desktop_pid"
        return 0
    fi
    code=${code#pairing code: }
    local pair=(timeout -k 5 "$bound" ip netns exec "$NS_HB" "$bin" -v pair "$code" --name lossy-phone
        --server "$SERVER_URL" --data-dir "$dir/phone-data" --json "${BIN_FLAGS[@]}")
    local file=$dir/lossy-$RANDOM.bin sha=""
    if [ "$bytes" -gt 0 ]; then
        head -c "$bytes" /dev/urandom >"$file"
        sha=$(sha256sum "$file" | cut -d' ' -f1)
        pair+=(--file "$file")
    else
        pair+=(-m hello)
    fi
    local rc=0
    "${pair[@]}" >"$dir/pair.out" 2>"$dir/pair.err" </dev/null &
    local pair_pid=$!
    PIDS+=("$pair_pid")
    wait "$pair_pid" || rc=$?
    forget "$pair_pid"
    local json
    json=$(grep -E '^\{' "$dir/pair.out" | tail -n1 || true)
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        P_ERR="$tag: hung (proxim pair did not finish within ${bound}s)"
    elif [ -z "$json" ] || ! jq -e . >/dev/null 2>&1 <<<"$json"; then
        P_ERR="$tag: no JSON from proxim pair (exit $rc): $(tail -n1 "$dir/pair.err" 2>/dev/null)"
    elif [ "$(jq -r '.ok == true' <<<"$json")" != true ] || [ "$rc" -ne 0 ]; then
        P_ERR="$tag: $(jq -r '"\(.error // "failed"): \(.message // "")"' <<<"$json")"
        # The channel did not open within the connect timeout: a result (an open that failed),
        # not a measurement that went wrong.
        case $(jq -r '.error // ""' <<<"$json") in
            timed_out | ice_failed | pair_timed_out) P_CONNECT_FAILED=true ;;
        esac
    else
        P_OK=true
        P_OPEN=$(jq -r '.open_after_answer_ms // .connect_ms // empty' <<<"$json")
        P_OPEN_FIELD=$(jq -r 'if .open_after_answer_ms then "open_after_answer_ms" else "connect_ms" end' <<<"$json")
        if [ "$bytes" -gt 0 ]; then
            if [ "$(jq -r '.file.sha256 // ""' <<<"$json")" != "$sha" ]; then
                P_OK=false P_ERR="$tag: SHA-256 mismatch (the desktop verified another hash)"
            else
                P_SECS=$(jq -r '.file.elapsed_ms / 1000' <<<"$json")
                P_MBS=$(jq -r '.file.bytes / (.file.elapsed_ms / 1000) / 1e6' <<<"$json")
                P_STALL=$(jq -r '.file.max_stall_ms // empty' <<<"$json")
            fi
        fi
    fi
    # The file on the desktop's disk must be the one sent.
    if $P_OK && [ "$bytes" -gt 0 ]; then
        if ! received_matches "$dir" "$file" "$sha" 100; then
            P_OK=false P_ERR="$tag: the received file is missing or differs (SHA-256)"
        fi
    fi
    local i
    for i in $(seq 1 50); do kill -0 "$desktop_pid" 2>/dev/null || break; sleep 0.1; done
    stop_pids "$desktop_pid"
    forget "$desktop_pid"
    rm -rf "$file" "$dir/recv"
    $P_OK || log "$P_ERR"
}

# proxim_row BIN TAG: the file-transfer row with one binary: a 1 MiB probe, then a file sized
# for ~LOSSY_SECS (from the probe's rate and the CUBIC row's, see below; none when the probe was
# that slow already). A pairing whose channel
# does not open is retried (twice) and counts as a failed open. Sets R_MBS, R_STALL, R_OPENS
# (open times of its pairings, `fail` for a failed open), R_ERR, R_BYTES, R_SECS.
proxim_row() {
    local bin=$1 tag=$2
    R_MBS="" R_STALL="" R_OPENS=() R_ERR="" R_BYTES="" R_SECS=""
    row_pair "$bin" "$tag-probe" $((1024 * 1024)) || return 0
    # The probe underestimates (slow start dominates 1 MiB, the more so the longer the RTT), so
    # the file is LOSSY_SECS at the larger of 3 x the probe's rate and the TCP BBR row's rate
    # (BBR_MBS, at most 10 x the probe's), at most 512 MiB: about as long as the TCP rows, so
    # startup weighs on both alike. When that is under 2 MiB the probe already took about as
    # long: its figures are the row's.
    R_BYTES=$(awk -v probe="$P_MBS" -v bbr="${BBR_MBS:-0}" -v secs="$LOSSY_SECS" 'BEGIN {
        rate = probe * 3
        if (bbr > 0) { t = bbr; if (t > probe * 10) t = probe * 10; if (t > rate) rate = t }
        b = rate * 1e6 * secs
        if (b > 512 * 1048576) b = 512 * 1048576
        printf "%d", b }')
    if [ "$R_BYTES" -ge $((2 * 1024 * 1024)) ]; then
        row_pair "$bin" "$tag-main" "$R_BYTES" || return 0
        R_STALL=$P_STALL
    else
        # No stall figure: the channel takes a 1 MiB file into its send buffer at once
        # (SEND_HIGH_WATER in core/src/peer/channel.rs), so no chunk ever waits.
        R_BYTES=$((1024 * 1024)) R_STALL=""
    fi
    R_MBS=$P_MBS R_SECS=$P_SECS
}

# row_pair BIN TAG BYTES: lossy_pair, again (up to 3 tries) while the channel does not open.
row_pair() {
    local try
    for try in 1 2 3; do
        lossy_pair "$1" "$2-$try" "$3" "$LOSSY_BOUND"
        if $P_OK; then
            R_OPENS+=("$P_OPEN")
            return 0
        fi
        $P_CONNECT_FAILED || break
        R_OPENS+=(fail)
    done
    R_ERR=$P_ERR
    return 1
}

# tcp_row CC TAG: iperf3 -C CC from pxl-hb to the iperf3 server in pxl-ha, through router A's
# port forward (198.18.0.11:5201), the same direction and path as the Proxim file. Sets T_MBS
# (goodput: bytes received / seconds) or T_ERR.
tcp_row() {
    local cc=$1 tag=$2 out=$WORK/$2.json
    T_MBS="" T_ERR=""
    flush_conntrack
    timeout -k 5 $((LOSSY_SECS + 40)) ip netns exec "$NS_HB" iperf3 -c "$RA_WAN" -p "$IPERF_PORT" \
        -C "$cc" -t "$LOSSY_SECS" -J >"$out" 2>"$WORK/$tag.err" || true
    T_MBS=$(jq -r '.end.sum_received.bytes / .end.sum_received.seconds / 1e6 // empty' "$out" 2>/dev/null || true)
    if [ -z "$T_MBS" ]; then
        T_ERR="$tag: iperf3 -C $cc failed: $(jq -r '.error // empty' "$out" 2>/dev/null)$(tail -n1 "$WORK/$tag.err" 2>/dev/null)"
        log "$T_ERR"
    fi
}

# ---- Row 4, Chromium -> Chromium data channel -----------------------------------------------
# tests/interop/c2c.mjs (headless Debian chromium driven by playwright-core, one browser in
# each LAN host namespace, STUN from the lab's server) moves the bytes over a reliable ordered
# channel and prints {"mbps": <MB/s>, "max_stall_ms": …} last. $CHROMIUM_C2C names another
# tool; NATLAB_NO_CHROMIUM=1 leaves the row out (`-`).
CHROMIUM_C2C=${CHROMIUM_C2C:-$ROOT/tests/interop/c2c.mjs}
[ "${NATLAB_NO_CHROMIUM:-0}" = 1 ] && CHROMIUM_C2C=""
C2C_MBPS_TO_MBS=${C2C_MBPS_TO_MBS:-1}

# ensure_chromium: Debian's chromium and playwright-core (npm ci in tests/interop; no browser
# download), when the Chromium row runs.
ensure_chromium() {
    [ -n "$CHROMIUM_C2C" ] || return 0
    command -v chromium >/dev/null || apt_install chromium || die "apt-get install chromium failed"
    command -v node >/dev/null || die "node is missing (the Chromium row needs node >= 20)"
    if [ ! -f "$ROOT/tests/interop/node_modules/playwright-core/package.json" ]; then
        log "npm ci (tests/interop: playwright-core; no browser download)"
        (cd "$ROOT/tests/interop" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error) >&2 ||
            die "npm ci in tests/interop failed"
    fi
}

chromium_row() {
    local bytes=$1 tag=$2 out=$WORK/$2.json
    C_MBS="" C_STALL="" C_ERR=""
    [ -n "${CHROMIUM_C2C:-}" ] || return 0
    flush_conntrack
    timeout -k 5 "$LOSSY_BOUND" node "$CHROMIUM_C2C" --ns-a "$NS_HA" --ns-b "$NS_HB" \
        --stun "stun:$SERVER_IP:$STUN_PORT" --bytes "$bytes" --json >"$out" 2>"$WORK/$tag.err" || true
    local json
    json=$(grep -E '^\{' "$out" | tail -n1 || true)
    C_MBS=$(jq -r --argjson k "$C2C_MBPS_TO_MBS" '.mbps * $k // empty' <<<"$json" 2>/dev/null || true)
    C_STALL=$(jq -r '.max_stall_ms // empty' <<<"$json" 2>/dev/null || true)
    if [ -z "$C_MBS" ]; then
        C_ERR="$tag: $CHROMIUM_C2C printed no {\"mbps\":…}: $(tail -n1 "$WORK/$tag.err" 2>/dev/null)"
        log "$C_ERR"
    fi
}
# ---- end of HOOK --------------------------------------------------------------------------

# lossy_profile RTT_MS LOSS_PCT RATE: one profile, every row on the same emulated link.
LOSSY_ROWS=()
LOSSY_ERRORS=()
lossy_profile() {
    local rtt=$1 loss=$2 rate=$3 name tag
    local rate_text=$rate
    [ "$rate" = unlimited ] || rate_text=${rate}mbit
    name="rtt=${rtt}ms loss=${loss}% rate=$rate_text"
    tag=p$((${#LOSSY_ROWS[@]} + 1))
    link_profile "rtt=${rtt}ms,loss=${loss}%,rate=$rate_text"
    log "profile $name: link A each way: $("$NETEM" --dev-a x --dev-b y --a-to-b "$LINK_UP" --check | sed 's/^a->b //')"
    link_on A "$LINK_UP" "$LINK_DOWN" "$((${#LOSSY_ROWS[@]} + 1))"
    local started=$SECONDS

    tcp_row cubic "$tag-cubic"
    CUBIC_MBS=$T_MBS
    [ -z "$T_ERR" ] || LOSSY_ERRORS+=("$name: $T_ERR")
    tcp_row bbr "$tag-bbr"
    local bbr=$T_MBS
    BBR_MBS=$T_MBS
    [ -z "$T_ERR" ] || LOSSY_ERRORS+=("$name: $T_ERR")

    # Open times: pairings with a message only, then the two of the Proxim row.
    local opens=() n
    for n in $(seq 1 "$LOSSY_OPENS"); do
        lossy_pair "$PROXIM" "$tag-open$n" 0 "$LOSSY_BOUND"
        if $P_OK; then
            opens+=("$P_OPEN")
            OPEN_FIELD=$P_OPEN_FIELD
        elif $P_CONNECT_FAILED; then
            opens+=(fail)
        else
            LOSSY_ERRORS+=("$name: $P_ERR")
        fi
    done
    proxim_row "$PROXIM" "$tag-proxim"
    local proxim=$R_MBS stall=$R_STALL bytes=$R_BYTES secs=$R_SECS
    opens+=("${R_OPENS[@]}")
    [ -z "$R_ERR" ] || LOSSY_ERRORS+=("$name: $R_ERR")

    # Chromium's SCTP is loss-based like CUBIC: size its transfer from CUBIC's rate (~1.5 x
    # LOSSY_SECS of it, 1 MiB to Proxim's size) so a lossy profile does not run past the bound.
    local c_bytes
    c_bytes=$(awk -v cubic="${CUBIC_MBS:-0}" -v secs="$LOSSY_SECS" -v cap="${bytes:-16777216}" 'BEGIN {
        b = cubic * 1e6 * 1.5 * secs
        if (b < 1048576) b = 1048576
        if (b > cap) b = cap
        printf "%d", b }')
    chromium_row "$c_bytes" "$tag-chromium"
    [ -z "$C_ERR" ] || LOSSY_ERRORS+=("$name: $C_ERR")

    local legacy="" legacy_stall=""
    if [ -n "${PROXIM_LEGACY_BIN:-}" ]; then
        proxim_row "$PROXIM_LEGACY_BIN" "$tag-legacy"
        legacy=$R_MBS legacy_stall=$R_STALL
        [ -z "$R_ERR" ] || LOSSY_ERRORS+=("$name: legacy: $R_ERR")
    fi

    link_stop A
    local link_loss=-
    [ -z "${LINK_COUNTERS:-}" ] || link_loss=$(jq -r '.b_to_a | if .packets_in > 0 then (.dropped_loss + .dropped_queue) / .packets_in * 100 | . * 100 | round / 100 else "-" end' <<<"$LINK_COUNTERS" 2>/dev/null || echo -)
    local p50 p99
    p50=$(percentile 50 "${opens[@]}")
    p99=$(percentile 99 "${opens[@]}")
    log "profile $name done in $((SECONDS - started)) s: proxim ${proxim:-?} MB/s (${bytes:-?} B in ${secs:-?} s, stall ${stall:-?} ms), cubic ${CUBIC_MBS:-?}, bbr ${bbr:-?}, chromium ${C_MBS:--}, legacy ${legacy:--}; open p50 $p50 p99 $p99 ms (${#opens[@]} samples: ${opens[*]}); link b->a dropped $link_loss %: $LINK_COUNTERS"
    local failed_opens
    failed_opens=$(printf '%s\n' "${opens[@]}" | grep -c '^fail$' || true)
    LOSSY_ROWS+=("$rtt|$loss|$rate|${proxim}|${CUBIC_MBS}|${bbr}|${C_MBS}|${legacy}|${stall}|${C_STALL}|${legacy_stall}|$p50|$p99|$failed_opens/${#opens[@]}|$link_loss|$bytes")
}

# percentile P VALUES...: nearest-rank percentile of numbers and `fail`s (a failed open ranks
# above every time; the result is `fail` when the rank falls on one), or `-` when empty.
percentile() {
    local p=$1
    shift
    {
        printf '%s\n' "$@" | { grep -E '^[0-9.]+$' || true; } | sort -g
        printf '%s\n' "$@" | { grep -E '^fail$' || true; }
    } | awk -v p="$p" '{ v[NR] = $1 } END {
        if (NR == 0) { print "-"; exit }
        r = int((p / 100) * NR + 0.999999); if (r < 1) r = 1; if (r > NR) r = NR
        if (v[r] == "fail") print "fail"; else printf "%.0f", v[r] }'
}

# csv_list "a,b,c": the items, one per line, checked against REGEX.
csv_items() {
    local list=$1 regex=$2 what=$3 item
    IFS=',' read -ra items <<<"$list"
    for item in "${items[@]}"; do
        [[ $item =~ $regex ]] || die "lossy: bad $what '$item'"
        echo "$item"
    done
}

cmd_lossy() {
    local rtts=$LOSSY_RTTS_FULL losses=$LOSSY_LOSSES_FULL rates=$LOSSY_RATES_FULL
    # The full run: 4 opens and ~6 s per row keep 75 profiles near 75 minutes.
    LOSSY_OPENS=4 LOSSY_SECS=6
    while [ "$#" -gt 0 ]; do
        case $1 in
            --quick) rtts=20 losses=0,2 rates=100 LOSSY_OPENS=3 LOSSY_SECS=5; shift ;;
            --rtt) rtts=${2:?--rtt needs a list}; shift 2 ;;
            --loss) losses=${2:?--loss needs a list}; shift 2 ;;
            --rate) rates=${2:?--rate needs a list}; shift 2 ;;
            --opens) LOSSY_OPENS=${2:?--opens needs a number}; shift 2 ;;
            --secs) LOSSY_SECS=${2:?--secs needs a number}; shift 2 ;;
            *) die "lossy: unknown argument '$1' (--quick, --rtt LIST, --loss LIST, --rate LIST, --opens N, --secs N)" ;;
        esac
    done
    [[ $LOSSY_OPENS =~ ^[0-9]+$ ]] || die "lossy: --opens wants a number"
    [[ $LOSSY_SECS =~ ^[1-9][0-9]*$ ]] || die "lossy: --secs wants a positive number"
    local rtt_list loss_list rate_list
    mapfile -t rtt_list < <(csv_items "$rtts" '^[0-9]+$' "RTT (ms)")
    mapfile -t loss_list < <(csv_items "$losses" '^[0-9]+(\.[0-9]+)?$' "loss (%)")
    mapfile -t rate_list < <(csv_items "$rates" '^([0-9]+|unlimited)$' "rate (Mbit/s or unlimited)")
    LOSSY_CONNECT_TIMEOUT=${NATLAB_CONNECT_TIMEOUT:-30}
    LOSSY_BOUND=${NATLAB_LOSSY_BOUND:-300}

    ensure_tools
    ensure_proxim
    ensure_chromium
    ensure_netem
    command -v iperf3 >/dev/null || apt_install iperf3 || die "apt-get install iperf3 failed"
    if [ -n "${PROXIM_LEGACY_BIN:-}" ]; then
        [ -x "$PROXIM_LEGACY_BIN" ] || die "PROXIM_LEGACY_BIN=$PROXIM_LEGACY_BIN is not an executable"
    fi
    if [ -n "${CHROMIUM_C2C:-}" ]; then
        [ -f "$CHROMIUM_C2C" ] || die "CHROMIUM_C2C=$CHROMIUM_C2C is not a file"
        command -v node >/dev/null || die "CHROMIUM_C2C is set but node is missing"
    fi
    grep -qw bbr /proc/sys/net/ipv4/tcp_available_congestion_control ||
        modprobe tcp_bbr 2>/dev/null || log "tcp_bbr is not available: the BBR row will fail"
    [ -z "$(lab_namespaces)" ] ||
        die "a lab is up already (pxl-* namespaces: another run, or natlab.sh up); scripts/natlab.sh down ends it"
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/proxim-natlab.XXXXXX")
    local total=$((${#rtt_list[@]} * ${#loss_list[@]} * ${#rate_list[@]})) run_started=$SECONDS
    lab_up
    # Direct path, cone/cone: only the embedded STUN responder, no TURN.
    start_server server-lossy -
    # iperf3's server in host A, reached from host B through a port forward on router A.
    nsx "$NS_RA" iptables -w 5 -t nat -A PREROUTING -i wan -p tcp --dport "$IPERF_PORT" -j DNAT --to-destination "$HA_IP:$IPERF_PORT"
    nsx "$NS_RA" iptables -w 5 -A FORWARD -i wan -p tcp -d "$HA_IP" --dport "$IPERF_PORT" -m conntrack --ctstate DNAT -j ACCEPT
    start iperf3-ha "$NS_HA" iperf3 -s -B 0.0.0.0 -p "$IPERF_PORT"
    wait_listen "$NS_HA" t "0.0.0.0:$IPERF_PORT" "iperf3 -s" || die "iperf3 -s did not start in $NS_HA"

    cat <<EOF
LOSSY: $total profile(s), cone/cone NATs, direct path; all rows of a profile on one emulated link.
  The emulator (proxim-netem) sits on router A's LAN link, pxl-ha (desktop) <-> pxl-ra; router B's
  link is a plain veth. Each profile maps onto BOTH directions of that link alike: delay = RTT / 2,
  loss = the profile's loss (independent, per packet), rate = the profile's rate with a tail-drop
  queue of one RTT at that rate (at least 10 ms). Data flows pxl-hb -> pxl-ha (router->host on the
  emulated link), ACKs the other way, so a packet and its ACK each risk the loss once.
  Rows: PROXIM = $PROXIM desktop/pair --file (MB/s = file bytes / file.elapsed_ms; SHA-256 checked);
  CUBIC/BBR = iperf3 -C cubic|bbr -t $LOSSY_SECS from pxl-hb to iperf3 -s in pxl-ha via router A's
  port forward $RA_WAN:$IPERF_PORT (goodput = bytes received / seconds); CHROMIUM = \$CHROMIUM_C2C
  (${CHROMIUM_C2C:-not set}); LEGACY = \$PROXIM_LEGACY_BIN (${PROXIM_LEGACY_BIN:-not set}).
  OPEN = $LOSSY_OPENS message-only pairings + those of the PROXIM row (probe, main, retries) per profile.
EOF
    local rtt loss rate
    for rtt in "${rtt_list[@]}"; do
        for loss in "${loss_list[@]}"; do
            for rate in "${rate_list[@]}"; do
                lossy_profile "$rtt" "$loss" "$rate"
            done
        done
    done
    lab_down_processes
    lossy_report
    echo "(${total} profile(s) in $((SECONDS - run_started)) s)"
    if [ "${#LOSSY_ERRORS[@]}" -gt 0 ]; then
        echo
        echo "NOT MEASURED (${#LOSSY_ERRORS[@]}):"
        printf '  %s\n' "${LOSSY_ERRORS[@]}"
        return 1
    fi
}

# The table, then the goals.
# ratio_goal TITLE BASE MIN MAX_LOSS: the goal line "PROXIM / BASE >= MIN on every profile with
# loss <= MAX_LOSS %" over LOSSY_ROWS (BASE: cubic or chrom, a column of the row).
ratio_goal() {
    local title=$1 base_column=$2 min=$3 max_loss=$4
    local worst="" worst_text="" fails=0 n=0 row r base
    local rtt loss rate proxim cubic bbr chrom legacy stall lstall p50 p99 link_loss
    for row in "${LOSSY_ROWS[@]}"; do
        IFS='|' read -r rtt loss rate proxim cubic bbr chrom legacy stall _ lstall p50 p99 _ link_loss _ <<<"$row"
        case $base_column in
            cubic) base=$cubic ;;
            chrom) base=$chrom ;;
            *) die "ratio_goal: unknown column '$base_column'" ;;
        esac
        { le "$loss" "$max_loss" && [ -n "$proxim" ] && [ -n "$base" ]; } || continue
        r=$(awk -v a="$proxim" -v b="$base" 'BEGIN { printf "%.2f", a / b }')
        n=$((n + 1))
        le "$min" "$r" || fails=$((fails + 1))
        if [ -z "$worst" ] || le "$r" "$worst"; then worst=$r worst_text="${r}x at rtt=${rtt}ms loss=${loss}% rate=$rate"; fi
    done
    goal "$title" "$n" "worst $worst_text; $fails/$n below" "$fails"
}

lossy_report() {
    echo
    printf '%-34s %8s %8s %8s %8s %8s %8s %8s %8s %9s %9s %9s %6s %7s\n' PROFILE PROXIM CUBIC BBR CHROMIUM LEGACY P/CUBIC P/BBR P/CHROM "STALL ms" "OPEN p50" "OPEN p99" FAILED "LINK %"
    printf '%.0s-' $(seq 1 150)
    echo
    local row rtt loss rate proxim cubic bbr chrom legacy stall lstall p50 p99 nopen link_loss
    for row in "${LOSSY_ROWS[@]}"; do
        IFS='|' read -r rtt loss rate proxim cubic bbr chrom legacy stall _ lstall p50 p99 nopen link_loss _ <<<"$row"
        local rate_text=$rate
        [ "$rate" = unlimited ] || rate_text=${rate}mbit
        printf '%-34s %8s %8s %8s %8s %8s %8s %8s %8s %9s %9s %9s %6s %7s\n' \
            "rtt=${rtt}ms loss=${loss}% rate=$rate_text" "$(num "$proxim")" "$(num "$cubic")" "$(num "$bbr")" \
            "$(num "$chrom")" "$(num "$legacy")" "$(ratio "$proxim" "$cubic")" "$(ratio "$proxim" "$bbr")" \
            "$(ratio "$proxim" "$chrom")" "$(int "$stall")" "$p50" "$p99" "$nopen" "$link_loss"
    done
    echo "(MB/s, MB = 10^6 bytes of payload; STALL: the longest time the Proxim sender's channel accepted no"
    echo " chunk (file.max_stall_ms; - when the row is the 1 MiB probe, which fits the channel's send buffer); OPEN: ms, ${OPEN_FIELD:-connect_ms} of \`proxim pair --json\`, nearest-rank"
    echo " p50/p99 over the profile's pairings, a failed open ranking last; FAILED: pairings whose channel did"
    echo " not open within ${LOSSY_CONNECT_TIMEOUT} s / pairings; LINK %: packets the emulator dropped router->host, loss and queue, all rows)"
    if [ "${OPEN_FIELD:-connect_ms}" = connect_ms ]; then
        echo " connect_ms counts from starting \`proxim pair\`: WebSocket, pairing and offer/answer included;"
        echo " this binary reports no open_after_answer_ms, so the OPEN goals below are measured on more."
    fi
    echo
    echo "GOALS"
    local worst worst_text fails n r v
    # Proxim >= 0.8x CUBIC on every profile with loss <= 2 %; >= 2x Chromium on every profile.
    ratio_goal "PROXIM >= 0.8x CUBIC (every profile, loss <= 2 %)" cubic 0.8 2
    ratio_goal "PROXIM >= 2x CHROMIUM (every profile)" chrom 2 100
    # No stall > 1 s at loss <= 2 %.
    worst="" worst_text="" fails=0 n=0
    for row in "${LOSSY_ROWS[@]}"; do
        IFS='|' read -r rtt loss rate proxim cubic bbr chrom legacy stall _ lstall p50 p99 _ link_loss _ <<<"$row"
        { le "$loss" 2 && [ -n "$stall" ]; } || continue
        n=$((n + 1))
        le "$stall" 1000 || fails=$((fails + 1))
        if [ -z "$worst" ] || le "$worst" "$stall"; then worst=$stall worst_text="$(int "$stall") ms at rtt=${rtt}ms loss=${loss}% rate=$rate"; fi
    done
    goal "PROXIM no stall > 1 s (loss <= 2 %)" "$n" "worst $worst_text; $fails/$n over" "$fails"
    # Open at 50 ms RTT: p50 <= 6 RTT = 300 ms (loss <= 2 %).
    worst="" worst_text="" fails=0 n=0
    for row in "${LOSSY_ROWS[@]}"; do
        IFS='|' read -r rtt loss rate proxim cubic bbr chrom legacy stall _ lstall p50 p99 _ link_loss _ <<<"$row"
        { [ "$rtt" = 50 ] && le "$loss" 2 && [ "$p50" != - ]; } || continue
        n=$((n + 1))
        le_ms "$p50" 300 || fails=$((fails + 1))
        if [ -z "$worst" ] || [ "$p50" = fail ] || { [ "$worst" != fail ] && le "$worst" "$p50"; }; then worst=$p50 worst_text="$p50 ms at loss=${loss}% rate=$rate"; fi
    done
    goal "OPEN p50 <= 6 RTT at 50 ms RTT (loss <= 2 %)" "$n" "worst $worst_text; $fails/$n over" "$fails"
    # Open at 5 % loss: p50 <= 1 s, p99 <= 3 s.
    local which limit
    for which in 50 99; do
        limit=1000
        [ "$which" = 99 ] && limit=3000
        worst="" worst_text="" fails=0 n=0
        for row in "${LOSSY_ROWS[@]}"; do
            IFS='|' read -r rtt loss rate proxim cubic bbr chrom legacy stall _ lstall p50 p99 _ link_loss _ <<<"$row"
            v=$p50
            [ "$which" = 99 ] && v=$p99
            { awk -v l="$loss" 'BEGIN { exit !(l + 0 == 5) }' && [ "$v" != - ]; } || continue
            n=$((n + 1))
            le_ms "$v" "$limit" || fails=$((fails + 1))
            if [ -z "$worst" ] || [ "$v" = fail ] || { [ "$worst" != fail ] && le "$worst" "$v"; }; then worst=$v worst_text="$v ms at rtt=${rtt}ms rate=$rate"; fi
        done
        goal "OPEN p$which <= $((limit / 1000)) s at 5 % loss" "$n" "worst $worst_text; $fails/$n over" "$fails"
    done
    # Info: the legacy peer beside this one.
    for row in "${LOSSY_ROWS[@]}"; do
        IFS='|' read -r rtt loss rate proxim cubic bbr chrom legacy stall _ lstall p50 p99 _ link_loss _ <<<"$row"
        [ -n "$legacy" ] || continue
        printf '  %-50s %-60s info\n' "PROXIM vs LEGACY rtt=${rtt}ms loss=${loss}% rate=$rate" \
            "$(ratio "$proxim" "$legacy") ($(num "$proxim") / $(num "$legacy") MB/s; stall $(int "$stall") / $(int "$lstall") ms)"
    done
}

# goal TEXT N VALUE FAILS: one goal line (n/a when no profile of the run measures it).
goal() {
    if [ "$2" -eq 0 ]; then
        printf '  %-50s %-60s n/a\n' "$1" "(no profile of this run measures it)"
    elif [ "$4" -eq 0 ]; then
        printf '  %-50s %-60s PASS\n' "$1" "$3"
    else
        printf '  %-50s %-60s FAIL\n' "$1" "$3"
    fi
}

# le A B: A <= B (floating point).
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 <= b + 0) }'; }
# le_ms TIME LIMIT: an open time within LIMIT (`fail` never is).
le_ms() { [ "$1" != fail ] && le "$1" "$2"; }
num() { if [ -n "$1" ]; then awk -v v="$1" 'BEGIN { printf (v >= 100 ? "%.0f" : (v >= 10 ? "%.1f" : "%.2f")), v }'; else echo -; fi; }
int() { if [ -n "$1" ]; then awk -v v="$1" 'BEGIN { printf "%.0f", v }'; else echo -; fi; }
ratio() { if [ -n "$1" ] && [ -n "$2" ]; then awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; else echo -; fi; }

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
    [ "${#args[@]}" -gt 0 ] || die "usage: scripts/natlab.sh up [--link PROFILE] | down | nat A|B TYPE | link A|B PROFILE|off | list | run [--repeat N] [SCENARIO...] | bench | netem-check | lossy [--quick]"
    local cmd=${args[0]}
    args=("${args[@]:1}")
    case $cmd in
        up) cmd_up "${args[@]}" ;;
        link) cmd_link "${args[@]}" ;;
        netem-check) cmd_netem_check ;;
        lossy) cmd_lossy "${args[@]}" ;;
        down) cmd_down ;;
        list) list_scenarios ;;
        nat) cmd_nat "${args[@]}" ;;
        run) run_suite "$repeat" "${args[@]}" ;;
        bench) cmd_bench "${args[@]}" ;;
        *) die "unknown command '$cmd' (up, down, nat, link, list, run, bench, netem-check, lossy)" ;;
    esac
}

main "$@"
