//! Test support shared by the end-to-end tests (`tests/*.rs`), the core's TURN tests and the
//! load test: a real coturn on loopback ([`coturn`]) and a malicious signaling server, a
//! rewriting WebSocket proxy ([`mitm`]).
#![allow(clippy::unwrap_used)]
#![warn(missing_docs)]

pub mod coturn;
pub mod mitm;
