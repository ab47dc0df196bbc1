//! Time as the registry sees it: a monotonic [`Instant`] for deadlines and a
//! wall-clock [`Timestamp`] for views, both read from tokio's clock so that a
//! test can pause and advance time and see every rule applied to the millisecond.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::time::Instant;

/// Maps tokio's monotonic clock onto wall-clock time.
///
/// The wall time of an instant is the wall time at creation plus the monotonic
/// time elapsed since, so timestamps never jump when the system clock is set,
/// and under `tokio::time::pause` they advance exactly as the test advances.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
    origin_wall: SystemTime,
}

impl Clock {
    /// A clock whose wall time starts at the system's current time.
    pub fn new() -> Self {
        Self::starting_at(SystemTime::now())
    }

    /// A clock whose wall time starts at `wall`, for tests that want fixed timestamps.
    pub fn starting_at(wall: SystemTime) -> Self {
        Self {
            origin: Instant::now(),
            origin_wall: wall,
        }
    }

    /// The current monotonic instant (tokio's, so pausable in tests).
    pub fn now(&self) -> Instant {
        Instant::now()
    }

    /// The wall-clock timestamp of `at`, truncated to the millisecond.
    pub fn timestamp(&self, at: Instant) -> Timestamp {
        let wall = match at.checked_duration_since(self.origin) {
            Some(after) => self.origin_wall + after,
            None => self
                .origin_wall
                .checked_sub(self.origin.duration_since(at))
                .unwrap_or(UNIX_EPOCH),
        };
        let since_epoch = wall.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Timestamp {
            unix_millis: u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The instant whose wall-clock time is `at`: the inverse of
    /// [`timestamp`](Self::timestamp), for facts read back from storage. An
    /// instant too far back for the monotonic clock is the earliest it holds.
    pub fn instant(&self, at: Timestamp) -> Instant {
        match at.system_time().duration_since(self.origin_wall) {
            Ok(after) => self.origin + after,
            Err(before) => {
                let before = before.duration();
                self.origin
                    .checked_sub(before)
                    .unwrap_or_else(|| earliest_before(self.origin, before))
            }
        }
    }
}

/// The earliest instant at most `back` before `origin`, found by halving.
fn earliest_before(origin: Instant, back: Duration) -> Instant {
    let mut step = back;
    let mut at = origin;
    while !step.is_zero() {
        if let Some(earlier) = at.checked_sub(step) {
            at = earlier;
        } else {
            step /= 2;
        }
    }
    at
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// A UTC wall-clock time with millisecond precision, serialized as RFC 3339
/// (`2026-03-11T18:10:15.123Z`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    unix_millis: u64,
}

impl Timestamp {
    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(self) -> u64 {
        self.unix_millis
    }

    /// The timestamp `unix_millis` milliseconds after the Unix epoch.
    pub fn from_unix_millis(unix_millis: u64) -> Self {
        Self { unix_millis }
    }

    fn system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.unix_millis)
    }
}

/// The first second of the year 10000, which RFC 3339's four digits can't write.
const YEAR_10000_UNIX_SECONDS: u64 = 253_402_300_800;

impl Timestamp {
    /// Its RFC 3339 form, `YYYY-MM-DDThh:mm:ss.mmmZ`, written without the
    /// formatting machinery: every command event carries two, made on the
    /// streams' path (`collect_str` through `fmt` cost about 800
    /// instructions each, this about 100). `None` from the year 10000 on.
    fn rfc3339(self) -> Option<[u8; 24]> {
        let seconds = self.unix_millis / 1_000;
        if seconds >= YEAR_10000_UNIX_SECONDS {
            return None;
        }
        let (year, month, day) = civil_from_days(seconds / 86_400);
        let second_of_day = seconds % 86_400;
        let mut text = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, digits: usize, mut value: u64| {
            for place in (at..at + digits).rev() {
                text[place] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, second_of_day / 3_600);
        put(14, 2, second_of_day / 60 % 60);
        put(17, 2, second_of_day % 60);
        put(20, 3, self.unix_millis % 1_000);
        Some(text)
    }
}

/// The (year, month, day) of the day `days` after 1970-01-01, in the
/// proleptic Gregorian calendar (Howard Hinnant's `civil_from_days`, for
/// days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Counted from 0000-03-01, so that a leap day ends its year.
    let days = days + 719_468;
    let era = days / 146_097;
    let day_of_era = days % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.rfc3339().ok_or(fmt::Error)?;
        // Only ASCII digits and separators were written.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = self
            .rfc3339()
            .ok_or_else(|| serde::ser::Error::custom("a timestamp after the year 9999"))?;
        serializer.serialize_str(std::str::from_utf8(&text).map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        let wall = humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)?;
        let since_epoch = wall
            .duration_since(UNIX_EPOCH)
            .map_err(serde::de::Error::custom)?;
        Ok(Self {
            unix_millis: u64::try_from(since_epoch.as_millis())
                .map_err(serde::de::Error::custom)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn timestamps_follow_the_paused_clock_to_the_millisecond() {
        let clock = Clock::starting_at(UNIX_EPOCH + Duration::from_millis(1_773_252_615_123));
        assert_eq!(
            clock.timestamp(clock.now()).to_string(),
            "2026-03-11T18:10:15.123Z"
        );
        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert_eq!(
            clock.timestamp(clock.now()).to_string(),
            "2026-03-11T18:10:16.124Z"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_instant_read_back_from_its_timestamp_is_the_same_to_the_millisecond() {
        let clock = Clock::starting_at(UNIX_EPOCH + Duration::from_millis(1_773_252_615_123));
        tokio::time::advance(Duration::from_secs(5)).await;
        let now = clock.now();
        for at in [
            now,
            now + Duration::from_secs(90),
            now - Duration::from_secs(3),
        ] {
            let stamp = clock.timestamp(at);
            assert_eq!(clock.timestamp(clock.instant(stamp)), stamp);
        }
        let long_ago = Timestamp::from_unix_millis(1_000);
        assert!(clock.instant(long_ago) < now);
    }

    #[test]
    fn timestamps_read_back_what_they_wrote() {
        let ts = Timestamp::from_unix_millis(1_773_252_615_123);
        let text = serde_json::to_string(&ts).unwrap();
        assert_eq!(serde_json::from_str::<Timestamp>(&text).unwrap(), ts);
    }

    #[test]
    fn timestamps_are_written_as_humantime_writes_them() {
        let mut millis = 0_u64;
        // Every day from 1970 to past 2400 (leap centuries and all), at
        // varying times of day, and the last millisecond of the year 9999.
        while millis < 14_000_000_000_000 {
            let at = Timestamp::from_unix_millis(millis);
            assert_eq!(
                at.to_string(),
                humantime::format_rfc3339_millis(at.system_time()).to_string()
            );
            millis += 86_400_000 + 3_600_007;
        }
        let last = Timestamp::from_unix_millis(YEAR_10000_UNIX_SECONDS * 1_000 - 1);
        assert_eq!(last.to_string(), "9999-12-31T23:59:59.999Z");
        let too_late = Timestamp::from_unix_millis(YEAR_10000_UNIX_SECONDS * 1_000);
        assert!(serde_json::to_string(&too_late).is_err());
    }

    #[test]
    fn timestamps_serialize_as_rfc3339_strings() {
        let ts = Timestamp { unix_millis: 0 };
        assert_eq!(
            serde_json::to_string(&ts).unwrap(),
            "\"1970-01-01T00:00:00.000Z\""
        );
    }
}
