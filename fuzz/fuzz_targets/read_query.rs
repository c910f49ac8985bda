#![no_main]
//! See trackd_core::properties::read_query.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    trackd_fuzz::record(trackd_core::properties::read_query(data));
});
