//! `proxim_fuzz::core::check_auth_payload` on any text (fuzz/src/core.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    proxim_fuzz::check(data, proxim_fuzz::core::check_auth_payload);
});
