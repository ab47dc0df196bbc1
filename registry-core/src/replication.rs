//! What a storage engine shared by several replicas adds to the storage seam
//! (`docs/replicas.md` has the design): a version per entity, a commit that
//! writes only what no other replica changed meanwhile, and a log of every
//! commit that each replica applies to the state it holds in memory.
//!
//! The rules stay in `state`, in Rust, once. An engine compares versions and
//! bytes; it never decides what a record should say.

use std::future::Future;
use std::pin::Pin;

use crate::agent::AgentId;
use crate::command::CommandId;
use crate::rollout::RolloutId;
use crate::storage::{Change, StorageError};

/// An entity's version in a shared store: the number of the commit that last
/// wrote it. `0` is an entity never written, or removed.
pub type Version = u64;

/// The id of one replica, unique among those sharing a store (a random UUID
/// per process): it names the origin of each commit in the log and the
/// replica an agent's stream is open on.
pub type ReplicaId = std::sync::Arc<str>;

/// What a change is about, for versions and conflicts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    /// An agent: its record, its heartbeat time and its stream.
    Agent(AgentId),
    /// A command.
    Command(CommandId),
    /// A rollout and its payload.
    Rollout(RolloutId),
    /// A named value.
    Meta(String),
}

impl Entity {
    /// Whether a commit checks this entity's version. Agents and commands are
    /// checked. A rollout's record holds counts every replica keeps from the
    /// commands it applies, and named values (the brake) are decided alike by
    /// every replica: both are written by the last writer, unchecked.
    pub fn is_versioned(&self) -> bool {
        matches!(self, Self::Agent(_) | Self::Command(_))
    }
}

impl Change {
    /// The entity this change is about.
    pub fn entity(&self) -> Entity {
        match self {
            Self::Agent(record) => Entity::Agent(record.agent_id.clone()),
            Self::AgentRemoved(id) | Self::Heartbeat(id, _) | Self::Stream(id, _) => {
                Entity::Agent(id.clone())
            }
            Self::Command(record) => Entity::Command(record.command_id),
            Self::CommandRemoved(id) | Self::Delivered(id, _) => Entity::Command(*id),
            Self::Rollout(record) => Entity::Rollout(record.rollout_id),
            Self::RolloutPayload(id, _) | Self::RolloutRemoved(id) => Entity::Rollout(*id),
            Self::Meta(key, _) => Entity::Meta(key.clone()),
        }
    }
}

/// What a versioned commit did ([`crate::Storage::commit_versioned`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    /// Every change was written, as version `version`, except those listed in
    /// `unchanged`: the store already held exactly that record (or, for a
    /// removal, nothing), because another replica made the same change (a
    /// deadline that came due on both). Each is `(index of the change, the
    /// version stored)`. Nothing of an unchanged change is logged: the replica
    /// that wrote it announces it.
    Written {
        /// The version of everything written.
        version: Version,
        /// The changes the store already held, with their stored versions.
        unchanged: Vec<(usize, Version)>,
    },
    /// Nothing was written: these entities are no longer at the versions the
    /// changes were built on (another replica changed them), or, for a
    /// heartbeat, the agent is gone.
    Conflict(Vec<Entity>),
}

/// One commit of the log, as every replica applies it.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// The version the commit gave what it wrote.
    pub version: Version,
    /// The replica that committed it.
    pub origin: ReplicaId,
    /// What it wrote, in order (the changes the store already held left out).
    pub changes: Vec<Change>,
}

/// The head of a shared store's log, asked before a read that must see every
/// write answered so far, by any replica.
pub trait Log: Send + Sync + 'static {
    /// The version of the last commit in the log: one round trip.
    fn head(&self) -> Pin<Box<dyn Future<Output = Result<Version, StorageError>> + Send + '_>>;
}
