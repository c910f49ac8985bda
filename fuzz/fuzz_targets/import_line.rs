#![no_main]
//! See trackd_core::properties::import_line.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    trackd_fuzz::record(trackd_core::properties::import_line(data).is_ok());
});
