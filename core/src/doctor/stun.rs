//! The STUN check: one local UDP socket, one Binding request ([`StunBinding`]) to every
//! `stun:` address, and what the mapped addresses say about the NAT's mapping behaviour.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use proxim_protocol::IceServer;
use proxim_protocol::ice::{IceScheme, IceTransport, IceUrl};
use serde::Serialize;
use tokio::net::UdpSocket;
use tracing::debug;

use crate::clock::{now, sleep_until};
use crate::peer::gather::local_ips;
use crate::peer::stun_binding::{BindingOutput, BindingResult, StunBinding, StunMapping};

/// The STUN check: one local UDP socket, one Binding request to every `stun:` address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StunCheck {
    /// The local socket the requests went out from (`None` when it could not be bound).
    pub local: Option<SocketAddr>,
    /// One entry per STUN URL in the welcome.
    pub servers: Vec<StunServerCheck>,
    /// What the mapped addresses say about the NAT.
    pub mapping: NatMapping,
    /// A limit of this result, e.g. every server answered from one IP address.
    pub caveat: Option<String>,
}

/// The Binding request to one STUN URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StunServerCheck {
    /// The URL from the welcome.
    pub url: String,
    /// The address it resolved to.
    pub server: Option<SocketAddr>,
    /// What happened.
    #[serde(flatten)]
    pub outcome: StunOutcome,
}

/// How one Binding request ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum StunOutcome {
    /// The server said which address it saw the request come from.
    Mapped {
        /// The server-reflexive (mapped) address.
        mapped: SocketAddr,
        /// From the first request to the answer (retransmits included).
        #[serde(rename = "rtt_ms", serialize_with = "super::millis")]
        rtt: Duration,
    },
    /// No answer within the timeout.
    TimedOut {
        /// The timeout.
        #[serde(rename = "after_ms", serialize_with = "super::millis")]
        after: Duration,
    },
    /// An answer, but an error response or one without a mapped address.
    BadAnswer,
    /// The request could not be sent (no route, firewall).
    SendFailed {
        /// The OS error.
        detail: String,
    },
    /// The host name did not resolve to an IPv4 address.
    Unresolved {
        /// Why.
        detail: String,
    },
    /// Not checked.
    Skipped {
        /// Why.
        reason: String,
    },
}

/// The NAT's mapping behaviour (RFC 4787), as far as the STUN answers tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NatMapping {
    /// The mapped address is the local address: no NAT on the way.
    NoNat,
    /// Two STUN server addresses saw the same mapped address: a peer can reach the address
    /// learned from STUN, direct connections are likely.
    EndpointIndependent,
    /// Two STUN server addresses saw different mapped addresses (symmetric NAT): peers cannot
    /// use the address learned from STUN; a TURN relay is needed unless the peer is open.
    AddressPortDependent,
    /// Only one STUN address answered, so the behaviour cannot be told.
    Unknown,
    /// No STUN server answered: UDP to STUN is blocked or the servers are down.
    Blocked,
    /// Nothing to test with (no usable STUN server, or no local socket).
    NotTested,
}

impl fmt::Display for NatMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NatMapping::NoNat => "no NAT",
            NatMapping::EndpointIndependent => "endpoint-independent mapping",
            NatMapping::AddressPortDependent => "address/port-dependent mapping (symmetric NAT)",
            NatMapping::Unknown => "unknown (needs two STUN addresses)",
            NatMapping::Blocked => "UDP to STUN blocked or servers down",
            NatMapping::NotTested => "not tested (no usable STUN server)",
        })
    }
}

/// Classify the NAT from the answers to one local socket.
///
/// `local` are the addresses the socket may be seen as without translation (its address, or,
/// for a socket bound to all interfaces, each interface address with its port); `answers` are
/// `(STUN server address, mapped address)` pairs; `asked` is how many server addresses were
/// asked. Answers equal to a local address came over a path without NAT (a LAN or loopback
/// server) and say nothing about the NAT towards the others.
pub fn classify_mapping(
    local: &[SocketAddr],
    answers: &[(SocketAddr, SocketAddr)],
    asked: usize,
) -> NatMapping {
    if asked == 0 {
        return NatMapping::NotTested;
    }
    if answers.is_empty() {
        return NatMapping::Blocked;
    }
    let translated: Vec<&(SocketAddr, SocketAddr)> = answers
        .iter()
        .filter(|(_, mapped)| !local.contains(mapped))
        .collect();
    let Some((first_server, first_mapped)) = translated.first() else {
        return NatMapping::NoNat;
    };
    if translated.iter().all(|(server, _)| server == first_server) {
        return NatMapping::Unknown;
    }
    if translated.iter().all(|(_, mapped)| mapped == first_mapped) {
        NatMapping::EndpointIndependent
    } else {
        NatMapping::AddressPortDependent
    }
}

/// One STUN server address and its Binding transaction (URLs resolving to it share it).
#[derive(Debug)]
struct StunTarget {
    binding: StunBinding,
    /// How the transaction ended; `None` while it runs.
    result: Option<BindingResult>,
    /// The last error sending its request.
    send_error: Option<String>,
}

impl StunTarget {
    fn server(&self) -> SocketAddr {
        self.binding.server()
    }

    /// What the server saw, if it said.
    fn mapping(&self) -> Option<StunMapping> {
        match self.result {
            Some(BindingResult::Mapped(mapping)) => Some(mapping),
            _ => None,
        }
    }

    /// The outcome to report for every URL that resolved to this server.
    fn outcome(&self, timeout: Duration) -> StunOutcome {
        match (&self.result, &self.send_error) {
            (Some(BindingResult::Mapped(mapping)), _) => StunOutcome::Mapped {
                mapped: mapping.mapped,
                rtt: mapping.rtt,
            },
            (Some(BindingResult::Refused { .. } | BindingResult::NoMappedAddress), _) => {
                StunOutcome::BadAnswer
            }
            (Some(BindingResult::TimedOut) | None, Some(detail)) => StunOutcome::SendFailed {
                detail: detail.clone(),
            },
            (Some(BindingResult::TimedOut) | None, None) => {
                StunOutcome::TimedOut { after: timeout }
            }
        }
    }
}

/// Resolve every `stun:` URL of the welcome, send one Binding request to each address from one
/// local socket on `local_ip` (all interfaces when `None`), and classify the NAT.
pub(super) async fn check_stun(
    ice: &[IceServer],
    local_ip: Option<IpAddr>,
    timeout: Duration,
) -> StunCheck {
    let mut servers = resolve_servers(ice, timeout).await;
    let bind_ip = local_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let socket = match UdpSocket::bind(SocketAddr::new(bind_ip, 0)).await {
        Ok(socket) => socket,
        Err(e) => {
            for s in servers.iter_mut().filter(|s| s.server.is_some()) {
                s.outcome = StunOutcome::Skipped {
                    reason: format!("no local UDP socket on {bind_ip}: {e}"),
                };
            }
            return StunCheck {
                local: None,
                servers,
                mapping: NatMapping::NotTested,
                caveat: Some(format!("cannot bind a UDP socket on {bind_ip}: {e}")),
            };
        }
    };
    let local = match socket.local_addr() {
        Ok(addr) => addr,
        Err(_) => SocketAddr::new(bind_ip, 0),
    };

    let start = now();
    let mut targets: Vec<StunTarget> = Vec::new();
    for s in &servers {
        let Some(server) = s.server else { continue };
        if server.is_ipv4() != local.is_ipv4() {
            continue;
        }
        if targets.iter().any(|t| t.server() == server) {
            continue;
        }
        targets.push(StunTarget {
            binding: StunBinding::new(s.url.clone(), local, server, start, timeout),
            result: None,
            send_error: None,
        });
    }
    run_bindings(&socket, local, &mut targets).await;

    let by_server: HashMap<SocketAddr, &StunTarget> =
        targets.iter().map(|t| (t.server(), t)).collect();
    for s in &mut servers {
        let Some(server) = s.server else { continue };
        s.outcome = match by_server.get(&server) {
            None => StunOutcome::Skipped {
                reason: format!("{server} is not reachable from a socket on {local}"),
            },
            Some(target) => target.outcome(timeout),
        };
    }

    let answers: Vec<(SocketAddr, SocketAddr)> = targets
        .iter()
        .filter_map(StunTarget::mapping)
        .map(|m| (m.server, m.mapped))
        .collect();
    let local_addrs: Vec<SocketAddr> = if local.ip().is_unspecified() {
        local_ips(true)
            .into_iter()
            .map(|ip| SocketAddr::new(ip, local.port()))
            .collect()
    } else {
        vec![local]
    };
    let mapping = classify_mapping(&local_addrs, &answers, targets.len());
    let caveat = mapping_caveat(mapping, &local_addrs, &answers);
    debug!(%local, %mapping, answers = answers.len(), asked = targets.len(), "STUN check done");
    StunCheck {
        local: Some(local),
        servers,
        mapping,
        caveat,
    }
}

/// One entry per `stun:`/`stuns:` URL: its address, or why it has none. Only the entries with
/// an address get a Binding transaction (one per address); their outcome is set when it ends.
async fn resolve_servers(ice: &[IceServer], timeout: Duration) -> Vec<StunServerCheck> {
    let urls: Vec<&String> = ice.iter().flat_map(|s| s.urls.iter()).collect();
    let resolved = futures_util::future::join_all(
        urls.iter()
            .map(|url| resolve_stun_url(url.as_str(), timeout)),
    )
    .await;
    let mut servers: Vec<StunServerCheck> = Vec::new();
    for (url, resolution) in urls.iter().zip(resolved) {
        let (server, outcome) = match resolution {
            Resolution::NotStun => continue,
            // The outcome is set once the transactions end.
            Resolution::Addr(addr) => (Some(addr), StunOutcome::TimedOut { after: timeout }),
            Resolution::Failed(outcome) => (None, outcome),
        };
        servers.push(StunServerCheck {
            url: (*url).clone(),
            server,
            outcome,
        });
    }
    servers
}

/// Drive the Binding transactions on one socket until every one is answered or timed out.
/// After every input (a datagram, a timer) every transaction's output is drained and sent.
async fn run_bindings(socket: &UdpSocket, local: SocketAddr, targets: &mut [StunTarget]) {
    let mut buf = vec![0u8; 2048];
    loop {
        let t = now();
        for target in targets.iter_mut() {
            target.binding.handle_timeout(t);
            drain_binding(socket, target).await;
        }
        let next = targets
            .iter()
            .filter_map(|target| target.binding.poll_timeout())
            .min();
        let Some(next) = next else { return };
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, from)) => {
                    let t = now();
                    let data = buf.get(..len).unwrap_or_default();
                    for target in targets.iter_mut() {
                        if target.binding.handle_packet(t, local, from, data) {
                            drain_binding(socket, target).await;
                            break;
                        }
                    }
                }
                // ICMP errors surface here on some systems; the transaction keeps retrying.
                Err(e) => debug!(error = %e, "STUN socket receive error"),
            },
            () = sleep_until(Some(next)) => {}
        }
    }
}

async fn drain_binding(socket: &UdpSocket, target: &mut StunTarget) {
    while let Some(output) = target.binding.poll_output() {
        match output {
            BindingOutput::Transmit(transmit) => {
                if let Err(e) = socket.send_to(&transmit.data, transmit.to).await {
                    debug!(to = %transmit.to, error = %e, "STUN request not sent");
                    target.send_error = Some(e.to_string());
                }
            }
            BindingOutput::Done(result) => target.result = Some(result),
        }
    }
}

fn mapping_caveat(
    mapping: NatMapping,
    local: &[SocketAddr],
    answers: &[(SocketAddr, SocketAddr)],
) -> Option<String> {
    if mapping != NatMapping::EndpointIndependent {
        return None;
    }
    let mut ips: Vec<IpAddr> = answers
        .iter()
        .filter(|(_, mapped)| !local.contains(mapped))
        .map(|(server, _)| server.ip())
        .collect();
    ips.dedup();
    (ips.len() == 1).then(|| {
        "every STUN address that answered is on one IP; an address-dependent NAT would look \
         the same"
            .to_owned()
    })
}

enum Resolution {
    NotStun,
    Addr(SocketAddr),
    Failed(StunOutcome),
}

async fn resolve_stun_url(url: &str, timeout: Duration) -> Resolution {
    let parsed = match IceUrl::parse(url) {
        Ok(parsed) => parsed,
        Err(e) => {
            return Resolution::Failed(StunOutcome::Skipped {
                reason: e.to_string(),
            });
        }
    };
    match (parsed.scheme, parsed.transport) {
        (IceScheme::Stun, IceTransport::Udp) => {}
        (IceScheme::Stuns, _) => {
            return Resolution::Failed(StunOutcome::Skipped {
                reason: "STUN over TLS is not checked".to_owned(),
            });
        }
        _ => return Resolution::NotStun,
    }
    if let Ok(ip) = parsed.host.parse::<IpAddr>() {
        return if ip.is_ipv4() {
            Resolution::Addr(SocketAddr::new(ip, parsed.port))
        } else {
            Resolution::Failed(StunOutcome::Skipped {
                reason: "IPv6 is not checked yet".to_owned(),
            })
        };
    }
    let lookup = tokio::time::timeout(timeout, tokio::net::lookup_host(parsed.host_port())).await;
    Resolution::Failed(StunOutcome::Unresolved {
        detail: match lookup {
            Ok(Ok(mut addrs)) => match addrs.find(SocketAddr::is_ipv4) {
                Some(addr) => return Resolution::Addr(addr),
                None => format!("{} has no IPv4 address", parsed.host),
            },
            Ok(Err(e)) => format!("{}: {e}", parsed.host),
            Err(_) => format!("{}: no answer within {timeout:?}", parsed.host),
        },
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::doctor::tests::{LOOPBACK, addr};
    use crate::peer::ice::stun::{Class, StunMessage, StunWriter};

    #[test]
    fn mapping_classification_covers_every_case() {
        let local = [addr("198.19.1.5:40000")];
        let s1 = addr("198.18.0.1:3478");
        let s2 = addr("198.18.0.2:3478");
        let s1b = addr("198.18.0.1:3479");
        let public = addr("198.18.0.9:50000");
        let other = addr("198.18.0.9:50001");

        assert_eq!(classify_mapping(&local, &[], 0), NatMapping::NotTested);
        assert_eq!(classify_mapping(&local, &[], 2), NatMapping::Blocked);
        // Mapped == local: no NAT, from one answer or two.
        assert_eq!(
            classify_mapping(&local, &[(s1, local[0])], 1),
            NatMapping::NoNat
        );
        assert_eq!(
            classify_mapping(&local, &[(s1, local[0]), (s2, local[0])], 2),
            NatMapping::NoNat
        );
        // One translated answer: unknown, even if the other server did not answer.
        assert_eq!(
            classify_mapping(&local, &[(s1, public)], 2),
            NatMapping::Unknown
        );
        // Same mapped address from two servers: endpoint-independent (also across ports).
        assert_eq!(
            classify_mapping(&local, &[(s1, public), (s2, public)], 2),
            NatMapping::EndpointIndependent
        );
        assert_eq!(
            classify_mapping(&local, &[(s1, public), (s1b, public)], 2),
            NatMapping::EndpointIndependent
        );
        // Different mapped ports or addresses: symmetric.
        assert_eq!(
            classify_mapping(&local, &[(s1, public), (s2, other)], 2),
            NatMapping::AddressPortDependent
        );
        assert_eq!(
            classify_mapping(&local, &[(s1, public), (s2, addr("198.18.0.10:50000"))], 2),
            NatMapping::AddressPortDependent
        );
        // A LAN server (no translation) plus one public server: one translated answer only.
        assert_eq!(
            classify_mapping(&local, &[(s1, local[0]), (s2, public)], 2),
            NatMapping::Unknown
        );
    }

    #[test]
    fn one_server_ip_is_a_caveat() {
        let local = [addr("198.19.1.5:40000")];
        let public = addr("198.18.0.9:50000");
        let same_ip = [
            (addr("198.18.0.1:3478"), public),
            (addr("198.18.0.1:3479"), public),
        ];
        assert!(mapping_caveat(NatMapping::EndpointIndependent, &local, &same_ip).is_some());
        let two_ips = [
            (addr("198.18.0.1:3478"), public),
            (addr("198.18.0.2:3478"), public),
        ];
        assert_eq!(
            mapping_caveat(NatMapping::EndpointIndependent, &local, &two_ips),
            None
        );
    }

    /// A STUN responder on 127.0.0.1; answers every Binding request. (The Binding transaction's
    /// own tests check it against another implementation, `rtc`'s codec.)
    async fn stun_responder() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        lying_stun_responder(0).await
    }

    /// A responder that reports the sender's port plus `port_offset`: what a symmetric NAT's
    /// second mapping looks like from the client.
    async fn lying_stun_responder(port_offset: u16) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let at = socket.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                let Ok(request) = StunMessage::parse(buf.get(..len).unwrap_or_default()) else {
                    continue;
                };
                let mapped = SocketAddr::new(from.ip(), from.port().wrapping_add(port_offset));
                let answer = StunWriter::new(Class::Success, &request.transaction)
                    .xor_mapped_address(mapped)
                    .finish(None);
                let _ = socket.send_to(&answer, from).await;
            }
        });
        (at, task)
    }

    fn stun_urls(addrs: &[SocketAddr]) -> Vec<IceServer> {
        vec![IceServer {
            urls: addrs.iter().map(|a| format!("stun:{a}")).collect(),
            username: None,
            credential: None,
        }]
    }

    #[tokio::test]
    async fn doctor_stun_two_loopback_responders_see_no_nat() {
        let (a, task_a) = stun_responder().await;
        let (b, task_b) = stun_responder().await;
        let check = check_stun(&stun_urls(&[a, b]), Some(LOOPBACK), Duration::from_secs(3)).await;
        let local = check.local.unwrap();
        assert_eq!(local.ip(), LOOPBACK);
        assert_eq!(check.servers.len(), 2);
        for server in &check.servers {
            match &server.outcome {
                StunOutcome::Mapped { mapped, .. } => assert_eq!(*mapped, local),
                other => panic!("{}: {other:?}", server.url),
            }
        }
        assert_eq!(check.mapping, NatMapping::NoNat);
        task_a.abort();
        task_b.abort();
    }

    #[tokio::test]
    async fn doctor_stun_different_mappings_mean_symmetric_nat() {
        let (a, task_a) = lying_stun_responder(1).await;
        let (b, task_b) = lying_stun_responder(2).await;
        let check = check_stun(&stun_urls(&[a, b]), Some(LOOPBACK), Duration::from_secs(3)).await;
        assert_eq!(check.mapping, NatMapping::AddressPortDependent, "{check:?}");
        let (c, task_c) = lying_stun_responder(7).await;
        let (d, task_d) = lying_stun_responder(7).await;
        let check = check_stun(&stun_urls(&[c, d]), Some(LOOPBACK), Duration::from_secs(3)).await;
        assert_eq!(check.mapping, NatMapping::EndpointIndependent, "{check:?}");
        // Both on 127.0.0.1: the caveat says so.
        assert!(check.caveat.is_some());
        for task in [task_a, task_b, task_c, task_d] {
            task.abort();
        }
    }

    #[tokio::test]
    async fn doctor_stun_silent_server_times_out_within_the_bound() {
        let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let at = silent.local_addr().unwrap();
        let bound = Duration::from_millis(600);
        let started = Instant::now();
        let check = check_stun(&stun_urls(&[at]), Some(LOOPBACK), bound).await;
        let took = started.elapsed();
        assert!(
            took >= bound && took < bound + Duration::from_secs(1),
            "{took:?}"
        );
        assert_eq!(
            check.servers[0].outcome,
            StunOutcome::TimedOut { after: bound }
        );
        assert_eq!(check.mapping, NatMapping::Blocked);
        // The silent socket did get the request (and its retransmits).
        let mut buf = [0u8; 1500];
        let (_, from) = silent.recv_from(&mut buf).await.unwrap();
        assert_eq!(Some(from), check.local);
    }

    #[tokio::test]
    async fn doctor_stun_skips_what_it_cannot_check() {
        let ice = vec![IceServer {
            urls: vec![
                "stuns:127.0.0.1:5349".to_owned(),
                "stun:[::1]:3478".to_owned(),
                "turn:127.0.0.1:3478".to_owned(),
            ],
            username: None,
            credential: None,
        }];
        let check = check_stun(&ice, Some(LOOPBACK), Duration::from_millis(300)).await;
        assert_eq!(check.servers.len(), 2, "{check:?}");
        assert!(
            check
                .servers
                .iter()
                .all(|s| matches!(s.outcome, StunOutcome::Skipped { .. }))
        );
        assert_eq!(check.mapping, NatMapping::NotTested);
    }
}
