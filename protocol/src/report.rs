//! A client's report of how a direct connection went, sent over signaling for the operator
//! (`connection_report`). Optional, small and bounded: every field is a number, an enum or a
//! short token; the server rate-limits reports per connection and turns them into events.

use serde::{Deserialize, Serialize};

use crate::InvalidValue;

/// What happened to the direct connection of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionOutcome {
    /// The connection is up (the default channel opened).
    Connected,
    /// The connection could not be set up.
    Failed,
    /// A connection that was up has closed.
    Closed,
}

impl ConnectionOutcome {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionOutcome::Connected => "connected",
            ConnectionOutcome::Failed => "failed",
            ConnectionOutcome::Closed => "closed",
        }
    }
}

/// The kind of path a connection used (of the selected candidate pair: relay if either end is
/// relayed, else server- or peer-reflexive, else host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    /// Both ends are host addresses.
    Host,
    /// A server-reflexive address (found through STUN).
    Srflx,
    /// A peer-reflexive address (learned from a connectivity check).
    Prflx,
    /// Through a TURN relay.
    Relay,
}

impl PathKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Host => "host",
            PathKind::Srflx => "srflx",
            PathKind::Prflx => "prflx",
            PathKind::Relay => "relay",
        }
    }
}

/// How a relayed connection reaches its TURN server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayProtocol {
    /// TURN over UDP.
    Udp,
    /// TURN over TCP.
    Tcp,
    /// TURN over TLS (`turns:`).
    Tls,
}

impl RelayProtocol {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RelayProtocol::Udp => "udp",
            RelayProtocol::Tcp => "tcp",
            RelayProtocol::Tls => "tls",
        }
    }
}

/// Longest [`ReportToken`], in bytes.
pub const MAX_REPORT_TOKEN_BYTES: usize = 32;

/// A short machine-readable word in a report (a failure kind such as `ice_failed`): 1–32
/// characters of `[a-z0-9_]`. Free text would let a client smuggle anything into the
/// operator's event stream; a token cannot carry a secret by accident.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ReportToken(String);

impl ReportToken {
    /// Parse and validate.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidValue> {
        let value: String = value.into();
        if value.is_empty() || value.len() > MAX_REPORT_TOKEN_BYTES {
            return Err(InvalidValue {
                what: "report token",
                why: "must be 1 to 32 characters",
            });
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(InvalidValue {
                what: "report token",
                why: "may only contain a-z, 0-9 and '_'",
            });
        }
        Ok(Self(value))
    }

    /// The token.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ReportToken {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<ReportToken> for String {
    fn from(value: ReportToken) -> String {
        value.0
    }
}

impl std::fmt::Display for ReportToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How one side's direct connection of a session went. Which fields are set depends on the
/// outcome: `connected` has the path and the time to connect, `failed` the failure kind,
/// `closed` the bytes and the duration. Every field is optional so that a client reports what
/// it knows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionReport {
    /// The path the connection used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathKind>,
    /// For a relayed path, how this side reaches its TURN server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_protocol: Option<RelayProtocol>,
    /// From the pairing's acceptance to the channel being open (or the failure), in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_connect_ms: Option<u64>,
    /// The round-trip time on the selected path, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<u64>,
    /// How long the connection was up, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Payload bytes this side sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_sent: Option<u64>,
    /// Payload bytes this side received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_received: Option<u64>,
    /// Why it failed or closed (`ice_failed`, `dtls_failed`, `timeout`, `closed_by_peer`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<ReportToken>,
}
