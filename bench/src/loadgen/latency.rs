//! Percentiles: of a push's arrival times (p50, p99, and 100% = the last
//! stream reached), and the median used to summarise several runs.

use serde::{Deserialize, Serialize};

/// How long one push took to reach the streams it was for.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct PushLatency {
    /// Streams of the audience that were open.
    pub(crate) expected: usize,
    /// Streams that received it before the deadline.
    pub(crate) received: usize,
    /// Half of the received had it within this many microseconds of the send.
    pub(crate) p50_us: u64,
    /// 99% of the received had it within this.
    pub(crate) p99_us: u64,
    /// The last received had it after this (100% when `received == expected`).
    pub(crate) max_us: u64,
}

impl PushLatency {
    /// Summarises the arrival times of a push sent at `sent_us`.
    pub(crate) fn of(sent_us: u64, expected: usize, arrivals_us: &[u64]) -> Self {
        let mut latencies: Vec<u64> = arrivals_us
            .iter()
            .map(|&arrival| arrival.saturating_sub(sent_us))
            .collect();
        latencies.sort_unstable();
        Self {
            expected,
            received: latencies.len(),
            p50_us: percentile(&latencies, 50.0),
            p99_us: percentile(&latencies, 99.0),
            max_us: latencies.last().copied().unwrap_or(0),
        }
    }
}

/// The nearest-rank percentile of sorted `values` (0 when empty).
pub(crate) fn percentile(sorted: &[u64], percent: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (percent / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of `values` (the mean of the middle two for an even count).
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), 50);
        assert_eq!(percentile(&values, 99.0), 99);
        assert_eq!(percentile(&values, 100.0), 100);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn summarises_a_push() {
        let latency = PushLatency::of(1_000, 4, &[1_300, 1_100, 1_200]);
        assert_eq!(latency.received, 3);
        assert_eq!(latency.p50_us, 200);
        assert_eq!(latency.max_us, 300);
        assert_eq!(latency.expected, 4);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
