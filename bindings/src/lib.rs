//! Kotlin (Android and the host JVM) bindings for Proxim, generated with uniffi.
//!
//! This crate is a wrapper: it mirrors core's types, flattens its errors into
//! [`ProximException`], owns the async runtime and contains no protocol logic. Core does not
//! know uniffi exists.
//!
//! ```kotlin
//! val core = ProximCore(CoreConfig(serverUrl = "wss://proxim.example/ws", deviceName = "Pixel",
//!                                  dataDir = context.filesDir.path), listener)
//! core.pair("K7P2QX-4HT9M").use { connection ->    // suspend; cancellable; or the QR link
//!     println(connection.comparisonCode())           // "123 456": the desktop shows the same
//!     connection.sendText("hello")
//!     connection.sendFile("/sdcard/Download/photo.jpg")   // progress goes to the listener
//!     println(connection.stats().path)               // HOST, SRFLX, PRFLX or RELAY
//! }                                                  // closed here, deterministically
//! val desktop = core.trustedDevices().first { it.role == DeviceRole.DESKTOP }
//! core.connect(desktop.deviceId).use { it.sendText("again") }  // no code: trusted keys
//! ```
//!
//! # Threads
//! - All work runs on one multi-thread tokio runtime owned by this crate ([`runtime`]), shared
//!   by every [`ProximCore`]. `suspend` functions only wait for it; cancelling the coroutine
//!   aborts the work. Call them from any dispatcher except `Dispatchers.Unconfined`.
//! - The [`ProximListener`] is called on a dedicated Proxim thread per core, in event order,
//!   never while Proxim holds a lock (see [`listener`]). It must not block for long; post to
//!   the UI thread before touching views.
//! - On Android the runtime threads and the listener thread are attached to the JVM once, when
//!   they start (needs `System.loadLibrary("proxim")` first, see [`platform`]); tracing goes
//!   to logcat after [`init_logging`].

uniffi::setup_scaffolding!();

pub mod connection;
pub mod error;
pub mod listener;
pub mod platform;
pub mod proxim;
pub mod runtime;
pub mod types;

pub use connection::Connection;
pub use error::ProximException;
pub use listener::ProximListener;
pub use platform::init_logging;
pub use proxim::ProximCore;
pub use types::{
    AuthMethod, CandidateInfo, ConnectionEvent, ConnectionState, ConnectionStats, CoreConfig,
    DeviceRole, FileReport, PairingState, PathType, ReceivedFile, TransferDirection,
    TransferProgress, TrustedDevice,
};
