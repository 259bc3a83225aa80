//! Connection statistics: the selected candidate pair from rtc's ICE transport, the round-trip
//! time from rtc's stats report, bytes and messages from the driver's own counters.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::transport::{RTCIceCandidate, RTCIceCandidateType};
use rtc::statistics::StatsSelector;

use super::{CandidateInfo, CandidateKind, ConnectionStats, PeerError};

/// Data channel traffic counted by the driver.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Counters {
    pub(super) bytes_sent: u64,
    pub(super) bytes_received: u64,
    pub(super) messages_sent: u64,
    pub(super) messages_received: u64,
}

pub(super) fn collect_stats(
    pc: &mut RTCPeerConnection,
    counters: &Counters,
    relays: &super::relay::Relays,
) -> Result<ConnectionStats, PeerError> {
    let pair = pc
        .sctp()
        .and_then(|sctp| {
            sctp.transport()
                .ice_transport()
                .get_selected_candidate_pair()
        })
        .ok_or(PeerError::NotConnected)?;
    let mut local = candidate_info(pair.local())?;
    if local.kind == CandidateKind::Relay {
        local.relay_protocol = relays.transport_of(local.address);
    }
    let remote = candidate_info(pair.remote())?;
    Ok(ConnectionStats {
        local,
        remote,
        rtt: round_trip_time(pc),
        bytes_sent: counters.bytes_sent,
        bytes_received: counters.bytes_received,
        messages_sent: counters.messages_sent,
        messages_received: counters.messages_received,
    })
}

fn candidate_info(c: &RTCIceCandidate) -> Result<CandidateInfo, PeerError> {
    let ip: IpAddr = c
        .address
        .parse()
        .map_err(|_| PeerError::Rtc(format!("candidate address `{}` is not an IP", c.address)))?;
    let kind = match c.typ {
        RTCIceCandidateType::Srflx => CandidateKind::Srflx,
        RTCIceCandidateType::Prflx => CandidateKind::Prflx,
        RTCIceCandidateType::Relay => CandidateKind::Relay,
        _ => CandidateKind::Host,
    };
    Ok(CandidateInfo {
        kind,
        address: SocketAddr::new(ip, c.port),
        protocol: c.protocol.to_string(),
        relay_protocol: None,
    })
}

/// transport → selected_candidate_pair_id → pair → current_round_trip_time (seconds).
fn round_trip_time(pc: &mut RTCPeerConnection) -> Option<Duration> {
    let report = pc.get_stats(std::time::Instant::now(), StatsSelector::None);
    let pair_id = report.transport()?.selected_candidate_pair_id.clone();
    let pair = report
        .candidate_pairs()
        .find(|p| p.stats.id == pair_id || p.stats.id.ends_with(&pair_id))
        .or_else(|| report.candidate_pairs().find(|p| p.nominated))?;
    let rtt = if pair.current_round_trip_time > 0.0 {
        pair.current_round_trip_time
    } else if pair.responses_received > 0 {
        pair.total_round_trip_time / pair.responses_received as f64
    } else {
        return None;
    };
    Duration::try_from_secs_f64(rtt).ok()
}
