//! When to try again: full-jitter exponential backoff above a floor the
//! server sets (`retry:` on the stream, `Retry-After` on an answer).

use std::time::Duration;

/// Full-jitter exponential backoff: attempt `n` waits the floor plus a random
/// delay in `[0, min(max, initial * 2^n)]`, so that a fleet that lost the
/// registry at once does not come back at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The jitter's bound on the first attempt.
    pub initial: Duration,
    /// The jitter's bound at most, however many attempts failed.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay before retry `attempt` (0 for the first), at least `floor`.
    pub fn delay(&self, attempt: u32, floor: Duration) -> Duration {
        let bound = self
            .initial
            .saturating_mul(1_u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.max);
        let millis = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX - 1);
        // Without randomness the delay is its bound: slower, never sooner.
        let jitter = getrandom::u64().map_or(millis, |random| random % (millis + 1));
        floor.saturating_add(Duration::from_millis(jitter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_the_floor_and_the_growing_bound() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let floor = Duration::from_millis(50);
        for attempt in 0..40 {
            let bound = (100_u64 << attempt.min(20)).min(1000);
            for _ in 0..20 {
                let delay = backoff.delay(attempt, floor);
                assert!(delay >= floor, "{delay:?}");
                assert!(
                    delay <= floor + Duration::from_millis(bound),
                    "{delay:?} at {attempt}"
                );
            }
        }
    }
}
