//! Proxim core.
#![warn(missing_docs)]
