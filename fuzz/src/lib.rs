//! What the fuzz targets share: with `TRACKD_FUZZ_STATS` set, each target counts the inputs
//! it accepted (a valid body, query, line or document) and refused, and prints the totals
//! when the process exits (libFuzzer ends a run through `exit`, so an `atexit` handler sees
//! the end). `fuzz/run.sh` reads the line to report the share of inputs that reached the
//! success path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static ACCEPTED: AtomicU64 = AtomicU64::new(0);
static REFUSED: AtomicU64 = AtomicU64::new(0);

extern "C" {
    fn atexit(callback: extern "C" fn()) -> i32;
}

extern "C" fn report() {
    eprintln!(
        "trackd-fuzz-stats: accepted={} refused={}",
        ACCEPTED.load(Ordering::Relaxed),
        REFUSED.load(Ordering::Relaxed)
    );
}

/// Counts one input as accepted or refused (only with `TRACKD_FUZZ_STATS` set).
pub fn record(accepted: bool) {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    let enabled = *ENABLED.get_or_init(|| {
        let on = std::env::var_os("TRACKD_FUZZ_STATS").is_some();
        if on {
            // SAFETY: registers a plain function with the C library once.
            unsafe {
                atexit(report);
            }
        }
        on
    });
    if enabled {
        let counter = if accepted { &ACCEPTED } else { &REFUSED };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
