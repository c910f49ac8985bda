#![no_main]
//! A whole request body as the server decodes it (the first byte picks the content type:
//! JSON, form, text/plain, none), then validated as a track body and as each `users/*`
//! body. See trackd_server::api::body::check_decode. Accepted: valid as a track body or
//! as some `users/*` body.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let accepted = match data.split_first() {
        Some((kind, body)) => match trackd_server::api::body::check_decode(*kind, body) {
            Ok((track, profile)) => track.is_ok() || profile.iter().any(Result::is_ok),
            Err(_) => false,
        },
        None => false,
    };
    trackd_fuzz::record(accepted);
});
