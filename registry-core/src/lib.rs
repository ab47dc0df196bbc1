//! The agent registry's domain, with no HTTP in it: agents and their lifecycle
//! (LIVE, STALE, DEAD), commands and theirs (PENDING, DELIVERED, ACKNOWLEDGED,
//! EXPIRED), and the channel each agent's stream reads its commands from.
//!
//! Every deadline (an agent going STALE or DEAD, a command expiring or being
//! dropped after its retention) sits in one ordered index; a single task sleeps
//! until the earliest and applies what is due, so an idle fleet costs nothing.
//! Time is tokio's, so tests pause and advance it.
//!
//! # Layout
//!
//! - [`registry`]: the [`Registry`] handle, its lock and its scheduler task.
//! - `state`: the state under the lock and every rule that changes it
//!   (`state::commands` for commands, `state::launch` for a group or fleet
//!   command created a page at a time, `state::streams` for streams and
//!   delivery, `state::replicate` for other replicas' commits applied here).
//! - `schedule`: the ordered deadline index.
//! - [`agent`]: agent ids, registration, status and the agent view.
//! - [`brake`]: [`BrakeChange`], what the brake (SPEC 13) announces; its rule is in `state`.
//! - [`command`]: command ids, statuses, requests, acks, views and stream events.
//! - [`payload`]: [`Payload`], a command's JSON held as its canonical (signed)
//!   text, shared by a rollout.
//! - [`rollout`]: what a group or fleet command creates: [`NewRollout`] (the
//!   push's answer) and [`RolloutView`] (its progress); counted in `state::rollouts`.
//! - [`subscription`]: what one open stream reads, [`Subscription`], and why it
//!   was detached ([`DetachReason`]).
//! - [`fleet`]: what changes in the fleet, broadcast to [`FleetSubscription`]s.
//! - [`clock`]: monotonic instants and their wall-clock [`Timestamp`]s.
//! - [`settings`]: timings, limits and the [`Replay`] rule.
//! - [`stats`]: counts for metrics.
//! - [`storage`]: the seam to storage engines: the facts kept, the [`Storage`]
//!   trait, and the design (restart grace, group commit, write-behind).
//! - [`replication`]: what a store shared by replicas adds to the seam:
//!   versions, the versioned commit, the log (`docs/replicas.md`).
//! - `writer`: the task that commits batches, grouped, and rolls back a failed
//!   one; with a shared store, resolves conflicts (`writer::shared`).
//! - [`error`]: [`RegistryError`] and [`InvalidField`].

pub mod agent;
pub mod brake;
pub mod clock;
pub mod command;
pub mod error;
pub mod fleet;
pub mod payload;
pub mod registry;
pub mod replication;
pub mod rollout;
mod schedule;
pub mod settings;
mod state;
pub mod stats;
pub mod storage;
pub mod subscription;
mod writer;

pub use agent::{
    AgentFilter, AgentId, AgentMetadata, AgentStatus, AgentView, Credential, GroupName,
    Registration, RegistrationRequest, StatusChange,
};
pub use brake::BrakeChange;
pub use clock::{Clock, Timestamp};
pub use command::{
    Ack, AckResult, CommandEvent, CommandId, CommandRequest, CommandStatus, CommandView,
};
pub use error::{InvalidField, RegistryError};
pub use fleet::{AgentEvent, FleetEvent, FleetSubscription, ROLLOUT_EVENT_INTERVAL, StatusChanges};
pub use payload::Payload;
pub use registry::{Registry, RegistryGuard, Tick};
pub use rollout::{CommandRef, NewRollout, RolloutCounts, RolloutId, RolloutView, Target};
pub use settings::{Replay, Settings};
pub use stats::Stats;
pub use storage::{Storage, StorageError};
pub use subscription::{DetachReason, Subscription};
