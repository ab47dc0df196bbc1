//! What a run measured, as written to its result file (one JSON object) and
//! read back by `loadgen report` and `loadgen cluster-report`: push runs
//! against either server, wrk's requests per second, and cluster runs
//! (replicas on Redis).

use serde::{Deserialize, Serialize};

use super::cpu::CpuTime;
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
    /// A run against a cluster of replicas.
    Cluster(Box<ClusterResult>),
}

/// Where in a run a push happened.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// Right after the streams opened, one push after another.
    Burst,
    /// During the soak, among heartbeats.
    Soak,
    /// After a replica was killed and its streams came back.
    AfterFailover,
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
    /// What it cost, from sending it until the last stream had it (or the
    /// deadline): absent in result files written before it was measured.
    #[serde(default)]
    pub(crate) cpu: Option<PushCpu>,
}

/// The CPU a push cost each side, from sending it until the last stream had it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct PushCpu {
    /// The server's processes (nginx: its master and workers).
    pub(crate) server: CpuTime,
    /// This load generator and its shards, which read the streams.
    pub(crate) load_generator: CpuTime,
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

/// A run against the replicas of one registry: the fleet's streams spread
/// over them, pushes, heartbeats through all of them, Redis's memory, and a
/// replica killed.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ClusterResult {
    /// Replicas the load was spread over.
    pub(crate) replicas: usize,
    /// Agents asked for, each with one stream.
    pub(crate) agents: usize,
    /// Processes the streams were held by.
    pub(crate) processes: usize,
    /// Agents registered.
    pub(crate) registered: usize,
    /// Registrations that failed.
    pub(crate) registration_failures: usize,
    /// Registrations per second, through all replicas.
    pub(crate) registrations_per_s: f64,
    /// Streams that opened.
    pub(crate) streams_opened: usize,
    /// Streams that could not be opened.
    pub(crate) streams_failed: usize,
    /// Why the first of those failed.
    pub(crate) first_error: Option<String>,
    /// How long opening all streams took, in seconds.
    pub(crate) open_seconds: f64,
    /// Each replica's `registry_open_streams` once all were open.
    pub(crate) streams_per_replica: Vec<Option<u64>>,
    /// Each replica's resident memory once all streams were open, in KiB.
    pub(crate) replica_rss_kib: Vec<Option<u64>>,
    /// Redis's `used_memory` along the run.
    pub(crate) redis: RedisMemory,
    /// Every push.
    pub(crate) pushes: Vec<PushResult>,
    /// Heartbeats through every replica at once (wrk), if measured.
    pub(crate) heartbeats: Option<ClusterHeartbeats>,
    /// A replica killed, and its streams back, if done.
    pub(crate) failover: Option<FailoverResult>,
    /// The shards' counters at the end.
    pub(crate) stats: ShardStats,
}

/// Redis's `used_memory` (bytes) at the steps of a cluster run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct RedisMemory {
    /// Before registering.
    pub(crate) before: Option<u64>,
    /// After registering.
    pub(crate) after_register: Option<u64>,
    /// With every stream open.
    pub(crate) after_streams: Option<u64>,
    /// After the timed pushes (their commands retained).
    pub(crate) after_pushes: Option<u64>,
}

/// Heartbeats sent by wrk to every replica at once.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ClusterHeartbeats {
    /// The sum of every replica's `Requests/sec`, whatever the answers.
    pub(crate) requests_per_s: f64,
    /// Of those, the ones answered 2xx (204), per second.
    pub(crate) ok_per_s: f64,
    /// Answers that were not 2xx, summed.
    pub(crate) non_2xx: u64,
    /// Socket errors, summed.
    pub(crate) socket_errors: u64,
    /// Each replica's wrk run.
    pub(crate) per_replica: Vec<WrkResult>,
}

/// A replica SIGKILLed under load: how long until every stream it held was
/// open again, through the others (or through it, restarted, when it was the only one).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct FailoverResult {
    /// The replica killed (its index).
    pub(crate) replica: usize,
    /// Whether it was started again (it was the only replica).
    pub(crate) restarted: bool,
    /// From the kill to each stream open again: `expected` streams were on
    /// it, `received` came back; p50, p99, and `max_us` the last.
    pub(crate) latency: PushLatency,
    /// Streams on other replicas that ended meanwhile.
    pub(crate) others_dropped: usize,
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
