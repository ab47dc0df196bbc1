//! The state's side of the storage seam: the marks the rules leave on what
//! they change, the records built from them, and the state rebuilt from a
//! snapshot with the restart's grace. No rule is decided here.
//!
//! Taking the marks is a swap, whatever their number (a million expiries leave
//! a million); the writer builds the records from them afterwards, a page per
//! hold of the lock, from the state as it is then: a record is never older
//! than its mark, which is all that keeping what was answered needs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::time::Instant;
use tracing::{debug, warn};

use super::rollouts::Launch;
use super::{AgentEntry, CommandEntry, Due, HashMap, HashSet, State, index};
use crate::agent::{AgentId, AgentMetadata, AgentStatus};
use crate::clock::{Clock, Timestamp};
use crate::command::{CommandId, CommandStatus};
use crate::payload::Payload;
use crate::rollout::{RolloutCounts, RolloutId};
use crate::storage::{AgentRecord, Change, CommandRecord, RolloutRecord, Snapshot};
use crate::subscription::DetachReason;

/// What changed since the last batch was taken, by id: the records are built
/// later, from the state as it is then.
#[derive(Default)]
pub(crate) struct Dirty {
    /// Off with the `memory` engine: nothing is marked, nothing is built.
    recording: bool,
    agents: HashSet<AgentId>,
    /// Agents whose heartbeat time alone moved.
    heartbeats: HashSet<AgentId>,
    /// A B-tree: a million expiries mark a million commands, and a hash set
    /// that size, growing, would move them all in one hold of the lock.
    commands: BTreeSet<CommandId>,
    rollouts: HashSet<RolloutId>,
    /// New rollouts, whose payload is written (once).
    payloads: HashSet<RolloutId>,
    meta: MetaChanges,
}

/// Named values set (`Some`) or removed (`None`) since the last batch.
pub(crate) type MetaChanges = BTreeMap<String, Option<Vec<u8>>>;

impl Dirty {
    pub(super) fn new(recording: bool) -> Self {
        Self {
            recording,
            ..Self::default()
        }
    }

    pub(super) fn agent(&mut self, id: &AgentId) {
        if self.recording {
            self.agents.insert(id.clone());
        }
    }

    pub(super) fn heartbeat(&mut self, id: &AgentId) {
        if self.recording {
            self.heartbeats.insert(id.clone());
        }
    }

    pub(super) fn command(&mut self, id: CommandId) {
        if self.recording {
            self.commands.insert(id);
        }
    }

    pub(super) fn rollout(&mut self, id: RolloutId) {
        if self.recording {
            self.rollouts.insert(id);
        }
    }

    pub(super) fn rollout_payload(&mut self, id: RolloutId) {
        if self.recording {
            self.payloads.insert(id);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.agents.is_empty()
            && self.heartbeats.is_empty()
            && self.commands.is_empty()
            && self.rollouts.is_empty()
            && self.payloads.is_empty()
            && self.meta.is_empty()
    }

    /// An empty set of marks, recording as this one does.
    pub(super) fn empty_like(&self) -> Self {
        Self::new(self.recording)
    }

    /// The marks so far, leaving none: a swap.
    fn take(&mut self) -> Self {
        let empty = Self::new(self.recording);
        std::mem::replace(self, empty)
    }

    /// The marks of several batches as one list, each thing once, in the
    /// order records are built; the named values apart, later ones winning.
    /// Runs outside the lock.
    pub(crate) fn merge(batches: Vec<Dirty>) -> (Vec<Mark>, MetaChanges) {
        let mut all = Self::default();
        for batch in batches {
            all.agents.extend(batch.agents);
            all.heartbeats.extend(batch.heartbeats);
            all.commands.extend(batch.commands);
            all.rollouts.extend(batch.rollouts);
            all.payloads.extend(batch.payloads);
            all.meta.extend(batch.meta);
        }
        let agents = all.agents;
        let heartbeats = all
            .heartbeats
            .into_iter()
            .filter(|id| !agents.contains(id))
            .map(Mark::Heartbeat)
            .collect::<Vec<_>>();
        let marks = heartbeats
            .into_iter()
            .chain(agents.into_iter().map(Mark::Agent))
            .chain(all.commands.into_iter().map(Mark::Command))
            .chain(all.payloads.into_iter().map(Mark::Payload))
            .chain(all.rollouts.into_iter().map(Mark::Rollout))
            .collect();
        (marks, all.meta)
    }
}

/// One thing whose record is to be written.
pub(crate) enum Mark {
    /// An agent whose heartbeat time alone moved.
    Heartbeat(AgentId),
    Agent(AgentId),
    Command(CommandId),
    /// A new rollout's payload.
    Payload(RolloutId),
    Rollout(RolloutId),
}

impl AgentEntry {
    fn record(&self, clock: &Clock) -> AgentRecord {
        AgentRecord {
            agent_id: self.id.clone(),
            metadata: AgentMetadata::clone(&self.metadata),
            status: self.status,
            registered_at: clock.timestamp(self.registered_at),
            last_heartbeat_at: clock.timestamp(self.last_heartbeat_at),
            status_changed_at: clock.timestamp(self.status_changed_at),
            credential: self.credential,
        }
    }
}

impl CommandEntry {
    fn record(&self, clock: &Clock) -> CommandRecord {
        CommandRecord {
            command_id: self.id,
            seq: self.seq,
            agent_id: self.agent_id.clone(),
            kind: self.kind.clone(),
            // A rollout's payload is kept once, with the rollout.
            payload: self.rollout.is_none().then(|| self.payload.clone()),
            rollout_id: self.rollout,
            status: self.status,
            created_at: clock.timestamp(self.created_at),
            expires_at: clock.timestamp(self.expires_at),
            delivered_at: self.delivered_at.map(|at| clock.timestamp(at)),
            acknowledged_at: self.acknowledged_at.map(|at| clock.timestamp(at)),
            ack: self.ack.clone(),
        }
    }
}

impl State {
    /// Whether anything changed since the last batch was taken.
    pub(crate) fn has_changes(&self) -> bool {
        !self.journal.dirty.is_empty()
    }

    /// The marks of what changed since the last batch, leaving none: a swap.
    pub(crate) fn take_changes(&mut self) -> Dirty {
        self.journal.dirty.take()
    }

    /// The record of each of `marks` as the state is now: a removal for
    /// what is gone. A heartbeat of an agent gone is nothing to write.
    pub(crate) fn records(&self, marks: &[Mark], changes: &mut Vec<Change>) {
        let clock = self.journal.clock;
        let rollouts = &self.journal.rollouts.entries;
        changes.extend(marks.iter().filter_map(|mark| match mark {
            Mark::Heartbeat(id) => {
                let agent = self.agents.get(id)?;
                Some(Change::Heartbeat(
                    id.clone(),
                    clock.timestamp(agent.last_heartbeat_at),
                ))
            }
            Mark::Agent(id) => Some(match self.agents.get(id) {
                Some(agent) => Change::Agent(agent.record(&clock)),
                None => Change::AgentRemoved(id.clone()),
            }),
            Mark::Command(id) => Some(match self.commands.get(id) {
                Some(command) => Change::Command(command.record(&clock)),
                None => Change::CommandRemoved(*id),
            }),
            Mark::Payload(id) => {
                let entry = rollouts.get(id)?;
                Some(Change::RolloutPayload(*id, entry.launch.payload.clone()))
            }
            Mark::Rollout(id) => Some(match rollouts.get(id) {
                Some(entry) => Change::Rollout(entry.record(&clock)),
                None => Change::RolloutRemoved(*id),
            }),
        }));
    }

    /// A named value kept in storage.
    pub(crate) fn meta(&self, key: &str) -> Option<Vec<u8>> {
        self.meta.get(key).cloned()
    }

    /// Sets (or, with `None`, removes) a named value kept in storage.
    pub(crate) fn set_meta(&mut self, key: &str, value: Option<Vec<u8>>) {
        match &value {
            Some(value) => self.meta.insert(key.to_owned(), value.clone()),
            None => self.meta.remove(key),
        };
        if self.journal.dirty.recording {
            self.journal.dirty.meta.insert(key.to_owned(), value);
        }
    }

    /// Fills an empty state from `snapshot`, as at a start at `now`: no
    /// agent's deadline is earlier than `now + stale_after`, and a command
    /// whose `expiresAt` passed meanwhile expires at its `expiresAt` on the
    /// first pass of the schedule.
    pub(crate) fn restore(&mut self, snapshot: Snapshot, now: Instant) {
        let clock = self.journal.clock;
        let grace_end = now + self.settings.stale_after;
        let heartbeats: HashMap<AgentId, Timestamp> = snapshot.heartbeats.into_iter().collect();
        for record in snapshot.agents {
            let id = record.agent_id;
            let last_heartbeat = heartbeats.get(&id).map_or(record.last_heartbeat_at, |at| {
                (*at).max(record.last_heartbeat_at)
            });
            let last_heartbeat_at = clock.instant(last_heartbeat);
            let status_changed_at = clock.instant(record.status_changed_at);
            let own_deadline = match record.status {
                AgentStatus::Live => Some(last_heartbeat_at + self.settings.stale_after),
                AgentStatus::Stale => Some(status_changed_at + self.settings.dead_after),
                AgentStatus::Dead => None,
            };
            let deadline = own_deadline.map(|own| {
                self.deadlines
                    .insert(own.max(grace_end), Due::Agent(id.clone()))
            });
            index(&mut self.groups, &record.metadata.group, &id);
            if let Some(credential) = record.credential {
                self.credentials.insert(credential, id.clone());
            }
            self.journal.stats.agents[record.status.index()] += 1;
            self.by_id.insert(id.clone());
            self.agents.insert(
                id.clone(),
                Box::new(AgentEntry {
                    id,
                    metadata: Arc::new(record.metadata),
                    status: record.status,
                    registered_at: clock.instant(record.registered_at),
                    last_heartbeat_at,
                    status_changed_at,
                    deadline,
                    stream: None,
                    replacements: None,
                    credential: record.credential,
                    commands: BTreeMap::new(),
                    unfinished: 0,
                }),
            );
        }
        self.restore_rollouts(snapshot.rollouts, snapshot.payloads);
        // Each rollout's restored PENDING and DELIVERED commands.
        let mut unfinished: HashMap<RolloutId, RolloutCounts> = HashMap::default();
        for record in snapshot.commands {
            let Some(agent) = self.agents.get_mut(&record.agent_id) else {
                // Its agent's removal was written and this was not: finish the job.
                warn!(command_id = %record.command_id, "a stored command of no stored agent is dropped");
                self.journal.dirty.command(record.command_id);
                continue;
            };
            // A command of a rollout reads the rollout's payload; one of a
            // version 1 store, or sent to one agent, holds its own.
            let payload = match record.rollout_id {
                Some(id) => self.journal.rollouts.entries.get_mut(&id).map(|rollout| {
                    rollout.retained += 1;
                    rollout.launch.payload.clone()
                }),
                None => record.payload,
            };
            let Some(payload) = payload else {
                warn!(command_id = %record.command_id, "a stored command without its payload is dropped");
                self.journal.dirty.command(record.command_id);
                continue;
            };
            if record.rollout_id.is_none() {
                self.journal.stats.payload_bytes += payload.len();
            }
            let expires_at = clock.instant(record.expires_at);
            let acknowledged_at = record.acknowledged_at.map(|at| clock.instant(at));
            // The same arithmetic as the rules: an open command is due at its
            // expiry (passed or not), a final one when its retention ends.
            let due_at = match (record.status, acknowledged_at) {
                (CommandStatus::Acknowledged, Some(at)) => at + self.settings.command_retention,
                (CommandStatus::Expired, _) | (CommandStatus::Acknowledged, None) => {
                    expires_at + self.settings.command_retention
                }
                (CommandStatus::Pending | CommandStatus::Delivered, _) => expires_at,
            };
            let id = record.command_id;
            let deadline = self.deadlines.insert(due_at, Due::Command(id));
            agent.commands.insert(record.seq, id);
            if !record.status.is_final() {
                agent.unfinished += 1;
            }
            if let Some(rollout) = record.rollout_id {
                let counts = unfinished.entry(rollout).or_default();
                match record.status {
                    CommandStatus::Pending => counts.pending += 1,
                    CommandStatus::Delivered => counts.delivered += 1,
                    CommandStatus::Acknowledged | CommandStatus::Expired => {}
                }
            }
            self.next_seq = self.next_seq.max(record.seq);
            self.journal.stats.commands[record.status.index()] += 1;
            self.commands.insert(
                id,
                CommandEntry {
                    seq: record.seq,
                    id,
                    agent_id: agent.id.clone(),
                    kind: self.command_kind(record.kind),
                    payload,
                    rollout: record.rollout_id,
                    status: record.status,
                    created_at: clock.instant(record.created_at),
                    expires_at,
                    delivered_at: record.delivered_at.map(|at| clock.instant(at)),
                    delivered_on: 0,
                    acknowledged_at,
                    ack: record.ack,
                    deadline,
                },
            );
        }
        self.settle_restored_rollouts(&unfinished, now);
        self.meta = snapshot.meta;
        debug!(
            agents = self.agents.len(),
            commands = self.commands.len(),
            "state restored"
        );
    }

    /// The rollouts of `records`, each with its payload, their counts as
    /// stored; their commands are counted as retained as they are restored.
    fn restore_rollouts(
        &mut self,
        records: Vec<RolloutRecord>,
        payloads: Vec<(RolloutId, Payload)>,
    ) {
        let clock = self.journal.clock;
        let mut payloads: HashMap<RolloutId, Payload> = payloads.into_iter().collect();
        for record in records {
            let id = record.rollout_id;
            let Some(payload) = payloads.remove(&id) else {
                warn!(rollout_id = %id, "a stored rollout without its payload is dropped, with its commands");
                self.journal.dirty.rollout(id);
                continue;
            };
            self.journal.stats.payload_bytes += payload.len();
            let launch = Launch {
                id,
                kind: self.command_kind(record.kind),
                target: record.target,
                payload,
                created_at: clock.instant(record.created_at),
                expires_at: clock.instant(record.expires_at),
                targeted: record.targeted,
                skipped: record.skipped,
            };
            let done_at = record.done_at.map(|at| clock.instant(at));
            self.journal
                .rollouts
                .restore(launch, record.counts, done_at);
        }
        for (id, _) in payloads {
            // Its rollout's removal was written and this was not.
            self.journal.dirty.rollout(id);
        }
    }

    /// Schedules the end of each restored rollout that is done. One that is
    /// not, and whose commands are all gone (which a store written by this
    /// version never holds), could never be done: its unfinished count as
    /// expired now.
    fn settle_restored_rollouts(
        &mut self,
        unfinished: &HashMap<RolloutId, RolloutCounts>,
        now: Instant,
    ) {
        let retention = self.settings.command_retention;
        for entry in self.journal.rollouts.entries.values_mut() {
            if entry.done_at.is_none() {
                // A running rollout's PENDING and DELIVERED counts are those
                // of its commands read back: a record written a moment apart
                // from theirs (records are built a page at a time) or none of
                // them kept at all (a crash) must not leave it waiting for
                // commands that are gone. The rest of its targets are final:
                // SUCCESS and FAILURE as counted, EXPIRED the remainder.
                let restored = unfinished
                    .get(&entry.launch.id)
                    .copied()
                    .unwrap_or_default();
                let counts = &mut entry.counts;
                let before = *counts;
                let finished = entry.launch.targeted.saturating_sub(restored.unfinished());
                counts.pending = restored.pending;
                counts.delivered = restored.delivered;
                counts.succeeded = counts.succeeded.min(finished);
                counts.failed = counts.failed.min(finished - counts.succeeded);
                counts.expired = finished - counts.succeeded - counts.failed;
                if restored.unfinished() == 0 {
                    entry.done_at = Some(now);
                }
                if *counts != before || entry.done_at.is_some() {
                    self.journal.dirty.rollout(entry.launch.id);
                }
            }
            if let Some(done_at) = entry.done_at {
                entry.settled_done = true;
                entry.deadline = Some(
                    self.deadlines
                        .insert(done_at + retention, Due::Rollout(entry.launch.id)),
                );
            }
        }
    }

    /// Replaces the state with `snapshot` after a write failed, as at a
    /// restart at `now`, but keeping the open streams of the agents that are
    /// still there and the counters.
    pub(crate) fn reload(&mut self, snapshot: Snapshot, now: Instant) {
        let mut fresh = State::new(
            self.settings.clone(),
            self.journal.clock,
            self.journal.events.clone(),
            true,
        );
        fresh.restore(snapshot, now);
        let journal = &mut self.journal;
        for (id, agent) in &mut self.agents {
            match fresh.agents.get_mut(id) {
                Some(kept) => kept.take_stream_from(agent, &mut fresh.journal),
                None => {
                    agent.detach_stream(DetachReason::AgentDeleted, journal);
                }
            }
        }
        let stats = &self.journal.stats;
        let counters = &mut fresh.journal.stats;
        counters.transitions = stats.transitions;
        counters.heartbeats = stats.heartbeats;
        counters.registrations = stats.registrations;
        counters.commands_created = stats.commands_created;
        counters.slow_streams_closed = stats.slow_streams_closed;
        counters.stream_replacements = stats.stream_replacements;
        fresh.next_seq = fresh.next_seq.max(self.next_seq);
        fresh.closing = self.closing;
        // A rollout being launched goes on creating the commands it reserved room for.
        fresh.reserved_commands = self.reserved_commands;
        fresh.deadlines.wake = true;
        *self = fresh;
    }

    /// The configured type a stored command names, shared with new commands;
    /// a type no longer configured is kept as stored.
    fn command_kind(&self, kind: std::sync::Arc<str>) -> std::sync::Arc<str> {
        self.command_types
            .iter()
            .find(|known| ***known == *kind)
            .cloned()
            .unwrap_or(kind)
    }
}
