#![no_main]
//! See trackd_core::properties::import_line.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = trackd_core::properties::import_line(data);
});
