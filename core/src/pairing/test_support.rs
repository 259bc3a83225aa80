//! Fixtures shared by the unit tests of the phone and desktop pairing machines.

use proxim_protocol::{
    DeviceId, DeviceName, PairOutcome, PeerDevice, RoutingCode, ServerMessage, SessionId,
};

pub(super) const S1: &str = "11111111111111111111111111111111";
pub(super) const S2: &str = "22222222222222222222222222222222";
pub(super) const S3: &str = "33333333333333333333333333333333";

/// A device whose id and name are both `name`.
pub(super) fn device(name: &str) -> PeerDevice {
    PeerDevice {
        device_id: DeviceId::new(name).unwrap(),
        device_name: DeviceName::new(name).unwrap(),
    }
}

pub(super) fn session(s: &str) -> SessionId {
    SessionId::new(s).unwrap()
}

pub(super) fn code(c: &str) -> RoutingCode {
    RoutingCode::new(c).unwrap()
}

/// The server's `pair_result`; an accepted one names `peer` as the other side.
pub(super) fn pair_result(s: Option<&str>, outcome: PairOutcome, peer: &str) -> ServerMessage {
    ServerMessage::PairResult {
        session: s.map(session),
        outcome,
        peer: (outcome == PairOutcome::Accepted).then(|| device(peer)),
        auth: None,
    }
}
