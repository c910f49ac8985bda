#![no_main]
//! See trackd_core::properties::track_body.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    trackd_fuzz::record(trackd_core::properties::track_body(data).is_ok());
});
