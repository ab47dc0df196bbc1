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

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_rfc3339_millis(self.system_time()).fmt(f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
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
    fn timestamps_serialize_as_rfc3339_strings() {
        let ts = Timestamp { unix_millis: 0 };
        assert_eq!(
            serde_json::to_string(&ts).unwrap(),
            "\"1970-01-01T00:00:00.000Z\""
        );
    }
}
