#![no_main]
//! See trackd_core::properties::batch_items.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    trackd_fuzz::record(trackd_core::properties::batch_items(data).is_ok());
});
