#![no_main]
//! A whole request body as the server decodes it (the first byte picks the content type:
//! JSON, form, text/plain, none), then validated as a track body and as each `users/*`
//! body. See trackd_server::api::body::check_decode.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((kind, body)) = data.split_first() {
        trackd_server::api::body::check_decode(*kind, body);
    }
});
