//! The registry's state under its one lock: agents, the group index, commands,
//! open streams and the deadline schedule, with every rule that changes them.
//! Every operation first applies the deadlines due at `now` (a bounded number
//! of them: a backlog of a million is the scheduler's, in batches), and
//! settles each agent and command it reads or changes: it applies that one's
//! own deadline if it is due. So no read ever shows a status a late timer, or
//! a backlog, has not caught up with yet.
//!
//! This file holds the state, the deadlines and the agents' rules; `commands`
//! holds the rules of commands, `rollouts` the counting of a group or fleet
//! command's progress, `streams` those of streams and of delivering commands
//! to them, `brake` the brake's.

mod brake;
mod commands;
mod launch;
mod limits;
mod marks;
mod persist;
mod replicate;
mod rollouts;
mod streams;

pub(crate) use launch::{Launching, Targets};
pub(crate) use marks::Dirty;
pub(crate) use replicate::{Applying, applying_rank};
pub(crate) use streams::OpenedStream;
use streams::{Replacements, StreamSlot};

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::time::Instant;
use tracing::info;

use crate::agent::{
    AgentFilter, AgentId, AgentMetadata, AgentStatus, AgentView, Credential, GroupName,
    Registration,
};
use crate::clock::Clock;
use crate::command::{Ack, CommandEvent, CommandId, CommandStatus, CommandView};
use crate::error::RegistryError;
use crate::fleet::{AgentEvent, FleetEvent};
use crate::payload::Payload;
use crate::replication::{Entity, ReplicaId, Version};
use crate::rollout::RolloutId;
use crate::schedule::{DeadlineKey, Schedule};
use crate::settings::Settings;
use crate::stats::Stats;
use crate::subscription::DetachReason;

/// Maps keyed by agent ids, which clients choose, so seeded against flooding;
/// foldhash is as safe for that here as the standard SipHash and several times faster.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

/// What a deadline is for. The entity's own status says which of its rules
/// applies: a LIVE agent goes STALE, a STALE one DEAD; an open command
/// expires, a final one is dropped; a done rollout is dropped; the brake
/// releases after `brake_max`.
#[derive(Debug)]
enum Due {
    Agent(AgentId),
    Command(CommandId),
    Rollout(RolloutId),
    Brake,
}

/// The schedule, and whether the scheduler task must wake because a deadline
/// earlier than the one it sleeps until was added.
struct Deadlines {
    schedule: Schedule<Due>,
    wake: bool,
}

impl Deadlines {
    fn insert(&mut self, when: Instant, due: Due) -> DeadlineKey {
        let (key, earliest) = self.schedule.insert(when, due);
        self.wake |= earliest;
        key
    }

    fn replace(&mut self, slot: &mut Option<DeadlineKey>, when: Instant, due: Due) {
        if let Some(old) = slot.take() {
            self.schedule.remove(old);
        }
        *slot = Some(self.insert(when, due));
    }

    /// Moves a LIVE agent's STALE deadline to `stale_at` after a heartbeat.
    /// Lazily, when it is LIVE and its deadline is no later than `stale_at`:
    /// the deadline stays where it is and, when it comes due, `agent_due`
    /// sees the later heartbeat and schedules it again from there. So a
    /// heartbeat costs no change to the schedule, and an agent's deadline
    /// moves at most once per `stale_after`; the transition still happens,
    /// and is stamped, exactly `stale_after` after the last heartbeat.
    /// Otherwise (the agent was STALE or DEAD, or the time went back) the
    /// deadline is replaced now.
    fn heartbeat(&mut self, agent: &mut AgentEntry, was: AgentStatus, stale_at: Instant) {
        let later =
            was == AgentStatus::Live && agent.deadline.is_some_and(|key| key.when <= stale_at);
        if !later {
            let due = Due::Agent(agent.id.clone());
            self.replace(&mut agent.deadline, stale_at, due);
        }
    }
}

/// Counts and logs every change of status (a rollout's counts among them),
/// tells the fleet's readers what changed, and marks what changed for storage.
struct Journal {
    clock: Clock,
    stats: Stats,
    events: broadcast::Sender<FleetEvent>,
    dirty: marks::Dirty,
    rollouts: rollouts::Rollouts,
}

impl Journal {
    fn agent_status(&mut self, agent: &mut AgentEntry, to: AgentStatus, at: Instant) {
        let from = agent.status;
        if from == to {
            return;
        }
        agent.status = to;
        agent.status_changed_at = at;
        self.dirty.agent(&agent.id);
        self.stats.agents[from.index()] -= 1;
        self.stats.agents[to.index()] += 1;
        // With a shared store the fleet's readers are told once the commit
        // is known: a transition that loses to another replica's never shows.
        let deferred = self.dirty.defers_announcements();
        let event = deferred
            .then(|| self.agent_event_of(agent, Some(from), Some(to), at))
            .flatten();
        self.announce(marks::Announcement::Agent {
            id: agent.id.clone(),
            from,
            to,
            event,
        });
        if !deferred {
            self.agent_event(agent, Some(from), Some(to), at);
        }
    }

    /// Sends an `agent` event about `agent`, if anyone reads the fleet's events.
    fn agent_event(
        &self,
        agent: &AgentEntry,
        from: Option<AgentStatus>,
        to: Option<AgentStatus>,
        at: Instant,
    ) {
        if let Some(event) = self.agent_event_of(agent, from, to, at) {
            self.send_agent_event(event);
        }
    }

    /// The `agent` event about `agent`, if anyone reads the fleet's events.
    fn agent_event_of(
        &self,
        agent: &AgentEntry,
        from: Option<AgentStatus>,
        to: Option<AgentStatus>,
        at: Instant,
    ) -> Option<AgentEvent> {
        (self.events.receiver_count() > 0).then(|| AgentEvent {
            agent_id: agent.id.clone(),
            group: agent.metadata.group.clone(),
            from,
            to,
            at: self.clock.timestamp(at),
            connected: to.is_some() && agent.connected(),
        })
    }

    fn send_agent_event(&self, event: AgentEvent) {
        // A reader gone since is fine: the change is already logged and counted.
        let _ = self.events.send(FleetEvent::Agent(event));
    }

    /// The `agent` event of an agent deleted here. With a shared store it
    /// waits for the deletion's commit, as a transition does: behind the
    /// transitions not yet written before it, and never sent for a deletion
    /// refused (which runs again, and the agent fetched back is no news).
    fn agent_deleted(&mut self, agent: &AgentEntry, at: Instant) {
        if !self.dirty.defers_announcements() {
            self.agent_event(agent, Some(agent.status), None, at);
            return;
        }
        let event = self.agent_event_of(agent, Some(agent.status), None, at);
        self.announce(marks::Announcement::Deleted {
            id: agent.id.clone(),
            from: agent.status,
            event,
        });
    }

    /// An `agent` event for a change that kept the agent's status: its
    /// connection or its metadata.
    fn agent_changed(&self, agent: &AgentEntry) {
        let status = Some(agent.status);
        self.agent_event(agent, status, status, agent.status_changed_at);
    }

    /// A command's status changes at `at`; its rollout, if any, counts it.
    fn command_status(&mut self, command: &mut CommandEntry, to: CommandStatus, at: Instant) {
        let from = command.status;
        if (from, to) == (CommandStatus::Pending, CommandStatus::Delivered) {
            self.dirty.delivery(command.id);
        } else {
            self.dirty.command(command.id);
        }
        self.stats.commands[from.index()] -= 1;
        self.stats.commands[to.index()] += 1;
        command.status = to;
        if let Some(rollout) = command.rollout {
            let result = command
                .ack
                .as_ref()
                .map(|ack| ack.result.unwrap_or_default());
            self.rollouts.count(rollout, from, to, result, at);
        }
    }

    /// A command leaves the table at `at` (its retention ended, or its agent
    /// was deleted): its payload, unless a rollout holds it, and its count go.
    fn command_dropped(&mut self, command: &CommandEntry, at: Instant) {
        self.dirty.command(command.id);
        self.stats.commands[command.status.index()] -= 1;
        match command.rollout {
            Some(rollout) => {
                if let Some(last) = self.rollouts.command_dropped(rollout, command.status, at) {
                    self.drop_rollout(last);
                }
            }
            None => {
                self.stats.payload_bytes = self
                    .stats
                    .payload_bytes
                    .saturating_sub(command.payload.len());
            }
        }
    }
}

struct AgentEntry {
    id: AgentId,
    /// Shared with the views that read it, so a listing copies a handle, not the lists.
    metadata: Arc<AgentMetadata>,
    status: AgentStatus,
    registered_at: Instant,
    last_heartbeat_at: Instant,
    status_changed_at: Instant,
    /// The agent's next lifecycle deadline; none once DEAD.
    deadline: Option<DeadlineKey>,
    /// Attached and detached only through `attach_stream` and `detach_stream`,
    /// which keep the open-streams gauge.
    stream: Option<StreamSlot>,
    /// The replica its stream is open on, when another replica sharing the
    /// store holds it (see `replicate`).
    remote_stream: Option<ReplicaId>,
    /// Its recent stream replacements, once it had one: two processes sharing an id show here.
    replacements: Option<Box<Replacements>>,
    /// The digest of the agent's current token, when tokens are in use.
    credential: Option<Credential>,
    /// The agent's retained commands by creation sequence, so newest first is
    /// a reverse walk; with replicas two may share a sequence, and their ids
    /// (time-ordered) order them.
    commands: BTreeSet<(u64, CommandId)>,
    /// How many of them are PENDING or DELIVERED (`commands.max_unfinished_per_agent`).
    unfinished: usize,
    /// Its version in a shared store, as this replica knows it (0 otherwise):
    /// the base of its next change. A heartbeat moves it.
    version: Version,
    /// The version of the commit that wrote the record it holds: a record
    /// another replica wrote after it is newer, even if a heartbeat since
    /// moved `version` past it.
    record_version: Version,
}

impl AgentEntry {
    /// Whether its deadline is due at `now` and not applied yet.
    fn is_due(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|key| key.when <= now)
    }

    /// Its retained commands' ids, oldest first.
    fn command_ids(&self) -> impl DoubleEndedIterator<Item = &CommandId> {
        self.commands.iter().map(|(_, id)| id)
    }

    /// Whether a stream is open for it, here or on another live replica.
    fn connected(&self) -> bool {
        self.stream.is_some() || self.remote_stream.is_some()
    }

    fn view(&self, clock: &Clock) -> AgentView {
        AgentView {
            agent_id: self.id.clone(),
            metadata: self.metadata.clone(),
            status: self.status,
            registered_at: clock.timestamp(self.registered_at),
            last_heartbeat_at: clock.timestamp(self.last_heartbeat_at),
            status_changed_at: clock.timestamp(self.status_changed_at),
            connected: self.connected(),
        }
    }
}

struct CommandEntry {
    seq: u64,
    id: CommandId,
    agent_id: AgentId,
    kind: Arc<str>,
    /// Shared with the other commands of its rollout, if it has one.
    payload: Payload,
    /// The rollout it belongs to, which holds its payload once for all.
    rollout: Option<RolloutId>,
    status: CommandStatus,
    created_at: Instant,
    expires_at: Instant,
    delivered_at: Option<Instant>,
    /// The stream its delivery was last handed to (0: none): only that stream,
    /// dropping it unwritten, sends it back to PENDING.
    delivered_on: u64,
    acknowledged_at: Option<Instant>,
    ack: Option<Ack>,
    /// Expiry while open, purge once final: a command always has exactly one.
    deadline: DeadlineKey,
    /// Its version in a shared store, as this replica knows it (0 otherwise).
    version: Version,
}

impl CommandEntry {
    fn view(&self, clock: &Clock) -> CommandView {
        let ack = self.ack.as_ref();
        CommandView {
            command_id: self.id,
            agent_id: self.agent_id.clone(),
            kind: self.kind.clone(),
            payload: self.payload.clone(),
            rollout_id: self.rollout,
            status: self.status,
            created_at: clock.timestamp(self.created_at),
            expires_at: clock.timestamp(self.expires_at),
            delivered_at: self.delivered_at.map(|at| clock.timestamp(at)),
            acknowledged_at: self.acknowledged_at.map(|at| clock.timestamp(at)),
            result: ack.map(|ack| ack.result.unwrap_or_default()),
            message: ack.and_then(|ack| ack.message.clone()),
        }
    }

    fn event(&self, clock: &Clock) -> CommandEvent {
        CommandEvent {
            agent_id: self.agent_id.clone(),
            command_id: self.id,
            created_at: clock.timestamp(self.created_at),
            expires_at: clock.timestamp(self.expires_at),
            payload: self.payload.clone(),
            kind: self.kind.clone(),
        }
    }
}

pub(crate) struct State {
    settings: Arc<Settings>,
    command_types: Vec<Arc<str>>,
    /// Boxed, so that the table, when it grows (all of it at once, in one
    /// hold of the lock), moves pointers, not entries.
    agents: HashMap<AgentId, Box<AgentEntry>>,
    /// Every agent's id, in order: a listing walks it a page at a time.
    by_id: BTreeSet<AgentId>,
    /// Every group with at least one agent, in any status, and its members in order.
    groups: HashMap<GroupName, BTreeSet<AgentId>>,
    /// A B-tree, which grows a node at a time, where a hash table of a
    /// million commands, growing, would move them all in one hold of the
    /// lock. Ids are time-ordered, so new commands go to its right edge.
    commands: BTreeMap<CommandId, CommandEntry>,
    /// Which agent each current token digest belongs to.
    credentials: HashMap<Credential, AgentId>,
    deadlines: Deadlines,
    journal: Journal,
    brake: brake::Brake,
    /// Orders commands within an agent and tells streams apart.
    next_seq: u64,
    /// Commands of rollouts being launched not created yet: the caps count them as retained.
    reserved_commands: usize,
    /// Set when every stream is being closed (shutdown): no stream opens or takes a command.
    closing: bool,
    /// Named values kept in storage (the signing key, the brake).
    meta: BTreeMap<String, Vec<u8>>,
    /// With a store shared by several replicas: this one's id and what it
    /// holds of the others' work (see `replicate`).
    replica: Option<Box<replicate::Replica>>,
}

impl State {
    /// An empty state; with `recording`, every change is marked for storage;
    /// with `replica`, the store is shared with other replicas and this is
    /// this one's id.
    pub(crate) fn new(
        settings: Arc<Settings>,
        clock: Clock,
        events: broadcast::Sender<FleetEvent>,
        recording: bool,
        replica: Option<ReplicaId>,
    ) -> Self {
        let command_types = settings
            .command_types
            .iter()
            .map(|kind| Arc::from(kind.as_str()))
            .collect();
        Self {
            settings,
            command_types,
            agents: HashMap::default(),
            by_id: BTreeSet::new(),
            groups: HashMap::default(),
            commands: BTreeMap::new(),
            credentials: HashMap::default(),
            deadlines: Deadlines {
                schedule: Schedule::new(),
                wake: false,
            },
            journal: Journal {
                clock,
                stats: Stats::default(),
                events,
                dirty: marks::Dirty::new(recording, replica.is_some()),
                rollouts: rollouts::Rollouts::default(),
            },
            brake: brake::Brake::new(),
            next_seq: 0,
            reserved_commands: 0,
            closing: false,
            meta: BTreeMap::new(),
            replica: replica.map(|id| Box::new(replicate::Replica::new(id))),
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Applies the deadlines due at `now`, in deadline order, at most `budget`
    /// of them; returns how many.
    pub(crate) fn advance(&mut self, now: Instant, budget: usize) -> usize {
        let mut handled = 0;
        while handled < budget
            && let Some((when, due)) = self.deadlines.schedule.pop_due(now)
        {
            handled += 1;
            match due {
                Due::Agent(id) => self.agent_due(id, when),
                Due::Command(id) => self.command_due(id, when),
                Due::Rollout(id) => self.rollout_due(id, when),
                Due::Brake => self.release_brake(when),
            }
        }
        handled
    }

    /// Whether a deadline is due at `now` and not applied yet.
    pub(crate) fn is_due(&self, now: Instant) -> bool {
        self.next_due().is_some_and(|when| when <= now)
    }

    /// Applies the agent's own deadline if it is due at `now`, ahead of any
    /// backlog before it: what an operation reads or changes of the agent is
    /// then as of `now`. The transition is stamped with its deadline, as the
    /// scheduler would have stamped it.
    fn settle_agent(&mut self, agent_id: &str, now: Instant) {
        while let Some(agent) = self.agents.get(agent_id)
            && agent.is_due(now)
            && let Some(key) = agent.deadline
        {
            let id = agent.id.clone();
            self.deadlines.schedule.remove(key);
            self.agent_due(id, key.when);
        }
    }

    /// Settles every agent whose deadline is due (see
    /// [`settle_agent`](Self::settle_agent)), before a change that takes them
    /// all: a look at each, a change only for those due.
    fn settle_every_agent(&mut self, now: Instant) {
        let due: Vec<AgentId> = self
            .agents
            .values()
            .filter(|agent| agent.is_due(now))
            .map(|agent| agent.id.clone())
            .collect();
        for id in due {
            self.settle_agent(id.as_str(), now);
        }
    }

    /// Settles the agents of one page (see [`walk_page`](Self::walk_page)).
    fn settle_page(
        &mut self,
        group: Option<&str>,
        after: Option<&AgentId>,
        limit: usize,
        now: Instant,
    ) {
        let mut due = Vec::new();
        self.walk_page(group, after, limit, |agent| {
            if agent.is_due(now) {
                due.push(agent.id.clone());
            }
        });
        for id in due {
            self.settle_agent(id.as_str(), now);
        }
    }

    /// Calls `each` on the `limit` agents after `after` in id order, of
    /// `group` or of the fleet: one page of a listing or of a rollout's
    /// targets. Returns the last id read, or `None` once there are no more.
    fn walk_page<'s>(
        &'s self,
        group: Option<&str>,
        after: Option<&AgentId>,
        limit: usize,
        mut each: impl FnMut(&'s AgentEntry),
    ) -> Option<AgentId> {
        let range = (
            after.map_or(Bound::Unbounded, Bound::Excluded),
            Bound::Unbounded,
        );
        let mut read = 0;
        let mut last = None;
        match group {
            Some(group) => {
                let members = self.groups.get(group).into_iter();
                let page = members.flat_map(|members| members.range::<AgentId, _>(range));
                for id in page.take(limit) {
                    read += 1;
                    last = Some(id);
                    if let Some(agent) = self.agents.get(id) {
                        each(agent);
                    }
                }
            }
            None => {
                for id in self.by_id.range::<AgentId, _>(range).take(limit) {
                    read += 1;
                    last = Some(id);
                    if let Some(agent) = self.agents.get(id) {
                        each(agent);
                    }
                }
            }
        }
        if read < limit {
            return None;
        }
        last.cloned()
    }

    /// Applies the command's own deadline if it is due at `now`, ahead of any
    /// backlog before it: an expiry (stamped with its `expiresAt`), or the drop
    /// that ends its retention.
    fn settle_command(&mut self, id: CommandId, now: Instant) {
        while let Some(command) = self.commands.get(&id)
            && command.deadline.when <= now
        {
            let key = command.deadline;
            self.deadlines.schedule.remove(key);
            self.command_due(id, key.when);
        }
    }

    /// The earliest deadline still scheduled.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.deadlines.schedule.next_due()
    }

    /// Whether an operation added a deadline earlier than any before it; clears the flag.
    pub(crate) fn take_wake(&mut self) -> bool {
        std::mem::take(&mut self.deadlines.wake)
    }

    fn agent_due(&mut self, id: AgentId, when: Instant) {
        let Some(agent) = self.agents.get_mut(&id) else {
            return;
        };
        agent.deadline = None;
        match agent.status {
            AgentStatus::Live => {
                // A heartbeat since this deadline was scheduled left it here
                // (see `Deadlines::heartbeat`): the agent is due later.
                let stale_at = agent.last_heartbeat_at + self.settings.stale_after;
                if stale_at > when {
                    agent.deadline = Some(self.deadlines.insert(stale_at, Due::Agent(id)));
                    return;
                }
                self.journal.agent_status(agent, AgentStatus::Stale, when);
                let dead_at = when + self.settings.dead_after;
                agent.deadline = Some(self.deadlines.insert(dead_at, Due::Agent(id)));
                self.brake_saw_stale(when);
            }
            AgentStatus::Stale => {
                if self.brake.hold(&id) {
                    return;
                }
                self.journal.agent_status(agent, AgentStatus::Dead, when);
            }
            AgentStatus::Dead => return,
        }
        self.reconsider_brake(when);
    }

    fn command_due(&mut self, id: CommandId, when: Instant) {
        let Some(command) = self.commands.get_mut(&id) else {
            return;
        };
        if !command.status.is_final() {
            self.journal
                .command_status(command, CommandStatus::Expired, when);
            self.journal.announce(marks::Announcement::CommandExpired {
                id,
                agent_id: command.agent_id.clone(),
            });
            if let Some(agent) = self.agents.get_mut(&command.agent_id) {
                agent.unfinished -= 1;
            }
            let purge_at = when + self.settings.command_retention;
            command.deadline = self.deadlines.insert(purge_at, Due::Command(id));
            return;
        }
        if let Some(command) = self.commands.remove(&id) {
            self.journal.command_dropped(&command, when);
            self.bury(Entity::Command(id), command.version);
            if let Some(agent) = self.agents.get_mut(&command.agent_id) {
                agent.commands.remove(&(command.seq, id));
            }
        }
    }

    /// Registers a new agent or resumes a known one; returns its view and whether it resumed.
    pub(crate) fn register(
        &mut self,
        registration: Registration,
        now: Instant,
    ) -> Result<(AgentView, bool), RegistryError> {
        let Registration {
            agent_id,
            credential,
            metadata,
        } = registration;
        if !self.agents.contains_key(&agent_id) {
            self.check_agent_room()?;
        }
        self.settle_agent(agent_id.as_str(), now);
        self.journal.stats.registrations += 1;
        let stale_at = now + self.settings.stale_after;
        let (agent, resumed) = match self.agents.entry(agent_id.clone()) {
            Entry::Occupied(entry) => {
                let agent = entry.into_mut();
                if agent.metadata.group != metadata.group {
                    unindex(&mut self.groups, &agent.metadata.group, &agent_id);
                    index(&mut self.groups, &metadata.group, &agent_id);
                }
                let metadata_changed = *agent.metadata != metadata;
                agent.metadata = Arc::new(metadata);
                if agent.status == AgentStatus::Live {
                    if metadata_changed {
                        self.journal.agent_changed(agent);
                    }
                } else {
                    self.journal.agent_status(agent, AgentStatus::Live, now);
                }
                (agent, true)
            }
            Entry::Vacant(entry) => {
                index(&mut self.groups, &metadata.group, &agent_id);
                self.journal.stats.agents[AgentStatus::Live.index()] += 1;
                info!(agent_id = %agent_id, group = %metadata.group, "agent registered");
                self.by_id.insert(agent_id.clone());
                // An agent deleted here and not yet written away keeps its
                // version: the store still holds it.
                let version = self.replica.as_mut().map_or(0, |replica| {
                    replica.unbury(&Entity::Agent(agent_id.clone()))
                });
                let agent = entry.insert(Box::new(AgentEntry {
                    id: agent_id.clone(),
                    metadata: Arc::new(metadata),
                    status: AgentStatus::Live,
                    registered_at: now,
                    last_heartbeat_at: now,
                    status_changed_at: now,
                    deadline: None,
                    stream: None,
                    remote_stream: None,
                    replacements: None,
                    credential: None,
                    commands: BTreeSet::new(),
                    unfinished: 0,
                    version,
                    record_version: version,
                }));
                self.journal
                    .agent_event(agent, None, Some(AgentStatus::Live), now);
                (agent, false)
            }
        };
        agent.last_heartbeat_at = now;
        self.journal.dirty.agent(&agent_id);
        if let Some(old) = std::mem::replace(&mut agent.credential, credential) {
            self.credentials.remove(&old);
        }
        if let Some(new) = credential {
            self.credentials.insert(new, agent_id.clone());
        }
        self.deadlines
            .replace(&mut agent.deadline, stale_at, Due::Agent(agent_id));
        let view = agent.view(&self.journal.clock);
        self.reconsider_brake(now);
        Ok((view, resumed))
    }

    /// Records a heartbeat: the agent is LIVE and its stale deadline moves.
    pub(crate) fn heartbeat(&mut self, agent_id: &str, now: Instant) -> Result<(), RegistryError> {
        // One look-up on the hot path: settling is for an agent whose deadline is due.
        let agent = match self.agents.get_mut(agent_id) {
            None => return Err(unknown_agent(agent_id)),
            // A STALE it was due is logged and counted before the heartbeat revives it.
            Some(agent) if agent.is_due(now) => {
                self.settle_agent(agent_id, now);
                return self.heartbeat(agent_id, now);
            }
            Some(agent) => agent,
        };
        self.journal.stats.heartbeats += 1;
        agent.last_heartbeat_at = now;
        self.journal.dirty.heartbeat(&agent.id);
        let was = agent.status;
        self.journal.agent_status(agent, AgentStatus::Live, now);
        let stale_at = now + self.settings.stale_after;
        self.deadlines.heartbeat(agent, was, stale_at);
        self.reconsider_brake(now);
        Ok(())
    }

    /// The agent whose current token has this digest.
    pub(crate) fn agent_with(&self, credential: &Credential) -> Option<AgentId> {
        self.credentials.get(credential).cloned()
    }

    pub(crate) fn agent(
        &mut self,
        agent_id: &str,
        now: Instant,
    ) -> Result<AgentView, RegistryError> {
        self.settle_agent(agent_id, now);
        self.agents
            .get(agent_id)
            .map(|agent| agent.view(&self.journal.clock))
            .ok_or_else(|| unknown_agent(agent_id))
    }

    /// One page of a listing: of the `limit` agents after `after` in id order
    /// (of the fleet, or of the filter's group), the views of those that pass
    /// `filter`, appended to `views`. Returns the last id read, or `None` once
    /// there are no more. A view shares the agent's metadata.
    pub(crate) fn agents_page(
        &mut self,
        filter: &AgentFilter,
        after: Option<&AgentId>,
        limit: usize,
        now: Instant,
        views: &mut Vec<AgentView>,
    ) -> Option<AgentId> {
        let group = filter.group.as_deref();
        self.settle_page(group, after, limit, now);
        let clock = self.journal.clock;
        self.walk_page(group, after, limit, |agent| {
            if filter.status.is_none_or(|status| agent.status == status) {
                views.push(agent.view(&clock));
            }
        })
    }

    /// Deletes an agent: ends its stream and drops its commands and deadlines.
    pub(crate) fn delete(&mut self, agent_id: &str, now: Instant) -> Result<(), RegistryError> {
        let agent = self
            .agents
            .remove(agent_id)
            .ok_or_else(|| unknown_agent(agent_id))?;
        self.forget(*agent, now);
        self.reconsider_brake(now);
        Ok(())
    }

    /// Deletes every DEAD agent; returns how many.
    pub(crate) fn delete_dead(&mut self, now: Instant) -> usize {
        self.settle_every_agent(now);
        let dead: Vec<AgentId> = self
            .agents
            .values()
            .filter(|agent| agent.status == AgentStatus::Dead)
            .map(|agent| agent.id.clone())
            .collect();
        for id in &dead {
            if let Some(agent) = self.agents.remove(id) {
                self.forget(*agent, now);
            }
        }
        dead.len()
    }

    /// Deletes an agent here: marks it, and its commands, for storage.
    fn forget(&mut self, agent: AgentEntry, now: Instant) {
        self.journal.dirty.agent(&agent.id);
        self.bury(Entity::Agent(agent.id.clone()), agent.version);
        for id in agent.command_ids() {
            if let Some(command) = self.commands.get(id) {
                let version = command.version;
                self.bury(Entity::Command(*id), version);
            }
        }
        let id = agent.id.clone();
        self.drop_agent(agent, now);
        info!(agent_id = %id, "agent deleted");
    }

    /// Takes an agent out of the state and every index, ending its stream
    /// and dropping its commands: a deletion here or on another replica.
    fn drop_agent(&mut self, mut agent: AgentEntry, now: Instant) {
        self.journal.agent_deleted(&agent, now);
        self.unlink_agent(&agent);
        agent.detach_stream(DetachReason::AgentDeleted, &mut self.journal);
        self.forget_remote_stream(&mut agent);
        for id in agent.command_ids() {
            if let Some(command) = self.commands.remove(id) {
                self.deadlines.schedule.remove(command.deadline);
                self.journal.command_dropped(&command, now);
            }
        }
    }

    /// Takes an agent out of the indexes (its group, the id order, its
    /// token, its deadline, the gauge): before it leaves, or is replaced by
    /// a record read back.
    fn unlink_agent(&mut self, agent: &AgentEntry) {
        unindex(&mut self.groups, &agent.metadata.group, &agent.id);
        self.by_id.remove(&agent.id);
        if let Some(credential) = agent.credential {
            self.credentials.remove(&credential);
        }
        if let Some(key) = agent.deadline {
            self.deadlines.schedule.remove(key);
        }
        self.journal.stats.agents[agent.status.index()] -= 1;
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            scheduled_deadlines: self.deadlines.schedule.len(),
            brake_engaged: self.brake.engaged_at().is_some(),
            brake_held: self.brake.held(),
            ..self.journal.stats.clone()
        }
    }
}

fn index(
    groups: &mut HashMap<GroupName, BTreeSet<AgentId>>,
    group: &GroupName,
    agent_id: &AgentId,
) {
    groups
        .entry(group.clone())
        .or_default()
        .insert(agent_id.clone());
}

fn unindex(
    groups: &mut HashMap<GroupName, BTreeSet<AgentId>>,
    group: &GroupName,
    agent_id: &AgentId,
) {
    if let Some(members) = groups.get_mut(group) {
        members.remove(agent_id);
        if members.is_empty() {
            groups.remove(group);
        }
    }
}

fn unknown_agent(agent_id: &str) -> RegistryError {
    RegistryError::UnknownAgent(agent_id.to_owned())
}
