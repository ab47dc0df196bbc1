//! The writer task: group commit of the batches operations leave, in the
//! order they left them, one transaction for all that waited together; and
//! the reload of the state from storage when a transaction fails. A batch is
//! the marks of what changed; the writer builds its records on the blocking
//! pool, a page per hold of the registry's lock (see `state::persist`). With
//! a store shared by replicas, a commit is checked against versions and may
//! conflict (`shared`).
//!
//! A batch may be promised before its marks exist ([`Submission::promised`]):
//! a rollout takes its place in the order before its first command is made,
//! and the writer waits for its marks, then takes what queued meanwhile
//! into the same transaction. So no batch behind it (an agent's ack of one
//! of its commands) is kept before it, and its commands are written once,
//! as delivered, rather than once created and again delivered.

mod shared;

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::registry::Registry;
use crate::state::{Dirty, HashSet};
use crate::storage::{Snapshot, Storage, StorageError};

/// How often the state is read again while storage can't be read.
const RELOAD_RETRY: Duration = Duration::from_secs(1);

/// Why a batch was not kept.
#[derive(Debug, Clone)]
pub(crate) enum Refusal {
    /// Storage failed: nothing of the batch was kept.
    Storage(StorageError),
    /// Another replica changed what the operation changed, first: nothing of
    /// it was kept, the state holds the other's change, and the operation
    /// may run again.
    Conflict,
}

impl From<Refusal> for StorageError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Storage(err) => err,
            Refusal::Conflict => StorageError::new(crate::error::CONCURRENT_CHANGE),
        }
    }
}

/// What a waiting operation learns of its batch.
pub(crate) type Receipt = oneshot::Receiver<Result<(), Refusal>>;

/// One operation's changes (their marks), and whom to tell when they are kept.
pub(crate) struct Submission {
    /// Shared with the state while in flight, with a shared store.
    pub(crate) changes: Arc<Dirty>,
    pub(crate) done: Option<oneshot::Sender<Result<(), Refusal>>>,
    /// Asks the engine to commit even when there is nothing to write: a probe
    /// of whether storage still holds the registry ([`Registry::check_storage`]).
    pub(crate) probe: bool,
    /// An operation's own batch, which a conflict refuses whole (the
    /// operation may run again); otherwise what was written behind, which a
    /// conflict only trims of what the store's truth replaced.
    pub(crate) operation: bool,
    /// Where `changes` will come from, for a batch promised before its
    /// marks exist: the writer waits for them before it commits anything.
    promise: Option<oneshot::Receiver<Arc<Dirty>>>,
}

/// The writer's side of a promised batch ([`Submission::promised`]): keeping
/// it hands the marks over. Dropped unkept (a panic meanwhile), the batch is
/// committed empty, as the marks of an operation that panicked are lost.
pub(crate) struct Promise(oneshot::Sender<Arc<Dirty>>);

impl Promise {
    /// Hands the promised marks to the writer.
    pub(crate) fn keep(self, changes: Arc<Dirty>) {
        // A writer that has stopped refuses the receipt, which says so.
        let _ = self.0.send(changes);
    }
}

impl Submission {
    /// An operation's batch and the receipt it waits on.
    pub(crate) fn awaited(changes: Arc<Dirty>) -> (Self, Receipt) {
        let (done, receipt) = oneshot::channel();
        (
            Self {
                changes,
                done: Some(done),
                probe: false,
                operation: true,
                promise: None,
            },
            receipt,
        )
    }

    /// An operation's batch whose marks it hands over later, through the
    /// [`Promise`]; meanwhile the writer commits nothing queued behind it.
    pub(crate) fn promised() -> (Self, Receipt, Promise) {
        let (promise, promised) = oneshot::channel();
        let (mut submission, receipt) = Self::awaited(Arc::default());
        submission.promise = Some(promised);
        (submission, receipt, Promise(promise))
    }

    /// Changes written behind, and a receipt for whoever waits until they are kept.
    pub(crate) fn behind(changes: Arc<Dirty>, probe: bool) -> (Self, Receipt) {
        let (mut submission, receipt) = Self::awaited(changes);
        submission.probe = probe;
        submission.operation = false;
        (submission, receipt)
    }

    fn answer(self, result: Result<(), Refusal>) {
        if let Some(done) = self.done {
            // An operation that no longer waits is fine: it was answered otherwise.
            let _ = done.send(result);
        }
    }
}

thread_local! {
    /// The receipts of the operations run inside [`capture`] on this thread.
    static CAPTURED: RefCell<Option<Vec<Receipt>>> = const { RefCell::new(None) };
}

/// Runs `operation` (synchronous, so it stays on this thread) and returns its
/// result with the receipts of the batches it submitted.
pub(crate) fn capture<T>(operation: impl FnOnce() -> T) -> (T, Vec<Receipt>) {
    let outer = CAPTURED.with(|captured| captured.borrow_mut().replace(Vec::new()));
    let result = operation();
    let receipts = CAPTURED.with(|captured| {
        let mut captured = captured.borrow_mut();
        let receipts = captured.take().unwrap_or_default();
        *captured = outer;
        receipts
    });
    (result, receipts)
}

/// Hands `receipt` to the [`capture`] running on this thread, if any; an
/// operation run outside one does not wait for its batch.
pub(crate) fn keep_receipt(receipt: Receipt) {
    CAPTURED.with(|captured| {
        if let Some(receipts) = captured.borrow_mut().as_mut() {
            receipts.push(receipt);
        }
    });
}

/// Waits for every receipt: the first refusal, if any.
pub(crate) async fn settled(receipts: Vec<Receipt>) -> Result<(), Refusal> {
    for receipt in receipts {
        receipt
            .await
            .map_err(|_| Refusal::Storage(StorageError::new("the storage writer has stopped")))??;
    }
    Ok(())
}

/// Commits batches as they come, every batch that waited in one transaction,
/// until `stop`; then commits what is still queued and returns, closing the
/// engine.
pub(crate) async fn run_writer(
    registry: Registry,
    storage: Box<dyn Storage>,
    mut inbox: mpsc::UnboundedReceiver<Submission>,
    stop: CancellationToken,
) {
    let mut storage = Some(storage);
    loop {
        let first = tokio::select! {
            biased;
            submission = inbox.recv() => match submission {
                Some(submission) => submission,
                None => break,
            },
            () = stop.cancelled() => match inbox.try_recv() {
                Ok(submission) => submission,
                Err(_) => break,
            },
        };
        let mut group = vec![first];
        while let Ok(submission) = inbox.try_recv() {
            group.push(submission);
        }
        // A promised batch is kept with what queued behind it meanwhile.
        while let Some(waiting) = group.iter().position(|s| s.promise.is_some()) {
            if let Some(promised) = group[waiting].promise.take()
                && let Ok(changes) = promised.await
            {
                group[waiting].changes = changes;
            }
            while let Ok(submission) = inbox.try_recv() {
                group.push(submission);
            }
        }
        if !commit_group(&registry, &mut storage, group, &mut inbox, &stop).await {
            break;
        }
    }
    // Whatever still waits is refused rather than left hanging.
    inbox.close();
    while let Ok(submission) = inbox.try_recv() {
        submission.answer(Err(Refusal::Storage(StorageError::new(
            "the storage writer has stopped",
        ))));
    }
}

/// Commits one group and answers it; after a failure, reloads the state.
/// Returns false when the engine is lost (its blocking task panicked) or the
/// writer was stopped while storage could not be read.
async fn commit_group(
    registry: &Registry,
    storage: &mut Option<Box<dyn Storage>>,
    mut group: Vec<Submission>,
    inbox: &mut mpsc::UnboundedReceiver<Submission>,
    stop: &CancellationToken,
) -> bool {
    if registry.is_shared() {
        return shared::commit_group(registry, storage, group, inbox, stop).await;
    }
    if group
        .iter()
        .all(|submission| submission.changes.is_empty() && !submission.probe)
    {
        for submission in group {
            submission.answer(Ok(()));
        }
        return true;
    }
    let Some(mut engine) = storage.take() else {
        return false;
    };
    let batches: Vec<Arc<Dirty>> = group
        .iter_mut()
        .map(|submission| std::mem::take(&mut submission.changes))
        .collect();
    let builder = registry.clone();
    let committed = tokio::task::spawn_blocking(move || {
        let (changes, _) = builder.records(batches, &HashSet::default(), false);
        let result = engine.commit(&changes);
        (engine, result)
    })
    .await;
    let (engine, result) = match committed {
        Ok(done) => done,
        Err(err) => return engine_lost(&err, group),
    };
    match result {
        Ok(()) => {
            *storage = Some(engine);
            for submission in group {
                submission.answer(Ok(()));
            }
            true
        }
        Err(err) => recover(registry, storage, engine, group, err, inbox, stop).await,
    }
}

/// The engine's blocking task panicked: the group is refused, and nothing
/// more can be kept.
fn engine_lost(err: &tokio::task::JoinError, group: Vec<Submission>) -> bool {
    error!(%err, "the storage engine failed while writing; nothing more can be kept");
    for submission in group {
        submission.answer(Err(Refusal::Storage(StorageError::new(
            "the storage engine failed",
        ))));
    }
    false
}

/// After a failed write: refuses `group`, and every batch queued behind it,
/// and reads the state again from storage, every second until it can.
/// Returns false when the engine is lost or the writer was stopped while
/// storage could not be read.
async fn recover(
    registry: &Registry,
    storage: &mut Option<Box<dyn Storage>>,
    mut engine: Box<dyn Storage>,
    mut group: Vec<Submission>,
    err: StorageError,
    inbox: &mut mpsc::UnboundedReceiver<Submission>,
    stop: &CancellationToken,
) -> bool {
    error!(%err, "a storage write failed: its requests are refused and the state is read again from storage");
    let refusal = Refusal::Storage(err);
    registry.set_storage_available(false);
    let mut unreadable = false;
    loop {
        let loaded = tokio::task::spawn_blocking(move || {
            let snapshot = engine.load();
            (engine, snapshot)
        })
        .await;
        let Ok((returned, snapshot)) = loaded else {
            error!("the storage engine failed while reading; nothing more can be kept");
            for submission in group {
                submission.answer(Err(refusal.clone()));
            }
            return false;
        };
        engine = returned;
        match snapshot {
            Ok(snapshot) => {
                *storage = Some(engine);
                let queued = roll_back(registry, snapshot, inbox);
                registry.set_storage_available(true);
                if unreadable {
                    info!("storage can be read again: the state is loaded from it and served");
                }
                for submission in group.into_iter().chain(queued) {
                    submission.answer(Err(refusal.clone()));
                }
                return true;
            }
            Err(load_err) => {
                if !unreadable {
                    error!(err = %load_err, "storage can't be read: requests that change the registry are refused until it can");
                    unreadable = true;
                }
                // No one waits the outage out: the refused are answered now, and
                // what is queued meanwhile too (it was built on the same state).
                for submission in group.drain(..) {
                    submission.answer(Err(refusal.clone()));
                }
                while let Ok(submission) = inbox.try_recv() {
                    submission.answer(Err(refusal.clone()));
                }
                tokio::select! {
                    () = tokio::time::sleep(RELOAD_RETRY) => {}
                    () = stop.cancelled() => {
                        *storage = Some(engine);
                        return false;
                    }
                }
            }
        }
    }
}

/// Under the registry's lock: refuses every batch queued behind the failed
/// one (each was built on the state it would have left) and reloads the
/// state from `snapshot`. Returns the refused batches, answered by the caller
/// once the state no longer shows them.
fn roll_back(
    registry: &Registry,
    snapshot: Snapshot,
    inbox: &mut mpsc::UnboundedReceiver<Submission>,
) -> Vec<Submission> {
    registry.reload(snapshot, || {
        let mut queued = Vec::new();
        while let Ok(submission) = inbox.try_recv() {
            queued.push(submission);
        }
        if !queued.is_empty() {
            warn!(
                batches = queued.len(),
                "batches queued behind a failed write are refused"
            );
        }
        queued
    })
}
