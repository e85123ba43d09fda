//! Time as a dependency. Domain code never reads the system clock itself: it is handed
//! a `Clock`, so tests can move time forward (expiry, cooldowns) without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Milliseconds since the Unix epoch, UTC. The one time representation inside
/// ringfence; it is formatted as RFC 3339 only at the HTTP edge.
pub type Millis = i64;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Millis;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        d.as_millis() as Millis
    }
}

/// A clock that only moves when told to; shared by clones.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(start: Millis) -> Self {
        Self(Arc::new(AtomicI64::new(start)))
    }

    /// Starts at the current wall-clock time.
    pub fn starting_now() -> Self {
        Self::new(SystemClock.now())
    }

    pub fn advance(&self, by: std::time::Duration) {
        self.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

/// RFC 3339 with millisecond precision, e.g. `2026-11-25T12:00:00.000Z`.
///
/// Every response carries a few of these, so the common case (years 0–9999) writes
/// its 24 bytes directly; `time`'s format description, which interprets its items at
/// every call, took several times as long. Other years (and instants `time` cannot
/// represent, shown as the epoch) go through it, as before.
pub fn rfc3339(ms: Millis) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return rfc3339_formatted(t);
    }
    let (_, month, day) = t.to_calendar_date();
    let (hour, minute, second, milli) = t.to_hms_milli();
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut value: u32| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year as u32);
    put(5, 2, u32::from(u8::from(month)));
    put(8, 2, u32::from(day));
    put(11, 2, u32::from(hour));
    put(14, 2, u32::from(minute));
    put(17, 2, u32::from(second));
    put(20, 3, u32::from(milli));
    String::from_utf8(out.to_vec()).expect("ASCII digits and separators")
}

fn rfc3339_formatted(t: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&f).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_764_072_000_123), "2025-11-25T12:00:00.123Z");
        assert_eq!(rfc3339(951_782_400_007), "2000-02-29T00:00:00.007Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn the_direct_rfc3339_writes_what_the_format_description_does() {
        use rand::Rng;
        // What rfc3339 was: the format description for every instant.
        let at = |ms: Millis| {
            rfc3339_formatted(
                time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
                    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
            )
        };
        // Year 0 to the end of year 9999, the range written directly, and its edges.
        let (first, last) = (-62_167_219_200_000, 253_402_300_799_999);
        let mut rng = rand::thread_rng();
        let edges = [first, last, 0, -1, 951_868_799_999, 951_868_800_000];
        for ms in edges
            .into_iter()
            .chain((0..100_000).map(|_| rng.gen_range(first..=last)))
        {
            assert_eq!(rfc3339(ms), at(ms), "at {ms} ms");
        }
        // Outside it, the format description answers as it always did.
        assert_eq!(rfc3339(last + 1), at(last + 1));
        assert_eq!(rfc3339(first - 1), at(first - 1));
        assert_eq!(rfc3339(i64::MAX), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1000);
        assert_eq!(c.now(), 1000);
        c.advance(std::time::Duration::from_secs(2));
        assert_eq!(c.clone().now(), 3000);
    }
}
