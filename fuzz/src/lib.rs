//! What the fuzz targets share: the invariant checks and one way to run them on fuzzer bytes.
//!
//! The protocol's invariants live beside its tests (`protocol/tests/support/invariants.rs`), so
//! the stable mutation test and these targets check the same things. A target is one line:
//! `fuzz_target!(|data: &[u8]| proxim_fuzz::check(data, SOME_CHECK));`. Checks for another
//! crate go in a module of their own here (e.g. `core.rs` for `proxim-core`).

#![forbid(unsafe_code)]

#[path = "../../protocol/tests/support/invariants.rs"]
pub mod protocol;

pub mod core;

/// Run `check` on the fuzzer's bytes read as text (invalid UTF-8 becomes U+FFFD, so every
/// input means something). A broken invariant panics: libFuzzer saves the input as a crash.
pub fn check<T>(data: &[u8], check: impl FnOnce(&str) -> Result<T, String>) {
    let text = String::from_utf8_lossy(data);
    if let Err(violation) = check(&text) {
        panic!("invariant violated: {violation}");
    }
}
