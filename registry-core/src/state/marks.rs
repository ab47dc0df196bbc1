//! The marks the rules leave on what they change, for storage: what changed
//! since the last batch was taken, by id (the records are built later, from
//! the state as it is then), and, with a shared engine, the streams opened
//! and closed here and the transitions to announce once the commit that
//! writes them wins.
//!
//! Taking the marks is a swap, whatever their number (a million expiries
//! leave a million).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tracing::info;

use super::{HashMap, HashSet, Journal};
use crate::agent::{AgentId, AgentStatus};
use crate::command::CommandId;
use crate::fleet::AgentEvent;
use crate::replication::Entity;
use crate::rollout::RolloutId;

/// What changed since the last batch was taken, by id.
#[derive(Default, Clone)]
pub(crate) struct Dirty {
    /// Off with the `memory` engine: nothing is marked, nothing is built.
    recording: bool,
    /// With a shared engine: streams are marked, and transitions are
    /// announced by the writer once written (see [`Announcement`]).
    shared: bool,
    agents: HashSet<AgentId>,
    /// Agents whose heartbeat time alone moved.
    heartbeats: HashSet<AgentId>,
    /// A B-tree: a million expiries mark a million commands, and a hash set
    /// that size, growing, would move them all in one hold of the lock.
    commands: BTreeSet<CommandId>,
    /// With a shared engine, commands whose delivery alone changed them
    /// (written as a small mark beside the record, [`Change::Delivered`]);
    /// the other engines mark them among `commands`.
    ///
    /// [`Change::Delivered`]: crate::storage::Change::Delivered
    deliveries: BTreeSet<CommandId>,
    rollouts: HashSet<RolloutId>,
    /// New rollouts, whose payload is written (once).
    payloads: HashSet<RolloutId>,
    meta: MetaChanges,
    /// Streams opened (`true`) or closed here, the last word per agent.
    streams: HashMap<AgentId, bool>,
    /// Transitions to announce once their records are written.
    announcements: Vec<Announcement>,
}

/// Named values set (`Some`) or removed (`None`) since the last batch.
pub(crate) type MetaChanges = BTreeMap<String, Option<Vec<u8>>>;

/// A transition announced (logged at info, counted) by the replica whose
/// commit wrote it, when replicas share the store: a deadline that came due
/// on every replica is announced once.
#[derive(Debug, Clone)]
pub(crate) enum Announcement {
    Agent {
        id: AgentId,
        from: AgentStatus,
        to: AgentStatus,
        /// Its fleet event, sent once the commit wrote the transition or
        /// found it written (none when no one read the fleet's events).
        event: Option<AgentEvent>,
    },
    CommandExpired {
        id: CommandId,
        agent_id: AgentId,
    },
    /// An agent deleted here: not a transition (neither logged again nor
    /// counted), only its fleet event, which must not overtake the agent's
    /// transitions still waiting for their commit, nor show if it loses.
    Deleted {
        id: AgentId,
        /// Its status when deleted: what the fleet's readers last read.
        from: AgentStatus,
        event: Option<AgentEvent>,
    },
}

impl Announcement {
    /// The entity whose record carries the transition.
    pub(crate) fn entity(&self) -> Entity {
        match self {
            Self::Agent { id, .. } | Self::Deleted { id, .. } => Entity::Agent(id.clone()),
            Self::CommandExpired { id, .. } => Entity::Command(*id),
        }
    }

    /// The agent's fleet event it carries, if any.
    pub(crate) fn agent_event(&self) -> Option<&AgentEvent> {
        match self {
            Self::Agent { event, .. } | Self::Deleted { event, .. } => event.as_ref(),
            Self::CommandExpired { .. } => None,
        }
    }
}

impl Journal {
    /// Logs and counts a transition: at once, or, with a shared engine, kept
    /// beside the marks for the writer to announce once it is written (and
    /// never while another replica's changes are applied).
    pub(super) fn announce(&mut self, announcement: Announcement) {
        if self.dirty.shared {
            if self.dirty.recording {
                self.dirty.announcements.push(announcement);
            }
            return;
        }
        self.announce_now(announcement);
    }

    /// Logs and counts a transition now.
    pub(super) fn announce_now(&mut self, announcement: Announcement) {
        match announcement {
            Announcement::Agent {
                id,
                from,
                to,
                event,
            } => {
                self.stats.transitions[from.index()][to.index()] += 1;
                info!(agent_id = %id, %from, %to, "agent status changed");
                if let Some(event) = event {
                    self.send_agent_event(event);
                }
            }
            Announcement::CommandExpired { id, agent_id } => {
                self.stats.commands_expired += 1;
                if self.dirty.shared {
                    info!(command_id = %id, %agent_id, "command expired");
                } else {
                    tracing::debug!(command_id = %id, %agent_id, "command expired");
                }
            }
            Announcement::Deleted { event, .. } => {
                if let Some(event) = event {
                    self.send_agent_event(event);
                }
            }
        }
    }
}

impl Dirty {
    pub(super) fn new(recording: bool, shared: bool) -> Self {
        Self {
            recording,
            shared,
            ..Self::default()
        }
    }

    /// Whether transitions wait for their commit to be announced: with a
    /// shared engine, for the rules' own changes.
    pub(super) fn defers_announcements(&self) -> bool {
        self.shared && self.recording
    }

    /// Whether marks are kept (not with the `memory` engine, nor while
    /// another replica's changes are applied).
    pub(super) fn is_recording(&self) -> bool {
        self.recording
    }

    /// Marks nothing and announces nothing: what applying another replica's
    /// changes works with, since an applied change is never written back and
    /// the replica that wrote it announced it.
    pub(super) fn ignoring() -> Self {
        Self {
            recording: false,
            shared: true,
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

    /// A PENDING command delivered: with a shared engine, a change of its
    /// record that its delivery mark carries (unless it is marked whole too).
    pub(super) fn delivery(&mut self, id: CommandId) {
        if self.recording {
            if self.shared {
                self.deliveries.insert(id);
            } else {
                self.commands.insert(id);
            }
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

    pub(super) fn meta(&mut self, key: &str, value: Option<Vec<u8>>) {
        if self.recording {
            self.meta.insert(key.to_owned(), value);
        }
    }

    /// The agent's stream opened (`true`) or closed here: kept only by a
    /// shared engine, where one stream per agent holds across replicas.
    pub(super) fn stream(&mut self, id: &AgentId, open: bool) {
        if self.recording && self.shared {
            self.streams.insert(id.clone(), open);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.agents.is_empty()
            && self.heartbeats.is_empty()
            && self.commands.is_empty()
            && self.deliveries.is_empty()
            && self.rollouts.is_empty()
            && self.payloads.is_empty()
            && self.meta.is_empty()
            && self.streams.is_empty()
    }

    /// An empty set of marks, recording as this one does.
    pub(super) fn empty_like(&self) -> Self {
        Self::new(self.recording, self.shared)
    }

    /// The marks so far, leaving none: a swap.
    pub(super) fn take(&mut self) -> Self {
        let empty = self.empty_like();
        std::mem::replace(self, empty)
    }

    /// Whether the record of `entity` is marked: a change of it not written
    /// yet. A heartbeat time or a stream alone is not a change of the record.
    pub(crate) fn has_record(&self, entity: &Entity) -> bool {
        match entity {
            Entity::Agent(id) => self.agents.contains(id),
            Entity::Command(id) => self.commands.contains(id) || self.deliveries.contains(id),
            Entity::Rollout(id) => self.rollouts.contains(id) || self.payloads.contains(id),
            Entity::Meta(key) => self.meta.contains_key(key),
        }
    }

    /// Whether the agent's heartbeat time alone is marked.
    pub(crate) fn has_heartbeat(&self, id: &AgentId) -> bool {
        self.heartbeats.contains(id)
    }

    /// The entities whose records are marked (named values aside).
    pub(crate) fn records(&self) -> impl Iterator<Item = Entity> + '_ {
        let agents = self.agents.iter().cloned().map(Entity::Agent);
        let commands = self.commands.iter().chain(&self.deliveries);
        let commands = commands.copied().map(Entity::Command);
        let rollouts = self.rollouts.iter().chain(&self.payloads).copied();
        agents.chain(commands).chain(rollouts.map(Entity::Rollout))
    }

    /// The agents whose heartbeat time alone is marked.
    pub(crate) fn heartbeats(&self) -> impl Iterator<Item = &AgentId> {
        self.heartbeats.iter()
    }

    /// The transitions to announce once these marks are written.
    pub(crate) fn announcements(&self) -> &[Announcement] {
        &self.announcements
    }

    /// Drops the marks of the record of `entity`: the store's truth replaced it.
    pub(super) fn unmark(&mut self, entity: &Entity) {
        match entity {
            Entity::Agent(id) => {
                self.agents.remove(id);
            }
            Entity::Command(id) => {
                self.commands.remove(id);
                self.deliveries.remove(id);
            }
            Entity::Rollout(id) => {
                self.rollouts.remove(id);
                self.payloads.remove(id);
            }
            Entity::Meta(key) => {
                self.meta.remove(key);
            }
        }
        self.announcements
            .retain(|announcement| announcement.entity() != *entity);
    }

    /// The marks of several batches as one list, each thing once, in the
    /// order records are built; the named values apart, later ones winning.
    /// The records of `lost` are left out (the store's truth replaced them
    /// here). Runs outside the lock.
    pub(crate) fn merge(
        batches: Vec<Arc<Dirty>>,
        lost: &HashSet<Entity>,
    ) -> (Vec<Mark>, MetaChanges) {
        let mut all = Self::default();
        for batch in batches {
            // The writer's is the only handle but with a shared engine, which
            // keeps one for the batches in flight.
            let batch = Arc::try_unwrap(batch).unwrap_or_else(|shared| (*shared).clone());
            all.agents.extend(batch.agents);
            all.heartbeats.extend(batch.heartbeats);
            all.commands.extend(batch.commands);
            all.deliveries.extend(batch.deliveries);
            all.rollouts.extend(batch.rollouts);
            all.payloads.extend(batch.payloads);
            all.meta.extend(batch.meta);
            all.streams.extend(batch.streams);
        }
        if !lost.is_empty() {
            all.agents
                .retain(|id| !lost.contains(&Entity::Agent(id.clone())));
            all.commands
                .retain(|id| !lost.contains(&Entity::Command(*id)));
            all.deliveries
                .retain(|id| !lost.contains(&Entity::Command(*id)));
            all.rollouts
                .retain(|id| !lost.contains(&Entity::Rollout(*id)));
            all.payloads
                .retain(|id| !lost.contains(&Entity::Rollout(*id)));
        }
        // An agent's record written carries its heartbeat, and a command's
        // record its delivery: neither is written apart too.
        all.heartbeats.retain(|id| !all.agents.contains(id));
        all.deliveries.retain(|id| !all.commands.contains(id));
        let marks = all
            .heartbeats
            .into_iter()
            .map(Mark::Heartbeat)
            .chain(all.agents.into_iter().map(Mark::Agent))
            .chain(all.commands.into_iter().map(Mark::Command))
            .chain(all.deliveries.into_iter().map(Mark::Delivered))
            .chain(all.payloads.into_iter().map(Mark::Payload))
            .chain(all.rollouts.into_iter().map(Mark::Rollout))
            .chain(
                all.streams
                    .into_iter()
                    .map(|(id, open)| Mark::Stream(id, open)),
            )
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
    /// A command whose delivery alone changed it (a shared engine's).
    Delivered(CommandId),
    /// A new rollout's payload.
    Payload(RolloutId),
    Rollout(RolloutId),
    /// An agent's stream opened or closed here (a shared engine's).
    Stream(AgentId, bool),
}
