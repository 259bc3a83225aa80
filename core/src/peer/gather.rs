//! Local candidates: one UDP socket per usable local IP, host candidates for each, and the
//! `stun:` servers to learn server-reflexive candidates from.
//!
//! The Binding requests themselves are [`super::stun_binding::StunBinding`] transactions, run
//! by the session (sans-IO) on the sockets the driver owns. Relay candidates come from the TURN
//! relays (`super::relay`), which outlive gathering because the relayed path runs through them.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use proxim_protocol::IceServer;
use proxim_protocol::ice::{IceScheme, IceTransport, IceUrl};
use socket2::{Domain, Protocol, Socket, Type};
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
