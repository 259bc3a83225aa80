//! TURN relays (RFC 8656) over UDP, TCP and TLS, for relay candidates and for `proxim doctor`.
//!
//! - [`allocation`]: a sans-IO allocation over webrtc-rs's TURN client (`rtc::turn`): the
//!   Allocate handshake with its 401 challenge, permissions created on first use (packets wait
//!   for them instead of being dropped), channel bindings, refreshes, release with a zero
//!   lifetime. Time is an input; bytes to the server come out of `poll_transmit`.
//! - [`stream`]: TURN over a byte stream (`turn:…?transport=tcp`, `turns:`): RFC 8656 §6.2
//!   framing (STUN messages and 4-byte-padded ChannelData back to back), TCP with
//!   `TCP_NODELAY`, TLS through rustls with the webpki roots plus any roots the app adds.
//!   webrtc-rs skips these URLs; they are what gets a phone out of a network that blocks UDP.
//!
//! The peer driver runs one [`allocation::Allocation`] per TURN URL; [`probe_turn`] runs one on
//! its own to tell whether a server works with given credentials.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use proxim_protocol::IceServer;
use proxim_protocol::ice::{IceScheme, IceTransport, IceUrl};

pub(crate) mod allocation;
pub(crate) mod stream;

use allocation::{Allocation, AllocationEvent};

/// How a TURN server is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum TurnTransport {
    /// `turn:host:port` (or `?transport=udp`).
    Udp,
    /// `turn:host:port?transport=tcp`.
    Tcp,
    /// `turns:host:port` (TLS over TCP).
    Tls,
}

impl fmt::Display for TurnTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TurnTransport::Udp => "udp",
            TurnTransport::Tcp => "tcp",
            TurnTransport::Tls => "tls",
        })
    }
}

/// One TURN server with its credentials, as the signaling server handed it out.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnServer {
    /// The URL, normalised (`turn:host:port?transport=tcp`).
    pub url: String,
    /// Host name or IP address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// UDP, TCP or TLS.
    pub transport: TurnTransport,
    /// Long-term credential user name.
    pub username: String,
    /// Long-term credential password. Never logged: `Debug` redacts it.
    pub credential: String,
}

impl fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnServer")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("credential", &"<redacted>")
            .finish()
    }
}

impl TurnServer {
    /// When time-limited (TURN REST) credentials stop being accepted for a new allocation: the
    /// user name is `<unix expiry>:<user>`. `None` for other user names (static credentials).
    pub fn credentials_expiry(&self) -> Option<std::time::SystemTime> {
        let (secs, _) = self.username.split_once(':')?;
        let secs: u64 = secs.parse().ok()?;
        std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))
    }

    /// Parse one `turn:`/`turns:` URL with its credentials.
    pub fn new(url: &str, username: &str, credential: &str) -> Result<Self, TurnError> {
        let parsed = IceUrl::parse(url).map_err(|e| TurnError::InvalidUrl(e.to_string()))?;
        let transport = match (parsed.scheme, parsed.transport) {
            (IceScheme::Turn, IceTransport::Udp) => TurnTransport::Udp,
            (IceScheme::Turn, IceTransport::Tcp) => TurnTransport::Tcp,
            (IceScheme::Turns, _) => TurnTransport::Tls,
            _ => {
                return Err(TurnError::InvalidUrl(format!(
                    "`{url}` is not a turn: or turns: URL"
                )));
            }
        };
        if username.is_empty() {
            return Err(TurnError::InvalidUrl(format!("`{url}` has no username")));
        }
        Ok(TurnServer {
            url: parsed.to_string(),
            host: parsed.host.clone(),
            port: parsed.port,
            transport,
            username: username.to_owned(),
            credential: credential.to_owned(),
        })
    }

    /// The TURN servers among `servers` (STUN URLs are left out); unusable ones are logged and
    /// skipped.
    pub fn from_ice_servers(servers: &[IceServer]) -> Vec<TurnServer> {
        let mut out = Vec::new();
        for server in servers {
            for url in &server.urls {
                let Ok(parsed) = IceUrl::parse(url) else {
                    continue;
                };
                if !parsed.is_turn() {
                    continue;
                }
                let username = server.username.as_deref().unwrap_or_default();
                let credential = server.credential.as_deref().unwrap_or_default();
                match TurnServer::new(url, username, credential) {
                    Ok(s) if !out.contains(&s) => out.push(s),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "TURN server skipped"),
                }
            }
        }
        out
    }

    /// `host:port`, with brackets around IPv6 addresses.
    pub(crate) fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// What a TURN client may be told beyond the server and its credentials.
#[derive(Debug, Clone, Default)]
pub struct TurnOptions {
    /// Extra trusted root certificates (PEM) for `turns:`, on top of the webpki roots: a
    /// self-hosted relay with a private CA.
    pub extra_roots_pem: Option<Vec<u8>>,
    /// The local address to reach the server from (`None`: the OS chooses).
    pub local_ip: Option<IpAddr>,
}

/// Why a TURN server could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TurnError {
    /// The URL or its credentials are unusable.
    #[error("{0}")]
    InvalidUrl(String),
    /// The server's name does not resolve.
    #[error("cannot resolve the server name: {0}")]
    Resolve(String),
    /// No connection to the server (TCP/TLS), or no socket to reach it from.
    #[error("server unreachable: {0}")]
    Unreachable(String),
    /// The TLS handshake failed (certificate, protocol).
    #[error("TLS failed: {0}")]
    Tls(String),
    /// The server did not answer in time.
    #[error("no answer from the server within {0:?}")]
    TimedOut(Duration),
    /// The server refused the allocation; 401 means the credentials were refused.
    #[error("{}", refused_text(*code, reason))]
    Refused {
        /// The STUN error code (401, 403, 437, 486, 508…).
        code: u16,
        /// The server's reason phrase.
        reason: String,
    },
    /// The server broke the protocol, or the connection to it closed.
    #[error("TURN protocol error: {0}")]
    Protocol(String),
}

fn refused_text(code: u16, reason: &str) -> String {
    match code {
        401 => format!("credentials refused ({code} {reason})"),
        403 => format!("relay forbidden ({code} {reason})"),
        486 => format!("allocation quota reached ({code} {reason})"),
        508 => format!("server out of capacity ({code} {reason})"),
        _ => format!("allocation refused ({code} {reason})"),
    }
}

impl TurnError {
    /// Whether the server answered and said no (as opposed to not being reachable).
    pub fn is_refusal(&self) -> bool {
        matches!(self, TurnError::Refused { .. })
    }
}

/// A successful allocation made by [`probe_turn`] (and released again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnProbe {
    /// UDP, TCP or TLS.
    pub transport: TurnTransport,
    /// The relayed address the server allocated.
    pub relayed: SocketAddr,
    /// This client's address as the server saw it, when the server said.
    pub mapped: Option<SocketAddr>,
    /// From the start (name resolution included) to the allocation.
    pub elapsed: Duration,
}

/// Allocate on one TURN server with the given credentials, then release the allocation.
///
/// Tells whether the relay works from here: the name resolves, the transport reaches it, TLS
/// verifies, the credentials are accepted. Bounded by `timeout` in all.
pub async fn probe_turn(
    url: &str,
    username: &str,
    credential: &str,
    options: &TurnOptions,
    timeout: Duration,
) -> Result<TurnProbe, TurnError> {
    let server = TurnServer::new(url, username, credential)?;
    let started = Instant::now();
    match tokio::time::timeout(timeout, probe(&server, options, started)).await {
        Ok(result) => result,
        Err(_) => Err(TurnError::TimedOut(timeout)),
    }
}

async fn probe(
    server: &TurnServer,
    options: &TurnOptions,
    started: Instant,
) -> Result<TurnProbe, TurnError> {
    let server_addr = stream::resolve(server, options.local_ip).await?;
    let mut transport = stream::ProbeTransport::connect(server, server_addr, options).await?;
    let mut alloc = Allocation::new(
        server,
        server_addr,
        transport.local_addr(),
        Instant::now(),
        Duration::from_secs(3600),
    )?;
    let result = loop {
        while let Some(data) = alloc.poll_transmit() {
            transport.send(&data).await?;
        }
        match alloc.poll_event() {
            Some(AllocationEvent::Allocated { relayed, mapped }) => {
                break Ok(TurnProbe {
                    transport: server.transport,
                    relayed,
                    mapped,
                    elapsed: started.elapsed(),
                });
            }
            Some(AllocationEvent::Failed(e)) => break Err(e),
            None => {}
        }
        let deadline = alloc
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            frame = transport.recv() => {
                let frame = frame?;
                alloc.handle_input(Instant::now(), frame);
            }
            () = tokio::time::sleep_until(deadline.into()) => alloc.handle_timeout(Instant::now()),
        }
    };
    if result.is_ok() {
        // Best effort: give the allocation back instead of leaving it to expire.
        alloc.release(Instant::now());
        while let Some(data) = alloc.poll_transmit() {
            let _ = transport.send(&data).await;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_map_to_transports() {
        let s = TurnServer::new("turn:198.18.0.3", "u", "p").unwrap();
        assert_eq!((s.transport, s.port), (TurnTransport::Udp, 3478));
        let s = TurnServer::new("turn:198.18.0.3:443?transport=tcp", "u", "p").unwrap();
        assert_eq!((s.transport, s.port), (TurnTransport::Tcp, 443));
        let s = TurnServer::new("turns:relay.example", "u", "p").unwrap();
        assert_eq!((s.transport, s.port), (TurnTransport::Tls, 5349));
        assert!(TurnServer::new("stun:198.18.0.3", "u", "p").is_err());
        assert!(TurnServer::new("turn:198.18.0.3", "", "p").is_err());
        assert!(TurnServer::new("turn://x", "u", "p").is_err());
    }

    #[test]
    fn debug_redacts_the_credential() {
        let s = TurnServer::new("turn:198.18.0.3", "user", "hunter2").unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("user"));
    }

    #[test]
    fn refusals_read_well() {
        let e = TurnError::Refused {
            code: 401,
            reason: "Unauthorized".into(),
        };
        assert_eq!(e.to_string(), "credentials refused (401 Unauthorized)");
        assert!(e.is_refusal());
        assert!(!TurnError::TimedOut(Duration::from_secs(1)).is_refusal());
    }

    #[test]
    fn from_ice_servers_keeps_turn_only() {
        let servers = vec![
            IceServer {
                urls: vec![
                    "stun:198.18.0.2:3478".into(),
                    "turn:198.18.0.3:3478".into(),
                    "turn:198.18.0.3:3478?transport=tcp".into(),
                ],
                username: Some("u".into()),
                credential: Some("p".into()),
            },
            IceServer {
                urls: vec!["turns:198.18.0.3:5349".into()],
                username: None,
                credential: None,
            },
        ];
        let turn = TurnServer::from_ice_servers(&servers);
        let transports: Vec<TurnTransport> = turn.iter().map(|s| s.transport).collect();
        // The turns: URL has no username: skipped with a warning.
        assert_eq!(transports, vec![TurnTransport::Udp, TurnTransport::Tcp]);
    }
}
