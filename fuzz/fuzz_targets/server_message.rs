//! `ServerMessage::decode` on any text, checked by
//! `proxim_fuzz::protocol::check_server_frame` (`protocol/tests/support/invariants.rs`).
//! A new target: copy this file, change the check, add a `[[bin]]` to `fuzz/Cargo.toml`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    proxim_fuzz::check(data, proxim_fuzz::protocol::check_server_frame);
});
