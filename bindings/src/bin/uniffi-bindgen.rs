//! The uniffi binding generator, built from the same uniffi version as the library it reads.
//!
//! `cargo run -p proxim-bindings --features cli --bin uniffi-bindgen -- generate \
//!   --library target/debug/libproxim.so --language kotlin --out-dir <dir>`

fn main() {
    uniffi::uniffi_bindgen_main()
}
