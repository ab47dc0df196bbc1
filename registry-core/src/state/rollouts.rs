//! The rules of rollouts (SPEC 11): a group or fleet command creates one; its
//! counts follow its commands' statuses, one step per change, never by
//! walking its commands; it is done once none is PENDING or DELIVERED; it is
//! kept while any of its commands is, and at least `commands.retention` after
//! it is done. Its payload is held here once and shared by its commands.
//!
//! The journal counts each change as it happens ([`Rollouts::count`]) and
//! marks the rollout touched; after the operation, [`State::settle_rollouts`]
//! draws what follows from the new counts: the `rollout` event of the fleet
//! stream (at most one per rollout per 500 ms, the one saying it is done at
//! once) and the purge once done. A rollout has at most one deadline at a
//! time, and nothing is found by scanning.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{Due, Journal, State};
use crate::clock::Clock;
use crate::command::{AckResult, CommandStatus};
use crate::error::RegistryError;
use crate::fleet::{FleetEvent, ROLLOUT_EVENT_INTERVAL};
use crate::payload::Payload;
use crate::rollout::{RolloutCounts, RolloutId, RolloutView, Target};
use crate::schedule::DeadlineKey;
use crate::storage::RolloutRecord;

/// One rollout and what it needs to be counted, announced and dropped.
pub(super) struct RolloutEntry {
    /// What it was created with; `targeted` and `skipped` move when a target
    /// gets no command after all.
    pub(super) launch: Launch,
    pub(super) counts: RolloutCounts,
    /// When its last unfinished command became final.
    pub(super) done_at: Option<Instant>,
    /// Whether the consequences of being done were drawn (the purge scheduled).
    pub(super) settled_done: bool,
    /// Its commands still retained.
    pub(super) retained: usize,
    /// While it runs: its next announcement, when one is held back by
    /// [`ROLLOUT_EVENT_INTERVAL`]; once done: its purge, `commands.retention`
    /// after it was done.
    pub(super) deadline: Option<DeadlineKey>,
    /// Its retention ended while some of its commands were still retained:
    /// it goes with the last of them.
    pub(super) overdue: bool,
    /// When its counts were last announced to the fleet's readers.
    last_event_at: Option<Instant>,
    /// Listed in [`Rollouts::touched`] since the last settling.
    touched: bool,
}

/// What a rollout is created with.
pub(super) struct Launch {
    pub(super) id: RolloutId,
    pub(super) kind: Arc<str>,
    pub(super) target: Target,
    /// Its commands' payload, held once for all of them.
    pub(super) payload: Payload,
    pub(super) created_at: Instant,
    pub(super) expires_at: Instant,
    pub(super) targeted: usize,
    pub(super) skipped: usize,
}

impl RolloutEntry {
    fn new(
        launch: Launch,
        counts: RolloutCounts,
        done_at: Option<Instant>,
        retained: usize,
    ) -> Self {
        Self {
            launch,
            counts,
            done_at,
            settled_done: false,
            retained,
            deadline: None,
            overdue: false,
            last_event_at: None,
            touched: false,
        }
    }

    pub(super) fn view(&self, clock: &Clock) -> RolloutView {
        let (launch, counts) = (&self.launch, self.counts);
        RolloutView {
            rollout_id: launch.id,
            kind: launch.kind.clone(),
            target: launch.target.clone(),
            created_at: clock.timestamp(launch.created_at),
            expires_at: clock.timestamp(launch.expires_at),
            targeted: launch.targeted,
            skipped: launch.skipped,
            pending: counts.pending,
            delivered: counts.delivered,
            acknowledged: counts.acknowledged(),
            succeeded: counts.succeeded,
            failed: counts.failed,
            expired: counts.expired,
            done: self.done_at.is_some(),
        }
    }

    pub(super) fn record(&self, clock: &Clock) -> RolloutRecord {
        let launch = &self.launch;
        RolloutRecord {
            rollout_id: launch.id,
            kind: launch.kind.clone(),
            target: launch.target.clone(),
            created_at: clock.timestamp(launch.created_at),
            expires_at: clock.timestamp(launch.expires_at),
            targeted: launch.targeted,
            skipped: launch.skipped,
            counts: self.counts,
            done_at: self.done_at.map(|at| clock.timestamp(at)),
        }
    }
}

/// Every retained rollout, by id (ids are time-ordered, so newest first is a
/// reverse walk), and those whose counts changed since the last settling.
#[derive(Default)]
pub(super) struct Rollouts {
    pub(super) entries: BTreeMap<RolloutId, RolloutEntry>,
    touched: Vec<RolloutId>,
}

impl Rollouts {
    /// Adds a rollout whose commands are all PENDING; one that targeted no
    /// agent is done at once.
    pub(super) fn insert(&mut self, launch: Launch) {
        let counts = RolloutCounts {
            pending: launch.targeted,
            ..RolloutCounts::default()
        };
        let done_at = (launch.targeted == 0).then_some(launch.created_at);
        let retained = launch.targeted;
        let id = launch.id;
        self.entries
            .insert(id, RolloutEntry::new(launch, counts, done_at, retained));
        self.touch(id);
    }

    /// Adds a rollout read back from storage, with no command retained yet:
    /// each restored command of it counts itself.
    pub(super) fn restore(
        &mut self,
        launch: Launch,
        counts: RolloutCounts,
        done_at: Option<Instant>,
    ) {
        let id = launch.id;
        self.entries
            .insert(id, RolloutEntry::new(launch, counts, done_at, 0));
    }

    fn touch(&mut self, id: RolloutId) {
        if let Some(entry) = self.entries.get_mut(&id)
            && !entry.touched
        {
            entry.touched = true;
            self.touched.push(id);
        }
    }

    /// One of the rollout's commands went `from` -> `to` at `at` (`result` is
    /// its ack's, once ACKNOWLEDGED). O(1).
    pub(super) fn count(
        &mut self,
        id: RolloutId,
        from: CommandStatus,
        to: CommandStatus,
        result: Option<AckResult>,
        at: Instant,
    ) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        let counts = &mut entry.counts;
        for (status, add) in [(from, false), (to, true)] {
            let slot = match (status, result.unwrap_or_default()) {
                (CommandStatus::Pending, _) => &mut counts.pending,
                (CommandStatus::Delivered, _) => &mut counts.delivered,
                (CommandStatus::Acknowledged, AckResult::Success) => &mut counts.succeeded,
                (CommandStatus::Acknowledged, AckResult::Failure) => &mut counts.failed,
                (CommandStatus::Expired, _) => &mut counts.expired,
            };
            if add {
                *slot += 1;
            } else {
                *slot = slot.saturating_sub(1);
            }
        }
        if counts.unfinished() == 0 && entry.done_at.is_none() {
            entry.done_at = Some(at);
        }
        self.touch(id);
    }

    /// One of the rollout's targets gets no command after all (its agent was
    /// deleted, or reached its cap, `skipped`, while the rollout was launched):
    /// it leaves the counts it was PENDING in.
    pub(super) fn withdraw(&mut self, id: RolloutId, skipped: bool, at: Instant) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        entry.launch.targeted = entry.launch.targeted.saturating_sub(1);
        entry.launch.skipped += usize::from(skipped);
        entry.retained = entry.retained.saturating_sub(1);
        entry.counts.pending = entry.counts.pending.saturating_sub(1);
        if entry.counts.unfinished() == 0 && entry.done_at.is_none() {
            entry.done_at = Some(at);
        }
        self.touch(id);
    }

    /// One of the rollout's commands was dropped in `status`: its retention
    /// ended, or its agent was deleted (an unfinished one then counts as
    /// EXPIRED from `at` on). Returns the rollout's id if this was its last
    /// retained command and its own retention is over: it goes too.
    pub(super) fn command_dropped(
        &mut self,
        id: RolloutId,
        status: CommandStatus,
        at: Instant,
    ) -> Option<RolloutId> {
        if !status.is_final() {
            self.count(id, status, CommandStatus::Expired, None, at);
        }
        let entry = self.entries.get_mut(&id)?;
        entry.retained = entry.retained.saturating_sub(1);
        (entry.overdue && entry.retained == 0).then_some(id)
    }

    /// The rollouts touched since the last call, each once.
    fn take_touched(&mut self) -> Vec<RolloutId> {
        let touched = std::mem::take(&mut self.touched);
        for id in &touched {
            if let Some(entry) = self.entries.get_mut(id) {
                entry.touched = false;
            }
        }
        touched
    }
}

impl Journal {
    /// Removes a rollout and its payload from the counts.
    pub(super) fn drop_rollout(&mut self, id: RolloutId) -> Option<RolloutEntry> {
        let entry = self.rollouts.entries.remove(&id)?;
        self.dirty.rollout(id);
        self.stats.payload_bytes = self
            .stats
            .payload_bytes
            .saturating_sub(entry.launch.payload.len());
        Some(entry)
    }
}

impl State {
    /// One retained rollout; an id that is not a UUID is as unknown as a missing one.
    pub(crate) fn rollout(&self, rollout_id: &str) -> Result<RolloutView, RegistryError> {
        rollout_id
            .parse::<RolloutId>()
            .ok()
            .and_then(|id| self.journal.rollouts.entries.get(&id))
            .map(|entry| entry.view(&self.journal.clock))
            .ok_or_else(|| RegistryError::UnknownRollout(rollout_id.to_owned()))
    }

    /// Every retained rollout, newest first (ids are time-ordered).
    pub(crate) fn rollouts(&self) -> Vec<RolloutView> {
        let clock = &self.journal.clock;
        self.journal
            .rollouts
            .entries
            .values()
            .rev()
            .map(|entry| entry.view(clock))
            .collect()
    }

    /// Draws what follows from the counts that changed since the last call,
    /// at `now`: a rollout's view goes to the fleet's readers at once, unless
    /// one went less than [`ROLLOUT_EVENT_INTERVAL`] ago, in which case one is
    /// scheduled for the end of that interval (later changes ride on it); a
    /// rollout that became done is announced at once, and dropped
    /// `commands.retention` later (or with its last command, if that is
    /// later). Called after every operation and every pass of the schedule;
    /// costs what was touched.
    pub(crate) fn settle_rollouts(&mut self, now: Instant) {
        let retention = self.settings.command_retention;
        for id in self.journal.rollouts.take_touched() {
            self.journal.dirty.rollout(id);
            let Some(entry) = self.journal.rollouts.entries.get_mut(&id) else {
                continue;
            };
            match entry.done_at {
                Some(_) if entry.settled_done => {}
                Some(done_at) => {
                    entry.settled_done = true;
                    if let Some(key) = entry.deadline.take() {
                        self.deadlines.schedule.remove(key);
                    }
                    entry.deadline =
                        Some(self.deadlines.insert(done_at + retention, Due::Rollout(id)));
                    announce(&self.journal.events, &self.journal.clock, entry, now);
                }
                // An announcement is already scheduled: it will carry these counts.
                None if entry.deadline.is_some() => {}
                None => match entry.last_event_at.map(|at| at + ROLLOUT_EVENT_INTERVAL) {
                    Some(next) if next > now => {
                        entry.deadline = Some(self.deadlines.insert(next, Due::Rollout(id)));
                    }
                    _ => announce(&self.journal.events, &self.journal.clock, entry, now),
                },
            }
        }
    }

    /// A rollout's deadline came at `when`: while it runs, the counts that
    /// changed since its last announcement are announced; once done, its
    /// retention is over, and it goes now unless some of its commands are
    /// still retained.
    pub(super) fn rollout_due(&mut self, id: RolloutId, when: Instant) {
        let Some(entry) = self.journal.rollouts.entries.get_mut(&id) else {
            return;
        };
        entry.deadline = None;
        if !entry.settled_done {
            announce(&self.journal.events, &self.journal.clock, entry, when);
        } else if entry.retained == 0 {
            self.journal.drop_rollout(id);
        } else {
            entry.overdue = true;
        }
    }
}

/// Sends `entry`'s view to the fleet's readers, if there are any, and notes
/// when, for the next one's interval.
fn announce(
    events: &broadcast::Sender<FleetEvent>,
    clock: &Clock,
    entry: &mut RolloutEntry,
    at: Instant,
) {
    entry.last_event_at = Some(at);
    if events.receiver_count() == 0 {
        return;
    }
    // A reader gone since is fine: the counts are kept either way.
    let _ = events.send(FleetEvent::Rollout(entry.view(clock)));
}
