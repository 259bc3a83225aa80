//! `doctor`: can this machine reach a Proxim signaling server, and which network paths to a
//! peer are likely to work from here?
//!
//! [`run`] performs four checks and derives a [`Verdict`]:
//! 1. **Signaling** — open the WebSocket (`ws://` or `wss://`), send `hello`, time the
//!    `welcome`; or say why not (bad URL, unreachable, timed out, TLS, not a Proxim server).
//! 2. **ICE servers** — the list the `welcome` hands out, credentials redacted
//!    ([`IceServerSummary`] never holds a password).
//! 3. **STUN** — one Binding request from *one* local UDP socket to every `stun:` address,
//!    run by the sans-IO Binding transaction the peer's candidate gathering uses. The mapped
//!    addresses tell the NAT's mapping behaviour ([`classify_mapping`]).
//! 4. **TURN** — one allocation per `turn:`/`turns:` URL with the welcome's credentials.
//!
//! Every step is bounded by [`DoctorOptions::timeout`]: the signaling check, then, concurrently,
//! the STUN check (name resolution, then the Binding transactions, each within the timeout) and
//! every TURN allocation (each within the timeout, name resolution included). The STUN driver
//! follows the crate's run-loop rule: after every datagram or timer it drains every
//! transaction's output before waiting again.
//!
//! [`verdict`] is a pure function over the results, and the whole [`DoctorReport`] serializes
//! to JSON (durations in milliseconds).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use proxim_protocol::ice::{IceScheme, IceTransport, IceUrl};
use proxim_protocol::{
    ClientMessage, IceServer, MAX_FRAME_BYTES, PROTOCOL_VERSION, ServerMessage, ShortText,
};
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::{Instrument, debug};

use crate::clock::{now, sleep_until};
use crate::peer::gather::{SourceOutput, StunBinding, local_ips};
use crate::turn::{TurnError, TurnOptions};

/// The default bound of each check.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// What to check, and how long each check may take.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DoctorOptions {
    /// The signaling server's WebSocket URL, e.g. `ws://198.18.0.1:8787/ws`.
    pub server_url: String,
    /// The bound of each check (signaling; STUN; each TURN allocation).
    pub timeout: Duration,
    /// Extra PEM root certificates trusted for `turns:` servers (a private CA).
    pub turn_extra_roots_pem: Option<Vec<u8>>,
    /// The local IP to send STUN and TURN requests from; `None`: all interfaces.
    pub local_ip: Option<IpAddr>,
}

impl DoctorOptions {
    /// Check `server_url` with [`DEFAULT_TIMEOUT`], from all interfaces.
    pub fn new(server_url: impl Into<String>) -> Self {
        DoctorOptions {
            server_url: server_url.into(),
            timeout: DEFAULT_TIMEOUT,
            turn_extra_roots_pem: None,
            local_ip: None,
        }
    }
}

/// Everything [`run`] found.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct DoctorReport {
    /// The signaling check.
    pub signaling: SignalingCheck,
    /// The ICE servers from the welcome, credentials redacted (empty without a welcome).
    pub ice_servers: Vec<IceServerSummary>,
    /// The STUN check; `None` when signaling failed (no welcome, so no STUN servers).
    pub stun: Option<StunCheck>,
    /// One check per TURN URL in the welcome.
    pub turn: Vec<TurnCheck>,
    /// What the results mean.
    pub verdict: Verdict,
    /// How long the whole run took.
    #[serde(rename = "elapsed_ms", serialize_with = "millis")]
    pub elapsed: Duration,
}

impl DoctorReport {
    /// Whether some path to a peer is likely to work (the command's exit status).
    pub fn path_works(&self) -> bool {
        self.verdict.path_works
    }
}

/// Run every check against `options.server_url`.
pub async fn run(options: &DoctorOptions) -> DoctorReport {
    let span = tracing::info_span!("doctor", url = %options.server_url);
    async {
        let started = now();
        let (signaling, ice) = check_signaling(&options.server_url, options.timeout).await;
        let ice_servers = ice.iter().map(IceServerSummary::from).collect();
        let (stun, turn) = if signaling.outcome.is_ok() {
            let (stun, turn) = tokio::join!(
                check_stun(&ice, options.local_ip, options.timeout),
                check_turn(&ice, options)
            );
            (Some(stun), turn)
        } else {
            (None, Vec::new())
        };
        let mapping = stun.as_ref().map_or(NatMapping::NotTested, |s| s.mapping);
        let verdict = verdict(&signaling.outcome, mapping, &turn);
        debug!(kind = ?verdict.kind, summary = %verdict.summary, "doctor verdict");
        DoctorReport {
            signaling,
            ice_servers,
            stun,
            turn,
            verdict,
            elapsed: now().saturating_duration_since(started),
        }
    }
    .instrument(span)
    .await
}

// ---------------------------------------------------------------------------------------------
// Signaling
// ---------------------------------------------------------------------------------------------

/// The signaling check: WebSocket plus one hello/welcome exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignalingCheck {
    /// The URL checked.
    pub url: String,
    /// What happened.
    #[serde(flatten)]
    pub outcome: SignalingOutcome,
}

/// How the signaling check ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SignalingOutcome {
    /// The server answered `hello` with a `welcome`.
    Ok {
        /// TCP (and TLS) connect plus the WebSocket upgrade.
        #[serde(rename = "connect_ms", serialize_with = "millis")]
        connect: Duration,
        /// From sending `hello` to receiving `welcome`.
        #[serde(rename = "round_trip_ms", serialize_with = "millis")]
        round_trip: Duration,
        /// The protocol version the server speaks on this connection.
        protocol_version: u16,
        /// The heartbeat interval the server asks for.
        #[serde(rename = "heartbeat_interval_ms", serialize_with = "millis")]
        heartbeat_interval: Duration,
    },
    /// No welcome.
    Failed {
        /// The kind of failure.
        failure: SignalingFailure,
        /// What exactly went wrong.
        detail: String,
    },
}

impl SignalingOutcome {
    /// Whether a welcome arrived.
    pub fn is_ok(&self) -> bool {
        matches!(self, SignalingOutcome::Ok { .. })
    }
}

/// Why the signaling check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SignalingFailure {
    /// The URL is not a `ws://` or `wss://` URL.
    InvalidUrl,
    /// The host did not resolve, or refused or dropped the connection.
    Unreachable,
    /// No connection or no welcome within the timeout.
    TimedOut,
    /// The TLS handshake failed (certificate, or not TLS at all).
    Tls,
    /// Something answered, but not a Proxim signaling server (HTTP error, no WebSocket, a frame
    /// that is not a welcome).
    NotProxim,
    /// A Proxim server that refused this client (e.g. another protocol version).
    Refused,
}

impl fmt::Display for SignalingFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignalingFailure::InvalidUrl => "bad URL",
            SignalingFailure::Unreachable => "unreachable",
            SignalingFailure::TimedOut => "timed out",
            SignalingFailure::Tls => "TLS failed",
            SignalingFailure::NotProxim => "not a Proxim server",
            SignalingFailure::Refused => "refused by the server",
        })
    }
}

/// One ICE server from the welcome, as it may be shown: the password is never kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServerSummary {
    /// Its URLs.
    pub urls: Vec<String>,
    /// The TURN username, if any (REST usernames are an expiry time and a connection id).
    pub username: Option<String>,
    /// Whether a credential came with it (its value is redacted).
    pub has_credential: bool,
}

impl From<&IceServer> for IceServerSummary {
    fn from(server: &IceServer) -> Self {
        IceServerSummary {
            urls: server.urls.clone(),
            username: server.username.clone(),
            has_credential: server.credential.is_some(),
        }
    }
}

/// Connect, hello, welcome, bye. Returns the check and the welcome's ICE servers.
async fn check_signaling(url: &str, timeout: Duration) -> (SignalingCheck, Vec<IceServer>) {
    let (outcome, ice) = match signaling_exchange(url, timeout).await {
        Ok((outcome, ice)) => (outcome, ice),
        Err((failure, detail)) => {
            debug!(%failure, %detail, "signaling check failed");
            (SignalingOutcome::Failed { failure, detail }, Vec::new())
        }
    };
    let check = SignalingCheck {
        url: url.to_owned(),
        outcome,
    };
    (check, ice)
}

async fn signaling_exchange(
    url: &str,
    timeout: Duration,
) -> Result<(SignalingOutcome, Vec<IceServer>), (SignalingFailure, String)> {
    let tls = match url::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "ws" | "wss") && parsed.host().is_some() => {
            parsed.scheme() == "wss"
        }
        Ok(parsed) => {
            return Err((
                SignalingFailure::InvalidUrl,
                format!(
                    "`{url}`: expected ws://HOST:PORT/ws or wss://…, not `{}:`",
                    parsed.scheme()
                ),
            ));
        }
        Err(e) => return Err((SignalingFailure::InvalidUrl, format!("`{url}`: {e}"))),
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let started = now();
    let config = WebSocketConfig::default()
        .max_frame_size(Some(MAX_FRAME_BYTES))
        .max_message_size(Some(MAX_FRAME_BYTES));
    let connecting = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    let mut ws = match tokio::time::timeout_at(deadline, connecting).await {
        Err(_) => {
            return Err((
                SignalingFailure::TimedOut,
                format!("no WebSocket connection within {timeout:?}"),
            ));
        }
        Ok(Err(e)) => return Err(classify_ws_error(e, tls)),
        Ok(Ok((ws, _response))) => ws,
    };
    let connected = now();
    let client = ShortText::new(concat!("proxim-doctor/", env!("CARGO_PKG_VERSION")))
        .map_err(|e| (SignalingFailure::Refused, e.to_string()))?;
    let hello = ClientMessage::Hello {
        version: PROTOCOL_VERSION,
        client,
    };
    if let Err(e) = ws.send(Message::text(hello.encode())).await {
        return Err((
            SignalingFailure::NotProxim,
            format!("cannot send hello: {e}"),
        ));
    }
    let sent = now();
    let result = loop {
        let frame = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => {
                break Err((
                    SignalingFailure::TimedOut,
                    format!("connected, but no welcome within {timeout:?}"),
                ));
            }
            Ok(frame) => frame,
        };
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Binary(_))) => {
                break Err((
                    SignalingFailure::NotProxim,
                    "the server answered hello with a binary frame".to_owned(),
                ));
            }
            Some(Ok(Message::Close(frame))) => {
                let reason = frame.map_or_else(|| "no reason".to_owned(), |f| f.to_string());
                break Err((
                    SignalingFailure::NotProxim,
                    format!("the server closed the WebSocket after hello ({reason})"),
                ));
            }
            Some(Err(e)) => break Err(classify_ws_error(e, tls)),
            None => {
                break Err((
                    SignalingFailure::NotProxim,
                    "the server closed the connection after hello".to_owned(),
                ));
            }
        };
        let answered = now();
        break match ServerMessage::decode(text.as_str()) {
            Ok(ServerMessage::Welcome {
                version,
                ice_servers,
                heartbeat_interval_ms,
                ..
            }) => Ok((
                SignalingOutcome::Ok {
                    connect: connected.saturating_duration_since(started),
                    round_trip: answered.saturating_duration_since(sent),
                    protocol_version: version,
                    heartbeat_interval: Duration::from_millis(heartbeat_interval_ms),
                },
                ice_servers,
            )),
            Ok(ServerMessage::Error { code, message }) => Err((
                SignalingFailure::Refused,
                format!("the server refused hello: {code:?}: {}", message.as_str()),
            )),
            Ok(other) => Err((
                SignalingFailure::NotProxim,
                format!("expected welcome, got `{}`", other.kind()),
            )),
            Err(e) => Err((
                SignalingFailure::NotProxim,
                format!("the first frame is not a Proxim welcome: {e}"),
            )),
        };
    };
    // Leave politely; the answer does not matter.
    let bye = ClientMessage::Bye {
        reason: ShortText::new("doctor check done").ok(),
    };
    let goodbye = async {
        let _ = ws.send(Message::text(bye.encode())).await;
        let _ = ws.close(None).await;
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), goodbye).await;
    result
}

/// Name a WebSocket failure. Over `wss://`, rustls reports handshake and certificate failures
/// as I/O errors of kind `InvalidData`.
fn classify_ws_error(error: WsError, tls: bool) -> (SignalingFailure, String) {
    match error {
        WsError::Io(e) if tls && e.kind() == std::io::ErrorKind::InvalidData => {
            (SignalingFailure::Tls, e.to_string())
        }
        WsError::Io(e) => (SignalingFailure::Unreachable, e.to_string()),
        WsError::Tls(e) => (SignalingFailure::Tls, e.to_string()),
        WsError::Url(e) => (SignalingFailure::InvalidUrl, e.to_string()),
        WsError::Http(response) => (
            SignalingFailure::NotProxim,
            format!(
                "the server answered the WebSocket upgrade with HTTP {}",
                response.status()
            ),
        ),
        WsError::ConnectionClosed | WsError::AlreadyClosed => (
            SignalingFailure::Unreachable,
            "the connection was closed".to_owned(),
        ),
        other => (
            SignalingFailure::NotProxim,
            format!("WebSocket handshake failed: {other}"),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// STUN and the NAT's mapping behaviour
// ---------------------------------------------------------------------------------------------

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
        #[serde(rename = "rtt_ms", serialize_with = "millis")]
        rtt: Duration,
    },
    /// No answer within the timeout.
    TimedOut {
        /// The timeout.
        #[serde(rename = "after_ms", serialize_with = "millis")]
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
    server: SocketAddr,
    binding: StunBinding,
    answered: Option<Instant>,
    mapped: Option<SocketAddr>,
    send_error: Option<String>,
}

async fn check_stun(ice: &[IceServer], local_ip: Option<IpAddr>, timeout: Duration) -> StunCheck {
    // Resolve every `stun:` URL; keep one entry per URL, one transaction per address.
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
        if targets.iter().any(|t| t.server == server) {
            continue;
        }
        targets.push(StunTarget {
            server,
            binding: StunBinding::new(s.url.clone(), local, server, start, timeout),
            answered: None,
            mapped: None,
            send_error: None,
        });
    }
    run_bindings(&socket, local, &mut targets).await;

    let by_server: HashMap<SocketAddr, &StunTarget> =
        targets.iter().map(|t| (t.server, t)).collect();
    for s in &mut servers {
        let Some(server) = s.server else { continue };
        s.outcome = match by_server.get(&server) {
            None => StunOutcome::Skipped {
                reason: format!("{server} is not reachable from a socket on {local}"),
            },
            Some(t) => match (t.mapped, t.answered, &t.send_error) {
                (Some(mapped), Some(at), _) => StunOutcome::Mapped {
                    mapped,
                    rtt: at.saturating_duration_since(start),
                },
                (None, Some(_), _) => StunOutcome::BadAnswer,
                (_, None, Some(detail)) => StunOutcome::SendFailed {
                    detail: detail.clone(),
                },
                (_, None, None) => StunOutcome::TimedOut { after: timeout },
            },
        };
    }

    let answers: Vec<(SocketAddr, SocketAddr)> = targets
        .iter()
        .filter_map(|t| t.mapped.map(|m| (t.server, m)))
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
                        if target.binding.handle_packet(local, from, data) {
                            target.answered = Some(t);
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
            SourceOutput::Transmit(transmit) => {
                if let Err(e) = socket.send_to(&transmit.data, transmit.to).await {
                    debug!(to = %transmit.to, error = %e, "STUN request not sent");
                    target.send_error = Some(e.to_string());
                }
            }
            SourceOutput::Mapped { mapped, .. } => target.mapped = Some(mapped),
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

// ---------------------------------------------------------------------------------------------
// TURN
// ---------------------------------------------------------------------------------------------

/// How a TURN server is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayTransport {
    /// `turn:` over UDP.
    Udp,
    /// `turn:…?transport=tcp`.
    Tcp,
    /// `turns:` (TLS over TCP).
    Tls,
}

impl RelayTransport {
    fn of(url: &IceUrl) -> Self {
        match (url.scheme, url.transport) {
            (IceScheme::Turns | IceScheme::Stuns, _) => RelayTransport::Tls,
            (_, IceTransport::Tcp) => RelayTransport::Tcp,
            (_, IceTransport::Udp) => RelayTransport::Udp,
        }
    }
}

impl fmt::Display for RelayTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RelayTransport::Udp => "TURN/UDP",
            RelayTransport::Tcp => "TURN/TCP",
            RelayTransport::Tls => "TURN/TLS",
        })
    }
}

/// The allocation attempt on one TURN URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TurnCheck {
    /// The URL from the welcome.
    pub url: String,
    /// How it is reached.
    pub transport: RelayTransport,
    /// What happened.
    #[serde(flatten)]
    pub outcome: TurnOutcome,
}

/// How one TURN allocation attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TurnOutcome {
    /// The relay allocated an address.
    Ok {
        /// The relayed address peers would send to.
        relayed: SocketAddr,
        /// This machine's address as the relay saw it, if it said.
        mapped: Option<SocketAddr>,
        /// How long the allocation took.
        #[serde(rename = "elapsed_ms", serialize_with = "millis")]
        elapsed: Duration,
    },
    /// No allocation.
    Failed {
        /// The kind of failure.
        failure: TurnFailure,
        /// What exactly went wrong.
        detail: String,
    },
    /// Not tried.
    NotChecked {
        /// Why.
        reason: String,
    },
}

/// Why a TURN allocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TurnFailure {
    /// The relay refused the credentials (401).
    Refused,
    /// The relay accepted the credentials but refused the allocation (quota, capacity, policy).
    AllocationRefused,
    /// The relay could not be reached (name, route, connection refused).
    Unreachable,
    /// No answer within the timeout.
    TimedOut,
    /// The TLS handshake with a `turns:` relay failed.
    Tls,
    /// The relay answered something this client cannot use.
    Protocol,
}

impl fmt::Display for TurnFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TurnFailure::Refused => "credentials refused",
            TurnFailure::AllocationRefused => "allocation refused",
            TurnFailure::Unreachable => "unreachable",
            TurnFailure::TimedOut => "timed out",
            TurnFailure::Tls => "TLS failed",
            TurnFailure::Protocol => "protocol error",
        })
    }
}

/// One allocation attempt per TURN URL, all at once.
async fn check_turn(ice: &[IceServer], options: &DoctorOptions) -> Vec<TurnCheck> {
    let attempts = ice.iter().flat_map(|server| {
        server.urls.iter().filter_map(move |url| {
            let parsed = IceUrl::parse(url).ok().filter(IceUrl::is_turn)?;
            Some(check_one_turn(url, parsed, server, options))
        })
    });
    futures_util::future::join_all(attempts).await
}

async fn check_one_turn(
    url: &str,
    parsed: IceUrl,
    server: &IceServer,
    options: &DoctorOptions,
) -> TurnCheck {
    let transport = RelayTransport::of(&parsed);
    let outcome = match (&server.username, &server.credential) {
        (Some(username), Some(credential)) => probe_turn(url, username, credential, options).await,
        _ => TurnOutcome::NotChecked {
            reason: "the welcome gives no credentials for it".to_owned(),
        },
    };
    TurnCheck {
        url: url.to_owned(),
        transport,
        outcome,
    }
}

/// The one call site of the TURN client: allocate (and release) with the welcome's credentials.
async fn probe_turn(
    url: &str,
    username: &str,
    credential: &str,
    options: &DoctorOptions,
) -> TurnOutcome {
    let turn_options = TurnOptions {
        extra_roots_pem: options.turn_extra_roots_pem.clone(),
        local_ip: options.local_ip,
    };
    match crate::turn::probe_turn(url, username, credential, &turn_options, options.timeout).await {
        Ok(probe) => {
            debug!(%url, relayed = %probe.relayed, elapsed = ?probe.elapsed, "TURN allocation ok");
            TurnOutcome::Ok {
                relayed: probe.relayed,
                mapped: probe.mapped,
                elapsed: probe.elapsed,
            }
        }
        Err(TurnError::InvalidUrl(reason)) => TurnOutcome::NotChecked { reason },
        Err(error) => {
            debug!(%url, %error, "TURN allocation failed");
            TurnOutcome::Failed {
                failure: turn_failure(&error),
                detail: error.to_string(),
            }
        }
    }
}

/// The kind of a TURN client error.
fn turn_failure(error: &TurnError) -> TurnFailure {
    match error {
        TurnError::Refused { code: 401, .. } => TurnFailure::Refused,
        TurnError::Refused { .. } => TurnFailure::AllocationRefused,
        TurnError::Resolve(_) | TurnError::Unreachable(_) => TurnFailure::Unreachable,
        TurnError::TimedOut(_) => TurnFailure::TimedOut,
        TurnError::Tls(_) => TurnFailure::Tls,
        TurnError::InvalidUrl(_) | TurnError::Protocol(_) => TurnFailure::Protocol,
    }
}

// ---------------------------------------------------------------------------------------------
// Verdict
// ---------------------------------------------------------------------------------------------

/// What the checks mean for connecting to a peer, in one line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The kind of conclusion.
    pub kind: VerdictKind,
    /// Whether some path is likely to work (exit status 0).
    pub path_works: bool,
    /// The conclusion, for people.
    pub summary: String,
}

/// The kinds of conclusion [`verdict`] reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum VerdictKind {
    /// No welcome from the signaling server: nothing else could be checked.
    SignalingFailed,
    /// No NAT, or endpoint-independent mapping.
    DirectLikely,
    /// UDP works but the mapping behaviour is unknown.
    DirectPossible,
    /// Symmetric NAT: direct connections fail except to open peers; a relay works.
    RelayNeeded,
    /// STUN got no answer (or there was none to ask), but a relay works.
    RelayOnly,
    /// Nothing is likely to work across networks.
    NoPath,
}

/// Conclude from the check results. Pure: every branch is unit-tested.
pub fn verdict(signaling: &SignalingOutcome, mapping: NatMapping, turn: &[TurnCheck]) -> Verdict {
    let conclude = |kind, path_works, summary: String| Verdict {
        kind,
        path_works,
        summary,
    };
    if let SignalingOutcome::Failed { failure, .. } = signaling {
        let summary = match failure {
            SignalingFailure::Unreachable | SignalingFailure::TimedOut => {
                "signaling server unreachable".to_owned()
            }
            SignalingFailure::InvalidUrl => "signaling server URL is invalid".to_owned(),
            SignalingFailure::Tls => "signaling server unreachable: TLS failed".to_owned(),
            SignalingFailure::NotProxim => "no Proxim signaling server at this URL".to_owned(),
            SignalingFailure::Refused => "the signaling server refused this client".to_owned(),
        };
        return conclude(VerdictKind::SignalingFailed, false, summary);
    }
    let mut working: Vec<RelayTransport> = turn
        .iter()
        .filter(|t| matches!(t.outcome, TurnOutcome::Ok { .. }))
        .map(|t| t.transport)
        .collect();
    working.sort();
    working.dedup();
    let relays = match working.as_slice() {
        [] => None,
        [one] => Some(format!("{one} works")),
        many => Some(format!(
            "{} work",
            many.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    };
    let udp_relay = working.contains(&RelayTransport::Udp);
    let fallback = |relays: &Option<String>| match relays {
        Some(relays) => format!("; {relays} as a fallback"),
        None => String::new(),
    };
    match (mapping, relays) {
        (NatMapping::NoNat | NatMapping::EndpointIndependent, relays) => conclude(
            VerdictKind::DirectLikely,
            true,
            format!("direct connections likely ({mapping}){}", fallback(&relays)),
        ),
        (NatMapping::Unknown, relays) => conclude(
            VerdictKind::DirectPossible,
            true,
            format!(
                "direct connections possible, NAT mapping unknown (needs two STUN addresses){}",
                match &relays {
                    Some(_) => fallback(&relays),
                    None => "; no working TURN relay to fall back on".to_owned(),
                }
            ),
        ),
        (NatMapping::AddressPortDependent, Some(relays)) => conclude(
            VerdictKind::RelayNeeded,
            true,
            format!("relay needed (symmetric NAT): {relays}"),
        ),
        (NatMapping::AddressPortDependent, None) => conclude(
            VerdictKind::NoPath,
            false,
            "no working path: symmetric NAT and no working TURN relay (direct only to peers \
             without NAT)"
                .to_owned(),
        ),
        (NatMapping::Blocked, Some(relays)) if udp_relay => conclude(
            VerdictKind::RelayOnly,
            true,
            format!("STUN servers did not answer, relay only: {relays}"),
        ),
        (NatMapping::Blocked, Some(relays)) => conclude(
            VerdictKind::RelayOnly,
            true,
            format!("UDP blocked, {relays}"),
        ),
        (NatMapping::Blocked, None) if turn.is_empty() => conclude(
            VerdictKind::NoPath,
            false,
            "no working path: UDP to STUN blocked or servers down, and no TURN relay configured"
                .to_owned(),
        ),
        (NatMapping::Blocked, None) => conclude(
            VerdictKind::NoPath,
            false,
            "no working path: UDP blocked and no TURN over TCP/TLS".to_owned(),
        ),
        (NatMapping::NotTested, Some(relays)) => conclude(
            VerdictKind::RelayOnly,
            true,
            format!("no STUN server to test with, relay only: {relays}"),
        ),
        (NatMapping::NotTested, None) => conclude(
            VerdictKind::NoPath,
            false,
            "no working path across networks: no usable STUN server and no working TURN relay \
             (same-network connections only)"
                .to_owned(),
        ),
    }
}

/// Durations in JSON: milliseconds with microsecond precision.
fn millis<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64((duration.as_secs_f64() * 1e6).round() / 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::stun::message::{BINDING_SUCCESS, Message as StunMessage};
    use rtc::stun::xoraddr::XorMappedAddress;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    // --- classify_mapping ---------------------------------------------------------------

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

    // --- verdict ------------------------------------------------------------------------

    fn welcomed() -> SignalingOutcome {
        SignalingOutcome::Ok {
            connect: Duration::from_millis(1),
            round_trip: Duration::from_millis(1),
            protocol_version: PROTOCOL_VERSION,
            heartbeat_interval: Duration::from_secs(15),
        }
    }

    fn relay(transport: RelayTransport, ok: bool) -> TurnCheck {
        TurnCheck {
            url: "turn:198.18.0.2:3478".to_owned(),
            transport,
            outcome: if ok {
                TurnOutcome::Ok {
                    relayed: addr("198.18.0.2:49152"),
                    mapped: None,
                    elapsed: Duration::from_millis(20),
                }
            } else {
                TurnOutcome::Failed {
                    failure: TurnFailure::TimedOut,
                    detail: "no answer".to_owned(),
                }
            },
        }
    }

    fn check(
        signaling: &SignalingOutcome,
        mapping: NatMapping,
        turn: &[TurnCheck],
        kind: VerdictKind,
        works: bool,
        text: &str,
    ) {
        let v = verdict(signaling, mapping, turn);
        assert_eq!((v.kind, v.path_works), (kind, works), "{v:?}");
        assert!(v.summary.contains(text), "{:?} lacks {text:?}", v.summary);
    }

    #[test]
    fn verdict_when_signaling_fails() {
        for (failure, text) in [
            (
                SignalingFailure::Unreachable,
                "signaling server unreachable",
            ),
            (SignalingFailure::TimedOut, "signaling server unreachable"),
            (SignalingFailure::Tls, "TLS failed"),
            (SignalingFailure::InvalidUrl, "URL is invalid"),
            (SignalingFailure::NotProxim, "no Proxim signaling server"),
            (SignalingFailure::Refused, "refused"),
        ] {
            let failed = SignalingOutcome::Failed {
                failure,
                detail: String::new(),
            };
            check(
                &failed,
                NatMapping::NotTested,
                &[],
                VerdictKind::SignalingFailed,
                false,
                text,
            );
        }
    }

    #[test]
    fn verdict_direct() {
        let ok = welcomed();
        check(
            &ok,
            NatMapping::EndpointIndependent,
            &[],
            VerdictKind::DirectLikely,
            true,
            "direct connections likely (endpoint-independent mapping)",
        );
        check(
            &ok,
            NatMapping::NoNat,
            &[relay(RelayTransport::Udp, true)],
            VerdictKind::DirectLikely,
            true,
            "(no NAT); TURN/UDP works as a fallback",
        );
        check(
            &ok,
            NatMapping::Unknown,
            &[],
            VerdictKind::DirectPossible,
            true,
            "no working TURN relay to fall back on",
        );
        check(
            &ok,
            NatMapping::Unknown,
            &[relay(RelayTransport::Tls, true)],
            VerdictKind::DirectPossible,
            true,
            "TURN/TLS works as a fallback",
        );
    }

    #[test]
    fn verdict_symmetric_nat() {
        let ok = welcomed();
        check(
            &ok,
            NatMapping::AddressPortDependent,
            &[
                relay(RelayTransport::Udp, true),
                relay(RelayTransport::Tcp, false),
            ],
            VerdictKind::RelayNeeded,
            true,
            "relay needed (symmetric NAT): TURN/UDP works",
        );
        check(
            &ok,
            NatMapping::AddressPortDependent,
            &[
                relay(RelayTransport::Tls, true),
                relay(RelayTransport::Udp, true),
                relay(RelayTransport::Udp, true),
            ],
            VerdictKind::RelayNeeded,
            true,
            "TURN/UDP, TURN/TLS work",
        );
        check(
            &ok,
            NatMapping::AddressPortDependent,
            &[relay(RelayTransport::Udp, false)],
            VerdictKind::NoPath,
            false,
            "symmetric NAT and no working TURN relay",
        );
    }

    #[test]
    fn verdict_udp_blocked() {
        let ok = welcomed();
        check(
            &ok,
            NatMapping::Blocked,
            &[
                relay(RelayTransport::Udp, false),
                relay(RelayTransport::Tls, true),
            ],
            VerdictKind::RelayOnly,
            true,
            "UDP blocked, TURN/TLS works",
        );
        check(
            &ok,
            NatMapping::Blocked,
            &[relay(RelayTransport::Udp, true)],
            VerdictKind::RelayOnly,
            true,
            "STUN servers did not answer, relay only: TURN/UDP works",
        );
        check(
            &ok,
            NatMapping::Blocked,
            &[
                relay(RelayTransport::Udp, false),
                relay(RelayTransport::Tcp, false),
            ],
            VerdictKind::NoPath,
            false,
            "no working path: UDP blocked and no TURN over TCP/TLS",
        );
        check(
            &ok,
            NatMapping::Blocked,
            &[],
            VerdictKind::NoPath,
            false,
            "UDP to STUN blocked or servers down, and no TURN relay configured",
        );
    }

    #[test]
    fn verdict_without_stun_servers() {
        let ok = welcomed();
        check(
            &ok,
            NatMapping::NotTested,
            &[relay(RelayTransport::Tcp, true)],
            VerdictKind::RelayOnly,
            true,
            "relay only: TURN/TCP works",
        );
        check(
            &ok,
            NatMapping::NotTested,
            &[],
            VerdictKind::NoPath,
            false,
            "same-network connections only",
        );
    }

    #[test]
    fn turn_errors_map_to_failures() {
        let refused = |code| TurnError::Refused {
            code,
            reason: "x".to_owned(),
        };
        assert_eq!(turn_failure(&refused(401)), TurnFailure::Refused);
        assert_eq!(turn_failure(&refused(486)), TurnFailure::AllocationRefused);
        assert_eq!(
            turn_failure(&TurnError::Resolve("x".into())),
            TurnFailure::Unreachable
        );
        assert_eq!(
            turn_failure(&TurnError::Unreachable("x".into())),
            TurnFailure::Unreachable
        );
        assert_eq!(
            turn_failure(&TurnError::TimedOut(Duration::from_secs(1))),
            TurnFailure::TimedOut
        );
        assert_eq!(turn_failure(&TurnError::Tls("x".into())), TurnFailure::Tls);
        assert_eq!(
            turn_failure(&TurnError::Protocol("x".into())),
            TurnFailure::Protocol
        );
    }

    #[test]
    fn report_json_never_holds_a_password() {
        let ice = IceServer {
            urls: vec!["turn:198.18.0.2:3478".to_owned()],
            username: Some("1790000000:abc".to_owned()),
            credential: Some("s3cret-password".to_owned()),
        };
        let report = DoctorReport {
            signaling: SignalingCheck {
                url: "ws://127.0.0.1:1/ws".to_owned(),
                outcome: welcomed(),
            },
            ice_servers: vec![IceServerSummary::from(&ice)],
            stun: None,
            turn: vec![relay(RelayTransport::Udp, true)],
            verdict: verdict(&welcomed(), NatMapping::NoNat, &[]),
            elapsed: Duration::from_micros(1500),
        };
        let json = serde_json::to_value(&report).unwrap();
        let text = json.to_string();
        assert!(!text.contains("s3cret"), "{text}");
        assert_eq!(json["ice_servers"][0]["has_credential"], true);
        assert_eq!(json["signaling"]["status"], "ok");
        assert_eq!(json["turn"][0]["status"], "ok");
        assert_eq!(json["turn"][0]["transport"], "udp");
        assert_eq!(json["verdict"]["kind"], "direct_likely");
        assert_eq!(json["elapsed_ms"], 1.5);
    }

    // --- real sockets on 127.0.0.1 ------------------------------------------------------

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// A STUN responder on 127.0.0.1 built with the `rtc` codec; answers every Binding request.
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
                let mut request = StunMessage {
                    raw: buf[..len].to_vec(),
                    ..StunMessage::default()
                };
                if request.decode().is_err() {
                    continue;
                }
                let mut answer = StunMessage::new();
                answer
                    .build(&[
                        Box::new(request.transaction_id),
                        Box::new(BINDING_SUCCESS),
                        Box::new(XorMappedAddress {
                            ip: from.ip(),
                            port: from.port().wrapping_add(port_offset),
                        }),
                    ])
                    .unwrap();
                let _ = socket.send_to(&answer.raw, from).await;
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

    #[tokio::test]
    async fn doctor_unreachable_signaling_fails_fast_and_clearly() {
        // A port that was just free: nothing listens there.
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mut options = DoctorOptions::new(format!("ws://127.0.0.1:{port}/ws"));
        options.timeout = Duration::from_secs(3);
        options.local_ip = Some(LOOPBACK);
        let started = Instant::now();
        let report = run(&options).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        match &report.signaling.outcome {
            SignalingOutcome::Failed { failure, detail } => {
                assert_eq!(*failure, SignalingFailure::Unreachable, "{detail}");
                assert!(!detail.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(report.stun, None);
        assert_eq!(report.verdict.kind, VerdictKind::SignalingFailed);
        assert_eq!(report.verdict.summary, "signaling server unreachable");
        assert!(!report.path_works());
    }

    #[tokio::test]
    async fn doctor_bad_url_and_non_proxim_servers_are_named() {
        let (check, _) = check_signaling("http://127.0.0.1:1/ws", Duration::from_secs(1)).await;
        assert!(
            matches!(
                check.outcome,
                SignalingOutcome::Failed {
                    failure: SignalingFailure::InvalidUrl,
                    ..
                }
            ),
            "{check:?}"
        );

        // An HTTP server that is not a WebSocket endpoint.
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let at = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 2048];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let (check, _) = check_signaling(&format!("ws://{at}/ws"), Duration::from_secs(2)).await;
        match &check.outcome {
            SignalingOutcome::Failed { failure, detail } => {
                assert_eq!(*failure, SignalingFailure::NotProxim, "{detail}");
                assert!(detail.contains("404"), "{detail}");
            }
            other => panic!("{other:?}"),
        }

        // wss:// to a port that speaks plain HTTP: the TLS handshake fails.
        let (check, _) = check_signaling(&format!("wss://{at}/ws"), Duration::from_secs(2)).await;
        assert!(
            matches!(
                check.outcome,
                SignalingOutcome::Failed {
                    failure: SignalingFailure::Tls,
                    ..
                }
            ),
            "{check:?}"
        );

        // A TCP port that accepts and never speaks: the check times out within the bound.
        let quiet = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let quiet_at = quiet.local_addr().unwrap();
        let started = Instant::now();
        let (check, _) =
            check_signaling(&format!("ws://{quiet_at}/ws"), Duration::from_millis(500)).await;
        assert!(started.elapsed() < Duration::from_millis(1500));
        assert!(
            matches!(
                check.outcome,
                SignalingOutcome::Failed {
                    failure: SignalingFailure::TimedOut,
                    ..
                }
            ),
            "{check:?}"
        );
        drop(quiet);
        task.abort();
    }
}
