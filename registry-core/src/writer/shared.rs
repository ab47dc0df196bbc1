//! The writer's commit to a store shared by replicas (`docs/replicas.md`):
//! each change names the version of its entity it was built on, and a
//! commit writes all of it or reports the entities another replica changed
//! first (a conflict), writing nothing.
//!
//! After a conflict the writer takes every batch queued too (then all that
//! is in flight is in its hands) and works out what the conflict takes
//! down: an operation's batch that changed a conflicted entity is refused
//! (the operation may run again), and the other entities it changed are
//! lost too (they may hold half of it), and so on; a batch written behind
//! only loses those entities. It fetches the store's truth of every entity
//! lost and applies it, under the registry's lock, answers the refused, and
//! commits the rest.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{Refusal, Submission, engine_lost, recover};
use crate::registry::Registry;
use crate::replication::{Commit, Entity, Version};
use crate::state::{Dirty, HashSet};
use crate::storage::{Change, Storage, StorageError};

/// Commits one group, again and again after conflicts until what remains
/// is written, and answers it; after a failure, reloads the state. Returns
/// false when the engine is lost or the writer was stopped while storage
/// could not be read.
pub(super) async fn commit_group(
    registry: &Registry,
    storage: &mut Option<Box<dyn Storage>>,
    mut group: Vec<Submission>,
    inbox: &mut mpsc::UnboundedReceiver<Submission>,
    stop: &CancellationToken,
) -> bool {
    // The entities whose records the store's truth replaced here: left out.
    let mut lost: HashSet<Entity> = HashSet::default();
    loop {
        let Some(mut engine) = storage.take() else {
            return false;
        };
        let batches = batches_of(&group);
        let probe = group.iter().any(|submission| submission.probe);
        let builder = registry.clone();
        let left_out = lost.clone();
        let committed = tokio::task::spawn_blocking(move || {
            let (changes, bases) = builder.records(batches, &left_out, true);
            let result = if changes.is_empty() && !probe {
                Ok(Commit::Written {
                    version: 0,
                    unchanged: Vec::new(),
                })
            } else {
                engine.commit_versioned(&changes, &bases)
            };
            (engine, changes, result)
        })
        .await;
        let (engine, changes, result) = match committed {
            Ok(done) => done,
            Err(err) => return engine_lost(&err, group),
        };
        let conflicted = match result {
            Err(err) => return recover(registry, storage, engine, group, err, inbox, stop).await,
            Ok(Commit::Written { version, unchanged }) => {
                *storage = Some(engine);
                let batches = batches_of(&group);
                registry.under_lock(|state, now| {
                    state.committed(&changes, version, &unchanged, &batches, &lost, now);
                });
                for submission in group {
                    submission.answer(Ok(()));
                }
                return true;
            }
            Ok(Commit::Conflict(conflicted)) => conflicted,
        };
        *storage = Some(engine);
        debug!(
            entities = conflicted.len(),
            "another replica changed what a commit changed: the store's truth replaces it"
        );
        match resolve(registry, storage, &mut group, conflicted, &mut lost, inbox).await {
            Ok(refused) => {
                for submission in refused {
                    submission.answer(Err(Refusal::Conflict));
                }
            }
            Err(Unresolved::Storage(engine, err)) => {
                return recover(registry, storage, engine, group, err, inbox, stop).await;
            }
            Err(Unresolved::EngineLost(err)) => return engine_lost(&err, group),
            Err(Unresolved::Gone) => return false,
        }
    }
}

/// Why a conflict could not be resolved.
enum Unresolved {
    /// Fetching failed: recover as from a failed write.
    Storage(Box<dyn Storage>, StorageError),
    /// The engine's blocking task panicked.
    EngineLost(tokio::task::JoinError),
    /// The engine was lost before.
    Gone,
}

/// Takes what is queued into `group`, fetches and applies the truth of
/// what `conflicted` takes down, and returns the refused submissions, taken
/// out of `group`; what else is lost is added to `lost`.
async fn resolve(
    registry: &Registry,
    storage: &mut Option<Box<dyn Storage>>,
    group: &mut Vec<Submission>,
    conflicted: Vec<Entity>,
    lost: &mut HashSet<Entity>,
    inbox: &mut mpsc::UnboundedReceiver<Submission>,
) -> Result<Vec<Submission>, Unresolved> {
    let conflicted: HashSet<Entity> = conflicted.into_iter().collect();
    let mut fetched: Vec<(Version, Change)> = Vec::new();
    let mut have: HashSet<Entity> = HashSet::default();
    loop {
        // Under the lock, so that no batch is handed over meanwhile: if the
        // truth fetched covers what the conflict takes down, it is applied.
        let step = registry.under_lock(|state, now| {
            while let Ok(submission) = inbox.try_recv() {
                group.push(submission);
            }
            let (refused, taken_down) = takes_down(group, &conflicted);
            let missing: Vec<Entity> = taken_down
                .iter()
                .filter(|entity| !have.contains(*entity))
                .cloned()
                .collect();
            if !missing.is_empty() {
                return Err(missing);
            }
            let refused_batches: Vec<Arc<Dirty>> = refused
                .iter()
                .map(|index| Arc::clone(&group[*index].changes))
                .collect();
            state.apply_fetched(
                std::mem::take(&mut fetched),
                &taken_down,
                &refused_batches,
                now,
            );
            Ok((refused, taken_down))
        });
        match step {
            Ok((refused, taken_down)) => {
                lost.extend(taken_down);
                let mut out = Vec::new();
                let mut kept = Vec::with_capacity(group.len());
                for (index, submission) in group.drain(..).enumerate() {
                    if refused.contains(&index) {
                        out.push(submission);
                    } else {
                        kept.push(submission);
                    }
                }
                *group = kept;
                return Ok(out);
            }
            Err(missing) => {
                let Some(mut engine) = storage.take() else {
                    return Err(Unresolved::Gone);
                };
                let asked = missing.clone();
                let read = tokio::task::spawn_blocking(move || {
                    let result = engine.fetch(&asked);
                    (engine, result)
                })
                .await;
                let (engine, result) = read.map_err(Unresolved::EngineLost)?;
                match result {
                    Ok(truth) => {
                        *storage = Some(engine);
                        fetched.extend(truth);
                        have.extend(missing);
                    }
                    Err(err) => return Err(Unresolved::Storage(engine, err)),
                }
            }
        }
    }
}

/// What `conflicted` takes down in `group`: the operations refused (by
/// index) and the entities whose records are lost. An operation that
/// changed a lost entity's record, or took a heartbeat of a conflicted
/// agent (gone from the store), is refused, and everything it changed is
/// lost; until nothing more is.
fn takes_down(group: &[Submission], conflicted: &HashSet<Entity>) -> (Vec<usize>, HashSet<Entity>) {
    let mut lost = conflicted.clone();
    let mut refused = Vec::new();
    loop {
        let before = refused.len();
        for (index, submission) in group.iter().enumerate() {
            if !submission.operation || refused.contains(&index) {
                continue;
            }
            let changes = &submission.changes;
            let touches = changes.records().any(|entity| lost.contains(&entity))
                || changes
                    .heartbeats()
                    .any(|id| conflicted.contains(&Entity::Agent(id.clone())));
            if touches {
                refused.push(index);
                lost.extend(changes.records().filter(Entity::is_versioned));
            }
        }
        if refused.len() == before {
            return (refused, lost);
        }
    }
}

fn batches_of(group: &[Submission]) -> Vec<Arc<Dirty>> {
    group
        .iter()
        .map(|submission| Arc::clone(&submission.changes))
        .collect()
}
