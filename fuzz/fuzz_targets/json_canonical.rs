#![no_main]
//! See trackd_core::properties::json_canonical.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    trackd_fuzz::record(trackd_core::properties::json_canonical(data).is_ok());
});
