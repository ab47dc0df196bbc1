//! The registry handle: one cheap clone shared by every task, the lock over the
//! state, the background task that applies deadlines as they come due, and,
//! with a storage engine, the tasks that write what changed (see [`crate::storage`]).
//!
//! No hold of the lock is long (SPEC 13: no request waits on another's bulk
//! work), and bulk work is sliced, the lock handed between two slices to
//! whoever waits for it (parking_lot's fair unlock):
//!
//! - deadlines that come due by the million are applied `SCHEDULER_BATCH`
//!   at a time, on the blocking pool; a request applies at most
//!   `OPERATION_BATCH` of them before its own work, and settles the agents
//!   and commands it reads or changes (see `state`);
//! - a listing reads `LIST_PAGE` agents per hold, copying handles (`Arc`s);
//!   sorting is the id order it walks, serializing is its caller's;
//! - a group or fleet command reads its targets, creates its commands and
//!   delivers them a page per hold (`launch`);
//! - the writer builds records `RECORD_PAGE` per hold.
//!
//! The callers run bulk work off the runtime's worker threads
//! ([`durably_in_bulk`](Registry::durably_in_bulk), and the server's own).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};

use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use crate::agent::{AgentFilter, AgentId, AgentView, Credential, Registration};
use crate::clock::Clock;
use crate::command::{Ack, CommandRequest, CommandView};
use crate::error::{CONCURRENT_CHANGE, RegistryError};
use crate::fleet::{FleetEvent, FleetSubscription, StatusChanges};
use crate::replication::{Entity, Log, LogEntry, ReplicaId, Version};
use crate::rollout::{NewRollout, RolloutView};
use crate::settings::Settings;
use crate::state::{Applying, Dirty, HashSet, Launching, State, Targets, applying_rank};
use crate::stats::Stats;
use crate::storage::{Change, Snapshot, Storage, StorageError, WRITE_BEHIND};
use crate::subscription::Subscription;
use crate::writer::{self, Refusal, Submission};

/// Due deadlines the scheduler applies per hold of the lock: well under a
/// millisecond of work, after which a waiting request gets the lock.
const SCHEDULER_BATCH: usize = 256;
/// Due deadlines an operation applies before its own work. With more due (a
/// backlog the scheduler is working off) it leaves the rest to the scheduler;
/// what it reads or changes it settles itself.
const OPERATION_BATCH: usize = 64;
/// Agents a listing reads per hold of the lock: about a millisecond of work.
const LIST_PAGE: usize = 1024;
/// Records the writer builds per hold of the lock: about a millisecond of work.
const RECORD_PAGE: usize = 1024;
/// Commands a rollout creates per hold of the lock: about a millisecond of work.
const LAUNCH_PAGE: usize = 256;
/// Changes of another replica's commit applied per hold of the lock.
const APPLY_PAGE: usize = 1024;
/// The longest a read waits for this replica to apply the log up to its
/// head ([`Registry::catch_up`]) before it is refused.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(2);

/// A handle to the registry. Cloning it is cheap; every clone sees the same agents.
#[derive(Clone)]
pub struct Registry {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the scheduler task when a deadline earlier than its next one is added.
    wake_scheduler: Notify,
    /// Parent of every stream's closer: cancelling it ends every stream.
    streams: CancellationToken,
    /// Ends the fleet's event streams open now: a child of `streams`,
    /// replaced (and cancelled) when the state is read again from storage,
    /// after which their readers' views are no longer the registry's.
    fleet: Mutex<CancellationToken>,
    /// What changes in the fleet, for every reader of the fleet's events.
    events: broadcast::Sender<FleetEvent>,
    settings: Arc<Settings>,
    clock: Clock,
    /// Where batches go to be written; none with the `memory` engine.
    outbox: Option<mpsc::UnboundedSender<Submission>>,
    /// Wakes the task that writes behind: something changed that no one waits for.
    behind: Notify,
    /// False from a failed write until the state is read from storage again:
    /// meanwhile operations a request waits for are refused before they run.
    storage_available: AtomicBool,
    /// With a store shared by replicas: its log, and how far it is applied.
    replica: Option<ReplicaLink>,
}

/// What a replica sharing its store knows of the store's log.
struct ReplicaLink {
    id: ReplicaId,
    log: Arc<dyn Log>,
    /// The version of the last commit of the log applied here.
    position: watch::Sender<Version>,
}

/// Owns the registry's scheduler task and stops it when dropped, so that no
/// task outlives the server that started it.
pub struct RegistryGuard {
    registry: Registry,
    stop: CancellationToken,
    /// Stops the writer once the last changes are handed to it.
    stop_writer: CancellationToken,
    writer: Option<JoinHandle<()>>,
}

impl RegistryGuard {
    /// A handle to the registry this guard runs.
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// Stops the background tasks after writing every change not yet written
    /// (heartbeat times, transitions), and closes the storage engine.
    pub async fn close(mut self) {
        self.stop.cancel();
        if let Err(err) = self.registry.flush().await {
            error!(%err, "the last changes could not be written");
        }
        self.stop_writer.cancel();
        if let Some(writer) = self.writer.take() {
            let _ = writer.await;
        }
    }
}

impl Drop for RegistryGuard {
    fn drop(&mut self) {
        self.stop.cancel();
        self.stop_writer.cancel();
    }
}

/// What one pass of the scheduler did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// Deadlines that were due and were applied.
    pub handled: usize,
    /// The earliest deadline still ahead.
    pub next_due: Option<Instant>,
}

impl Registry {
    /// Starts a registry and its scheduler task on the current tokio runtime.
    pub fn start(settings: Settings) -> RegistryGuard {
        Self::start_with_clock(settings, Clock::new())
    }

    /// Starts a registry whose timestamps come from `clock`, keeping nothing (the `memory` engine).
    pub fn start_with_clock(settings: Settings, clock: Clock) -> RegistryGuard {
        let registry = Self::build(settings, clock, None, None);
        let stop = CancellationToken::new();
        tokio::spawn(run_scheduler(registry.clone(), stop.clone()));
        RegistryGuard {
            registry,
            stop,
            stop_writer: CancellationToken::new(),
            writer: None,
        }
    }

    /// Starts a registry kept in `storage`: loads what it holds (with the
    /// restart's grace, see [`crate::storage`]) and writes every change to it.
    pub fn start_with_storage(
        settings: Settings,
        clock: Clock,
        storage: Box<dyn Storage>,
    ) -> Result<RegistryGuard, StorageError> {
        Self::start_on(settings, clock, storage, None)
    }

    /// Starts a registry as replica `replica_id` of a store shared with other
    /// replicas (`storage` [is shared](Storage::is_shared)): loads what it
    /// holds, with its versions and the log position it includes; commits
    /// against versions; and reads the head of the store's `log` to
    /// [`catch_up`](Self::catch_up). The engine tails the log and hands every
    /// entry to [`apply_log`](Self::apply_log), and tells which replicas are
    /// alive ([`replicas_alive`](Self::replicas_alive)). See `docs/replicas.md`.
    pub fn start_shared(
        settings: Settings,
        clock: Clock,
        storage: Box<dyn Storage>,
        replica_id: ReplicaId,
        log: Arc<dyn Log>,
    ) -> Result<RegistryGuard, StorageError> {
        Self::start_on(settings, clock, storage, Some((replica_id, log)))
    }

    fn start_on(
        settings: Settings,
        clock: Clock,
        mut storage: Box<dyn Storage>,
        replica: Option<(ReplicaId, Arc<dyn Log>)>,
    ) -> Result<RegistryGuard, StorageError> {
        let snapshot = storage.load()?;
        let (outbox, inbox) = mpsc::unbounded_channel();
        let registry = Self::build(settings, clock, Some(outbox), replica);
        registry.set_position(snapshot.position);
        registry.lock().restore(snapshot, clock.now());
        let stop = CancellationToken::new();
        let stop_writer = CancellationToken::new();
        tokio::spawn(run_scheduler(registry.clone(), stop.clone()));
        tokio::spawn(run_write_behind(registry.clone(), stop.clone()));
        let writer = tokio::spawn(writer::run_writer(
            registry.clone(),
            storage,
            inbox,
            stop_writer.clone(),
        ));
        Ok(RegistryGuard {
            registry,
            stop,
            stop_writer,
            writer: Some(writer),
        })
    }

    /// A registry with no scheduler task and no storage: deadlines apply only
    /// when an operation or [`tick`](Self::tick) runs. For benchmarks that
    /// drive ticks themselves.
    pub fn new(settings: Settings, clock: Clock) -> Self {
        Self::build(settings, clock, None, None)
    }

    fn build(
        settings: Settings,
        clock: Clock,
        outbox: Option<mpsc::UnboundedSender<Submission>>,
        replica: Option<(ReplicaId, Arc<dyn Log>)>,
    ) -> Self {
        let settings = Arc::new(settings);
        let (events, _) = broadcast::channel(settings.fleet_queue.max(1));
        let state = State::new(
            settings.clone(),
            clock,
            events.clone(),
            outbox.is_some(),
            replica.as_ref().map(|(id, _)| id.clone()),
        );
        let replica = replica.map(|(id, log)| ReplicaLink {
            id,
            log,
            position: watch::Sender::new(0),
        });
        let streams = CancellationToken::new();
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                wake_scheduler: Notify::new(),
                fleet: Mutex::new(streams.child_token()),
                streams,
                events,
                settings,
                clock,
                outbox,
                behind: Notify::new(),
                storage_available: AtomicBool::new(true),
                replica,
            }),
        }
    }

    /// The settings the registry runs with.
    pub fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    /// The clock the registry reads.
    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    /// The lock over the state. parking_lot's: it is not poisoned (no
    /// operation is known to panic; if one ever did, serving on with the state
    /// as it left it beats failing every request that follows), and it can be
    /// handed to a waiting thread between two slices of bulk work.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock()
    }

    /// Runs `operation` on the state after applying the deadlines due now, and
    /// wakes the scheduler if the operation added an earlier deadline. What it
    /// changed is written behind.
    fn with_state<R>(&self, operation: impl FnOnce(&mut State, Instant) -> R) -> R {
        self.apply(false, false, operation)
    }

    /// [`with_state`](Self::with_state), for the writer's work on the state.
    pub(crate) fn under_lock<R>(&self, operation: impl FnOnce(&mut State, Instant) -> R) -> R {
        self.with_state(operation)
    }

    /// Like [`with_state`](Self::with_state), for one slice of bulk work: the
    /// lock is handed to a thread waiting for it, if any, so that the next
    /// slice queues behind it rather than take the lock straight back.
    fn with_state_slice<R>(&self, operation: impl FnOnce(&mut State, Instant) -> R) -> R {
        self.apply(false, true, operation)
    }

    /// Like [`with_state`](Self::with_state), for an operation a request
    /// answers: its changes go to the writer at once, and a
    /// [`durably`](Self::durably) around it waits until they are kept.
    fn with_state_durable<R>(&self, operation: impl FnOnce(&mut State, Instant) -> R) -> R {
        self.apply(true, false, operation)
    }

    fn apply<R>(
        &self,
        durable: bool,
        fair: bool,
        operation: impl FnOnce(&mut State, Instant) -> R,
    ) -> R {
        let mut state = self.lock();
        let now = self.shared.clock.now();
        state.advance(now, OPERATION_BATCH);
        if durable && self.is_shared() {
            // With replicas, an operation's batch holds its own changes
            // alone: a conflict refuses it, and it runs again, for what it
            // changed, not for a delivery or a deadline written behind.
            state.settle_rollouts(now);
            self.write_behind_now(&mut state);
        }
        let result = operation(&mut state, now);
        state.settle_rollouts(now);
        // A backlog left due: the scheduler works it off.
        let wake = state.take_wake() | state.is_due(now);
        let mut behind = false;
        if let Some(outbox) = &self.shared.outbox
            && state.has_changes()
        {
            if durable {
                // Sent under the lock, so batches reach the writer in the order of the state.
                let marks = state.take_changes();
                let (submission, receipt) = Submission::awaited(state.hand_over(marks));
                // A writer that has stopped drops the submission, and the receipt says so.
                let _ = outbox.send(submission);
                writer::keep_receipt(receipt);
            } else {
                behind = true;
            }
        }
        if fair {
            MutexGuard::unlock_fair(state);
        } else {
            drop(state);
        }
        if wake {
            self.shared.wake_scheduler.notify_one();
        }
        if behind {
            self.shared.behind.notify_one();
        }
        result
    }

    /// Runs `operation` and, with a storage engine, waits until every change it
    /// made is kept: what a request answered 2xx must survive a crash right
    /// after the answer. If storage fails, nothing of the operation is kept and
    /// the answer is [`RegistryError::StorageUnavailable`].
    ///
    /// With a store shared by replicas, another replica may have changed what
    /// the operation changed, first: nothing of it is kept, the state holds
    /// the other's change, and `operation` runs once more after catching up
    /// with the log; a second such conflict is refused as
    /// [`RegistryError::StorageUnavailable`] ([`CONCURRENT_CHANGE`]).
    ///
    /// `operation` is synchronous: the changes it makes are found on this
    /// thread while it runs.
    pub async fn durably<T>(
        &self,
        operation: impl Fn(&Registry) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        for attempt in 0..2 {
            if !self.storage_available() {
                // Refused before it runs: the state shows nothing of it.
                return Err(RegistryError::StorageUnavailable(
                    "storage is unavailable; the registry is reading it again".into(),
                ));
            }
            let (result, receipts) = writer::capture(|| operation(self));
            match self.kept(receipts, attempt).await? {
                Kept::Yes => return result,
                Kept::RunAgain => {}
            }
        }
        Err(concurrent_change())
    }

    /// Like [`durably`](Self::durably), for bulk work (a rollout to the whole
    /// fleet): `operation` runs on tokio's blocking pool, so that it never
    /// takes one of the runtime's few worker threads from heartbeats and
    /// probes while it works page after page. A panic in it panics the caller.
    pub async fn durably_in_bulk<T: Send + 'static>(
        &self,
        operation: impl Fn(&Registry) -> Result<T, RegistryError> + Send + Sync + 'static,
    ) -> Result<T, RegistryError> {
        let operation = Arc::new(operation);
        for attempt in 0..2 {
            let registry = self.clone();
            let operation = Arc::clone(&operation);
            let work = move || writer::capture(|| operation(&registry));
            let (result, receipts) = match tokio::task::spawn_blocking(work).await {
                Ok(done) => done,
                Err(err) => std::panic::resume_unwind(err.into_panic()),
            };
            match self.kept(receipts, attempt).await? {
                Kept::Yes => return result,
                Kept::RunAgain => {}
            }
        }
        Err(concurrent_change())
    }

    /// Waits for an operation's receipts: whether what it changed was kept,
    /// or must be run again after a first conflict (the log caught up with).
    async fn kept(
        &self,
        receipts: Vec<writer::Receipt>,
        attempt: usize,
    ) -> Result<Kept, RegistryError> {
        match writer::settled(receipts).await {
            Ok(()) => Ok(Kept::Yes),
            Err(Refusal::Conflict) if attempt == 0 => {
                self.catch_up().await?;
                Ok(Kept::RunAgain)
            }
            Err(Refusal::Conflict) => Err(concurrent_change()),
            Err(Refusal::Storage(err)) => Err(RegistryError::StorageUnavailable(err.0)),
        }
    }

    /// Hands every change not written yet to the writer and waits until it,
    /// and everything handed over before, is kept.
    pub async fn flush(&self) -> Result<(), StorageError> {
        let receipt = {
            let mut state = self.lock();
            match &self.shared.outbox {
                // Even with nothing to add: batches are committed in order, so
                // its receipt says that all before it are kept.
                Some(outbox) => {
                    let marks = state.take_changes();
                    let (submission, receipt) = Submission::behind(state.hand_over(marks), false);
                    let _ = outbox.send(submission);
                    Some(receipt)
                }
                None => None,
            }
        };
        match receipt {
            Some(receipt) => writer::settled(vec![receipt]).await.map_err(Into::into),
            None => Ok(()),
        }
    }

    /// Whether storage takes writes: false from a failed write until the state
    /// has been read from storage again (`/readyz` says so).
    pub fn storage_available(&self) -> bool {
        self.shared.storage_available.load(Ordering::Acquire)
    }

    pub(crate) fn set_storage_available(&self, available: bool) {
        self.shared
            .storage_available
            .store(available, Ordering::Release);
    }

    /// Has the engine commit, with nothing to write if nothing is waiting, and
    /// waits for it: an engine that finds it can't reach its store, or that the
    /// store lost the registry, fails, and the state is read again from it as
    /// after any failed write. For an engine's watchdog (the Redis engine's keeper).
    pub async fn check_storage(&self) -> Result<(), StorageError> {
        let receipt = {
            let mut state = self.lock();
            match &self.shared.outbox {
                Some(outbox) => {
                    let marks = state.take_changes();
                    let (submission, receipt) = Submission::behind(state.hand_over(marks), true);
                    let _ = outbox.send(submission);
                    Some(receipt)
                }
                None => None,
            }
        };
        match receipt {
            Some(receipt) => writer::settled(vec![receipt]).await.map_err(Into::into),
            None => Ok(()),
        }
    }

    /// The records of the marks of `batches`, built from the state as it is
    /// now, `RECORD_PAGE` per hold of the lock, those of `lost` left out:
    /// the writer's work, on the blocking pool. With `bases`, each change's
    /// base too (a shared store's).
    pub(crate) fn records(
        &self,
        batches: Vec<Arc<Dirty>>,
        lost: &HashSet<Entity>,
        bases: bool,
    ) -> (Vec<Change>, Vec<Version>) {
        let (marks, meta) = Dirty::merge(batches, lost);
        let mut changes = Vec::with_capacity(marks.len() + meta.len());
        let mut versions = Vec::with_capacity(if bases { changes.capacity() } else { 0 });
        for page in marks.chunks(RECORD_PAGE) {
            let state = self.lock();
            state.records(page, &mut changes, bases.then_some(&mut versions));
            MutexGuard::unlock_fair(state);
        }
        changes.extend(
            meta.into_iter()
                .map(|(key, value)| Change::Meta(key, value)),
        );
        if bases {
            // Named values are written unchecked.
            versions.resize(changes.len(), 0);
        }
        (changes, versions)
    }

    /// Hands `marks` to the writer as one batch, whose receipt a
    /// [`durably`](Self::durably) around the caller waits for.
    fn submit(&self, marks: Dirty) {
        if let Some(outbox) = &self.shared.outbox
            && !marks.is_empty()
        {
            let marks = self.lock().hand_over(marks);
            let (submission, receipt) = Submission::awaited(marks);
            // A writer that has stopped drops the submission, and the receipt says so.
            let _ = outbox.send(submission);
            writer::keep_receipt(receipt);
        }
    }

    /// A place in the writer's order for a batch handed over later (see
    /// `writer`), whose receipt a [`durably`](Self::durably) around the
    /// caller waits for; `None` with the `memory` engine.
    fn promise(&self) -> Option<writer::Promise> {
        let outbox = self.shared.outbox.as_ref()?;
        let (submission, receipt, promise) = Submission::promised();
        // A writer that has stopped drops the submission, and the receipt says so.
        let _ = outbox.send(submission);
        writer::keep_receipt(receipt);
        Some(promise)
    }

    /// Hands what changed to the writer without waiting: the write-behind task calls it.
    fn write_behind(&self) {
        self.write_behind_now(&mut self.lock());
    }

    fn write_behind_now(&self, state: &mut State) {
        if let Some(outbox) = &self.shared.outbox
            && state.has_changes()
        {
            let marks = state.take_changes();
            let (submission, _) = Submission::behind(state.hand_over(marks), false);
            let _ = outbox.send(submission);
        }
    }

    /// After a failed write: runs `under_lock` (which takes the batches queued
    /// behind it) and replaces the state with `snapshot`, keeping open streams.
    pub(crate) fn reload<T>(&self, snapshot: Snapshot, under_lock: impl FnOnce() -> T) -> T {
        let mut state = self.lock();
        let taken = under_lock();
        if let Some(replica) = &self.shared.replica {
            // Exactly the store's: a store emptied and begun again numbers
            // its commits from 1 again.
            replica.position.send_replace(snapshot.position);
        }
        state.reload(snapshot, self.shared.clock.now());
        // The fleet's event streams told of a state that is gone (what was
        // refused, what other replicas did meanwhile): they end, and their
        // readers list again (SPEC 9, 11). Under the state's lock, as
        // subscribing is, so none opened on the old state is missed.
        let ended = std::mem::replace(
            &mut *self.shared.fleet.lock(),
            self.shared.streams.child_token(),
        );
        ended.cancel();
        drop(state);
        self.shared.wake_scheduler.notify_one();
        taken
    }

    /// Applies every deadline due now, in batches of `SCHEDULER_BATCH`
    /// between which a waiting request gets the lock. The scheduler task
    /// calls this for a backlog; tests and benchmarks may too.
    pub fn tick(&self) -> Tick {
        let mut handled = 0;
        loop {
            let batch = self.tick_batch();
            handled += batch.handled;
            if batch
                .next_due
                .is_none_or(|when| when > self.shared.clock.now())
            {
                return Tick {
                    handled,
                    next_due: batch.next_due,
                };
            }
        }
    }

    /// Applies at most `SCHEDULER_BATCH` due deadlines, then hands the lock
    /// to a thread waiting for it, if any, rather than take it straight back.
    fn tick_batch(&self) -> Tick {
        let mut state = self.lock();
        let now = self.shared.clock.now();
        let handled = state.advance(now, SCHEDULER_BATCH);
        state.settle_rollouts(now);
        state.take_wake();
        let behind = self.shared.outbox.is_some() && state.has_changes();
        let tick = Tick {
            handled,
            next_due: state.next_due(),
        };
        MutexGuard::unlock_fair(state);
        if behind {
            self.shared.behind.notify_one();
        }
        tick
    }

    /// A named value kept in storage (with the `memory` engine, kept until the process ends).
    pub fn meta(&self, key: &str) -> Option<Vec<u8>> {
        self.lock().meta(key)
    }

    /// Sets a named value kept in storage; wrap it in [`durably`](Self::durably)
    /// to wait until it is kept.
    pub fn set_meta(&self, key: &str, value: Option<Vec<u8>>) {
        self.with_state_durable(|state, _| state.set_meta(key, value));
    }

    /// Registers an agent, or resumes its identity if it is known. Returns its
    /// view and whether it resumed. A new agent past `max_agents` is refused.
    pub fn register(&self, registration: Registration) -> Result<(AgentView, bool), RegistryError> {
        self.with_state_durable(|state, now| state.register(registration, now))
    }

    /// Records a heartbeat: the agent is LIVE until `stale_after` from now.
    /// Written behind, but with a store shared by replicas, where it is
    /// written at once (a [`durably`](Self::durably) around it waits for it),
    /// so that every replica sees a heartbeat answered.
    pub fn heartbeat(&self, agent_id: &str) -> Result<(), RegistryError> {
        let durable = self.is_shared();
        self.apply(durable, false, |state, now| state.heartbeat(agent_id, now))
    }

    /// The agent whose current token has the digest `credential`, if any.
    pub fn agent_with(&self, credential: &Credential) -> Option<AgentId> {
        self.lock().agent_with(credential)
    }

    /// One agent.
    pub fn agent(&self, agent_id: &str) -> Result<AgentView, RegistryError> {
        self.with_state(|state, now| state.agent(agent_id, now))
    }

    /// The agents that pass `filter`, ordered by id. Read `LIST_PAGE` agents
    /// per hold of the lock, so that listing the whole fleet never keeps
    /// anyone waiting long; each agent is as it was when its page was read.
    pub fn agents(&self, filter: &AgentFilter) -> Vec<AgentView> {
        let mut views = Vec::new();
        let mut after = None;
        loop {
            let read_up_to = self.with_state_slice(|state, now| {
                state.agents_page(filter, after.as_ref(), LIST_PAGE, now, &mut views)
            });
            match read_up_to {
                Some(last) => after = Some(last),
                None => return views,
            }
        }
    }

    /// Deletes an agent, ends its stream and drops its commands.
    pub fn delete_agent(&self, agent_id: &str) -> Result<(), RegistryError> {
        self.with_state_durable(|state, now| state.delete(agent_id, now))
    }

    /// Deletes every DEAD agent; returns how many.
    pub fn delete_dead_agents(&self) -> usize {
        self.with_state_durable(|state, now| state.delete_dead(now))
    }

    /// Sends a command to one agent, in any status.
    pub fn send_to_agent(
        &self,
        agent_id: &str,
        request: CommandRequest,
    ) -> Result<CommandView, RegistryError> {
        self.with_state_durable(|state, now| state.send_to_agent(agent_id, request, now))
    }

    /// Sends one command to each LIVE agent of `group`: a rollout (see
    /// `launch`).
    pub fn send_to_group(
        &self,
        group: &str,
        request: CommandRequest,
    ) -> Result<NewRollout, RegistryError> {
        self.launch(Some(group), request)
    }

    /// Sends one command to each LIVE agent: a rollout (see `launch`).
    pub fn send_to_fleet(&self, request: CommandRequest) -> Result<NewRollout, RegistryError> {
        self.launch(None, request)
    }

    /// A rollout to the LIVE agents of `group`, or of the fleet, launched a
    /// page at a time so that no hold of the lock is long: the targets are
    /// read `LIST_PAGE` agents per hold, the caps are checked and the
    /// rollout created in one, then its commands are created `LAUNCH_PAGE`
    /// per hold, each page delivered as soon as it is made. The whole of it
    /// is one batch for the writer (a [`durably`](Self::durably) around it
    /// waits for it), which takes its place in the writer's order before
    /// the first command is made (a promise), so that no ack of one of its
    /// commands is kept before it. See `state::launch`.
    ///
    /// With a store shared by replicas, whose writer takes what queues
    /// behind a conflict as it comes, the batch is handed over whole: the
    /// commands are all made, the batch handed to the writer, then they are
    /// delivered.
    fn launch(
        &self,
        group: Option<&str>,
        request: CommandRequest,
    ) -> Result<NewRollout, RegistryError> {
        let (kind, payload) = self.with_state(|state, _| state.command_parts(request))?;
        let mut targets = Targets::default();
        let mut after = None;
        while let Some(last) = self.with_state_slice(|state, now| {
            state.launch_targets(group, after.as_ref(), LIST_PAGE, now, &mut targets)
        })? {
            after = Some(last);
        }
        let mut launching =
            self.with_state(|state, now| state.open_launch(targets, kind, payload, now))?;
        let create = |launching: &mut Launching| {
            self.with_state_slice(|state, now| state.launch_page(launching, LAUNCH_PAGE, now))
        };
        let deliver = |launching: &mut Launching| {
            self.with_state_slice(|state, now| state.deliver_page(launching, LAUNCH_PAGE, now))
        };
        if self.is_shared() {
            while create(&mut launching) {}
            self.submit(launching.take_marks());
            while deliver(&mut launching) {}
        } else {
            let promise = self.promise();
            loop {
                let more = create(&mut launching);
                while deliver(&mut launching) {}
                if !more {
                    break;
                }
            }
            if let Some(promise) = promise {
                let mut state = self.lock();
                // The deliveries' marks join the batch, queued behind the
                // promise, so the commands are written once, as delivered.
                self.write_behind_now(&mut state);
                let marks = state.hand_over(launching.take_marks());
                promise.keep(marks);
            }
        }
        Ok(launching.into_rollout(&self.shared.clock))
    }

    /// The agent's retained commands, newest first.
    pub fn commands_of(&self, agent_id: &str) -> Result<Vec<CommandView>, RegistryError> {
        self.with_state(|state, now| state.commands_of(agent_id, now))
    }

    /// One of the agent's commands.
    pub fn command(&self, agent_id: &str, command_id: &str) -> Result<CommandView, RegistryError> {
        self.with_state(|state, now| state.command(agent_id, command_id, now))
    }

    /// One retained rollout's progress.
    pub fn rollout(&self, rollout_id: &str) -> Result<RolloutView, RegistryError> {
        self.with_state(|state, _| state.rollout(rollout_id))
    }

    /// Every retained rollout's progress, newest first.
    pub fn rollouts(&self) -> Vec<RolloutView> {
        self.with_state(|state, _| state.rollouts())
    }

    /// Acknowledges one of the agent's commands.
    pub fn ack(
        &self,
        agent_id: &str,
        command_id: &str,
        ack: Ack,
    ) -> Result<CommandView, RegistryError> {
        self.with_state_durable(|state, now| state.ack(agent_id, command_id, ack, now))
    }

    /// Opens the agent's stream, replacing any it had open.
    pub fn open_stream(&self, agent_id: &str) -> Result<Subscription, RegistryError> {
        self.open_stream_after(agent_id, None)
    }

    /// Opens the agent's stream for a reader whose last event had the id
    /// `last_event_id` (its `Last-Event-ID`), replacing any stream it had open.
    /// With [`Replay::Unacknowledged`](crate::Replay) the stream starts with the
    /// commands that reader may have missed; with `Replay::None` the id is ignored.
    ///
    /// Written behind, but with a store shared by replicas, where it is
    /// written at once (a [`durably`](Self::durably) around it waits for it),
    /// so that a stream answered is `connected` on every replica that caught
    /// up, and ends the agent's older stream on another replica at once.
    pub fn open_stream_after(
        &self,
        agent_id: &str,
        last_event_id: Option<&str>,
    ) -> Result<Subscription, RegistryError> {
        let durable = self.is_shared();
        let opened = self.apply(durable, false, |state, now| {
            state.open_stream(agent_id, last_event_id, &self.shared.streams, now)
        })?;
        Ok(Subscription::new(opened, self.clone()))
    }

    /// Unregisters a stream whose reader went away.
    pub(crate) fn stream_closed(
        &self,
        agent_id: &str,
        stream_id: u64,
        unwritten: &[crate::CommandId],
    ) {
        self.with_state(|state, now| state.stream_closed(agent_id, stream_id, unwritten, now));
    }

    /// Ends every open stream and refuses new ones: the first step of shutting down.
    pub fn close_all_streams(&self) {
        self.with_state(|state, _| state.close_all_streams(&self.shared.streams));
    }

    /// Every change in the fleet from now on, until the reader falls more than
    /// `fleet_queue` events behind, the state is read again from storage
    /// (after a failed write, or a replica that could not follow the log), or
    /// the registry shuts down.
    pub fn fleet_events(&self) -> Result<FleetSubscription, RegistryError> {
        // Subscribing under the lock orders it with the changes: none made
        // after the answer is missed.
        self.with_state(|state, _| {
            if state.is_closing() {
                return Err(RegistryError::ShuttingDown);
            }
            Ok(FleetSubscription::new(
                self.shared.events.subscribe(),
                self.shared.fleet.lock().child_token().cancelled_owned(),
            ))
        })
    }

    /// Every lifecycle transition from now on.
    pub fn status_changes(&self) -> StatusChanges {
        StatusChanges::new(self.shared.events.subscribe())
    }

    /// Counts for metrics.
    pub fn stats(&self) -> Stats {
        self.with_state(|state, _| state.stats())
    }

    /// Whether the store is shared with other replicas
    /// ([`start_shared`](Self::start_shared)).
    pub fn is_shared(&self) -> bool {
        self.shared.replica.is_some()
    }

    /// This replica's id, with a store shared by replicas.
    pub fn replica_id(&self) -> Option<ReplicaId> {
        self.shared
            .replica
            .as_ref()
            .map(|replica| replica.id.clone())
    }

    /// The version of the last commit of the store's log applied here (0
    /// without a shared store).
    pub fn position(&self) -> Version {
        self.shared
            .replica
            .as_ref()
            .map_or(0, |replica| *replica.position.borrow())
    }

    fn set_position(&self, version: Version) {
        if let Some(replica) = &self.shared.replica {
            replica.position.send_if_modified(|position| {
                let newer = version > *position;
                if newer {
                    *position = version;
                }
                newer
            });
        }
    }

    /// Applies the store's log, entries in order, as the engine reads it: the
    /// other replicas' commits replace what this replica holds of what they
    /// wrote (`APPLY_PAGE` changes per hold of the lock), its own only
    /// advance the position. An entry at or before the position is applied
    /// already; one past the next (read before a load that took the position
    /// back) is dropped, with the rest. A PENDING command applied for an agent whose stream is open
    /// here is delivered to it. Blocks for as long as the entries take: an
    /// engine calls it off the runtime's workers, or with few entries at a time.
    pub fn apply_log(&self, entries: Vec<LogEntry>) {
        let Some(own) = self.replica_id() else {
            return;
        };
        for entry in entries {
            let position = self.position();
            if entry.version <= position {
                continue;
            }
            if entry.version != position + 1 {
                // Not the entry that follows what is applied: read before a
                // load that took the position back (an emptied store
                // numbers its commits from 1 again). The engine reads the
                // log again from the load's position.
                debug!(
                    entry = entry.version,
                    position, "a log entry read before the state was loaded again is dropped"
                );
                break;
            }
            let version = entry.version;
            if entry.origin != own {
                self.apply_entry(entry);
            }
            self.set_position(version);
        }
        let position = self.position();
        self.lock().applied_up_to(position);
    }

    /// Applies one other replica's commit, a page per hold of the lock, then
    /// delivers the PENDING commands it brought to the streams open here.
    fn apply_entry(&self, entry: LogEntry) {
        let LogEntry {
            version,
            origin,
            changes,
        } = entry;
        let mut applying = Applying::entry(origin);
        let mut changes = changes;
        changes.sort_by_key(applying_rank);
        let mut changes = changes.into_iter().peekable();
        loop {
            let page: Vec<Change> = changes.by_ref().take(APPLY_PAGE).collect();
            let last = changes.peek().is_none();
            self.with_state_slice(|state, now| {
                state.apply_page(&mut applying, version, page, last, now);
            });
            if last {
                break;
            }
        }
        while self
            .with_state_slice(|state, now| state.deliver_applied(&mut applying, LAUNCH_PAGE, now))
        {
        }
    }

    /// The replicas alive now, as the engine learns it (every second): the
    /// streams held by any other replica end, and their agents are no longer
    /// `connected`, unless by a stream open here.
    pub fn replicas_alive(&self, alive: &[ReplicaId]) {
        self.with_state(|state, _| state.replicas_alive(alive));
    }

    /// This replica's liveness ran out and was renewed (as the engine
    /// learns it): the other replicas ended the streams open here, which
    /// are still open; each is written as opened again, so that they read
    /// it `connected` again.
    pub fn announce_streams(&self) {
        self.with_state(|state, _| state.announce_streams());
    }

    /// With a store shared by replicas, waits until this replica has applied
    /// the log up to its head as it is now (and, if a change it applied waits
    /// for this replica's own commit of the same entity, until that commit
    /// resolves): what any replica answered before is then read here too. The server calls it before reads. Refused as
    /// [`RegistryError::StorageUnavailable`] when the head can't be read, or
    /// is not reached within 2 s. Returns at once without a shared store.
    pub async fn catch_up(&self) -> Result<(), RegistryError> {
        let Some(replica) = &self.shared.replica else {
            return Ok(());
        };
        let head = replica
            .log
            .head()
            .await
            .map_err(|err| RegistryError::StorageUnavailable(err.0))?;
        let mut position = replica.position.subscribe();
        let reached = tokio::time::timeout(CATCH_UP_LIMIT, position.wait_for(|at| *at >= head))
            .await
            .is_ok_and(|reached| reached.is_ok());
        if reached {
            if self.lock().has_kept_aside() {
                // Another replica's change of what this one changed and has
                // not written yet waits until this one's commit resolves
                // (it conflicts and fetches the truth, or wins and the
                // change is applied after it): the read waits for that too.
                self.flush()
                    .await
                    .map_err(|err| RegistryError::StorageUnavailable(err.0))?;
            }
            return Ok(());
        }
        Err(RegistryError::StorageUnavailable(format!(
            "this replica has not read the registry's latest changes (it has applied {} of \
             {head}); try again",
            self.position()
        )))
    }
}

/// Whether an operation's changes were kept, or it runs again.
enum Kept {
    Yes,
    RunAgain,
}

/// An operation refused after another replica's concurrent changes twice.
fn concurrent_change() -> RegistryError {
    RegistryError::StorageUnavailable(CONCURRENT_CHANGE.to_owned())
}

/// Once something changed that no one waits for, waits [`WRITE_BEHIND`] and
/// hands all that changed meanwhile to the writer; sleeps while nothing changes.
async fn run_write_behind(registry: Registry, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = registry.shared.behind.notified() => {}
            () = stop.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(WRITE_BEHIND) => {}
            () = stop.cancelled() => return,
        }
        registry.write_behind();
    }
}

/// Sleeps until the earliest deadline, applies what is due, and sleeps again;
/// wakes early only when an earlier deadline is added, or an operation left a
/// backlog. It never walks the fleet. A first batch is applied here; a backlog
/// beyond it (a million commands expiring together) is worked off on the
/// blocking pool, so that it never holds one of the runtime's few worker
/// threads, batch after batch, from heartbeats and probes.
async fn run_scheduler(registry: Registry, stop: CancellationToken) {
    loop {
        let mut next_due = registry.tick_batch().next_due;
        if next_due.is_some_and(|when| when <= registry.shared.clock.now()) {
            let backlog = registry.clone();
            next_due = match tokio::task::spawn_blocking(move || backlog.tick()).await {
                Ok(tick) => tick.next_due,
                Err(err) => std::panic::resume_unwind(err.into_panic()),
            };
            if stop.is_cancelled() {
                return;
            }
        }
        let sleep = async {
            match next_due {
                Some(when) => tokio::time::sleep_until(when).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            () = registry.shared.wake_scheduler.notified() => {}
            () = stop.cancelled() => return,
        }
    }
}
