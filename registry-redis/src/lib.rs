//! The Redis storage engine: any number of registry-server processes on one
//! Redis serve one registry (SPEC 9). `docs/replicas.md` has the design; in
//! short, every replica holds the whole state in memory and runs the rules
//! there (in `registry-core`), and Redis is
//!
//! - the truth: the records, in the embedded engine's serde forms;
//! - the arbiter: a commit is one Lua script that writes a batch only if no
//!   other replica changed its agents and commands meanwhile (a version per
//!   entity, compare-and-set), atomically;
//! - the log: the script appends what it wrote to a Redis Stream, which every
//!   replica follows (`XREAD BLOCK`) and applies.
//!
//! # Layout
//!
//! - [`open`]: connects, checks the registry's format, and returns a [`Replica`]:
//! - [`RedisEngine`] (`engine`): the [`Storage`](registry_core::Storage) the
//!   writer calls: load, versioned commit, fetch; and [`RedisEngine::join`],
//!   liveness and the signing key published at start.
//! - [`Keeper`] (`keeper`): liveness every second, which replicas are alive,
//!   Redis unreachable or emptied.
//! - [`Tail`] and [`RedisLog`] (`tail`): the log followed, and its head.
//! - [`Follower`] (`follower`): what those tasks ask of the registry.
//! - `scripts`: the Lua scripts; `wire`: a change as the script and the log
//!   carry it; `shared`: what the engine and its tasks share.
//!
//! # Keys in Redis
//!
//! Every key starts with the prefix `P` (`storage.redis_prefix`).
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P format` | string | [`FORMAT_VERSION`](registry_core::storage::FORMAT_VERSION) |
//! | `P marker` | string | the registry's epoch, a UUID: gone or changed means Redis lost the registry |
//! | `P agents` | hash | agentId -> the agent's record, JSON |
//! | `P heartbeats` | hash | agentId -> its heartbeat time, Unix ms, when later than the record's |
//! | `P commands` | hash | commandId -> the command's record, JSON |
//! | `P delivered` | hash | commandId -> when it was delivered, Unix ms, when its record says PENDING |
//! | `P rollouts` | hash | rolloutId -> the rollout's record, JSON |
//! | `P payloads` | hash | rolloutId -> the rollout's payload, canonical JSON, written once |
//! | `P meta` | hash | named values (the signing key, the brake) |
//! | `P seq` | string | the number of the last commit: every entity it wrote has that version |
//! | `P versions` | hash | `a:<agentId>` / `c:<commandId>` -> the entity's version |
//! | `P log` | stream | entry `v-0`: commit `v`, its origin replica (`o`) and what it wrote (`c`) |
//! | `P streams` | hash | agentId -> the replica its stream is open on |
//! | `P replicas` | sorted set | replica id -> when its liveness runs out, Unix ms (Redis's clock) |
//! | `P keys` | hash | replica id -> the public key it signs with |
//! | `P reply:<replica id>` | list | the token of its last commit that wrote, then the answer (a minute) |
//!
//! The records are the embedded engine's, written by `serde_json`; the Lua
//! scripts only move strings, so a payload keeps its canonical (signed) form.

mod engine;
mod follower;
mod keeper;
mod scripts;
mod shared;
mod tail;
mod wire;

use std::sync::Arc;

use redis::Client;
use tokio_util::sync::CancellationToken;

pub use engine::{JoinError, RedisEngine};
pub use follower::Follower;
pub use keeper::Keeper;
pub use tail::{RedisLog, Tail};

use engine::Failure;
use shared::{Keys, Shared};

/// Why Redis can't be used. The server adds the setting's name.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Redis can't be reached, or refused a command.
    #[error("Redis at {url} can't be used: {reason}")]
    Unreachable {
        /// The URL, without its password.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The keys hold a format this version can't read; they were left as they are.
    #[error(
        "the registry at prefix {prefix:?} on {url} can't be read ({reason}); it was left untouched"
    )]
    Unreadable {
        /// The prefix.
        prefix: String,
        /// The URL, without its password.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

/// One replica of the registry at a prefix: its engine, the head of the log,
/// and the tasks that run beside the registry.
pub struct Replica {
    /// The storage the registry is started on.
    pub engine: RedisEngine,
    /// The log's head, for the registry's reads.
    pub log: Arc<RedisLog>,
    /// The keeper and the tail, run once the registry is started.
    pub tasks: Tasks,
}

/// The keeper and the tail.
pub struct Tasks {
    keeper: Keeper,
    tail: Tail,
}

impl Tasks {
    /// Runs both until `stop`.
    pub async fn run(self, follower: impl Follower, stop: CancellationToken) {
        tokio::join!(
            self.keeper.run(follower.clone(), stop.clone()),
            self.tail.run(follower, stop),
        );
    }
}

/// Opens the registry at `prefix` on the Redis at `url`: checks that Redis
/// answers and that the registry's format is this version's (a new registry
/// gets its format and marker). Any number of replicas may open one registry.
pub fn open(url: &str, prefix: &str) -> Result<Replica, OpenError> {
    let shown = without_password(url);
    let unreachable = |err: &dyn std::fmt::Display| OpenError::Unreachable {
        url: shown.clone(),
        reason: err.to_string(),
    };
    let client = Client::open(url).map_err(|err| unreachable(&err))?;
    let shared = Arc::new(Shared::new(
        Keys::new(prefix),
        shown.clone(),
        uuid::Uuid::now_v7().to_string().into(),
    ));
    let mut engine = RedisEngine::new(client.clone(), Arc::clone(&shared));
    engine.ensure_registry().map_err(|reason| match reason {
        Failure::Redis(err) => unreachable(&err),
        Failure::Format(reason) => OpenError::Unreadable {
            prefix: prefix.to_owned(),
            url: shown.clone(),
            reason,
        },
    })?;
    Ok(Replica {
        engine,
        log: Arc::new(RedisLog::new(client.clone(), Arc::clone(&shared))),
        tasks: Tasks {
            keeper: Keeper::new(client.clone(), Arc::clone(&shared)),
            tail: Tail::new(client, shared),
        },
    })
}

/// `url` with any password replaced, for messages and logs.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "the configured URL".into();
    };
    match rest.split_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_never_shown() {
        assert_eq!(
            without_password("redis://user:secret@db:6379/0"),
            "redis://***@db:6379/0"
        );
        assert_eq!(
            without_password("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(without_password("secret"), "the configured URL");
    }
}
