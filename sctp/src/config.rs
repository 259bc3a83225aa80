//! Settings of one association, with the values chosen for WebRTC data channels over DTLS.

use std::time::Duration;

/// How one association behaves. [`Config::default`] is tuned for data channels; see the
/// field docs for why each value was chosen.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// SCTP port on both sides (`a=sctp-port`; 5000 by convention).
    pub local_port: u16,
    /// The peer's SCTP port.
    pub remote_port: u16,
    /// Largest SCTP packet, common header included. 1191 bytes: what fits a 1280-byte IPv6
    /// packet after IPv6 (40), UDP (8), DTLS 1.2 with AES-GCM (37) and a TURN ChannelData
    /// header (4) — the same budget libwebrtc uses, so no path fragments it.
    pub max_packet_size: usize,
    /// Receive buffer: the most this side holds of data that arrived and was not consumed yet
    /// (reassembly plus delivered-but-unread). Advertised as the receive window, so it also
    /// bounds what a peer can have in flight: 8 MiB covers 100 Mbit/s at 600 ms RTT.
    pub receive_window: u32,
    /// Largest incoming message accepted; larger ones abort the association.
    pub max_message_size: usize,
    /// Streams in each direction.
    pub streams: u16,
    /// First retransmission timeout, before any RTT was measured (also the INIT/COOKIE
    /// retransmission timer). 300 ms: one lost handshake packet costs 300 ms, not 1–3 s.
    pub rto_initial: Duration,
    /// Lower bound of the retransmission timeout. Losses are normally found by RACK and tail
    /// loss probes long before; the RTO is the backstop. 200 ms (as Linux TCP): with 0–40 ms
    /// of jitter on a 50 ms path, 120 ms fired spuriously and 60 ms resent half the data
    /// (`proxim-tune`).
    pub rto_min: Duration,
    /// Upper bound of the computed retransmission timeout.
    pub rto_max: Duration,
    /// Upper bound of a backed-off timer: after an outage the next retransmission comes at
    /// most this long after the previous one, so the link resumes within this once the path
    /// is back.
    pub max_backoff: Duration,
    /// How long a lone DATA packet waits for another before it is acknowledged.
    pub delayed_ack: Duration,
    /// INIT / COOKIE ECHO retransmissions before the handshake gives up.
    pub max_init_retransmits: u32,
    /// Consecutive retransmission timeouts without progress before the association fails
    /// (`None`: never; liveness is then the job of ICE consent).
    pub max_retransmits: Option<u32>,
    /// Initial congestion window, in packets.
    pub initial_cwnd_packets: u32,
    /// Accept packets with a zero checksum (RFC 9653, DTLS as the error detection method) and
    /// send them when the peer accepts them too.
    pub zero_checksum: bool,
    /// Pace sends at the congestion controller's rate instead of sending a window at once.
    pub pacing: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            local_port: 5000,
            remote_port: 5000,
            max_packet_size: 1191,
            receive_window: 8 * 1024 * 1024,
            max_message_size: 256 * 1024,
            streams: 1024,
            rto_initial: Duration::from_millis(300),
            rto_min: Duration::from_millis(200),
            rto_max: Duration::from_secs(10),
            max_backoff: Duration::from_secs(2),
            delayed_ack: Duration::from_millis(20),
            max_init_retransmits: 10,
            max_retransmits: None,
            initial_cwnd_packets: 10,
            zero_checksum: true,
            pacing: true,
        }
    }
}
