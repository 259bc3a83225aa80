//! Local candidates: one UDP socket per usable local IP, host candidates for each, and
//! server-reflexive candidates learned with STUN Binding requests sent from those sockets.
//!
//! Gathering is a set of [`CandidateSource`]s, each with its own sans-IO state: it takes packets
//! and time as inputs and yields packets to send and candidates found. The driver owns the
//! sockets and feeds them. Relay candidates come from the TURN relays (`super::relay`), which
//! outlive gathering because the relayed path runs through them.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use proxim_protocol::IceServer;
use proxim_protocol::ice::{IceScheme, IceTransport, IceUrl};
use socket2::{Domain, Protocol, Socket, Type};

use super::ice::stun::{Class, StunMessage, StunWriter, TransactionId, new_transaction};
use tokio::net::UdpSocket;

/// A bound UDP socket the peer sends and receives on.
#[derive(Debug)]
pub(super) struct LocalSocket {
    /// The address it is bound to (the base of its host candidate).
    pub(super) addr: SocketAddr,
    /// The socket.
    pub(super) socket: UdpSocket,
    /// Batched I/O on it: GSO/GRO and `sendmmsg`/`recvmmsg` where the OS has them.
    pub(super) state: quinn_udp::UdpSocketState,
}

/// The local IP addresses to bind to: every IPv4 and IPv6 interface address that is up,
/// loopback when asked for, no link-local addresses (they need a scope id no candidate
/// carries). IPv4 first, loopback last.
pub(crate) fn local_ips(include_loopback: bool) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = Vec::new();
    match if_addrs::get_if_addrs() {
        Ok(interfaces) => {
            for interface in interfaces {
                let ip = interface.ip();
                let usable = match ip {
                    IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_unspecified(),
                    IpAddr::V6(v6) => !v6.is_unicast_link_local() && !v6.is_unspecified(),
                };
                if usable && (include_loopback || !ip.is_loopback()) && !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list network interfaces"),
    }
    if include_loopback && !ips.iter().any(IpAddr::is_loopback) {
        ips.push(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    }
    // Loopback last: on one machine it is the fastest path, elsewhere it is useless.
    ips.sort_by_key(|ip| (ip.is_loopback(), ip.is_ipv6()));
    ips
}

/// Bind a non-blocking UDP socket on `ip` (any port) with enlarged kernel buffers.
pub(super) fn bind_udp(ip: IpAddr, buffer_bytes: usize) -> io::Result<LocalSocket> {
    let socket = Socket::new(
        Domain::for_address(SocketAddr::new(ip, 0)),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if ip.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if let Err(e) = socket.set_recv_buffer_size(buffer_bytes) {
        tracing::debug!(error = %e, "SO_RCVBUF not set");
    }
    if let Err(e) = socket.set_send_buffer_size(buffer_bytes) {
        tracing::debug!(error = %e, "SO_SNDBUF not set");
    }
    socket.bind(&SocketAddr::new(ip, 0).into())?;
    socket.set_nonblocking(true)?;
    let rcvbuf = socket.recv_buffer_size().unwrap_or(0);
    let sndbuf = socket.send_buffer_size().unwrap_or(0);
    let std_socket: std::net::UdpSocket = socket.into();
    let addr = std_socket.local_addr()?;
    tracing::debug!(%addr, requested = buffer_bytes, rcvbuf, sndbuf, "udp socket bound");
    let state = quinn_udp::UdpSocketState::new((&std_socket).into())?;
    Ok(LocalSocket {
        addr,
        socket: UdpSocket::from_std(std_socket)?,
        state,
    })
}

/// A packet a candidate source wants sent.
#[derive(Debug)]
pub(crate) struct SourceTransmit {
    /// The local socket to send from.
    pub(crate) from: SocketAddr,
    /// Where to.
    pub(crate) to: SocketAddr,
    /// The datagram.
    pub(crate) data: Vec<u8>,
}

/// What a candidate source produced.
#[derive(Debug)]
pub(crate) enum SourceOutput {
    /// Send this packet.
    Transmit(SourceTransmit),
    /// The STUN server saw `base` as `mapped` (a server-reflexive address).
    Mapped {
        base: SocketAddr,
        mapped: SocketAddr,
    },
}

/// The `stun:` servers to gather from: those given as IP addresses, and those whose names
/// must be resolved first (asynchronously, see [`resolve_names`]).
#[derive(Debug, Default)]
pub(super) struct StunServers {
    /// `(url, address)` ready to use.
    pub(super) resolved: Vec<(String, SocketAddr)>,
    /// URLs with a host name.
    pub(super) by_name: Vec<IceUrl>,
}

/// Sort the usable `stun:` URLs of `servers`. TURN relays and STUN over TLS come with the relay
/// source; they are skipped here.
pub(super) fn stun_servers(servers: &[IceServer]) -> StunServers {
    let mut out = StunServers::default();
    for url in servers.iter().flat_map(|s| s.urls.iter()) {
        let parsed = match IceUrl::parse(url) {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "ICE server URL skipped");
                continue;
            }
        };
        if (parsed.scheme, parsed.transport) != (IceScheme::Stun, IceTransport::Udp) {
            tracing::debug!(url = %parsed, "ICE server not used for gathering yet");
            continue;
        }
        match parsed.host.parse::<IpAddr>() {
            Ok(ip) => out
                .resolved
                .push((parsed.to_string(), SocketAddr::new(ip, parsed.port))),
            Err(_) => out.by_name.push(parsed),
        }
    }
    out
}

/// Resolve STUN server names within `timeout`; names that fail are logged and left out.
pub(super) async fn resolve_names(
    urls: Vec<IceUrl>,
    timeout: Duration,
) -> Vec<(String, SocketAddr)> {
    let mut out = Vec::new();
    for url in urls {
        let lookup = tokio::time::timeout(timeout, tokio::net::lookup_host(url.host_port())).await;
        match lookup {
            Ok(Ok(addrs)) => {
                // One address per family: IPv4 sockets ask the first, IPv6 sockets the other.
                let addrs: Vec<SocketAddr> = addrs.collect();
                let v4 = addrs.iter().find(|a| a.is_ipv4());
                let v6 = addrs.iter().find(|a| a.is_ipv6());
                for addr in v4.into_iter().chain(v6) {
                    out.push((url.to_string(), *addr));
                }
                if addrs.is_empty() {
                    tracing::debug!(url = %url, "STUN server name has no address");
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(url = %url, error = %e, "STUN server name does not resolve")
            }
            Err(_) => tracing::debug!(url = %url, "STUN server name resolution timed out"),
        }
    }
    out
}

/// Retransmit schedule of a Binding request, relative to the start: fast at first, since on a
/// LAN the answer comes in milliseconds, then doubling until the deadline.
const STUN_FIRST_RTO: Duration = Duration::from_millis(100);

/// Sans-IO STUN Binding transaction: send, retransmit within the deadline, parse the answer.
#[derive(Debug)]
pub(crate) struct StunBinding {
    url: String,
    local: SocketAddr,
    server: SocketAddr,
    transaction: TransactionId,
    request: Vec<u8>,
    deadline: Instant,
    next_send: Instant,
    rto: Duration,
    pending: Vec<SourceOutput>,
    pub(super) done: bool,
}

impl StunBinding {
    pub(crate) fn new(
        url: String,
        local: SocketAddr,
        server: SocketAddr,
        now: Instant,
        timeout: Duration,
    ) -> Self {
        let transaction = new_transaction();
        let request = StunWriter::new(Class::Request, &transaction).finish(None);
        StunBinding {
            url,
            local,
            server,
            transaction,
            request,
            deadline: now + timeout,
            next_send: now,
            rto: STUN_FIRST_RTO,
            pending: Vec::new(),
            done: false,
        }
    }

    pub(crate) fn handle_packet(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
    ) -> bool {
        if self.done || local != self.local || from != self.server {
            return false;
        }
        let Ok(msg) = StunMessage::parse(data) else {
            return false;
        };
        if msg.transaction != self.transaction {
            return false;
        }
        self.done = true;
        if msg.class != Class::Success {
            tracing::debug!(url = %self.url, code = ?msg.error_code(), "STUN server refused the Binding request");
            return true;
        }
        let Some(mapped) = msg.mapped_address() else {
            tracing::debug!(url = %self.url, "STUN answer without XOR-MAPPED-ADDRESS");
            return true;
        };
        tracing::debug!(url = %self.url, base = %self.local, %mapped, "server-reflexive address");
        self.pending.push(SourceOutput::Mapped {
            base: self.local,
            mapped,
        });
        true
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.done {
            return;
        }
        if now >= self.deadline {
            self.done = true;
            tracing::debug!(url = %self.url, base = %self.local, "STUN server did not answer in time; giving up on it");
            return;
        }
        if now >= self.next_send {
            self.pending.push(SourceOutput::Transmit(SourceTransmit {
                from: self.local,
                to: self.server,
                data: self.request.clone(),
            }));
            self.next_send = now + self.rto;
            self.rto = (self.rto * 2).min(Duration::from_secs(1));
        }
    }

    pub(crate) fn poll_output(&mut self) -> Option<SourceOutput> {
        if self.pending.is_empty() {
            None
        } else {
            Some(self.pending.remove(0))
        }
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            None
        } else {
            Some(self.next_send.min(self.deadline))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_binding_retransmits_then_gives_up() {
        let now = Instant::now();
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let server: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut b = StunBinding::new(
            "stun:127.0.0.1:9".into(),
            local,
            server,
            now,
            Duration::from_millis(500),
        );
        let mut sent = 0;
        let mut t = now;
        while !b.done {
            b.handle_timeout(t);
            while let Some(out) = b.poll_output() {
                assert!(matches!(out, SourceOutput::Transmit(_)));
                sent += 1;
            }
            match b.poll_timeout() {
                Some(next) => t = next,
                None => break,
            }
        }
        assert!(b.done);
        assert!((2..=5).contains(&sent), "sent {sent}");
        assert!(t <= now + Duration::from_millis(500));
    }

    #[test]
    fn stun_binding_parses_the_answer() {
        let now = Instant::now();
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let server: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let mut b = StunBinding::new(
            "stun:127.0.0.1:3478".into(),
            local,
            server,
            now,
            Duration::from_secs(2),
        );
        b.handle_timeout(now);
        assert!(b.poll_output().is_some());
        // The answer as a STUN server (built by rtc's codec, another implementation) sends it.
        use rtc::stun::message::{BINDING_SUCCESS, Message, TransactionId as RtcTransaction};
        use rtc::stun::xoraddr::XorMappedAddress;
        let mut answer = Message::new();
        answer
            .build(&[
                Box::new(RtcTransaction(b.transaction)),
                Box::new(BINDING_SUCCESS),
                Box::new(XorMappedAddress {
                    ip: "198.18.0.7".parse().unwrap(),
                    port: 40000,
                }),
            ])
            .unwrap();
        // Wrong sender: not consumed.
        assert!(!b.handle_packet(local, "127.0.0.1:1".parse().unwrap(), &answer.raw));
        assert!(b.handle_packet(local, server, &answer.raw));
        match b.poll_output() {
            Some(SourceOutput::Mapped { mapped, base, .. }) => {
                assert_eq!(mapped, "198.18.0.7:40000".parse::<SocketAddr>().unwrap());
                assert_eq!(base, local);
            }
            other => panic!("expected a mapped address, got {other:?}"),
        }
        assert!(b.is_done_for_test());
    }

    impl StunBinding {
        fn is_done_for_test(&self) -> bool {
            self.done
        }
    }
}
