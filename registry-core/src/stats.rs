//! Counts the registry keeps as it works, read for metrics without walking the fleet.

use crate::agent::AgentStatus;
use crate::command::CommandStatus;

/// A snapshot of the registry's gauges and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Agents now in each status, indexed like [`AgentStatus::ALL`].
    pub agents: [usize; 3],
    /// Streams open now.
    pub open_streams: usize,
    /// Commands retained now in each status, indexed like [`CommandStatus::ALL`].
    pub commands: [usize; 4],
    /// Lifecycle transitions so far, `[from][to]`, indexed like [`AgentStatus::ALL`].
    pub transitions: [[u64; 3]; 3],
    /// Accepted heartbeats so far.
    pub heartbeats: u64,
    /// Registrations so far, new and resumed.
    pub registrations: u64,
    /// Payload bytes retained now: a rollout's payload once, a single
    /// command's each (what `commands.max_retained_bytes` bounds).
    pub payload_bytes: usize,
    /// Commands created so far.
    pub commands_created: u64,
    /// Commands that expired unacknowledged so far (with replicas, counted
    /// by the replica whose commit wrote the expiry).
    pub commands_expired: u64,
    /// Streams closed because their reader fell `stream_queue` commands behind.
    pub slow_streams_closed: u64,
    /// Streams ended because a newer one for the same agent took their place.
    pub stream_replacements: u64,
    /// Deadlines scheduled now (lifecycle, expiry and retention together).
    pub scheduled_deadlines: usize,
    /// Whether the brake is engaged now (SPEC 13).
    pub brake_engaged: bool,
    /// Agents the brake holds STALE now, whose STALE -> DEAD came due.
    pub brake_held: usize,
}

impl Stats {
    /// Agents now in `status`.
    pub fn agents_in(&self, status: AgentStatus) -> usize {
        self.agents[status.index()]
    }

    /// Commands retained now in `status`.
    pub fn commands_in(&self, status: CommandStatus) -> usize {
        self.commands[status.index()]
    }

    /// Transitions from `from` to `to` so far.
    pub fn transitions_between(&self, from: AgentStatus, to: AgentStatus) -> u64 {
        self.transitions[from.index()][to.index()]
    }
}
