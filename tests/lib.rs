//! Test support shared by the end-to-end tests (`tests/*.rs`) and the core's TURN tests: a real
//! coturn on loopback.
#![allow(clippy::unwrap_used)]

pub mod coturn;
pub mod mitm;
