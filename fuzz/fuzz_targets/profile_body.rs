#![no_main]
//! See trackd_core::properties::profile_body: the first byte picks the operation.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((op, body)) = data.split_first() {
        let _ = trackd_core::properties::profile_body(*op, body);
    }
});
