//! Test support shared by the end-to-end tests (`tests/*.rs`), the core's TURN tests and the
//! load test: a real coturn on loopback ([`coturn`]) and a malicious signaling server, a
//! rewriting WebSocket proxy ([`mitm`]).
#![allow(clippy::unwrap_used)]
#![warn(missing_docs)]

pub mod coturn;
pub mod mitm;

/// Log to the test's captured output, filtered by `RUST_LOG` (default `warn`); once per test
/// binary (later calls do nothing).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}
