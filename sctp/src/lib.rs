//! Proxim's SCTP association for WebRTC data channels: sans-IO, over DTLS.
//!
//! [`Association`] implements what data channels need of SCTP: the four-way handshake (with
//! the INIT collision both WebRTC peers produce, RFC 9260 §5.2), DATA with fragmentation and
//! per-stream ordered or unordered delivery, SACK with gap blocks, partial reliability
//! (FORWARD TSN, RFC 3758), stream reset (RE-CONFIG, RFC 6525) and zero checksums over DTLS
//! (RFC 9653). It has no addresses, sockets or clock: the caller passes packets and time in.
//!
//! # Loss recovery and congestion control
//! Standard SCTP finds losses by counting SACKs that miss a chunk and by a retransmission
//! timer of at least 1 s; on a lossy path that means seconds of stalls. This association uses
//! what today's TCP stacks use instead:
//! - **RACK** (RFC 8985): a chunk is lost once a chunk sent after it was acknowledged and a
//!   reordering window (a quarter of the minimum RTT) has passed — so a lost retransmission is
//!   found like any other loss, within about one round trip.
//! - **Tail loss probes**: when nothing is acknowledged for two smoothed RTTs, one packet
//!   (new data, or the last chunk again) draws a SACK that tells what is missing.
//! - **BBR** congestion control with **pacing**: the sending rate follows the measured
//!   bottleneck bandwidth and minimum RTT, so random loss does not collapse the window.
//! - The retransmission timeout is a backstop, bounded to [`Config::rto_min`] ..
//!   [`Config::rto_max`], with backoff capped at [`Config::max_backoff`].
//!
//! # The run-loop rule
//! After any input — [`Association::handle_input`], [`Association::send`],
//! [`Association::handle_timeout`] — drain [`Association::poll_transmit`] and
//! [`Association::poll_event`] until both return `None`; only then ask
//! [`Association::poll_timeout`] when to call [`Association::handle_timeout`]. Packets are
//! paced: `poll_transmit` returns `None` while the pacer holds data back, and the pacing
//! release is one of the timeouts.

mod association;
mod bbr;
mod config;
mod cookie;
mod inbound;
mod inflight;
mod outbound;
mod pacer;
mod reassembly;
mod reconfig;
mod rtt;
pub mod sim;
mod timer;
mod tsn;
mod wire;

pub use association::{
    Association, AssociationState, CloseReason, Event, InputError, MESSAGE_OVERHEAD, SendError,
    SendOptions, Stats,
};
pub use config::Config;
pub use reassembly::Message;
pub use wire::WireError;
