//! What the coordinating process and its stream-holding child processes
//! ("shards") say to each other: JSON lines, the plan and orders on the child's
//! stdin, reports on its stdout. Times are wall-clock microseconds since the
//! Unix epoch, so that they compare across processes.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::http::Server;

/// What a shard's streams subscribe to.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum StreamTarget {
    /// Our server: one stream per agent, `/api/v1/agents/{id}/events`.
    Registry {
        /// Agent ids are this prefix and a 6-digit index.
        id_prefix: String,
        /// How many groups the fleet is spread over.
        groups: usize,
    },
    /// nginx with nchan: every subscriber on `/sub/{channel}`.
    Nchan {
        /// The shared channel.
        channel: String,
    },
}

/// Everything a shard needs, sent as its first stdin line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ShardPlan {
    /// The servers (the replicas of a cluster, or one): stream `i` opens on
    /// server `i mod len`, as a round-robin balancer would place it.
    pub(crate) servers: Vec<Server>,
    /// What to subscribe to.
    pub(crate) target: StreamTarget,
    /// The global index of this shard's first stream.
    pub(crate) first: usize,
    /// How many streams this shard holds.
    pub(crate) count: usize,
    /// How many streams all shards hold together.
    pub(crate) total: usize,
    /// Streams come from `127.0.0.1 ..= 127.0.0.source_ips`.
    pub(crate) source_ips: usize,
    /// Streams being opened at once.
    pub(crate) open_concurrency: usize,
    /// Heartbeat every agent this often (0: no heartbeats).
    pub(crate) heartbeat_every_ms: u64,
    /// Keep-alive connections the heartbeats (and acks) are sent on.
    pub(crate) request_connections: usize,
    /// Acknowledge every command received.
    pub(crate) ack: bool,
    /// A stream that ends opens again after its `retry:`, as EventSource
    /// does, on the next server that accepts a connection (round robin, as
    /// a balancer passes a refused connection on to the next upstream).
    pub(crate) reconnect: bool,
}

/// Which streams a push is meant for.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Audience {
    /// Every stream.
    All,
    /// The agents of one group.
    Group(usize),
    /// One agent, by global index.
    Agent(usize),
}

/// An order to a shard.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum ToShard {
    /// Report the arrivals of push `push` on the streams of `audience` once all
    /// have it, or at `deadline_us` with those that have it.
    Collect {
        /// The push's number (its marker).
        push: u32,
        /// Whom it was for.
        audience: Audience,
        /// When to stop waiting.
        deadline_us: u64,
    },
    /// Report the counters.
    Stats,
    /// Remember which streams are open on server `server` now (it is about
    /// to be killed), and report how many.
    Mark {
        /// The server's index in the plan's `servers`.
        server: usize,
    },
    /// Report once every marked stream has opened again after `since_us`
    /// (on whichever server), or at `deadline_us` with those that have.
    Recovery {
        /// When the marked server was killed.
        since_us: u64,
        /// When to stop waiting.
        deadline_us: u64,
    },
    /// Exit.
    Stop,
}

/// A shard's counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct ShardStats {
    /// Streams open now.
    pub(crate) open: u64,
    /// Streams that opened and later ended or failed.
    pub(crate) dropped: u64,
    /// Heartbeats answered 204.
    pub(crate) heartbeats_ok: u64,
    /// Heartbeats answered otherwise, or not answered.
    pub(crate) heartbeats_failed: u64,
    /// Acks answered 200.
    pub(crate) acks_ok: u64,
    /// Acks answered otherwise, or not answered.
    pub(crate) acks_failed: u64,
    /// Events whose data named another agent, or carried no marker.
    pub(crate) unexpected_events: u64,
    /// Comment lines (`: open`, keepalives) received after the first read.
    pub(crate) comments: u64,
    /// Attempts to open an ended stream again that failed (every server
    /// refused, or one answered otherwise).
    #[serde(default)]
    pub(crate) reopen_failures: u64,
    /// Why the first failed heartbeat failed.
    pub(crate) first_heartbeat_failure: Option<String>,
    /// Why the first failed ack failed.
    pub(crate) first_ack_failure: Option<String>,
    /// Why the first failed reopening failed.
    #[serde(default)]
    pub(crate) first_reopen_failure: Option<String>,
}

/// A report from a shard.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum FromShard {
    /// Every stream has been tried.
    Opened {
        /// Streams open.
        opened: usize,
        /// Streams that could not be opened.
        failed: usize,
        /// Why the first failure failed.
        first_error: Option<String>,
    },
    /// The arrivals of one push.
    Arrivals {
        /// The push's number.
        push: u32,
        /// Streams of the audience that had been opened.
        expected: usize,
        /// When each stream that got it got it.
        arrivals_us: Vec<u64>,
        /// The size of the event's data, as received.
        data_bytes: Option<usize>,
    },
    /// The counters.
    Stats(ShardStats),
    /// The streams marked.
    Marked {
        /// How many streams were open on the marked server.
        streams: usize,
    },
    /// How the marked streams came back.
    Recovered {
        /// Streams marked.
        marked: usize,
        /// When each marked stream that opened again did (the first time after `since_us`).
        reopened_us: Vec<u64>,
        /// Streams not marked that ended after `since_us` (a kill should end none).
        others_dropped: usize,
    },
}

/// Now, in microseconds since the Unix epoch.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        })
}

/// The number of a run's first push: taken from the clock, so that a message
/// left over in a server's buffer from an earlier run (nchan replays its
/// buffer to new subscribers) never matches a push of this run.
pub(crate) fn first_push_number() -> u32 {
    u32::try_from(now_us() / 1_000_000 % 1_000_000).unwrap_or(0) * 1_000
}
