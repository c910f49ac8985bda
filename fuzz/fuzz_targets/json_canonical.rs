#![no_main]
//! See trackd_core::properties::json_canonical.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = trackd_core::properties::json_canonical(data);
});
