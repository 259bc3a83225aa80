//! Proxim signaling server.
#![warn(missing_docs)]
