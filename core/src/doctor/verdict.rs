//! The verdict: what the check results mean for connecting to a peer, in one line. A pure
//! function, unit-tested branch by branch.

use serde::Serialize;

use super::{
    NatMapping, RelayTransport, SignalingFailure, SignalingOutcome, TurnCheck, TurnOutcome,
};

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
    let (kind, summary) = conclude(signaling, mapping, turn);
    Verdict {
        kind,
        path_works: kind.path_works(),
        summary,
    }
}

impl VerdictKind {
    /// Whether a conclusion of this kind means some path is likely to work.
    fn path_works(self) -> bool {
        !matches!(self, VerdictKind::SignalingFailed | VerdictKind::NoPath)
    }
}

/// The kind of conclusion and its summary.
fn conclude(
    signaling: &SignalingOutcome,
    mapping: NatMapping,
    turn: &[TurnCheck],
) -> (VerdictKind, String) {
    if let SignalingOutcome::Failed { failure, .. } = signaling {
        let summary = match failure {
            SignalingFailure::Unreachable | SignalingFailure::TimedOut => {
                "signaling server unreachable"
            }
            SignalingFailure::InvalidUrl => "signaling server URL is invalid",
            SignalingFailure::Tls => "signaling server unreachable: TLS failed",
            SignalingFailure::NotProxim => "no Proxim signaling server at this URL",
            SignalingFailure::Refused => "the signaling server refused this client",
        };
        return (VerdictKind::SignalingFailed, summary.to_owned());
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
    let fallback = relays
        .as_ref()
        .map(|relays| format!("; {relays} as a fallback"));
    match (mapping, relays) {
        (NatMapping::NoNat | NatMapping::EndpointIndependent, _) => (
            VerdictKind::DirectLikely,
            format!(
                "direct connections likely ({mapping}){}",
                fallback.unwrap_or_default()
            ),
        ),
        (NatMapping::Unknown, _) => (
            VerdictKind::DirectPossible,
            format!(
                "direct connections possible, NAT mapping unknown (needs two STUN addresses){}",
                fallback.unwrap_or_else(|| "; no working TURN relay to fall back on".to_owned())
            ),
        ),
        (NatMapping::AddressPortDependent, Some(relays)) => (
            VerdictKind::RelayNeeded,
            format!("relay needed (symmetric NAT): {relays}"),
        ),
        (NatMapping::AddressPortDependent, None) => (
            VerdictKind::NoPath,
            "no working path: symmetric NAT and no working TURN relay (direct only to peers \
             without NAT)"
                .to_owned(),
        ),
        (NatMapping::Blocked, Some(relays)) if udp_relay => (
            VerdictKind::RelayOnly,
            format!("STUN servers did not answer, relay only: {relays}"),
        ),
        (NatMapping::Blocked, Some(relays)) => {
            (VerdictKind::RelayOnly, format!("UDP blocked, {relays}"))
        }
        (NatMapping::Blocked, None) if turn.is_empty() => (
            VerdictKind::NoPath,
            "no working path: UDP to STUN blocked or servers down, and no TURN relay configured"
                .to_owned(),
        ),
        (NatMapping::Blocked, None) => (
            VerdictKind::NoPath,
            "no working path: UDP blocked and no TURN over TCP/TLS".to_owned(),
        ),
        (NatMapping::NotTested, Some(relays)) => (
            VerdictKind::RelayOnly,
            format!("no STUN server to test with, relay only: {relays}"),
        ),
        (NatMapping::NotTested, None) => (
            VerdictKind::NoPath,
            "no working path across networks: no usable STUN server and no working TURN relay \
             (same-network connections only)"
                .to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::tests::{relay, welcomed};

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
    fn verdict_after_a_welcome() {
        use NatMapping::{
            AddressPortDependent, Blocked, EndpointIndependent, NoNat, NotTested, Unknown,
        };
        use RelayTransport::{Tcp, Tls, Udp};
        use VerdictKind::{DirectLikely, DirectPossible, NoPath, RelayNeeded, RelayOnly};
        // (mapping, TURN checks (transport, works), kind, path works, part of the summary)
        type Case = (
            NatMapping,
            &'static [(RelayTransport, bool)],
            VerdictKind,
            bool,
            &'static str,
        );
        #[rustfmt::skip]
        let cases: [Case; 13] = [
            (EndpointIndependent, &[], DirectLikely, true, "direct connections likely (endpoint-independent mapping)"),
            (NoNat, &[(Udp, true)], DirectLikely, true, "(no NAT); TURN/UDP works as a fallback"),
            (Unknown, &[], DirectPossible, true, "no working TURN relay to fall back on"),
            (Unknown, &[(Tls, true)], DirectPossible, true, "TURN/TLS works as a fallback"),
            (AddressPortDependent, &[(Udp, true), (Tcp, false)], RelayNeeded, true, "relay needed (symmetric NAT): TURN/UDP works"),
            (AddressPortDependent, &[(Tls, true), (Udp, true), (Udp, true)], RelayNeeded, true, "TURN/UDP, TURN/TLS work"),
            (AddressPortDependent, &[(Udp, false)], NoPath, false, "symmetric NAT and no working TURN relay"),
            (Blocked, &[(Udp, false), (Tls, true)], RelayOnly, true, "UDP blocked, TURN/TLS works"),
            (Blocked, &[(Udp, true)], RelayOnly, true, "STUN servers did not answer, relay only: TURN/UDP works"),
            (Blocked, &[(Udp, false), (Tcp, false)], NoPath, false, "no working path: UDP blocked and no TURN over TCP/TLS"),
            (Blocked, &[], NoPath, false, "UDP to STUN blocked or servers down, and no TURN relay configured"),
            (NotTested, &[(Tcp, true)], RelayOnly, true, "relay only: TURN/TCP works"),
            (NotTested, &[], NoPath, false, "same-network connections only"),
        ];
        for (mapping, relays, kind, works, text) in cases {
            let turn: Vec<TurnCheck> = relays.iter().map(|&(t, ok)| relay(t, ok)).collect();
            check(&welcomed(), mapping, &turn, kind, works, text);
        }
    }
}
