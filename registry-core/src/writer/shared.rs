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
//!
//! A group of more than [`SLICE`] changes is committed in slices, each a
//! commit of its own, noted before the next is sent; a failure between two
//! leaves the slices written in the store, which the reload reads back.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{Refusal, Submission, engine_lost, recover};
use crate::registry::Registry;
use crate::replication::{Commit, Entity, Version};
use crate::state::{Dirty, HashSet, applying_rank};
use crate::storage::{Change, Storage, StorageError};

/// The most changes one commit script writes. A group larger (a fleet
/// command to 100,000 agents is 100,000 command records) is committed as
/// successive commits of at most this many, each atomic on its own, so that
/// Redis, which runs one script at a time and nothing else meanwhile, is
/// never held long: the script takes 5 to 7 µs a change on an idle machine
/// and 20 to 90 µs on a loaded one, `appendfsync always` (1.3 s for a fleet
/// command to 19,000 agents, 3.5 to 6 s for 100,000, past Redis's 5 s busy
/// limit and the replicas' 2 s timeout), so a slice holds it 10 to 200 ms,
/// and the others' commits and heartbeats come between two.
const SLICE: usize = 2048;

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
            let (changes, bases) = in_slicing_order(changes, bases);
            let result = commit_slice(&mut *engine, &changes, &bases, 0, probe);
            (engine, Arc::new(changes), Arc::new(bases), result)
        })
        .await;
        let (mut engine, changes, bases, mut result) = match committed {
            Ok(done) => done,
            Err(err) => return engine_lost(&err, group),
        };
        // Each slice written is noted before the next is committed.
        let mut start = 0;
        let conflicted = loop {
            match result {
                Err(err) => {
                    // The slices before this one are kept: the reload reads them.
                    return recover(registry, storage, engine, group, err, inbox, stop).await;
                }
                Ok(Commit::Written { version, unchanged }) => {
                    let end = changes.len().min(start + SLICE);
                    let last = end == changes.len();
                    let batches = batches_of(&group);
                    let slice = &changes[start..end];
                    registry.under_lock(|state, now| {
                        state.committed(slice, version, &unchanged, &batches, &lost, last, now);
                    });
                    if last {
                        *storage = Some(engine);
                        for submission in group {
                            submission.answer(Ok(()));
                        }
                        return true;
                    }
                    start = end;
                    let (changes, bases) = (Arc::clone(&changes), Arc::clone(&bases));
                    let next = tokio::task::spawn_blocking(move || {
                        let result = commit_slice(&mut *engine, &changes, &bases, start, false);
                        (engine, result)
                    })
                    .await;
                    (engine, result) = match next {
                        Ok(done) => done,
                        Err(err) => return engine_lost(&err, group),
                    };
                }
                Ok(Commit::Conflict(conflicted)) => break conflicted,
            }
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

/// Orders a group's changes so that whatever a slice applied by another
/// replica reads is in that slice or an earlier one: the order in which
/// one entry's changes are applied (a rollout and its payload before its
/// commands, agents before theirs, removals of what others refer to last).
/// Stable: the order records were built in is kept otherwise.
fn in_slicing_order(changes: Vec<Change>, bases: Vec<Version>) -> (Vec<Change>, Vec<Version>) {
    let mut paired: Vec<(Change, Version)> = changes.into_iter().zip(bases).collect();
    paired.sort_by_key(|(change, _)| applying_rank(change));
    paired.into_iter().unzip()
}

/// Commits the slice of `changes` that starts at `start`, at most
/// [`SLICE`] of them; with nothing to write and no `probe`, commits nothing.
fn commit_slice(
    engine: &mut dyn Storage,
    changes: &[Change],
    bases: &[Version],
    start: usize,
    probe: bool,
) -> Result<Commit, StorageError> {
    let end = changes.len().min(start + SLICE);
    if start == end && !probe {
        return Ok(Commit::Written {
            version: 0,
            unchanged: Vec::new(),
        });
    }
    engine.commit_versioned(&changes[start..end], &bases[start..end])
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
                &batches_of(group),
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
