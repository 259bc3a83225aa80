//! The signaling check: open the WebSocket and do one hello/welcome exchange with the
//! signaling client's own pieces ([`open_websocket`], the sans-IO [`SignalingSession`]), timing
//! the connect and the round trip, and naming what went wrong.

use std::fmt;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use proxim_protocol::{IceServer, PROTOCOL_VERSION, ServerMessage};
use serde::Serialize;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::debug;

use crate::clock::now;
use crate::signaling::{
    Backoff, SessionOutput, SignalingError, SignalingSession, Socket, Welcome, open_websocket,
};

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
        #[serde(rename = "connect_ms", serialize_with = "super::millis")]
        connect: Duration,
        /// From sending `hello` to receiving `welcome`.
        #[serde(rename = "round_trip_ms", serialize_with = "super::millis")]
        round_trip: Duration,
        /// The protocol version the server speaks on this connection.
        protocol_version: u16,
        /// The heartbeat interval the server asks for.
        #[serde(rename = "heartbeat_interval_ms", serialize_with = "super::millis")]
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
pub(super) async fn check_signaling(
    url: &str,
    timeout: Duration,
) -> (SignalingCheck, Vec<IceServer>) {
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

/// What went wrong, of which kind.
type Failure = (SignalingFailure, String);

/// The name the doctor gives in `hello`.
const CLIENT_NAME: &str = concat!("proxim-doctor/", env!("CARGO_PKG_VERSION"));

/// How long saying `bye` and closing may take once the check is done.
const GOODBYE_TIMEOUT: Duration = Duration::from_millis(500);

async fn signaling_exchange(
    url: &str,
    timeout: Duration,
) -> Result<(SignalingOutcome, Vec<IceServer>), Failure> {
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
    let mut ws = match tokio::time::timeout_at(deadline, open_websocket(url)).await {
        Err(_) => {
            return Err((
                SignalingFailure::TimedOut,
                format!("no WebSocket connection within {timeout:?}"),
            ));
        }
        Ok(Err(e)) => return Err(classify_ws_error(e, tls)),
        Ok(Ok(ws)) => ws,
    };
    let connected = now();
    // The signaling client's own handshake: its first output asks for the socket just opened.
    let mut session = SignalingSession::new(CLIENT_NAME, timeout, Backoff::default());
    session.handle_connected(connected);
    let result = match send_transmits(&mut session, &mut ws).await {
        Err(e) => Err((
            SignalingFailure::NotProxim,
            format!("cannot send hello: {e}"),
        )),
        Ok(()) => {
            let sent = now();
            await_welcome(&mut session, &mut ws, deadline, timeout, tls)
                .await
                .map(|(welcome, answered)| {
                    let outcome = SignalingOutcome::Ok {
                        connect: connected.saturating_duration_since(started),
                        round_trip: answered.saturating_duration_since(sent),
                        protocol_version: welcome.version,
                        heartbeat_interval: welcome.heartbeat_interval,
                    };
                    (outcome, welcome.ice_servers)
                })
        }
    };
    // Leave politely; the answer does not matter.
    session.close("doctor check done");
    let goodbye = async {
        let _ = send_transmits(&mut session, &mut ws).await;
        let _ = ws.close(None).await;
    };
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, goodbye).await;
    result
}

/// Read frames until the session reports the welcome (and when it arrived) or a failure. Any
/// other first message means this is not a Proxim signaling server.
async fn await_welcome(
    session: &mut SignalingSession,
    ws: &mut Socket,
    deadline: tokio::time::Instant,
    timeout: Duration,
    tls: bool,
) -> Result<(Welcome, Instant), Failure> {
    loop {
        let frame = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => {
                return Err((
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
                return Err((
                    SignalingFailure::NotProxim,
                    "the server answered hello with a binary frame".to_owned(),
                ));
            }
            Some(Ok(Message::Close(frame))) => {
                let reason = frame.map_or_else(|| "no reason".to_owned(), |f| f.to_string());
                return Err((
                    SignalingFailure::NotProxim,
                    format!("the server closed the WebSocket after hello ({reason})"),
                ));
            }
            Some(Err(e)) => return Err(classify_ws_error(e, tls)),
            None => {
                return Err((
                    SignalingFailure::NotProxim,
                    "the server closed the connection after hello".to_owned(),
                ));
            }
        };
        let answered = now();
        session.handle_frame(answered, text.as_str());
        while let Some(output) = session.poll_output() {
            match output {
                SessionOutput::Opened { welcome, .. } => return Ok((welcome, answered)),
                SessionOutput::Failed(error) => return Err(handshake_failure(error)),
                _ => {}
            }
        }
        return Err((SignalingFailure::NotProxim, not_a_welcome(text.as_str())));
    }
}

/// Write every message the session has queued.
async fn send_transmits(session: &mut SignalingSession, ws: &mut Socket) -> Result<(), WsError> {
    while let Some(message) = session.poll_transmit() {
        ws.send(Message::text(message.encode())).await?;
    }
    Ok(())
}

/// Name the session's reason for refusing the handshake.
fn handshake_failure(error: SignalingError) -> Failure {
    match error {
        SignalingError::Server { code, message } => (
            SignalingFailure::Refused,
            format!("the server refused hello: {code:?}: {message}"),
        ),
        SignalingError::UnsupportedVersion(version) => (
            SignalingFailure::Refused,
            format!("the server speaks protocol version {version}, this client {PROTOCOL_VERSION}"),
        ),
        other => (SignalingFailure::NotProxim, other.to_string()),
    }
}

/// Why a first frame that the session did not take as a welcome is not one.
fn not_a_welcome(frame: &str) -> String {
    match ServerMessage::decode(frame) {
        Ok(other) => format!("expected welcome, got `{}`", other.kind()),
        Err(e) => format!("the first frame is not a Proxim welcome: {e}"),
    }
}

/// Name a WebSocket failure. Over `wss://`, rustls reports handshake and certificate failures
/// as I/O errors of kind `InvalidData`.
fn classify_ws_error(error: WsError, tls: bool) -> Failure {
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

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::Instant;

    use proxim_protocol::{ClientMessage, ConnectionId, ErrorCode, ShortText};

    use super::*;

    /// The kind and detail of a failed check; panics on a welcome.
    fn failure(check: &SignalingCheck) -> (SignalingFailure, &str) {
        match &check.outcome {
            SignalingOutcome::Failed { failure, detail } => (*failure, detail.as_str()),
            other => panic!("{other:?}"),
        }
    }

    /// A one-connection WebSocket server on 127.0.0.1 that answers `hello` with `answer`, then
    /// expects `bye`.
    async fn answering_server(answer: String) -> (SocketAddr, tokio::task::JoinHandle<bool>) {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let at = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            let hello = ws.next().await.unwrap().unwrap().into_text().unwrap();
            assert!(matches!(
                ClientMessage::decode(hello.as_str()),
                Ok(ClientMessage::Hello { .. })
            ));
            ws.send(Message::text(answer)).await.unwrap();
            // Whatever follows; the doctor says bye when it got a welcome.
            let mut said_bye = false;
            while let Some(Ok(Message::Text(text))) = ws.next().await {
                said_bye |= matches!(
                    ClientMessage::decode(text.as_str()),
                    Ok(ClientMessage::Bye { .. })
                );
            }
            said_bye
        });
        (at, task)
    }

    #[tokio::test]
    async fn doctor_times_the_welcome_and_reads_its_ice_servers() {
        let ice = IceServer {
            urls: vec!["stun:198.18.0.1:3478".to_owned()],
            username: None,
            credential: None,
        };
        let welcome = ServerMessage::Welcome {
            version: PROTOCOL_VERSION,
            connection_id: ConnectionId::new("0123456789abcdef0123456789abcdef").unwrap(),
            ice_servers: vec![ice.clone()],
            heartbeat_interval_ms: 15_000,
            heartbeat_timeout_ms: 45_000,
        };
        let (at, server) = answering_server(welcome.encode()).await;
        let (check, servers) =
            check_signaling(&format!("ws://{at}/ws"), Duration::from_secs(3)).await;
        match check.outcome {
            SignalingOutcome::Ok {
                protocol_version,
                heartbeat_interval,
                ..
            } => {
                assert_eq!(protocol_version, PROTOCOL_VERSION);
                assert_eq!(heartbeat_interval, Duration::from_secs(15));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(servers, vec![ice]);
        assert!(server.await.unwrap(), "the doctor leaves with bye");
    }

    #[tokio::test]
    async fn doctor_names_an_answer_that_is_not_a_welcome() {
        let refusal = ServerMessage::Error {
            code: ErrorCode::Overloaded,
            message: ShortText::new("busy").unwrap(),
        };
        let cases = [
            (
                refusal.encode(),
                SignalingFailure::Refused,
                "the server refused hello: Overloaded: busy",
            ),
            (
                ServerMessage::Pong { seq: 1 }.encode(),
                SignalingFailure::NotProxim,
                "expected welcome, got `pong`",
            ),
            (
                "not json".to_owned(),
                SignalingFailure::NotProxim,
                "the first frame is not a Proxim welcome",
            ),
        ];
        for (answer, kind, text) in cases {
            let (at, server) = answering_server(answer).await;
            let (check, servers) =
                check_signaling(&format!("ws://{at}/ws"), Duration::from_secs(3)).await;
            let (failure, detail) = failure(&check);
            assert_eq!(failure, kind, "{detail}");
            assert!(detail.contains(text), "{detail:?} lacks {text:?}");
            assert!(servers.is_empty());
            server.abort();
        }
    }

    #[tokio::test]
    async fn doctor_bad_url_and_non_proxim_servers_are_named() {
        let (check, _) = check_signaling("http://127.0.0.1:1/ws", Duration::from_secs(1)).await;
        assert_eq!(failure(&check).0, SignalingFailure::InvalidUrl);

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
        let (failure_kind, detail) = failure(&check);
        assert_eq!(failure_kind, SignalingFailure::NotProxim, "{detail}");
        assert!(detail.contains("404"), "{detail}");

        // wss:// to a port that speaks plain HTTP: the TLS handshake fails.
        let (check, _) = check_signaling(&format!("wss://{at}/ws"), Duration::from_secs(2)).await;
        assert_eq!(failure(&check).0, SignalingFailure::Tls);

        // A TCP port that accepts and never speaks: the check times out within the bound.
        let quiet = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let quiet_at = quiet.local_addr().unwrap();
        let started = Instant::now();
        let (check, _) =
            check_signaling(&format!("ws://{quiet_at}/ws"), Duration::from_millis(500)).await;
        assert!(started.elapsed() < Duration::from_millis(1500));
        assert_eq!(failure(&check).0, SignalingFailure::TimedOut);
        drop(quiet);
        task.abort();
    }
}
