#![no_main]
//! See trackd_core::properties::profile_body: the first byte picks the operation.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let accepted = match data.split_first() {
        Some((op, body)) => trackd_core::properties::profile_body(*op, body).is_ok(),
        None => false,
    };
    trackd_fuzz::record(accepted);
});
