#![no_main]
//! See trackd_core::properties::track_case: the input seeds the generator of bodies, most of
//! them valid, the rest one mutation from valid; each must get exactly its verdict.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    trackd_fuzz::record(trackd_core::properties::track_case(data));
});
