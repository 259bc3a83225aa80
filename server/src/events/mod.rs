//! Server events for operators: one typed record per thing that happened (the service started,
//! a client connected, a pairing was accepted, a session ended, a limit was hit, a client
//! reported how its direct connection went…), sent to sinks as JSON objects: JSON lines on
//! stdout or in a file, and RabbitMQ (AMQP 0-9-1, a durable queue, publisher confirms).
//!
//! The hub builds [`Event`]s as it handles its inputs (sans-IO, no time of its own); the driver
//! drains them after every input and hands them to the [`EventBus`], which stamps each with
//! a sequence number, the wall-clock time and the instance, encodes it once, and offers it to
//! every sink's bounded queue without waiting. A sink that cannot keep up, or whose broker is
//! down, loses the newest events past its buffer, counted per sink (`/metrics`,
//! `/api/events`), and tells the stream how many with an `events_dropped` event once it
//! recovers. Signaling never waits for a sink.
//!
//! What events never carry: pairing codes, TURN passwords or secrets, admin tokens, SDP,
//! candidates, authentication payloads. Device names only with
//! [`crate::ServerConfig::expose_device_names`]. Device and session ids are addresses, not
//! secrets (a session's members are bound to their connections), and let an operator join
//! the server's events with the clients' reports.
//!
//! # Files
//!
//! - `mod.rs` (here): [`Event`], the record; the sink specification [`EventSinkSpec`].
//! - `bus.rs`: the [`EventBus`], its per-sink queues, counters and status.
//! - `jsonl.rs`: the JSON-lines sink (stdout or a file).
//! - `amqp.rs`: the RabbitMQ sink (lapin), reconnecting with backoff.
//! - `time.rs`: RFC 3339 timestamps.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use proxim_protocol::{ConnectionId, ConnectionReport, DeviceId, DeviceName, SessionId};
use serde::Serialize;

mod amqp;
mod bus;
mod jsonl;
mod time;

pub use bus::EventSinkError;
pub(crate) use bus::{EventBus, SinkStatus};

/// The queue events are published to unless configured otherwise.
pub const DEFAULT_EVENTS_QUEUE: &str = "webrtc_events";

/// Events each sink buffers by default while it cannot keep up or its broker is down.
pub const DEFAULT_EVENTS_BUFFER: usize = 10_000;

/// The version of the event record's shape (`"v"` in every event).
pub const EVENTS_VERSION: u32 = 1;

/// One thing that happened, as the hub or the driver saw it. Serialized with its `type` and
/// the fields below, inside the envelope the bus adds (`v`, `seq`, `ts`, `instance`, `run`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Event {
    /// The server is listening.
    ServiceStarted {
        /// This server's version.
        version: &'static str,
        /// The signaling protocol version.
        protocol: u16,
        /// The listen address.
        listen: String,
        /// Whether the embedded STUN responder runs.
        stun: bool,
        /// TURN credentials handed out: `none`, `static` or `rest`.
        turn: &'static str,
    },
    /// The server is stopping (SIGTERM, SIGINT, or the embedding program): its connections
    /// are told and closed next.
    ServiceStopping {
        /// Connections open when it began.
        connections: u64,
    },
    /// A WebSocket connection was accepted.
    ClientConnected {
        /// The server-assigned connection id.
        conn: ConnectionId,
        /// The client's IP (behind a trusted proxy, the one it names).
        ip: IpAddr,
    },
    /// A connection is gone.
    ClientDisconnected {
        /// The connection.
        conn: ConnectionId,
        /// `phone`, `desktop`, or `none` (never registered nor asked to pair).
        role: &'static str,
        /// `bye`, `closed`, `timed_out`, `no_hello`, `slow_reader`, `refused`, `flooding` or
        /// `shutdown`.
        reason: &'static str,
        /// How long it was open.
        duration_ms: u64,
    },
    /// A desktop registered and got a code (the code itself is never in an event).
    DesktopRegistered {
        /// The desktop's connection.
        conn: ConnectionId,
        /// The desktop's device id.
        device_id: DeviceId,
        /// Its name, when the operator opted in.
        #[serde(skip_serializing_if = "Option::is_none")]
        device_name: Option<DeviceName>,
        /// Whether it got back the code it had reserved.
        code_reused: bool,
    },
    /// A phone asked to pair (`code`) or to reconnect (`device`) and a desktop was prompted.
    PairRequested {
        /// The new session.
        session: SessionId,
        /// `code` (a `pair_request`) or `device` (a trusted `connect_request`).
        via: &'static str,
        /// The phone's device id.
        phone: DeviceId,
        /// The desktop's device id.
        desktop: DeviceId,
        /// The phone's name, when the operator opted in.
        #[serde(skip_serializing_if = "Option::is_none")]
        phone_name: Option<DeviceName>,
    },
    /// A pair or connect request that reached no desktop.
    PairRefused {
        /// The phone's connection.
        conn: ConnectionId,
        /// `code` or `device`.
        via: &'static str,
        /// Why: `unknown_code`, `code_expired`, `code_used`, `desktop_offline`,
        /// `too_many_attempts`.
        outcome: &'static str,
    },
    /// The desktop's user accepted.
    PairAccepted {
        /// The session.
        session: SessionId,
        /// From the request to the answer.
        latency_ms: u64,
    },
    /// The desktop's user rejected.
    PairRejected {
        /// The session.
        session: SessionId,
        /// From the request to the answer.
        latency_ms: u64,
    },
    /// Nobody answered the prompt in time.
    PairTimedOut {
        /// The session.
        session: SessionId,
    },
    /// A session is over.
    SessionEnded {
        /// The session.
        session: SessionId,
        /// `rejected`, `prompt_expired`, `cancelled`, `desktop_gone`, `member_left`,
        /// `member_disconnected`, `member_timed_out`, `member_dropped` or `shutdown`.
        reason: &'static str,
        /// Whether the desktop had accepted it.
        accepted: bool,
        /// From the request to the end.
        duration_ms: u64,
        /// Signals relayed between its members.
        signals: u64,
    },
    /// TURN REST credentials were minted (for a `welcome`, or an `/api/turn/config` request).
    TurnCredentialsMinted {
        /// The connection they were minted for (`welcome`).
        #[serde(skip_serializing_if = "Option::is_none")]
        conn: Option<ConnectionId>,
        /// The client IP that asked (`/api/turn/config`).
        #[serde(skip_serializing_if = "Option::is_none")]
        ip: Option<IpAddr>,
        /// `welcome` or `api`.
        via: &'static str,
        /// How long they are valid.
        ttl_s: u64,
    },
    /// An abuse limit refused something. At most a burst of these per limit per second reach
    /// the sinks; the next one says how many were left out (`suppressed`).
    LimitHit {
        /// `rate_limit`, `flooding`, `connections_per_ip`, `pair_attempts`,
        /// `frame_too_large`, `slow_reader`, `sessions_per_connection`,
        /// `connection_reports`, `turn_config_rate`.
        limit: &'static str,
        /// The connection, when there is one.
        #[serde(skip_serializing_if = "Option::is_none")]
        conn: Option<ConnectionId>,
        /// The client IP, when the limit is per IP.
        #[serde(skip_serializing_if = "Option::is_none")]
        ip: Option<IpAddr>,
        /// Events of this limit left out since the last one that went out.
        #[serde(skip_serializing_if = "is_zero")]
        suppressed: u64,
    },
    /// A client reported its direct connection up (`connection_report`, `connected`).
    ConnectionEstablished(ClientReport),
    /// A client reported its direct connection could not be set up.
    ConnectionFailed(ClientReport),
    /// A client reported its direct connection closed (bytes and duration).
    ConnectionClosed(ClientReport),
    /// A sink lost events (its buffer was full, or its broker down) and has recovered.
    EventsDropped {
        /// The sink.
        sink: String,
        /// How many were lost since the last such event.
        count: u64,
    },
}

/// A client's `connection_report`, with who reported it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ClientReport {
    /// The pairing session.
    pub(crate) session: SessionId,
    /// `phone` or `desktop`.
    pub(crate) reporter: &'static str,
    /// The reporting connection.
    pub(crate) conn: ConnectionId,
    /// What the client said.
    #[serde(flatten)]
    pub(crate) report: ConnectionReport,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Event {
    /// The `type` field.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Event::ServiceStarted { .. } => "service_started",
            Event::ServiceStopping { .. } => "service_stopping",
            Event::ClientConnected { .. } => "client_connected",
            Event::ClientDisconnected { .. } => "client_disconnected",
            Event::DesktopRegistered { .. } => "desktop_registered",
            Event::PairRequested { .. } => "pair_requested",
            Event::PairRefused { .. } => "pair_refused",
            Event::PairAccepted { .. } => "pair_accepted",
            Event::PairRejected { .. } => "pair_rejected",
            Event::PairTimedOut { .. } => "pair_timed_out",
            Event::SessionEnded { .. } => "session_ended",
            Event::TurnCredentialsMinted { .. } => "turn_credentials_minted",
            Event::LimitHit { .. } => "limit_hit",
            Event::ConnectionEstablished(_) => "connection_established",
            Event::ConnectionFailed(_) => "connection_failed",
            Event::ConnectionClosed(_) => "connection_closed",
            Event::EventsDropped { .. } => "events_dropped",
        }
    }
}

/// Where events go: `stdout`, `file:PATH`, or an `amqp://` / `amqps://` URL (RabbitMQ).
#[derive(Clone, PartialEq, Eq)]
pub enum EventSinkSpec {
    /// JSON lines on standard output.
    Stdout,
    /// JSON lines appended to a file (created when missing).
    File(PathBuf),
    /// RabbitMQ: the URL, user and password included (`amqp://user:pass@host:5672/%2f`).
    /// Shown and logged without its password.
    Amqp(String),
}

/// An event sink specification that is not one of the three forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid event sink `{0}`: expected `stdout`, `file:PATH` or an amqp:// or amqps:// URL")]
pub struct InvalidEventSink(String);

impl FromStr for EventSinkSpec {
    type Err = InvalidEventSink;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "stdout" || s == "-" {
            return Ok(EventSinkSpec::Stdout);
        }
        if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err(InvalidEventSink(s.to_owned()));
            }
            return Ok(EventSinkSpec::File(PathBuf::from(path)));
        }
        if s.starts_with("amqp://") || s.starts_with("amqps://") {
            return match s.parse::<lapin::uri::AMQPUri>() {
                Ok(_) => Ok(EventSinkSpec::Amqp(s.to_owned())),
                Err(_) => Err(InvalidEventSink(redact_url(s))),
            };
        }
        Err(InvalidEventSink(redact_url(s)))
    }
}

impl fmt::Display for EventSinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventSinkSpec::Stdout => f.write_str("stdout"),
            EventSinkSpec::File(path) => write!(f, "file:{}", path.display()),
            EventSinkSpec::Amqp(url) => f.write_str(&redact_url(url)),
        }
    }
}

impl fmt::Debug for EventSinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `scheme://user:password@host…` with the password replaced by [`crate::REDACTED`].
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:{}@{host}{path}", crate::REDACTED)
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_specs_parse_and_hide_passwords() {
        assert_eq!("stdout".parse::<EventSinkSpec>(), Ok(EventSinkSpec::Stdout));
        assert_eq!(
            "file:/var/log/proxim/events.jsonl".parse::<EventSinkSpec>(),
            Ok(EventSinkSpec::File("/var/log/proxim/events.jsonl".into()))
        );
        let amqp: EventSinkSpec = "amqp://proxim:s3cret-pw@198.18.0.5:5672/%2f"
            .parse()
            .unwrap();
        let shown = format!("{amqp} {amqp:?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(
            shown.contains("amqp://proxim:<redacted>@198.18.0.5:5672/%2f"),
            "{shown}"
        );
        for bad in ["", "file:", "kafka://x", "amqp://proxim:s3cret-pw@[bad"] {
            let error = bad.parse::<EventSinkSpec>().unwrap_err().to_string();
            assert!(!error.contains("s3cret-pw"), "{error}");
        }
    }

    #[test]
    fn a_report_event_is_flat() {
        let report = ClientReport {
            session: SessionId::new("0123456789abcdef0123456789abcdef").unwrap(),
            reporter: "phone",
            conn: ConnectionId::new("fedcba9876543210fedcba9876543210").unwrap(),
            report: ConnectionReport {
                path: Some(proxim_protocol::PathKind::Relay),
                time_to_connect_ms: Some(420),
                ..ConnectionReport::default()
            },
        };
        let json = serde_json::to_value(Event::ConnectionEstablished(report)).unwrap();
        assert_eq!(json["type"], "connection_established");
        assert_eq!(json["reporter"], "phone");
        assert_eq!(json["path"], "relay");
        assert_eq!(json["time_to_connect_ms"], 420);
        assert!(json.get("bytes_sent").is_none());
    }
}
