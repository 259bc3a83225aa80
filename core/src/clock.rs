//! The drivers' clock. The sans-IO machines take `now: Instant` as an input; the async drivers
//! read it from tokio's clock, so tests with `tokio::time::pause()` step it by hand.

use std::time::Instant;

/// Now, by tokio's clock.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Sleep until a machine's next deadline; forever when it has none.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await,
        None => std::future::pending().await,
    }
}
