//! The TURN check: one allocation (then release) per `turn:`/`turns:` URL in the welcome,
//! with the welcome's credentials, all at once.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use proxim_protocol::IceServer;
use proxim_protocol::ice::{IceScheme, IceTransport, IceUrl};
use serde::Serialize;
use tracing::debug;

use super::DoctorOptions;
use crate::turn::{TurnError, TurnOptions};

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
        #[serde(rename = "elapsed_ms", serialize_with = "super::millis")]
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
pub(super) async fn check_turn(ice: &[IceServer], options: &DoctorOptions) -> Vec<TurnCheck> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
