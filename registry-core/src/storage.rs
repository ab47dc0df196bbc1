//! The storage seam: what the registry keeps across restarts, as facts, and
//! the small [`Storage`] trait an engine implements to keep them.
//!
//! # Design
//!
//! The registry's rules (lifecycle, commands, targeting, caps, tokens) live in
//! one place, `state`, and run on the state held in memory under the
//! registry's lock, as they did before there was any storage. Storage never
//! decides anything; it remembers.
//!
//! - **Facts, not timers.** What is kept is what happened: an agent's
//!   status, `registeredAt`, `lastHeartbeatAt`, `statusChangedAt`, metadata
//!   and token digest ([`AgentRecord`]); a command's status, timestamps and
//!   result ([`CommandRecord`]); a rollout's counts ([`RolloutRecord`]) and,
//!   once, its payload, which its commands share instead of each holding a
//!   copy, in its canonical form (RFC 8785), the one it is signed in; a few
//!   named values ([`Change::Meta`]: the format, the signing key, the
//!   brake). Every deadline follows from the facts
//!   and the settings (LIVE: `lastHeartbeatAt + stale_after`; STALE:
//!   `statusChangedAt + dead_after`; an open command: `expiresAt`; a final one:
//!   the moment it became final + `retention`), so a restart loads the facts
//!   and schedules the deadlines again. Timestamps are stored as wall-clock
//!   time; [`Clock::instant`](crate::Clock::instant) maps them back onto
//!   tokio's clock.
//! - **Every operation says what it changed.** The rules mark the agents,
//!   commands, rollouts and meta values they touch. After the operation,
//!   still under the lock, the marks are taken (a swap, however many there
//!   are: a million expiries leave a million) and handed to the writer as a
//!   batch, in the order of operations. The writer builds the [`Change`]s
//!   from the state as it is then (an entity that is gone becomes a removal),
//!   a page per hold of the lock, so that no request waits on it (SPEC 13). A
//!   record is never older than its mark; records of one batch may be a few
//!   milliseconds apart, so a restart takes a running rollout's PENDING and
//!   DELIVERED counts from its commands read back, not from its record.
//! - **Group commit.** One writer task takes every batch waiting for it and
//!   writes them in one transaction ([`Storage::commit`]), then answers each.
//!   A fleet command to 19,000 agents is one batch and one write (its
//!   commands, created a page at a time, are handed over together, before
//!   any is delivered); a hundred concurrent registrations share a few writes.
//! - **What waits, and what is written behind.** An operation a request
//!   answers 2xx (registration, a command, an ack, a delete) waits for its
//!   batch to be committed before the answer is sent
//!   ([`Registry::durably`](crate::Registry::durably)). A heartbeat only marks
//!   the agent's heartbeat time (a small [`Change::Heartbeat`], not the whole
//!   record) and answers at once; deadlines that fire, deliveries and
//!   heartbeats are written behind, at most [`WRITE_BEHIND`] later.
//! - **A write that fails keeps nothing.** The requests of that transaction
//!   and of every batch queued behind it (built on the state it would have
//!   left) are refused, and the state is loaded again from storage, as at a
//!   restart but keeping the open streams. Only then are the refusals answered,
//!   so no one reads a change that was refused.
//! - **A restart never shows a healthy fleet as failed.** Each agent's next
//!   deadline is the later of its own and start + `stale_after`. A command
//!   whose `expiresAt` passed while the server was down is EXPIRED at its
//!   `expiresAt`, retained from then. Streams don't survive: every agent is
//!   `connected: false` until it opens a new one.
//!
//! # Alternatives weighed
//!
//! - **The store as the only state, every rule a read-modify-write against
//!   it.** Exact and replica-ready, but every rule written again as storage
//!   access, each heartbeat a disk write, and each listing a scan of the
//!   store. The time box and the heartbeat target (at least 0.9x of `memory`)
//!   rule it out for the embedded engine.
//! - **An append-only log of operations replayed at start** (Mercure's Bolt
//!   file, Kafka-like). Replays the rules, so they would have to be pure
//!   functions of the log, and the log grows until compacted; a snapshot of
//!   facts stays as large as what is retained.
//! - **Snapshots of the whole state at intervals.** Cheap to write code for,
//!   but a 2xx answered between two snapshots is lost on a crash, and a
//!   snapshot of a million commands is a long write.
//! - **Write-through of every change, heartbeats included.** What Kubernetes
//!   learned not to do (KEP-0009): the heartbeat time is kept in a table of its
//!   own, written behind, like a lease.
//!
//! # How the Redis engine keeps the same rules
//!
//! `docs/replicas.md` holds the design. In short: every replica keeps the
//! whole state in memory and runs the rules here, once, under its lock, as a
//! single server does; Redis keeps these same records (the same serde forms)
//! and is the arbiter and the log. A commit is one Lua script that checks
//! each agent's and command's version, writes the batch atomically and
//! appends it to a Redis Stream that the other replicas follow and apply
//! with the same per-entity code as a load ([`crate::replication`]). The
//! grace after a restart becomes also the grace after Redis is back.
//!
//! The signing key is the one value replicas must agree on before they
//! serve: [`Storage::meta_or_insert`] stores it only if none is stored, in one
//! step, so the first replica to start decides. A replica that would sign
//! with another key than a live replica's refuses to start (exit 2, SPEC 12):
//! the Redis engine keeps the public key each live replica signs with beside
//! its liveness.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent::{AgentId, AgentMetadata, AgentStatus, Credential};
use crate::clock::Timestamp;
use crate::command::{Ack, CommandId, CommandStatus};
use crate::payload::Payload;
use crate::replication::{Commit, Entity, ReplicaId, Version};
use crate::rollout::{RolloutCounts, RolloutId, Target};

/// The most a change written behind waits before it is committed: heartbeat
/// times, deadlines that fired, deliveries. SPEC 8 allows a second.
pub const WRITE_BEHIND: Duration = Duration::from_millis(500);

/// The format of the stored records; an engine refuses a store written in
/// another one. Raise it whenever a record's meaning changes.
///
/// Version 2 added rollouts: a command of a rollout names it and holds no
/// payload of its own. Every version 1 record reads as a version 2 record.
pub const FORMAT_VERSION: u64 = 2;

/// The oldest format this version reads (and then marks as [`FORMAT_VERSION`]).
pub const OLDEST_FORMAT_READ: u64 = 1;

/// An engine that keeps the registry's facts.
///
/// Both methods block (an engine may do file or network I/O); the registry
/// calls them off its async workers, one at a time.
pub trait Storage: Send + 'static {
    /// Everything stored, read once at start and again after a failed write.
    fn load(&mut self) -> Result<Snapshot, StorageError>;

    /// Writes `changes`, in order, as one atomic transaction: all of them or
    /// none. A later change to the same entity wins over an earlier one.
    fn commit(&mut self, changes: &[Change]) -> Result<(), StorageError>;

    /// The named value `key`, storing `value` as it first if none is stored,
    /// in one atomic step: when replicas start at once, the first to store
    /// decides and every one gets the same value. The server keeps its
    /// signing key ([`SIGNING_KEY`]) this way, before the registry starts.
    fn meta_or_insert(&mut self, key: &str, value: &[u8]) -> Result<Vec<u8>, StorageError>;

    /// Whether other replicas write the same store (the Redis engine). A
    /// shared engine implements the three methods below: heartbeats then wait
    /// for their commit, a transition is announced (logged, counted) by the
    /// replica whose commit wrote it, and reads first catch up with the log.
    fn is_shared(&self) -> bool {
        false
    }

    /// Writes `changes` as [`commit`](Self::commit) does, if every versioned
    /// entity they touch is still at the version in `bases` (one per change,
    /// `0` for an entity this replica never saw written); all of them or
    /// none. A heartbeat is checked against its agent's version (and
    /// conflicts when the agent is gone), and moves it; a [`Change::Stream`] is not checked and
    /// moves nothing. See [`Commit`].
    fn commit_versioned(
        &mut self,
        changes: &[Change],
        bases: &[Version],
    ) -> Result<Commit, StorageError> {
        debug_assert_eq!(changes.len(), bases.len());
        self.commit(changes).map(|()| Commit::Written {
            version: 0,
            unchanged: Vec::new(),
        })
    }

    /// The current records of `entities`, with their versions, as changes: an
    /// agent as its record then its heartbeat time (or
    /// [`Change::AgentRemoved`], version 0, when gone), a command as its
    /// record or its removal, a rollout as its record and payload or its
    /// removal. What a replica reads after a conflict, to replace what it held.
    fn fetch(&mut self, entities: &[Entity]) -> Result<Vec<(Version, Change)>, StorageError> {
        let _ = entities;
        Err(StorageError::new("this engine is not shared"))
    }
}

/// The named value that holds the server's generated signing key: the 32-byte
/// Ed25519 seed (SPEC 12). A key read from `signing.key_file` is never stored.
pub const SIGNING_KEY: &str = "signing.key";

/// Everything an engine holds, as [`Storage::load`] returns it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every agent, in any status.
    pub agents: Vec<AgentRecord>,
    /// Heartbeat times written after the agent's record was; the later of
    /// the two is the agent's `lastHeartbeatAt`.
    pub heartbeats: Vec<(AgentId, Timestamp)>,
    /// Every retained command.
    pub commands: Vec<CommandRecord>,
    /// A shared engine's delivery marks ([`Change::Delivered`]) of the
    /// commands above, kept beside their records.
    pub deliveries: Vec<(CommandId, Timestamp)>,
    /// Every retained rollout.
    pub rollouts: Vec<RolloutRecord>,
    /// The payload of each retained rollout.
    pub payloads: Vec<(RolloutId, Payload)>,
    /// Named values: the signing key, the brake, and such.
    pub meta: BTreeMap<String, Vec<u8>>,
    /// A shared engine's versions of the agents and commands above (an entity
    /// not listed is at version 0).
    pub versions: Vec<(Entity, Version)>,
    /// A shared engine's log position the snapshot includes at least: the
    /// replica applies the log after it (an entry applied twice is harmless).
    pub position: Version,
    /// A shared engine's open streams: agent -> the replica it streams from.
    pub streams: Vec<(AgentId, ReplicaId)>,
}

/// One fact that changed, as an engine writes it.
#[derive(Debug, Clone)]
pub enum Change {
    /// An agent, created or changed.
    Agent(AgentRecord),
    /// An agent deleted; its heartbeat time goes with it.
    AgentRemoved(AgentId),
    /// Only an agent's heartbeat time moved (written behind).
    Heartbeat(AgentId, Timestamp),
    /// A command, created or changed.
    Command(CommandRecord),
    /// A command's delivery alone (PENDING -> DELIVERED at this time): what
    /// changed of a command written before, at the version its commit is
    /// built on (see [`CommandRecord::delivered`]). Only a shared engine is
    /// sent it; it keeps the mark beside the record, as it keeps a heartbeat
    /// time beside an agent's, so that a fleet command's deliveries are not
    /// its whole records written, logged and applied by every replica again.
    Delivered(CommandId, Timestamp),
    /// A command dropped (its retention ended, or its agent was deleted).
    CommandRemoved(CommandId),
    /// A rollout, created or counted again.
    Rollout(RolloutRecord),
    /// A new rollout's payload, written once, read by each of its commands.
    RolloutPayload(RolloutId, Payload),
    /// A rollout dropped, with its payload.
    RolloutRemoved(RolloutId),
    /// A named value set, or removed (`None`).
    Meta(String, Option<Vec<u8>>),
    /// The agent's stream opened (`true`) or closed on the committing replica.
    /// Only a shared engine keeps it (agent -> the committing replica; a close
    /// removes it only while it still names that replica); the others ignore
    /// it. A stream is no part of the agent's record: this change is never
    /// checked against the agent's version, never conflicts, and does not
    /// move the version.
    Stream(AgentId, bool),
}

/// What is kept of an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRecord {
    /// Its id.
    pub agent_id: AgentId,
    /// What it declared at its last registration.
    pub metadata: AgentMetadata,
    /// Its status when the record was written.
    pub status: AgentStatus,
    /// Its first registration.
    pub registered_at: Timestamp,
    /// Its last heartbeat or registration, as of this record.
    pub last_heartbeat_at: Timestamp,
    /// When its status last changed.
    pub status_changed_at: Timestamp,
    /// The digest of its current token, if it has one.
    pub credential: Option<Credential>,
}

/// What is kept of a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandRecord {
    /// Its id.
    pub command_id: CommandId,
    /// Orders the agent's commands (newest first in listings).
    pub seq: u64,
    /// The agent it is for.
    pub agent_id: AgentId,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: Arc<str>,
    /// What the operator sent, in its canonical form; none for a command of
    /// a rollout, whose payload is the rollout's.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "Payload::deserialize_stored"
    )]
    pub payload: Option<Payload>,
    /// The rollout it belongs to, if it was sent to a group or the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<RolloutId>,
    /// Its status when the record was written.
    pub status: CommandStatus,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it expires unless acknowledged (and, once EXPIRED, when it did).
    pub expires_at: Timestamp,
    /// When it was written to the agent's stream. This field and the two
    /// below are left out while unset (a record written before read them as
    /// `null`, which reads the same): a fleet command's records are
    /// written, logged and read by every replica 100,000 at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<Timestamp>,
    /// When the agent acknowledged it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<Timestamp>,
    /// The agent's acknowledgement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<Ack>,
}

impl CommandRecord {
    /// The record as its delivery mark ([`Change::Delivered`]) makes it: a
    /// PENDING command DELIVERED at `at`. The mark is kept only beside the
    /// record it was made on (writing the record again drops it), so any
    /// other status stays as it is. The one place the mark is read, by
    /// every engine and every replica.
    pub fn delivered(&mut self, at: Timestamp) {
        if self.status == CommandStatus::Pending {
            self.status = CommandStatus::Delivered;
            self.delivered_at = Some(at);
        }
    }
}

/// What is kept of a rollout, less its payload (written once, apart, since
/// this record is written again whenever its counts change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRecord {
    /// Its id.
    pub rollout_id: RolloutId,
    /// Its commands' type.
    #[serde(rename = "type")]
    pub kind: Arc<str>,
    /// Whom it went to.
    pub target: Target,
    /// When its commands were created.
    pub created_at: Timestamp,
    /// When its commands expire.
    pub expires_at: Timestamp,
    /// Commands created.
    pub targeted: usize,
    /// LIVE agents left out at their cap of unfinished commands.
    pub skipped: usize,
    /// Its commands by status, those dropped with their agents included.
    pub counts: RolloutCounts,
    /// When its last unfinished command became final.
    pub done_at: Option<Timestamp>,
}

/// A storage engine failed: the request that needed it is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StorageError(pub String);

impl StorageError {
    /// An error described by `message`.
    pub fn new(message: impl fmt::Display) -> Self {
        Self(message.to_string())
    }
}
