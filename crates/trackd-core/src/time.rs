//! Time: UTC instants in microseconds, the injectable [`Clock`], and `created_at` parsing.

use std::fmt;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};

/// A UTC instant, in microseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The instant `micros` microseconds after the Unix epoch.
    pub const fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    /// Microseconds since the Unix epoch.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// This instant moved by `micros` (saturating).
    pub const fn add_micros(self, micros: i64) -> Self {
        Timestamp(self.0.saturating_add(micros))
    }

    /// RFC 3339 in UTC with microseconds (`2023-05-30T04:46:31.000000Z`).
    pub fn to_rfc3339(self) -> String {
        match DateTime::<Utc>::from_timestamp_micros(self.0) {
            Some(t) => t.to_rfc3339_opts(SecondsFormat::Micros, true),
            None => self.0.to_string(),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// The source of "now": the system clock in production, a [`ManualClock`] in tests, so the
/// dedup window can be crossed without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp(Utc::now().timestamp_micros())
    }
}

/// A clock that moves only when told to.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

#[cfg(any(test, feature = "testing"))]
impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock(std::sync::atomic::AtomicI64::new(start.as_micros()))
    }

    /// Moves the clock forward by `secs` seconds.
    pub fn advance_secs(&self, secs: i64) {
        self.0
            .fetch_add(secs * 1_000_000, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(any(test, feature = "testing"))]
impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// The earliest and latest accepted event times: years 1 to 9999 (what ISO 8601 writes with
/// four digits, and what every store can index).
const MIN_MICROS: i64 = -62_135_596_800_000_000;
const MAX_MICROS: i64 = 253_402_300_799_999_999;

/// Parses an ISO 8601 time: `Z`, `+00:00` or `+0000` offsets, with or without fractional
/// seconds, converted to UTC; without an offset it is UTC.
pub fn parse_iso8601(s: &str) -> Option<Timestamp> {
    let micros = if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        t.timestamp_micros()
    } else if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z") {
        t.timestamp_micros()
    } else if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
        t.and_utc().timestamp_micros()
    } else {
        return None;
    };
    in_range(micros)
}

/// Parses Unix seconds written as a JSON number (`1388534400`, `1388534400.25`).
pub fn parse_unix_seconds(text: &str) -> Option<Timestamp> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.contains(['e', 'E']) || int.contains(['e', 'E']) {
        let secs: f64 = text.parse().ok()?;
        let micros = (secs * 1e6).round();
        if !micros.is_finite() || micros.abs() > i64::MAX as f64 {
            return None;
        }
        return in_range(micros as i64);
    }
    let secs: i64 = int.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut frac_micros = 0i64;
    for (i, d) in frac.bytes().take(6).enumerate() {
        frac_micros += i64::from(d - b'0') * 10i64.pow(5 - i as u32);
    }
    if int.starts_with('-') {
        frac_micros = -frac_micros;
    }
    in_range(secs.checked_mul(1_000_000)?.checked_add(frac_micros)?)
}

/// `micros` as a time, when it falls in years 1 to 9999.
pub(crate) fn in_range(micros: i64) -> Option<Timestamp> {
    (MIN_MICROS..=MAX_MICROS)
        .contains(&micros)
        .then_some(Timestamp(micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_685_421_991_000_000; // 2023-05-30T04:46:31Z

    #[test]
    fn iso8601_offsets_all_mean_the_same_instant() {
        for s in [
            "2023-05-30T04:46:31Z",
            "2023-05-30T04:46:31+00:00",
            "2023-05-30T04:46:31+0000",
            "2023-05-30T04:46:31",
            "2023-05-30T06:46:31+02:00",
            "2023-05-30T06:46:31+0200",
            "2023-05-30T04:46:31.000Z",
        ] {
            assert_eq!(parse_iso8601(s), Some(Timestamp(T)), "{s}");
        }
        assert_eq!(
            parse_iso8601("2026-11-26T10:00:00.123456Z"),
            Some(Timestamp(1_795_687_200_123_456))
        );
    }

    #[test]
    fn iso8601_rejects_what_is_not_a_time() {
        for s in [
            "",
            "yesterday",
            "2023-13-01T00:00:00Z",
            "2023-05-30",
            "1388534400",
        ] {
            assert_eq!(parse_iso8601(s), None, "{s}");
        }
    }

    #[test]
    fn unix_seconds_integer_and_fraction() {
        assert_eq!(
            parse_unix_seconds("1388534400"),
            Some(Timestamp(1_388_534_400_000_000))
        );
        assert_eq!(
            parse_unix_seconds("1388534400.25"),
            Some(Timestamp(1_388_534_400_250_000))
        );
        assert_eq!(
            parse_unix_seconds("1.3885344e9"),
            Some(Timestamp(1_388_534_400_000_000))
        );
        assert_eq!(parse_unix_seconds("99999999999999999999"), None);
        for bad in ["1.-5", "1..5", "1.5.", "-", "1.x"] {
            assert_eq!(parse_unix_seconds(bad), None, "{bad}");
        }
        assert_eq!(parse_unix_seconds("1e300"), None);
    }

    #[test]
    fn timestamps_print_as_rfc3339_utc() {
        assert_eq!(Timestamp(T).to_rfc3339(), "2023-05-30T04:46:31.000000Z");
    }
}
