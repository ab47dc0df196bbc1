//! What a run measured, as written to its result file (one JSON object) and
//! read back by `loadgen report`: push runs against either server, and wrk's
//! requests per second.

use serde::{Deserialize, Serialize};

use super::latency::PushLatency;
use super::memory::Memory;
use super::protocol::ShardStats;

/// Which server a run measured.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Target {
    /// The agent registry.
    Registry,
    /// nginx with nchan.
    Nchan,
}

/// One result file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum ResultFile {
    /// A push run.
    Run(Box<RunResult>),
    /// A wrk run.
    Wrk(WrkResult),
}

/// Where in a run a push happened.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// Right after the streams opened, one push after another.
    Burst,
    /// During the soak, among heartbeats.
    Soak,
}

/// One push and what it reached.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PushResult {
    /// `fleet`, `group` or `agent` (nchan: `channel`).
    pub(crate) audience: String,
    /// When in the run.
    pub(crate) phase: Phase,
    /// What the server said it targeted (`targeted` of a group or fleet command).
    pub(crate) targeted: Option<usize>,
    /// The push request's status.
    pub(crate) status: u16,
    /// From sending the push until its response was read, in microseconds.
    pub(crate) response_us: u64,
    /// The size of the event's data as received.
    pub(crate) data_bytes: Option<usize>,
    /// How fast it reached the streams.
    pub(crate) latency: PushLatency,
}

/// A push run against one server.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RunResult {
    /// The server measured.
    pub(crate) target: Target,
    /// Streams asked for.
    pub(crate) streams: usize,
    /// Processes the streams were held by.
    pub(crate) processes: usize,
    /// Agents registered (registry only).
    pub(crate) registered: Option<usize>,
    /// Registrations per second (registry only).
    pub(crate) registrations_per_s: Option<f64>,
    /// Streams that opened.
    pub(crate) streams_opened: usize,
    /// Streams that could not be opened.
    pub(crate) streams_failed: usize,
    /// Why the first of those failed.
    pub(crate) first_error: Option<String>,
    /// How long opening all streams took, in seconds.
    pub(crate) open_seconds: f64,
    /// The server's memory before anything (registry: before registering).
    pub(crate) memory_before: Option<Memory>,
    /// After registering (registry only).
    pub(crate) memory_after_register: Option<Memory>,
    /// After the streams opened.
    pub(crate) memory_after_streams: Option<Memory>,
    /// (after streams - before) / streams opened, from RSS, in bytes.
    pub(crate) rss_per_stream_bytes: Option<f64>,
    /// The same from PSS.
    pub(crate) pss_per_stream_bytes: Option<f64>,
    /// Every push.
    pub(crate) pushes: Vec<PushResult>,
    /// The shards' counters at the end (dropped streams, heartbeats, acks).
    pub(crate) stats: ShardStats,
    /// Heartbeat period in seconds (0: none).
    pub(crate) heartbeat_every_s: f64,
    /// Soak duration in seconds (0: none).
    pub(crate) soak_seconds: u64,
}

/// One wrk run.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WrkResult {
    /// `registry` (heartbeat route) or `nginx` (`return 204;`).
    pub(crate) target: String,
    /// wrk's `Requests/sec`.
    pub(crate) requests_per_s: f64,
    /// wrk's `Non-2xx or 3xx responses` (0 when absent).
    pub(crate) non_2xx: u64,
    /// Socket errors wrk counted (connect, read, write, timeout).
    pub(crate) socket_errors: u64,
    /// The wrk command line.
    pub(crate) settings: String,
}

impl WrkResult {
    /// Reads wrk's text output.
    pub(crate) fn parse(target: &str, settings: &str, output: &str) -> Result<Self, String> {
        let mut requests_per_s = None;
        let mut non_2xx = 0;
        let mut socket_errors = 0;
        for line in output.lines().map(str::trim) {
            if let Some(rate) = line.strip_prefix("Requests/sec:") {
                requests_per_s = rate.trim().parse().ok();
            } else if let Some(count) = line.strip_prefix("Non-2xx or 3xx responses:") {
                non_2xx = count.trim().parse().unwrap_or(0);
            } else if let Some(errors) = line.strip_prefix("Socket errors:") {
                socket_errors = errors
                    .split(',')
                    .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                    .sum();
            }
        }
        Ok(Self {
            target: target.to_owned(),
            requests_per_s: requests_per_s
                .ok_or_else(|| "no `Requests/sec:` line in wrk's output".to_owned())?,
            non_2xx,
            socket_errors,
            settings: settings.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let output = "Running 10s test @ http://127.0.0.1:8080/x\n  2 threads and 64 connections\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 5\nRequests/sec:  71234.56\nTransfer/sec:      5.21MB\n";
        let result = WrkResult::parse("nginx", "-t2", output).unwrap();
        assert!((result.requests_per_s - 71_234.56).abs() < 1e-6);
        assert_eq!(result.non_2xx, 5);
        assert_eq!(result.socket_errors, 3);
        assert!(WrkResult::parse("nginx", "", "nothing").is_err());
    }
}
