//! The state's side of the storage seam: the records built from the marks
//! the rules leave (`marks`), and the state rebuilt from a snapshot with the
//! restart's grace, one entity at a time by code that applying another
//! replica's records (`replicate`) shares. No rule is decided here.
//!
//! The writer builds the records a page per hold of the lock, from the state
//! as it is then: a record is never older than its mark, which is all that
//! keeping what was answered needs.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::time::Instant;
use tracing::{debug, warn};

use super::marks::{Dirty, Mark};
use super::rollouts::Launch;
use super::{AgentEntry, CommandEntry, Due, HashMap, State, index};
use crate::agent::{AgentId, AgentMetadata, AgentStatus};
use crate::clock::{Clock, Timestamp};
use crate::command::{CommandId, CommandStatus};
use crate::payload::Payload;
use crate::replication::{Entity, Version};
use crate::rollout::{RolloutCounts, RolloutId};
use crate::settings::Settings;
use crate::storage::{AgentRecord, Change, CommandRecord, RolloutRecord, Snapshot};
use crate::subscription::DetachReason;

/// Each rollout's PENDING and DELIVERED commands read back, by rollout.
pub(super) type RestoredCounts = HashMap<RolloutId, RolloutCounts>;

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
    pub(super) fn record(&self, clock: &Clock) -> CommandRecord {
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
    /// what is gone. A heartbeat of an agent gone is nothing to write. With
    /// `bases` (a shared store), each change's base too: the version of its
    /// entity as this replica holds it.
    pub(crate) fn records(
        &self,
        marks: &[Mark],
        changes: &mut Vec<Change>,
        mut bases: Option<&mut Vec<Version>>,
    ) {
        for mark in marks {
            let Some(change) = self.record(mark) else {
                continue;
            };
            if let Some(bases) = bases.as_deref_mut() {
                bases.push(self.base(&change));
            }
            changes.push(change);
        }
    }

    fn record(&self, mark: &Mark) -> Option<Change> {
        let clock = self.journal.clock;
        let rollouts = &self.journal.rollouts.entries;
        Some(match mark {
            Mark::Heartbeat(id) => {
                let agent = self.agents.get(id)?;
                Change::Heartbeat(id.clone(), clock.timestamp(agent.last_heartbeat_at))
            }
            Mark::Agent(id) => match self.agents.get(id) {
                Some(agent) => Change::Agent(agent.record(&clock)),
                None => Change::AgentRemoved(id.clone()),
            },
            Mark::Command(id) => match self.commands.get(id) {
                Some(command) => Change::Command(command.record(&clock)),
                None => Change::CommandRemoved(*id),
            },
            // Its delivery alone, on the record written at its version; a
            // command never written, or changed again since, is written whole.
            Mark::Delivered(id) => match self.commands.get(id) {
                Some(CommandEntry {
                    status: CommandStatus::Delivered,
                    delivered_at: Some(at),
                    version: 1..,
                    ..
                }) => Change::Delivered(*id, clock.timestamp(*at)),
                Some(command) => Change::Command(command.record(&clock)),
                None => Change::CommandRemoved(*id),
            },
            Mark::Payload(id) => {
                let entry = rollouts.get(id)?;
                Change::RolloutPayload(*id, entry.launch.payload.clone())
            }
            Mark::Rollout(id) => match rollouts.get(id) {
                Some(entry) => Change::Rollout(entry.record(&clock)),
                None => Change::RolloutRemoved(*id),
            },
            Mark::Stream(id, open) => Change::Stream(id.clone(), *open),
        })
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
        self.journal.dirty.meta(key, value);
    }

    /// Fills an empty state from `snapshot`, as at a start at `now`: no
    /// agent's deadline is earlier than `now + stale_after`, and a command
    /// whose `expiresAt` passed meanwhile expires at its `expiresAt` on the
    /// first pass of the schedule.
    pub(crate) fn restore(&mut self, snapshot: Snapshot, now: Instant) {
        let grace_end = now + self.settings.stale_after;
        let heartbeats: HashMap<AgentId, Timestamp> = snapshot.heartbeats.into_iter().collect();
        let deliveries: HashMap<CommandId, Timestamp> = snapshot.deliveries.into_iter().collect();
        let versions: HashMap<Entity, Version> = snapshot.versions.into_iter().collect();
        let version = |entity: Entity| versions.get(&entity).copied().unwrap_or(0);
        for record in snapshot.agents {
            let heartbeat = heartbeats.get(&record.agent_id).copied();
            let version = version(Entity::Agent(record.agent_id.clone()));
            self.link_agent(record, heartbeat, version, Some(grace_end));
        }
        self.restore_rollouts(snapshot.rollouts, snapshot.payloads);
        // Each rollout's restored PENDING and DELIVERED commands.
        let mut unfinished = RestoredCounts::default();
        for mut record in snapshot.commands {
            if let Some(&at) = deliveries.get(&record.command_id) {
                record.delivered(at);
            }
            let version = version(Entity::Command(record.command_id));
            self.link_command(record, version, &mut unfinished);
        }
        let rollouts: Vec<RolloutId> = self.journal.rollouts.entries.keys().copied().collect();
        self.settle_restored_rollouts(&rollouts, &unfinished, now);
        self.meta = snapshot.meta;
        self.restore_remote_streams(snapshot.streams);
        debug!(
            agents = self.agents.len(),
            commands = self.commands.len(),
            "state restored"
        );
    }

    /// Adds an agent read back (from a snapshot, a log entry or a fetch) with
    /// every index kept: its group, its token, the gauges, its deadline by
    /// the facts (no earlier than `not_before`, the grace after a start).
    /// `heartbeat` is a heartbeat time written after the record; the later
    /// of the two is its `lastHeartbeatAt`.
    pub(super) fn link_agent(
        &mut self,
        record: AgentRecord,
        heartbeat: Option<Timestamp>,
        version: Version,
        not_before: Option<Instant>,
    ) {
        let clock = self.journal.clock;
        let id = record.agent_id;
        let last_heartbeat = heartbeat.map_or(record.last_heartbeat_at, |at| {
            at.max(record.last_heartbeat_at)
        });
        let last_heartbeat_at = clock.instant(last_heartbeat);
        let status_changed_at = clock.instant(record.status_changed_at);
        let deadline = agent_due_at(
            &self.settings,
            record.status,
            last_heartbeat_at,
            status_changed_at,
        )
        .map(|own| {
            let when = not_before.map_or(own, |floor| own.max(floor));
            self.deadlines.insert(when, Due::Agent(id.clone()))
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
                remote_stream: None,
                replacements: None,
                credential: record.credential,
                commands: BTreeSet::new(),
                unfinished: 0,
                version,
                record_version: version,
            }),
        );
    }

    /// Adds a command read back (from a snapshot, a log entry or a fetch)
    /// with every index kept: its agent's commands and unfinished count, the
    /// gauges, the payload bytes, its rollout's retained commands, its
    /// deadline by the facts. A PENDING or DELIVERED command of a rollout is
    /// tallied in `unfinished`. Returns false, keeping nothing, for a command
    /// of no agent held here or without its payload.
    pub(super) fn link_command(
        &mut self,
        record: CommandRecord,
        version: Version,
        unfinished: &mut RestoredCounts,
    ) -> bool {
        let clock = self.journal.clock;
        if !self.agents.contains_key(&record.agent_id) {
            // Its agent's removal was written and this was not (or, with
            // replicas, it was created while another replica deleted its
            // agent): finish the job, from the version stored.
            warn!(command_id = %record.command_id, "a stored command of no stored agent is dropped");
            self.journal.dirty.command(record.command_id);
            self.bury(Entity::Command(record.command_id), version);
            return false;
        }
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
            self.bury(Entity::Command(record.command_id), version);
            return false;
        };
        if record.rollout_id.is_none() {
            self.journal.stats.payload_bytes += payload.len();
        }
        let expires_at = clock.instant(record.expires_at);
        let acknowledged_at = record.acknowledged_at.map(|at| clock.instant(at));
        let id = record.command_id;
        let due_at = command_due_at(&self.settings, record.status, expires_at, acknowledged_at);
        let deadline = self.deadlines.insert(due_at, Due::Command(id));
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
        let kind = self.command_kind(record.kind);
        let Some(agent) = self.agents.get_mut(&record.agent_id) else {
            return false;
        };
        agent.commands.insert((record.seq, id));
        if !record.status.is_final() {
            agent.unfinished += 1;
        }
        self.commands.insert(
            id,
            CommandEntry {
                seq: record.seq,
                id,
                agent_id: agent.id.clone(),
                kind,
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
                version,
            },
        );
        true
    }

    /// The rollouts of `records`, each with its payload, their counts as
    /// stored; their commands are counted as retained as they are restored.
    fn restore_rollouts(
        &mut self,
        records: Vec<RolloutRecord>,
        payloads: Vec<(RolloutId, Payload)>,
    ) {
        let mut payloads: HashMap<RolloutId, Payload> = payloads.into_iter().collect();
        for record in records {
            let payload = payloads.remove(&record.rollout_id);
            self.link_rollout(record, payload);
        }
        for (id, _) in payloads {
            // Its rollout's removal was written and this was not.
            self.journal.dirty.rollout(id);
        }
    }

    /// Adds a rollout read back with its payload, its counts as stored and no
    /// command retained yet: each of its commands counts itself as it is
    /// linked. Returns false, keeping nothing, for a rollout without its payload.
    pub(super) fn link_rollout(&mut self, record: RolloutRecord, payload: Option<Payload>) -> bool {
        let clock = self.journal.clock;
        let id = record.rollout_id;
        let Some(payload) = payload else {
            warn!(rollout_id = %id, "a stored rollout without its payload is dropped, with its commands");
            self.journal.dirty.rollout(id);
            return false;
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
        true
    }

    /// Schedules the end of each of the rollouts `ids`, read back, that is
    /// done. One that is not, and whose commands are all gone (which a store
    /// written by this version never holds), could never be done: its
    /// unfinished count as expired now.
    pub(super) fn settle_restored_rollouts(
        &mut self,
        ids: &[RolloutId],
        unfinished: &RestoredCounts,
        now: Instant,
    ) {
        let retention = self.settings.command_retention;
        for id in ids {
            let Some(entry) = self.journal.rollouts.entries.get_mut(id) else {
                continue;
            };
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
            self.replica_id(),
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
        // With replicas, the streams kept are written as opened again: while
        // this replica could not write, the others may have ended them (its
        // liveness ran out), and what the store says of them is older.
        fresh.announce_streams();
        let stats = &self.journal.stats;
        let counters = &mut fresh.journal.stats;
        counters.transitions = stats.transitions;
        counters.heartbeats = stats.heartbeats;
        counters.registrations = stats.registrations;
        counters.commands_created = stats.commands_created;
        counters.slow_streams_closed = stats.slow_streams_closed;
        counters.commands_expired = stats.commands_expired;
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

/// An agent's next lifecycle deadline as its facts say (LIVE:
/// `lastHeartbeatAt + stale_after`; STALE: `statusChangedAt + dead_after`);
/// none once DEAD. The rules' arithmetic, for an agent read back.
fn agent_due_at(
    settings: &Settings,
    status: AgentStatus,
    last_heartbeat_at: Instant,
    status_changed_at: Instant,
) -> Option<Instant> {
    match status {
        AgentStatus::Live => Some(last_heartbeat_at + settings.stale_after),
        AgentStatus::Stale => Some(status_changed_at + settings.dead_after),
        AgentStatus::Dead => None,
    }
}

/// A command's deadline as its facts say: an open command is due at its
/// expiry (passed or not), a final one when its retention ends. The rules'
/// arithmetic, for a command read back.
pub(super) fn command_due_at(
    settings: &Settings,
    status: CommandStatus,
    expires_at: Instant,
    acknowledged_at: Option<Instant>,
) -> Instant {
    match (status, acknowledged_at) {
        (CommandStatus::Acknowledged, Some(at)) => at + settings.command_retention,
        (CommandStatus::Expired, _) | (CommandStatus::Acknowledged, None) => {
            expires_at + settings.command_retention
        }
        (CommandStatus::Pending | CommandStatus::Delivered, _) => expires_at,
    }
}
