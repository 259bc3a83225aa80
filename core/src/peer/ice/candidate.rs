//! ICE candidates: priorities, and the `candidate:` lines of SDP and trickle (RFC 8839).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::peer::CandidateKind;
use crate::turn::TurnTransport;

/// A candidate of this side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalCandidate {
    pub(crate) kind: CandidateKind,
    /// The address advertised to the peer.
    pub(crate) address: SocketAddr,
    /// Where packets are sent from and arrive: a socket's address, or a relayed address.
    pub(crate) base: SocketAddr,
    pub(crate) priority: u32,
    pub(crate) foundation: String,
    /// The related address (`raddr`/`rport`): a srflx candidate's socket, a relay candidate's
    /// address as the TURN server saw it.
    pub(crate) related: Option<SocketAddr>,
    /// For a relay candidate: how this side reaches the TURN server.
    pub(crate) relay_protocol: Option<TurnTransport>,
}

/// A candidate of the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoteCandidate {
    pub(crate) kind: CandidateKind,
    pub(crate) address: SocketAddr,
    pub(crate) priority: u32,
    pub(crate) foundation: String,
}

/// Why a remote candidate line was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CandidateError {
    #[error("malformed candidate line: {0}")]
    Malformed(&'static str),
    #[error("candidate for component {0} (a data channel uses only component 1)")]
    Component(u32),
    #[error("candidate over {0} (only UDP is used)")]
    Transport(String),
    #[error(
        "mDNS candidate {0} cannot be resolved here; the peer's checks will reach us as peer-reflexive"
    )]
    Mdns(String),
    #[error("candidate address {0} is a host name")]
    HostName(String),
}

/// RFC 8445 §5.1.2.1 type preferences.
pub(crate) fn type_preference(kind: CandidateKind) -> u32 {
    match kind {
        CandidateKind::Host => 126,
        CandidateKind::Prflx => 110,
        CandidateKind::Srflx => 100,
        CandidateKind::Relay => 0,
    }
}

/// A candidate's priority (component 1).
pub(crate) fn priority(kind: CandidateKind, local_preference: u16) -> u32 {
    (type_preference(kind) << 24) | (u32::from(local_preference) << 8) | 255
}

/// The priority of a pair (RFC 8445 §6.1.2.3).
pub(crate) fn pair_priority(controlling: u32, controlled: u32) -> u64 {
    let (g, d) = (u64::from(controlling), u64::from(controlled));
    (1 << 32) * g.min(d) + 2 * g.max(d) + u64::from(g > d)
}

fn kind_name(kind: CandidateKind) -> &'static str {
    match kind {
        CandidateKind::Host => "host",
        CandidateKind::Srflx => "srflx",
        CandidateKind::Prflx => "prflx",
        CandidateKind::Relay => "relay",
    }
}

impl LocalCandidate {
    /// The `candidate:` line for signaling.
    pub(crate) fn to_line(&self) -> String {
        let mut line = format!(
            "candidate:{} 1 udp {} {} {} typ {}",
            self.foundation,
            self.priority,
            self.address.ip(),
            self.address.port(),
            kind_name(self.kind)
        );
        if self.kind != CandidateKind::Host {
            let related = self.related.unwrap_or(self.base);
            line.push_str(&format!(" raddr {} rport {}", related.ip(), related.port()));
        }
        line.push_str(" generation 0");
        line
    }
}

impl fmt::Display for RemoteCandidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", kind_name(self.kind), self.address)
    }
}

/// Parse a remote `candidate:` line (with or without the `a=` / `candidate:` prefix).
pub(crate) fn parse_candidate(line: &str) -> Result<RemoteCandidate, CandidateError> {
    let line = line.trim();
    let line = line.strip_prefix("a=").unwrap_or(line);
    let line = line.strip_prefix("candidate:").unwrap_or(line);
    let fields: Vec<&str> = line.split_ascii_whitespace().collect();
    if fields.len() < 8 {
        return Err(CandidateError::Malformed("fewer than 8 fields"));
    }
    let foundation = fields[0];
    if foundation.is_empty() || foundation.len() > 32 {
        return Err(CandidateError::Malformed("bad foundation"));
    }
    let component: u32 = fields[1]
        .parse()
        .map_err(|_| CandidateError::Malformed("bad component"))?;
    if component != 1 {
        return Err(CandidateError::Component(component));
    }
    if !fields[2].eq_ignore_ascii_case("udp") {
        return Err(CandidateError::Transport(
            fields[2].chars().take(16).collect(),
        ));
    }
    let priority: u32 = fields[3]
        .parse()
        .map_err(|_| CandidateError::Malformed("bad priority"))?;
    let port: u16 = fields[5]
        .parse()
        .map_err(|_| CandidateError::Malformed("bad port"))?;
    if fields[6] != "typ" {
        return Err(CandidateError::Malformed("no typ"));
    }
    let kind = match fields[7] {
        "host" => CandidateKind::Host,
        "srflx" => CandidateKind::Srflx,
        "prflx" => CandidateKind::Prflx,
        "relay" => CandidateKind::Relay,
        _ => return Err(CandidateError::Malformed("unknown candidate type")),
    };
    let host = fields[4];
    let ip: IpAddr = match host.parse() {
        Ok(ip) => ip,
        Err(_) if host.to_ascii_lowercase().ends_with(".local") => {
            return Err(CandidateError::Mdns(host.chars().take(64).collect()));
        }
        Err(_) => return Err(CandidateError::HostName(host.chars().take(64).collect())),
    };
    if port == 0 {
        return Err(CandidateError::Malformed("port 0"));
    }
    Ok(RemoteCandidate {
        kind,
        address: SocketAddr::new(ip, port),
        priority,
        foundation: foundation.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_browser_lines_parse() {
        let c = LocalCandidate {
            kind: CandidateKind::Srflx,
            address: "198.18.0.11:40000".parse().unwrap(),
            base: "198.19.1.2:5000".parse().unwrap(),
            priority: priority(CandidateKind::Srflx, 65535),
            foundation: "2".into(),
            related: Some("198.19.1.2:5000".parse().unwrap()),
            relay_protocol: None,
        };
        let line = c.to_line();
        let r = parse_candidate(&line).unwrap();
        assert_eq!(r.kind, CandidateKind::Srflx);
        assert_eq!(r.address, c.address);
        assert_eq!(r.priority, c.priority);
        let chrome = "candidate:3145426744 1 udp 2122260223 198.18.50.1 54321 typ host \
                      generation 0 ufrag Ab3d network-id 1 network-cost 10";
        let r = parse_candidate(chrome).unwrap();
        assert_eq!(
            r.address,
            "198.18.50.1:54321".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(r.kind, CandidateKind::Host);
    }

    #[test]
    fn unusable_lines_say_why() {
        let mdns = "candidate:1 1 udp 2122260223 1f5e2c9a-7f3b-4d2e-9c1a-0b2c3d4e5f60.local \
                    5000 typ host";
        assert!(matches!(
            parse_candidate(mdns),
            Err(CandidateError::Mdns(_))
        ));
        let tcp = "candidate:1 1 tcp 1518280447 198.18.0.1 9 typ host tcptype active";
        assert!(matches!(
            parse_candidate(tcp),
            Err(CandidateError::Transport(_))
        ));
        let rtcp = "candidate:1 2 udp 2122260222 198.18.0.1 5001 typ host";
        assert_eq!(parse_candidate(rtcp), Err(CandidateError::Component(2)));
        assert!(parse_candidate("candidate:garbage").is_err());
        assert!(parse_candidate("").is_err());
    }

    #[test]
    fn priorities_follow_rfc_8445() {
        assert!(priority(CandidateKind::Host, 65535) > priority(CandidateKind::Srflx, 65535));
        assert!(priority(CandidateKind::Srflx, 0) > priority(CandidateKind::Relay, 65535));
        let (a, b) = (
            priority(CandidateKind::Host, 1),
            priority(CandidateKind::Relay, 1),
        );
        assert!(pair_priority(a, a) > pair_priority(a, b));
        assert_ne!(pair_priority(a, b), pair_priority(b, a));
    }
}
