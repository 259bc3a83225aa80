//! DTLS 1.2 over the selected ICE pair: webrtc-rs's sans-IO `rtc-dtls`, with the certificate
//! checked against the SDP's fingerprints and handshake retransmissions on Proxim's schedule.
//!
//! `rtc-dtls` retransmits a flight at a fixed interval, at most 7 times. The interval is set
//! from the RTT ICE measured (half of it, at least 100 ms: a lost handshake packet costs a
//! fraction of a round trip more, not a fixed second), and this wrapper holds back
//! `handle_timeout` so successive retransmissions back off exponentially (capped at 1 s): a
//! slow or lossy path gets seconds, a fast one does not wait.
//!
//! `rtc-dtls` 0.21.1 drops its retransmission timer whenever a handshake record arrives that
//! does not complete the next flight — the peer's retransmission of its previous flight, or
//! part of a flight whose other records were lost — and then waits forever (found with
//! `peer::sim` at 5 % loss: about one handshake in 40 never finished). The wrapper keeps the
//! datagrams of the last flight it sent, and when the handshake is stalled without a timer it
//! sends them again itself, on the same backoff. Records the peer already has are dropped by
//! its replay window; the lost ones complete the flight.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::dtls::config::{ClientAuthType, ConfigBuilder, ExtendedMasterSecretType};
use rtc::dtls::endpoint::{Endpoint, EndpointEvent};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::shared::TransportProtocol;
use sha2::Digest;

use super::sdp::SdpFingerprint;

/// The key under which `rtc-dtls` keeps the one association (never on the wire: ICE decides
/// where packets go).
const PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 9);
/// Replays of a stalled flight before the handshake gives up (with the backoff capped at 1 s,
/// about 10 s).
const MAX_REPLAYS: u32 = 12;
/// Bounds of the first retransmission interval.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_INTERVAL: Duration = Duration::from_secs(1);

/// Where the DTLS association stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DtlsState {
    Handshaking,
    Connected,
    /// The peer sent close_notify.
    Closed,
    Failed(String),
}

/// Why the certificate was refused, kept by the verification callback for the error message.
#[derive(Debug, Default)]
struct Verdict {
    refused: Option<String>,
}

pub(crate) struct DtlsTransport {
    endpoint: Endpoint,
    client: bool,
    state: DtlsState,
    interval: Duration,
    /// Retransmissions so far, and when the next one is allowed.
    retransmits: u32,
    hold_until: Option<Instant>,
    verdict: Arc<Mutex<Verdict>>,
    incoming: VecDeque<BytesMut>,
    /// The datagrams of the last handshake flight sent, for [`Self::replay_at`].
    last_flight: Vec<BytesMut>,
    /// An input happened: the next datagrams sent start a new flight.
    new_burst: bool,
    /// When to send `last_flight` again (the handshake is stalled and `rtc-dtls` has no timer).
    replay_at: Option<Instant>,
    replays: u32,
    replay_queue: VecDeque<BytesMut>,
}

impl std::fmt::Debug for DtlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsTransport")
            .field("client", &self.client)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl DtlsTransport {
    /// Start DTLS as client (sends the ClientHello now) or server. `fingerprints` are the
    /// peer's from its SDP: its certificate must hash to one of them.
    pub(crate) fn new(
        now: Instant,
        client: bool,
        certificate: rtc::dtls::crypto::Certificate,
        fingerprints: Vec<SdpFingerprint>,
        rtt: Option<Duration>,
        fixed_interval: Option<Duration>,
    ) -> Result<DtlsTransport, String> {
        let provider = rtc::crypto::default_provider().map_err(|e| e.to_string())?;
        // Half a round trip, at least 100 ms: a flight lost on a lossy path costs little, and
        // the backoff keeps spurious retransmissions on a slow one to a few (proxim-tune: at
        // 5 % loss the 99th percentile time to open is 410 ms at 50 ms RTT and 1.6 s at
        // 200 ms, against 1.3 s and 2.8 s with rtc-dtls's fixed 1 s).
        let interval = fixed_interval.unwrap_or_else(|| {
            rtt.map_or(Duration::from_millis(300), |rtt| rtt / 2)
                .clamp(MIN_INTERVAL, MAX_INTERVAL)
        });
        let verdict = Arc::new(Mutex::new(Verdict::default()));
        let seen = verdict.clone();
        let verify: rtc::dtls::config::VerifyPeerCertificateFn =
            Arc::new(move |certs: &[Vec<u8>], _| {
                let result = check_certificate(certs.first().map(Vec::as_slice), &fingerprints);
                if let Err(reason) = &result
                    && let Ok(mut v) = seen.lock()
                {
                    v.refused = Some(reason.clone());
                }
                result.map_err(|_| rtc::shared::error::Error::ErrNoMatchingCertificateFingerprint)
            });
        let config = ConfigBuilder::default()
            .with_crypto_provider(provider)
            .with_certificates(vec![certificate])
            .with_client_auth(ClientAuthType::RequireAnyClientCert)
            .with_insecure_skip_verify(true)
            .with_verify_peer_certificate(Some(verify))
            .with_extended_master_secret(ExtendedMasterSecretType::Require)
            // Browsers ask for SRTP keying in every ClientHello, media or not; a server with no
            // profile refuses the handshake. Offer the usual ones (no SRTP is ever used).
            .with_srtp_protection_profiles(vec![
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            ])
            .with_flight_interval(interval)
            .build(client, None)
            .map_err(|e| e.to_string())?;
        let config = Arc::new(config);
        let mut endpoint = if client {
            Endpoint::new(PEER, TransportProtocol::UDP, None)
        } else {
            Endpoint::new(PEER, TransportProtocol::UDP, Some(config.clone()))
        };
        if client {
            endpoint
                .connect(now, PEER, config, None)
                .map_err(|e| e.to_string())?;
        }
        Ok(DtlsTransport {
            endpoint,
            client,
            state: DtlsState::Handshaking,
            interval,
            retransmits: 0,
            hold_until: None,
            verdict,
            incoming: VecDeque::new(),
            last_flight: Vec::new(),
            new_burst: true,
            replay_at: None,
            replays: 0,
            replay_queue: VecDeque::new(),
        })
    }

    pub(crate) fn state(&self) -> &DtlsState {
        &self.state
    }

    /// A DTLS record arrived.
    pub(crate) fn handle_datagram(&mut self, now: Instant, data: BytesMut) {
        if matches!(self.state, DtlsState::Closed | DtlsState::Failed(_)) {
            return;
        }
        self.new_burst = true;
        match self.endpoint.read(now, PEER, None, data) {
            Ok(events) => {
                for event in events {
                    match event {
                        EndpointEvent::HandshakeComplete => {
                            tracing::debug!(client = self.client, "DTLS handshake complete");
                            self.state = DtlsState::Connected;
                            self.hold_until = None;
                        }
                        EndpointEvent::ApplicationData(data) => self.incoming.push_back(data),
                        EndpointEvent::PeerClosed => {
                            tracing::debug!("DTLS close_notify from the peer");
                            self.state = DtlsState::Closed;
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => {
                if self.state == DtlsState::Handshaking {
                    let reason = self
                        .verdict
                        .lock()
                        .ok()
                        .and_then(|v| v.refused.clone())
                        .unwrap_or_else(|| e.to_string());
                    tracing::warn!(%reason, "DTLS handshake failed");
                    self.state = DtlsState::Failed(reason);
                } else {
                    tracing::trace!(error = %e, "DTLS record refused");
                }
            }
        }
        self.check_stall(now);
    }

    /// The next decrypted application payload (an SCTP packet).
    pub(crate) fn poll_incoming(&mut self) -> Option<BytesMut> {
        self.incoming.pop_front()
    }

    /// The next record to send.
    pub(crate) fn poll_transmit(&mut self) -> Option<BytesMut> {
        if let Some(replayed) = self.replay_queue.pop_front() {
            return Some(replayed);
        }
        let record = self.endpoint.poll_transmit()?.message;
        if self.state == DtlsState::Handshaking {
            if self.new_burst {
                self.new_burst = false;
                self.last_flight.clear();
                // rtc-dtls sent a flight of its own: its timer runs again.
                self.replay_at = None;
            }
            self.last_flight.push(record.clone());
        }
        Some(record)
    }

    /// The handshake waits for the peer and `rtc-dtls` has no retransmission timer: send the
    /// last flight again ourselves after the current backoff.
    fn check_stall(&mut self, now: Instant) {
        let stalled = self.state == DtlsState::Handshaking
            && self.endpoint.poll_timeout(&PEER).is_none()
            && !self.last_flight.is_empty();
        if !stalled {
            self.replay_at = None;
            return;
        }
        if self.replay_at.is_none() {
            self.replay_at = Some(now + self.backoff());
        }
    }

    fn backoff(&self) -> Duration {
        let steps = (self.retransmits + self.replays).min(4);
        (self.interval * (1 << steps)).min(MAX_INTERVAL)
    }

    /// Encrypt and queue application data.
    pub(crate) fn send(&mut self, now: Instant, data: &[u8]) -> Result<(), String> {
        self.endpoint
            .write(now, PEER, data)
            .map_err(|e| e.to_string())
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.state != DtlsState::Handshaking {
            return None;
        }
        let own = self.own_timeout();
        match (own, self.replay_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// `rtc-dtls`'s retransmission timer, held back by the backoff.
    fn own_timeout(&self) -> Option<Instant> {
        self.endpoint
            .poll_timeout(&PEER)
            .map(|t| self.hold_until.map_or(t, |h| t.max(h)))
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.state != DtlsState::Handshaking {
            return;
        }
        if self.replay_at.is_some_and(|t| t <= now) {
            self.replays += 1;
            if self.replays > MAX_REPLAYS {
                self.state = DtlsState::Failed("the peer stopped answering the handshake".into());
                return;
            }
            tracing::debug!(
                attempt = self.replays,
                client = self.client,
                "DTLS flight replayed"
            );
            self.replay_queue.extend(self.last_flight.iter().cloned());
            self.replay_at = Some(now + self.backoff());
        }
        if self.own_timeout().is_none_or(|t| t > now) {
            return;
        }
        self.new_burst = true;
        self.retransmits += 1;
        tracing::debug!(
            attempt = self.retransmits,
            client = self.client,
            "DTLS flight sent again"
        );
        if let Err(e) = self.endpoint.handle_timeout(PEER, now) {
            self.state = DtlsState::Failed(format!("handshake gave up: {e}"));
            return;
        }
        // Back off: the next retransmission at twice the previous wait, at most 1 s.
        self.hold_until = Some(now + self.backoff());
    }

    /// Send close_notify.
    pub(crate) fn close(&mut self, now: Instant) {
        if matches!(self.state, DtlsState::Connected | DtlsState::Handshaking) {
            self.endpoint.stop(now, PEER);
            self.state = DtlsState::Closed;
        }
    }
}

/// Whether the peer's certificate hashes to one of its SDP fingerprints (of an algorithm this
/// side can compute).
fn check_certificate(cert: Option<&[u8]>, fingerprints: &[SdpFingerprint]) -> Result<(), String> {
    let cert = cert.ok_or("the peer sent no certificate")?;
    let mut known = 0;
    for fp in fingerprints {
        let hash = match fp.algorithm.as_str() {
            "sha-256" => sha2::Sha256::digest(cert).to_vec(),
            "sha-384" => sha2::Sha384::digest(cert).to_vec(),
            "sha-512" => sha2::Sha512::digest(cert).to_vec(),
            _ => continue,
        };
        known += 1;
        if hash == fp.value {
            return Ok(());
        }
    }
    if known == 0 {
        return Err("the SDP has no fingerprint of a supported hash (sha-256/384/512)".into());
    }
    Err("the DTLS certificate does not match the fingerprint in the SDP".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_checked_against_any_supported_fingerprint() {
        let cert = b"not really DER, but hashed the same way";
        let sha384 = SdpFingerprint {
            algorithm: "sha-384".into(),
            value: sha2::Sha384::digest(cert).to_vec(),
        };
        let other256 = SdpFingerprint {
            algorithm: "sha-256".into(),
            value: vec![0; 32],
        };
        let md5 = SdpFingerprint {
            algorithm: "md5".into(),
            value: vec![0; 16],
        };
        assert!(check_certificate(Some(cert), &[other256.clone(), sha384]).is_ok());
        assert!(check_certificate(Some(cert), &[other256]).is_err());
        assert!(
            check_certificate(Some(cert), &[md5])
                .unwrap_err()
                .contains("supported")
        );
        assert!(check_certificate(None, &[]).is_err());
    }
}
