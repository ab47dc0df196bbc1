//! What can go wrong in the registry, named in the domain's words; the server
//! maps each variant to one HTTP status.

use std::time::Duration;

use crate::command::CommandId;

/// A request field that breaks a rule of the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    /// The field's name as it appears on the wire (`agentId`, `type`, ...).
    pub field: &'static str,
    /// What is wrong with it, in words a user can act on.
    pub reason: String,
}

impl InvalidField {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// What a client refused for lack of room is told to wait (`Retry-After`)
/// when the registry can't tell when room will be made: commands are dropped
/// `commands.retention` after they end, and agents only when an operator
/// deletes them.
pub const RETRY_LATER: Duration = Duration::from_secs(60);

/// What [`RegistryError::StorageUnavailable`] says when another replica
/// changed what an operation changed, while it ran, twice: trying again
/// in a second likely succeeds.
pub const CONCURRENT_CHANGE: &str =
    "another replica changed the same agent or command at the same moment; try again";

/// How long a client refused for a concurrent change waits (`Retry-After`).
const RETRY_CONCURRENT: Duration = Duration::from_secs(1);

/// Why a registry operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// A field of the request is invalid.
    #[error(transparent)]
    InvalidField(#[from] InvalidField),
    /// No agent is registered under this id.
    #[error("agent '{0}' is not registered")]
    UnknownAgent(String),
    /// No agent, in any status, declared this group.
    #[error("no agent has group '{0}'")]
    UnknownGroup(String),
    /// No command with this id is retained for this agent.
    #[error("agent '{agent_id}' has no command '{command_id}'")]
    UnknownCommand {
        /// The agent the command was looked up for.
        agent_id: String,
        /// The command id, as given.
        command_id: String,
    },
    /// No rollout with this id is retained.
    #[error("no rollout '{0}' is retained")]
    UnknownRollout(String),
    /// The command expired before it was acknowledged.
    #[error("command '{0}' expired before it was acknowledged")]
    CommandExpired(CommandId),
    /// The agent already holds `commands.max_unfinished_per_agent` PENDING or
    /// DELIVERED commands.
    #[error(
        "agent '{agent_id}' already holds {limit} unfinished commands, the most it may (commands.max_unfinished_per_agent)"
    )]
    TooManyUnfinished {
        /// The agent.
        agent_id: String,
        /// The configured limit.
        limit: usize,
        /// When its oldest unfinished command expires.
        retry_after: Duration,
    },
    /// Storing the command (or the rollout's commands) would pass
    /// `commands.max_retained` or `commands.max_retained_bytes`: nothing was stored.
    #[error("{0}; nothing was stored")]
    CommandsFull(String),
    /// Registering one more agent would pass `lifecycle.max_agents`.
    #[error(
        "{limit} agents are registered, the most this registry holds (lifecycle.max_agents); delete DEAD ones to make room"
    )]
    TooManyAgents {
        /// The configured limit.
        limit: usize,
    },
    /// Opening one more stream would pass the configured limit.
    #[error("{limit} streams are open, the most this server accepts")]
    TooManyStreams {
        /// The configured limit.
        limit: usize,
    },
    /// The registry is shutting down and opens no new streams.
    #[error("the registry is shutting down")]
    ShuttingDown,
    /// Storage could not keep the change: nothing of it was kept.
    #[error("storage is unavailable, nothing was changed: {0}")]
    StorageUnavailable(String),
}

impl RegistryError {
    /// How long a client refused for lack of room should wait before trying
    /// again, for the refusals that have one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::TooManyUnfinished { retry_after, .. } => Some(*retry_after),
            Self::CommandsFull(_) | Self::TooManyAgents { .. } => Some(RETRY_LATER),
            Self::StorageUnavailable(message) if message == CONCURRENT_CHANGE => {
                Some(RETRY_CONCURRENT)
            }
            _ => None,
        }
    }
}
