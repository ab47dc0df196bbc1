//! Replicas sharing one store (`docs/replicas.md`): what this replica holds
//! of the others' work, and their committed changes applied to the state
//! held here. No rule runs here: what another replica decided is taken as it
//! wrote it.
//!
//! - **Applying a record** replaces the entity, with every index kept right,
//!   by the per-entity code that restores a snapshot (`persist`): its
//!   deadline follows from its facts (without the grace of a start), and its
//!   version is set. It is never marked (an applied change is never written
//!   back) and announces nothing (the replica that wrote it did): a status
//!   it brings is a fleet event only.
//! - **Local changes come first.** A change of an entity this replica has
//!   changed and not committed yet is kept aside: the replica's own commit
//!   then conflicts and fetches the truth, or wins, and whatever was kept
//!   aside and is newer than what it wrote is applied after it.
//! - **Versions** of agents and commands are held on their entries. A
//!   removal not written yet keeps the version it removes (the base of its
//!   change); a removal written keeps the version that wrote it until the
//!   log is applied past it, so that no older entry brings the entity back.
//! - **Streams across replicas.** A stream of an agent opened on another
//!   replica ends the one open here (as a newer stream replaces an older);
//!   the agent is `connected` while a live replica holds its stream.
//! - A PENDING command applied for an agent whose stream is open here is
//!   delivered as one created here would be (`streams::deliver`); the
//!   delivery is this replica's change, written behind.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::time::Instant;
use tracing::debug;

use super::marks::{Announcement, Dirty};
use super::persist::{RestoredCounts, command_due_at};
use super::streams::deliver;
use super::{AgentEntry, Due, HashMap, HashSet, State};
use crate::agent::{AgentId, AgentStatus};
use crate::clock::Timestamp;
use crate::command::{CommandId, CommandStatus};
use crate::payload::Payload;
use crate::replication::{Entity, ReplicaId, Version};
use crate::rollout::RolloutId;
use crate::storage::{AgentRecord, Change, CommandRecord, RolloutRecord};
use crate::subscription::DetachReason;

/// What a replica sharing its store keeps beside the state.
pub(crate) struct Replica {
    /// This replica's id: the origin of its commits, and of its streams.
    id: ReplicaId,
    /// The batches handed to the writer and not answered yet (the writer
    /// holds them too): their entities have local changes.
    in_flight: Vec<Arc<Dirty>>,
    /// Changes of entities with local changes not committed yet, oldest first.
    kept_aside: HashMap<Entity, Vec<(Version, Change)>>,
    /// Entities removed here, by what their removal is (see [`Removal`]).
    removals: HashMap<Entity, Removal>,
    /// The written removals, in version order, to forget once the log is
    /// applied past them.
    written_removals: VecDeque<(Version, Entity)>,
    /// The agents whose stream is open on each other replica.
    remote_streams: HashMap<ReplicaId, HashSet<AgentId>>,
}

#[derive(Debug, Clone, Copy)]
enum Removal {
    /// Removed here, not written yet: the version it had, its removal's base.
    Pending(Version),
    /// Written as this version: an older change of it applied later is old news.
    Written(Version),
}

impl Replica {
    pub(super) fn new(id: ReplicaId) -> Self {
        Self {
            id,
            in_flight: Vec::new(),
            kept_aside: HashMap::default(),
            removals: HashMap::default(),
            written_removals: VecDeque::new(),
            remote_streams: HashMap::default(),
        }
    }

    /// The version an entity created here takes: that of the one it replaces
    /// if that one's removal is not written yet (the store still holds it).
    pub(super) fn unbury(&mut self, entity: &Entity) -> Version {
        match self.removals.get(entity) {
            Some(Removal::Pending(version)) => {
                let version = *version;
                self.removals.remove(entity);
                version
            }
            _ => 0,
        }
    }
}

/// One application of changes read from the store: a log entry (a page at
/// a time) or the entities fetched after a conflict.
pub(crate) struct Applying {
    /// The replica that committed the entry; none for what was fetched.
    origin: Option<ReplicaId>,
    /// What was fetched replaces what is held, local changes or not.
    forced: bool,
    /// New rollouts' payloads, read before their records.
    payloads: HashMap<RolloutId, Payload>,
    /// Rollouts created from their records, and their PENDING and
    /// DELIVERED commands read since, to count once the entry is applied.
    created: Vec<RolloutId>,
    tally: RestoredCounts,
    /// PENDING commands applied, delivered once the entry is applied.
    /// With the versions of the entries (or fetches) that brought them.
    deliveries: Vec<(CommandId, Version)>,
    delivered: usize,
    /// Agents whose status the fleet's readers last read otherwise than
    /// held here (a transition lost to another replica's): that status.
    published: HashMap<AgentId, AgentStatus>,
}

impl Applying {
    /// The application of a log entry committed by `origin`.
    pub(crate) fn entry(origin: ReplicaId) -> Self {
        Self::new(Some(origin), false)
    }

    fn new(origin: Option<ReplicaId>, forced: bool) -> Self {
        Self {
            origin,
            forced,
            payloads: HashMap::default(),
            created: Vec::new(),
            tally: RestoredCounts::default(),
            deliveries: Vec::new(),
            delivered: 0,
            published: HashMap::default(),
        }
    }
}

/// Where a change goes when one commit's changes are applied (a stable
/// sort by it): rollouts (their payloads first) before the commands that
/// read them, agents before their commands and streams, removals of
/// rollouts last.
pub(crate) fn applying_rank(change: &Change) -> u8 {
    match change {
        Change::RolloutPayload(..) => 0,
        Change::Rollout(_) => 1,
        Change::Agent(_) | Change::Heartbeat(..) | Change::Meta(..) => 2,
        Change::Stream(..) => 3,
        Change::Command(_) | Change::Delivered(..) | Change::CommandRemoved(_) => 4,
        Change::AgentRemoved(_) => 5,
        Change::RolloutRemoved(_) => 6,
    }
}

impl State {
    /// Hands a batch of marks over to the writer: with a shared store, its
    /// entities have local changes until the writer is done with it.
    pub(crate) fn hand_over(&mut self, marks: Dirty) -> Arc<Dirty> {
        let marks = Arc::new(marks);
        if let Some(replica) = &mut self.replica {
            replica.in_flight.push(Arc::clone(&marks));
        }
        marks
    }

    /// Notes that an entity at `version` was removed here, for the base of
    /// its removal: only for a removal this replica will write.
    pub(super) fn bury(&mut self, entity: Entity, version: Version) {
        if let Some(replica) = &mut self.replica
            && self.journal.dirty.is_recording()
        {
            replica.removals.insert(entity, Removal::Pending(version));
        }
    }

    /// The version a removal of `entity` is built on.
    fn buried(&self, entity: &Entity) -> Version {
        match self.replica.as_ref().and_then(|r| r.removals.get(entity)) {
            Some(Removal::Pending(version)) => *version,
            _ => 0,
        }
    }

    /// The version `change` is built on, its base: that of its entity here.
    pub(super) fn base(&self, change: &Change) -> Version {
        match change {
            Change::Agent(record) => self.agents.get(&record.agent_id).map_or(0, |a| a.version),
            Change::Heartbeat(id, _) | Change::Stream(id, _) => {
                self.agents.get(id).map_or(0, |agent| agent.version)
            }
            Change::Command(CommandRecord { command_id: id, .. }) | Change::Delivered(id, _) => {
                self.commands.get(id).map_or(0, |command| command.version)
            }
            Change::AgentRemoved(id) => self.buried(&Entity::Agent(id.clone())),
            Change::CommandRemoved(id) => self.buried(&Entity::Command(*id)),
            Change::Rollout(_)
            | Change::RolloutPayload(..)
            | Change::RolloutRemoved(_)
            | Change::Meta(..) => 0,
        }
    }

    /// Whether `entity`'s record has changed here and that change is not
    /// committed yet: marked in `marks` (the state's) or in a batch in flight.
    fn has_local_changes(&self, entity: &Entity, marks: &Dirty) -> bool {
        let Some(replica) = &self.replica else {
            return false;
        };
        marks.has_record(entity) || replica.in_flight.iter().any(|b| b.has_record(entity))
    }

    /// Whether the agent's heartbeat time moved here and is not committed yet.
    fn has_local_heartbeat(&self, id: &AgentId, marks: &Dirty) -> bool {
        let Some(replica) = &self.replica else {
            return false;
        };
        marks.has_heartbeat(id) || replica.in_flight.iter().any(|b| b.has_heartbeat(id))
    }

    /// Whether `change`, of `entity`, as of `version` is already reflected
    /// here. An agent's record is compared with the record held, a heartbeat
    /// with the agent's version.
    fn knows(&self, entity: &Entity, change: &Change, version: Version) -> bool {
        let held = match entity {
            Entity::Agent(id) => self.agents.get(id).map(|agent| match change {
                Change::Heartbeat(..) => agent.version,
                _ => agent.record_version,
            }),
            Entity::Command(id) => self.commands.get(id).map(|command| command.version),
            Entity::Rollout(_) | Entity::Meta(_) => return false,
        };
        match held {
            Some(held) => held >= version,
            None => self
                .replica
                .as_ref()
                .and_then(|replica| replica.removals.get(entity))
                .is_some_and(|removal| match removal {
                    Removal::Written(written) => *written >= version,
                    Removal::Pending(_) => false,
                }),
        }
    }

    /// Applies one page of a log entry's changes, in applying order (see
    /// [`in_applying_order`]); with `last`, the entry is whole: the rollouts
    /// it created count their commands.
    pub(crate) fn apply_page(
        &mut self,
        applying: &mut Applying,
        version: Version,
        page: Vec<Change>,
        last: bool,
        now: Instant,
    ) {
        self.apply_changes(applying, page.into_iter().map(|c| (version, c)), now);
        if last {
            let created = std::mem::take(&mut applying.created);
            self.settle_restored_rollouts(&created, &applying.tally, now);
        }
    }

    /// Applies `changes` without marking them (local changes come first,
    /// unless `applying` is forced). The rollouts touched are settled as
    /// the operation's would be: their events, their purge.
    fn apply_changes(
        &mut self,
        applying: &mut Applying,
        changes: impl IntoIterator<Item = (Version, Change)>,
        now: Instant,
    ) {
        // What local work touched is settled with its marks; what is
        // applied, without.
        self.settle_rollouts(now);
        let marks = std::mem::replace(&mut self.journal.dirty, Dirty::ignoring());
        for (version, change) in changes {
            self.apply_change(applying, &marks, version, change, now);
        }
        self.settle_rollouts(now);
        self.journal.dirty = marks;
    }

    fn apply_change(
        &mut self,
        applying: &mut Applying,
        marks: &Dirty,
        version: Version,
        change: Change,
        now: Instant,
    ) {
        match change {
            Change::Stream(id, open) => {
                if let Some(origin) = applying.origin.clone() {
                    self.apply_stream(&id, open, origin);
                }
            }
            Change::Meta(key, value) => {
                match value {
                    Some(value) => self.meta.insert(key, value),
                    None => self.meta.remove(&key),
                };
            }
            Change::RolloutPayload(id, payload) => {
                applying.payloads.insert(id, payload);
            }
            Change::Rollout(record) => self.apply_rollout(applying, record),
            Change::RolloutRemoved(id) => self.apply_rollout_removed(id),
            change => {
                let entity = change.entity();
                if !applying.forced {
                    // A heartbeat not written yet of an agent removed meanwhile
                    // conflicts when written: the removal waits for it.
                    let heartbeat_pending = matches!(&change, Change::AgentRemoved(id)
                        if self.has_local_heartbeat(id, marks));
                    if heartbeat_pending || self.has_local_changes(&entity, marks) {
                        if let Some(replica) = &mut self.replica {
                            let kept = replica.kept_aside.entry(entity).or_default();
                            kept.push((version, change));
                        }
                        return;
                    }
                    if self.knows(&entity, &change, version) {
                        return;
                    }
                }
                match change {
                    Change::Agent(record) => {
                        let published = applying.published.remove(&record.agent_id);
                        let forced = applying.forced;
                        self.apply_agent(record, version, forced, published, marks, now);
                    }
                    Change::AgentRemoved(id) => self.apply_agent_removed(&id, now),
                    Change::Heartbeat(id, at) => self.apply_heartbeat(&id, at, version),
                    Change::Command(record) => self.apply_command(applying, record, version, now),
                    Change::Delivered(id, at) => {
                        self.apply_delivered(applying, id, at, version, now)
                    }
                    Change::CommandRemoved(id) => self.apply_command_removed(id, now),
                    _ => {}
                }
            }
        }
    }

    /// An agent's record replaces the agent held here (its stream, its
    /// commands and its recent replacements kept), or adds it. Read from the
    /// log, it keeps a later heartbeat time held here (the store keeps it
    /// beside the record); `forced`, fetched, it is the truth, but for a
    /// heartbeat taken here and not written yet.
    fn apply_agent(
        &mut self,
        record: AgentRecord,
        version: Version,
        forced: bool,
        published: Option<AgentStatus>,
        marks: &Dirty,
        now: Instant,
    ) {
        let id = record.agent_id.clone();
        let Some(old) = self.agents.remove(&id) else {
            self.link_agent(record, None, version, None);
            // An agent whose deletion here lost was never gone for the
            // fleet's readers: told from the status they last read.
            if let Some(agent) = self.agents.get(&id)
                && published != Some(agent.status)
            {
                let at = agent.status_changed_at;
                self.journal
                    .agent_event(agent, published, Some(agent.status), at);
            }
            self.reconsider_brake(now);
            return;
        };
        let mut old = *old;
        self.unlink_agent(&old);
        // A heartbeat taken here and not written yet is newer than the record.
        let heartbeat = (!forced || self.has_local_heartbeat(&id, marks))
            .then(|| self.journal.clock.timestamp(old.last_heartbeat_at));
        let metadata_changed = *old.metadata != record.metadata;
        self.link_agent(record, heartbeat, version, None);
        let Some(agent) = self.agents.get_mut(&id) else {
            return;
        };
        if !forced {
            // A heartbeat written since the record may have moved it further.
            agent.version = agent.version.max(old.version);
        }
        agent.stream = old.stream.take();
        agent.remote_stream = old.remote_stream.take();
        agent.replacements = old.replacements.take();
        agent.commands = std::mem::take(&mut old.commands);
        agent.unfinished = old.unfinished;
        let (from, to) = (old.status, agent.status);
        let at = agent.status_changed_at;
        // The fleet's readers are told from the status they last read.
        let told = published.unwrap_or(from);
        if told != to {
            self.journal.agent_event(agent, Some(told), Some(to), at);
        } else if metadata_changed {
            self.journal.agent_changed(agent);
        }
        if from == AgentStatus::Live && to == AgentStatus::Stale {
            self.brake_saw_stale(at);
        }
        self.reconsider_brake(now);
    }

    fn apply_agent_removed(&mut self, id: &AgentId, now: Instant) {
        if let Some(agent) = self.agents.remove(id) {
            debug!(agent_id = %id, "agent deleted on another replica");
            self.drop_agent(*agent, now);
            self.reconsider_brake(now);
        }
    }

    /// A heartbeat taken on another replica: a LIVE agent's deadline moves.
    fn apply_heartbeat(&mut self, id: &AgentId, at: Timestamp, version: Version) {
        let at = self.journal.clock.instant(at);
        let stale_after = self.settings.stale_after;
        let Some(agent) = self.agents.get_mut(id) else {
            return;
        };
        agent.version = agent.version.max(version);
        if at <= agent.last_heartbeat_at {
            return;
        }
        agent.last_heartbeat_at = at;
        if agent.status == AgentStatus::Live {
            self.deadlines
                .heartbeat(agent, AgentStatus::Live, at + stale_after);
        }
    }

    /// A command's record replaces the command held here, or adds it; its
    /// agent's unfinished count, the gauges and its rollout's counts follow
    /// its status.
    fn apply_command(
        &mut self,
        applying: &mut Applying,
        record: CommandRecord,
        version: Version,
        now: Instant,
    ) {
        let id = record.command_id;
        let to = record.status;
        if !self.commands.contains_key(&id) {
            let rollout = record.rollout_id;
            if !self.link_command(record, version, &mut applying.tally) {
                return;
            }
            if let Some(rollout) = rollout
                && !applying.created.contains(&rollout)
            {
                self.arrived_late(rollout, to);
            }
            if to == CommandStatus::Pending {
                applying.deliveries.push((id, version));
            }
            return;
        }
        let clock = self.journal.clock;
        let expires_at = clock.instant(record.expires_at);
        let acknowledged_at = record.acknowledged_at.map(|at| clock.instant(at));
        let delivered_at = record.delivered_at.map(|at| clock.instant(at));
        let due_at = command_due_at(&self.settings, to, expires_at, acknowledged_at);
        let Some(command) = self.commands.get_mut(&id) else {
            return;
        };
        let from = command.status;
        command.expires_at = expires_at;
        command.delivered_at = delivered_at;
        command.acknowledged_at = acknowledged_at;
        command.ack = record.ack;
        command.version = version;
        if !(from == CommandStatus::Delivered && to == CommandStatus::Delivered) {
            command.delivered_on = 0;
        }
        if from != to {
            let at = match to {
                CommandStatus::Acknowledged => acknowledged_at,
                CommandStatus::Expired => Some(expires_at),
                CommandStatus::Delivered => delivered_at,
                CommandStatus::Pending => None,
            };
            self.journal.command_status(command, to, at.unwrap_or(now));
            if let Some(agent) = self.agents.get_mut(&command.agent_id) {
                match (from.is_final(), to.is_final()) {
                    (false, true) => agent.unfinished = agent.unfinished.saturating_sub(1),
                    (true, false) => agent.unfinished += 1,
                    _ => {}
                }
            }
        }
        self.deadlines.schedule.remove(command.deadline);
        command.deadline = self.deadlines.insert(due_at, Due::Command(id));
        if to == CommandStatus::Pending {
            applying.deliveries.push((id, version));
        }
    }

    /// A command's delivery mark, written by another replica on the record
    /// held here (the log brought every earlier write of it): the record as
    /// the mark makes it replaces the command, as a whole record would.
    fn apply_delivered(
        &mut self,
        applying: &mut Applying,
        id: CommandId,
        at: Timestamp,
        version: Version,
        now: Instant,
    ) {
        let Some(command) = self.commands.get(&id) else {
            return;
        };
        let mut record = command.record(&self.journal.clock);
        record.delivered(at);
        self.apply_command(applying, record, version, now);
    }

    /// A command of a rollout created by an earlier entry: the origin wrote
    /// the rollout in slices (`writer::shared`), its record and payload in
    /// the first. Settled when it was created, the rollout counted the
    /// targets whose commands had not come yet among the finished (EXPIRED
    /// the remainder, those acknowledged already in its record's counts): an
    /// unfinished one moves to its status, and the rollout is not done.
    fn arrived_late(&mut self, rollout: RolloutId, status: CommandStatus) {
        if status.is_final() {
            return;
        }
        let Some(entry) = self.journal.rollouts.entries.get_mut(&rollout) else {
            return;
        };
        let at = entry.launch.created_at;
        if entry.done_at.take().is_some() {
            entry.settled_done = false;
            if let Some(key) = entry.deadline.take() {
                self.deadlines.schedule.remove(key);
            }
        }
        self.journal
            .rollouts
            .count(rollout, CommandStatus::Expired, status, None, at);
    }

    fn apply_command_removed(&mut self, id: CommandId, now: Instant) {
        let Some(command) = self.commands.remove(&id) else {
            return;
        };
        self.deadlines.schedule.remove(command.deadline);
        self.journal.command_dropped(&command, now);
        if let Some(agent) = self.agents.get_mut(&command.agent_id) {
            agent.commands.remove(&(command.seq, id));
            if !command.status.is_final() {
                agent.unfinished = agent.unfinished.saturating_sub(1);
            }
        }
    }

    /// A new rollout is added with its payload; one held here keeps its
    /// counts, which its commands' changes keep here.
    fn apply_rollout(&mut self, applying: &mut Applying, record: RolloutRecord) {
        let id = record.rollout_id;
        if self.journal.rollouts.entries.contains_key(&id) {
            return;
        }
        let payload = applying.payloads.remove(&id);
        if self.link_rollout(record, payload) {
            applying.created.push(id);
        }
    }

    fn apply_rollout_removed(&mut self, id: RolloutId) {
        if let Some(entry) = self.journal.rollouts.entries.get_mut(&id)
            && let Some(key) = entry.deadline.take()
        {
            self.deadlines.schedule.remove(key);
        }
        self.journal.drop_rollout(id);
    }

    /// A stream opened (`open`) or closed on `origin`.
    fn apply_stream(&mut self, id: &AgentId, open: bool, origin: ReplicaId) {
        let Some(agent) = self.agents.get_mut(id) else {
            return;
        };
        if open {
            let was_connected = agent.connected();
            // One stream per agent across replicas: the newer replaces this one.
            agent.detach_stream(DetachReason::Replaced, &mut self.journal);
            let previous = agent.remote_stream.replace(origin.clone());
            if !was_connected {
                self.journal.agent_changed(agent);
            }
            self.unindex_remote_stream(id, previous);
            if let Some(replica) = &mut self.replica {
                let streams = replica.remote_streams.entry(origin).or_default();
                streams.insert(id.clone());
            }
        } else if agent.remote_stream.as_ref() == Some(&origin) {
            agent.remote_stream = None;
            if !agent.connected() {
                self.journal.agent_changed(agent);
            }
            self.unindex_remote_stream(id, Some(origin));
        }
    }

    /// Forgets that another replica holds the agent's stream.
    pub(super) fn unindex_remote_stream(&mut self, id: &AgentId, on: Option<ReplicaId>) {
        if let (Some(replica), Some(on)) = (&mut self.replica, on)
            && let Some(streams) = replica.remote_streams.get_mut(&on)
        {
            streams.remove(id);
            if streams.is_empty() {
                replica.remote_streams.remove(&on);
            }
        }
    }

    /// An agent leaving: whatever replica holds its stream no longer counts.
    pub(super) fn forget_remote_stream(&mut self, agent: &mut AgentEntry) {
        let on = agent.remote_stream.take();
        self.unindex_remote_stream(&agent.id, on);
    }

    /// The streams a snapshot says are open on other replicas.
    pub(super) fn restore_remote_streams(&mut self, streams: Vec<(AgentId, ReplicaId)>) {
        let Some(replica) = &mut self.replica else {
            return;
        };
        for (id, on) in streams {
            if on == replica.id {
                continue;
            }
            if let Some(agent) = self.agents.get_mut(&id) {
                agent.remote_stream = Some(on.clone());
                replica.remote_streams.entry(on).or_default().insert(id);
            }
        }
    }

    /// The streams held by replicas not in `alive` end: their agents are no
    /// longer connected, unless by a stream open here.
    pub(crate) fn replicas_alive(&mut self, alive: &[ReplicaId]) {
        let Some(replica) = &mut self.replica else {
            return;
        };
        let gone: Vec<ReplicaId> = replica
            .remote_streams
            .keys()
            .filter(|on| !alive.contains(on))
            .cloned()
            .collect();
        for on in gone {
            let agents = replica.remote_streams.remove(&on).unwrap_or_default();
            debug!(replica = %on, streams = agents.len(), "a replica is no longer alive: its streams end");
            for id in agents {
                if let Some(agent) = self.agents.get_mut(&id)
                    && agent.remote_stream.as_ref() == Some(&on)
                {
                    agent.remote_stream = None;
                    if !agent.connected() {
                        self.journal.agent_changed(agent);
                    }
                }
            }
        }
    }

    /// Marks every stream open here as opened again: the other replicas
    /// ended them when this replica's liveness ran out. A pass over the
    /// agents, but no periodic scan: only when the liveness lapsed.
    pub(crate) fn announce_streams(&mut self) {
        for agent in self.agents.values() {
            if agent.stream.is_some() {
                self.journal.dirty.stream(&agent.id, true);
            }
        }
    }

    /// Hands the next `limit` PENDING commands applied to the open streams
    /// of their agents here. Returns whether commands remain.
    pub(crate) fn deliver_applied(
        &mut self,
        applying: &mut Applying,
        limit: usize,
        now: Instant,
    ) -> bool {
        let end = applying.deliveries.len().min(applying.delivered + limit);
        for (id, version) in &applying.deliveries[applying.delivered..end] {
            if self.closing {
                break;
            }
            let Some(command) = self.commands.get_mut(id) else {
                continue;
            };
            if let Some(agent) = self.agents.get_mut(&command.agent_id)
                && command.status == CommandStatus::Pending
                && agent.delivers_applied(*id, *version)
            {
                deliver(agent, command, now, &mut self.journal);
            }
        }
        applying.delivered = end;
        end < applying.deliveries.len()
    }

    /// The log is applied up to `position`: the removals written up to it
    /// need no guard any more.
    pub(crate) fn applied_up_to(&mut self, position: Version) {
        let Some(replica) = &mut self.replica else {
            return;
        };
        while let Some((version, _)) = replica.written_removals.front()
            && *version <= position
        {
            if let Some((version, entity)) = replica.written_removals.pop_front()
                && let Some(Removal::Written(written)) = replica.removals.get(&entity)
                && *written == version
            {
                replica.removals.remove(&entity);
            }
        }
    }

    /// The writer's commit of `batches` wrote `changes` as `version`, but
    /// for those the store already held (`unchanged`, with their stored
    /// versions): the versions written are noted and the transitions they
    /// carry are announced. A group larger than one commit is written in
    /// slices, each noted here in turn; after the `last`, the batches are no
    /// longer in flight. `lost` entities were left out of the commit.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn committed(
        &mut self,
        changes: &[Change],
        version: Version,
        unchanged: &[(usize, Version)],
        batches: &[Arc<Dirty>],
        lost: &HashSet<Entity>,
        last: bool,
        now: Instant,
    ) {
        let unchanged: HashMap<usize, Version> = unchanged.iter().copied().collect();
        let mut written: HashSet<Entity> = HashSet::default();
        let mut found: HashSet<Entity> = HashSet::default();
        for (index, change) in changes.iter().enumerate() {
            match unchanged.get(&index) {
                // The store held it already: the entry that wrote it is
                // applied from the log in its turn, which moves the version.
                // Moved here to the version stored (which a heartbeat written
                // since may have moved), that heartbeat's entry would be
                // skipped as known. A removal is noted, to guard it.
                Some(&stored) => {
                    found.insert(change.entity());
                    if matches!(change, Change::AgentRemoved(_) | Change::CommandRemoved(_)) {
                        self.written(change, stored);
                    }
                }
                None => {
                    // A transition is carried by its entity's record.
                    if !matches!(change, Change::Stream(..) | Change::Heartbeat(..)) {
                        written.insert(change.entity());
                    }
                    self.written(change, version);
                    if let Change::Stream(id, true) = change {
                        self.opening_written(id, version, now);
                    }
                }
            }
        }
        for batch in batches {
            for announcement in batch.announcements() {
                let entity = announcement.entity();
                if lost.contains(&entity) {
                    continue;
                }
                if written.contains(&entity) {
                    self.journal.announce_now(announcement.clone());
                } else if found.contains(&entity)
                    && let Some(event) = announcement.agent_event()
                {
                    // Written by another replica, which logs and counts it;
                    // applying its entry here changes no status, so the
                    // fleet's readers here are told now.
                    self.journal.send_agent_event(event.clone());
                }
            }
        }
        if last {
            self.done_with(batches, now);
        }
    }

    /// The opening of the agent's stream here was written as `version`: the
    /// PENDING commands the log brought meanwhile, and after it, are this
    /// stream's to deliver.
    fn opening_written(&mut self, id: &AgentId, version: Version, now: Instant) {
        let Some(agent) = self.agents.get_mut(id) else {
            return;
        };
        for command_id in agent.opening_written(version) {
            if let Some(command) = self.commands.get_mut(&command_id)
                && command.status == CommandStatus::Pending
            {
                deliver(agent, command, now, &mut self.journal);
            }
        }
    }

    /// Notes that `change` is what the store holds as `version`.
    fn written(&mut self, change: &Change, version: Version) {
        match change {
            Change::Agent(AgentRecord { agent_id: id, .. }) => {
                if let Some(agent) = self.agents.get_mut(id) {
                    agent.version = agent.version.max(version);
                    agent.record_version = agent.record_version.max(version);
                }
            }
            Change::Heartbeat(id, _) => {
                if let Some(agent) = self.agents.get_mut(id) {
                    agent.version = agent.version.max(version);
                }
            }
            Change::Command(CommandRecord { command_id: id, .. }) | Change::Delivered(id, _) => {
                if let Some(command) = self.commands.get_mut(id) {
                    command.version = command.version.max(version);
                }
            }
            Change::AgentRemoved(id) => {
                match self.agents.get_mut(id) {
                    // Created here again since: the store holds none of it now.
                    Some(agent) => {
                        agent.version = 0;
                        agent.record_version = 0;
                    }
                    None => self.removal_written(Entity::Agent(id.clone()), version),
                }
            }
            Change::CommandRemoved(id) => self.removal_written(Entity::Command(*id), version),
            Change::Rollout(_)
            | Change::RolloutPayload(..)
            | Change::RolloutRemoved(_)
            | Change::Meta(..)
            | Change::Stream(..) => {}
        }
    }

    fn removal_written(&mut self, entity: Entity, version: Version) {
        if let Some(replica) = &mut self.replica {
            replica
                .removals
                .insert(entity.clone(), Removal::Written(version));
            replica.written_removals.push_back((version, entity));
        }
    }

    /// The writer is done with `batches` (written, refused, or lost): they
    /// are no longer in flight, and what was kept aside for their entities
    /// is applied if it is newer than what is held.
    pub(crate) fn done_with(&mut self, batches: &[Arc<Dirty>], now: Instant) {
        let Some(replica) = &mut self.replica else {
            return;
        };
        replica
            .in_flight
            .retain(|held| !batches.iter().any(|done| Arc::ptr_eq(held, done)));
        if replica.kept_aside.is_empty() {
            return;
        }
        let marks = &self.journal.dirty;
        let ready: Vec<Entity> = replica
            .kept_aside
            .keys()
            .filter(|entity| {
                !marks.has_record(entity) && !replica.in_flight.iter().any(|b| b.has_record(entity))
            })
            .cloned()
            .collect();
        let mut changes: Vec<(Version, Change)> = ready
            .iter()
            .filter_map(|entity| replica.kept_aside.remove(entity))
            .flatten()
            .collect();
        changes.sort_by_key(|(version, _)| *version);
        let mut applying = Applying::new(None, false);
        self.apply_changes(&mut applying, changes, now);
        while self.deliver_applied(&mut applying, usize::MAX, now) {}
    }

    /// After a conflict: `fetched`, the store's truth of the `lost`
    /// entities, replaces what is held of them, whatever was changed here
    /// (their marks are dropped); `refused` batches are no longer in flight.
    ///
    /// An agent whose transition here was lost is told to the fleet's
    /// readers from the status they last read (the transition's `from`, in
    /// `batches` or the marks): none when the truth is that status.
    pub(crate) fn apply_fetched(
        &mut self,
        mut fetched: Vec<(Version, Change)>,
        lost: &HashSet<Entity>,
        refused: &[Arc<Dirty>],
        batches: &[Arc<Dirty>],
        now: Instant,
    ) {
        let mut applying = Applying::new(None, true);
        let announced = batches
            .iter()
            .flat_map(|batch| batch.announcements())
            .chain(self.journal.dirty.announcements());
        for announcement in announced {
            if let Announcement::Agent { id, from, .. } | Announcement::Deleted { id, from, .. } =
                announcement
                && lost.contains(&Entity::Agent(id.clone()))
            {
                applying.published.entry(id.clone()).or_insert(*from);
            }
        }
        for entity in lost {
            self.journal.dirty.unmark(entity);
        }
        if let Some(replica) = &mut self.replica {
            replica
                .in_flight
                .retain(|held| !refused.iter().any(|done| Arc::ptr_eq(held, done)));
            for entity in lost {
                replica.removals.remove(entity);
            }
        }
        fetched.sort_by_key(|(_, change)| applying_rank(change));
        for (version, change) in &fetched {
            // What was kept aside and is no newer than the truth is old news.
            if let Some(replica) = &mut self.replica
                && let Some(kept) = replica.kept_aside.get_mut(&change.entity())
            {
                kept.retain(|(kept, _)| kept > version);
            }
        }
        self.apply_changes(&mut applying, fetched, now);
        let created = std::mem::take(&mut applying.created);
        self.settle_restored_rollouts(&created, &applying.tally, now);
        while self.deliver_applied(&mut applying, usize::MAX, now) {}
        self.done_with(&[], now);
    }

    /// Whether another replica's change is kept aside, waiting for this
    /// replica's own commit of the same entity to resolve.
    pub(crate) fn has_kept_aside(&self) -> bool {
        self.replica
            .as_ref()
            .is_some_and(|replica| !replica.kept_aside.is_empty())
    }

    /// This replica's id, with a shared store.
    pub(crate) fn replica_id(&self) -> Option<ReplicaId> {
        self.replica.as_ref().map(|replica| replica.id.clone())
    }
}
