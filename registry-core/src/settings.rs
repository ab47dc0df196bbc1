//! The timings and limits the core works with; the server fills them from its
//! configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a new stream is sent before the commands created after it opened (SPEC 10).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Replay {
    /// Nothing: only commands created from now on (the Java server's rule).
    #[default]
    None,
    /// Every PENDING and DELIVERED command of the agent first, in creation
    /// order, less the DELIVERED ones up to the stream's `Last-Event-ID`.
    Unacknowledged,
}

/// Timings and limits of the registry core. `Default` gives the contract's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// A LIVE agent without a heartbeat for this long becomes STALE.
    pub stale_after: Duration,
    /// A STALE agent becomes DEAD this long after it became STALE.
    pub dead_after: Duration,
    /// A command not acknowledged this long after its creation expires.
    pub command_expiry: Duration,
    /// A final (ACKNOWLEDGED or EXPIRED) command is dropped this long after it became final.
    pub command_retention: Duration,
    /// The command types operators may send.
    pub command_types: Vec<String>,
    /// Commands queued for one stream and not yet written; a stream that falls
    /// this far behind is closed and its queued commands return to PENDING.
    pub stream_queue: usize,
    /// Fleet events kept for a reader of the fleet's events that is behind; one
    /// that falls further behind loses its subscription.
    pub fleet_queue: usize,
    /// Open streams at most; 0 means no limit. A stream that replaces its
    /// agent's own open stream does not count.
    pub max_streams: usize,
    /// The brake engages when the agents that went LIVE -> STALE within the
    /// last `stale_after` are more than this share of all LIVE and STALE
    /// agents. In (0, 1]; 1 turns the brake off.
    pub brake_threshold: f64,
    /// The brake never engages with fewer LIVE and STALE agents than this.
    pub brake_min_agents: usize,
    /// The brake releases this long after it engaged at the latest.
    pub brake_max: Duration,
    /// What a new stream is sent first.
    pub replay: Replay,
    /// Agents of any status, DEAD included, at most: a new agent past it is
    /// refused (SPEC 13).
    pub max_agents: usize,
    /// PENDING and DELIVERED commands one agent holds at most: one more to it
    /// is refused, and a rollout skips it.
    pub max_unfinished_per_agent: usize,
    /// Commands retained at most, in any status.
    pub max_retained: usize,
    /// Payload bytes retained at most; a rollout's payload counts once.
    pub max_retained_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            stale_after: Duration::from_secs(90),
            dead_after: Duration::from_secs(300),
            command_expiry: Duration::from_secs(60),
            command_retention: Duration::from_secs(600),
            command_types: ["config-update", "deep-trace", "replay"]
                .map(String::from)
                .to_vec(),
            stream_queue: 64,
            fleet_queue: 16_384,
            max_streams: 0,
            brake_threshold: 0.5,
            brake_min_agents: 10,
            brake_max: Duration::from_secs(15 * 60),
            replay: Replay::None,
            max_agents: 1_000_000,
            max_unfinished_per_agent: 100,
            max_retained: 1_000_000,
            max_retained_bytes: 1 << 30,
        }
    }
}
