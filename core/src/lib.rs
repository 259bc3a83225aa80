//! Proxim core: pair a phone with a desktop through a signaling server and talk to it directly
//! over WebRTC data channels.
//!
//! # Layers
//! - [`pairing`]: the pairing state machines for both roles, sans-IO (time is an input).
//! - [`signaling`]: the signaling client driver on tokio-tungstenite (hello/welcome,
//!   heartbeats, reconnect with backoff, per-session demultiplexing into [`SignalLink`]s).
//! - [`peer`]: Proxim's own tokio driver over webrtc-rs's sans-IO core `rtc`, data channels,
//!   file transfer and stats.
//! - [`doctor`]: connectivity checks (signaling, STUN mapping behaviour, TURN) and a verdict.
//!
//! # The run-loop rule
//! Every driver here follows one rule: after any input (a packet, a timer, a command, a
//! signal), drain every output of the sans-IO machine — packets, events, reads — until it
//! reports its next timeout. A packet produced while handling an event is sent in the same
//! turn, never on the next timer.
#![warn(missing_docs)]

pub mod auth;
mod client;
mod clock;
mod config;
pub mod doctor;
mod error;
pub mod link;
pub mod pairing;
pub mod peer;
pub mod signaling;
pub mod transfer;
pub mod turn;

pub use auth::{AuthMethod, TrustedDevice};
pub use client::{
    Connection, Desktop, DesktopEvent, Event, SetupTimings, connect, pair, revoke_device,
    trusted_devices,
};
pub use config::ProximConfig;
pub use error::ProximError;
pub use link::{LinkEvent, SignalLink};
