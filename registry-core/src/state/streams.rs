//! The rules of streams: at most one per agent (a newer one replaces the older,
//! and repeated replacements are logged as a likely duplicate agentId), the
//! `max_streams` limit, the replay a new stream starts with, delivering each
//! new command to the open stream, and what happens to commands a stream never
//! wrote. An agent's stream is attached and detached in one place each
//! ([`AgentEntry::attach_stream`], [`AgentEntry::detach_stream`]), which keep
//! the open-streams gauge and the counts of why streams ended.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{AgentEntry, CommandEntry, Journal, State, unknown_agent};
use crate::agent::AgentId;
use crate::command::{CommandEvent, CommandId, CommandStatus};
use crate::error::RegistryError;
use crate::replication::Version;
use crate::settings::Replay;
use crate::subscription::{DetachCell, DetachReason, Replayed};

/// More replacements than this within `stale_after` mark a likely duplicate agentId.
const DUPLICATE_REPLACEMENTS: usize = 3;
/// A likely duplicate agentId is logged at most this often per agent.
const DUPLICATE_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// The stream an agent has open: where its commands go, how to end it, and
/// where to say why it was ended.
pub(super) struct StreamSlot {
    id: u64,
    /// Boxed so that the queue's slots are a pointer wide: every open stream
    /// allocates a block of them.
    sender: mpsc::Sender<Box<CommandEvent>>,
    closer: CancellationToken,
    detached: DetachCell,
    opening: Opening,
}

/// With a store shared by replicas, where a stream's opening stands in the
/// log, for the PENDING commands the log brings: in log order, one that
/// came before the opening was the older stream's to deliver, on the
/// replica that held it (which applies it before it applies the opening and
/// ends its stream), as one server delivers a command to the stream open
/// when it is created.
#[derive(Default)]
struct Opening {
    /// It replaced a stream open on another replica, without replay (a
    /// replay sends the agent's commands again, whichever stream had them).
    took_over: bool,
    /// The version of the commit that wrote the opening, once known.
    written: Option<Version>,
    /// The PENDING commands the log brought before that was known, with
    /// the versions of their entries.
    held: Vec<(CommandId, Version)>,
}

/// What the registry needs to hand a new stream to its reader.
pub(crate) struct OpenedStream {
    pub(crate) agent_id: AgentId,
    pub(crate) stream_id: u64,
    /// What the stream is sent before anything new (replay, SPEC 10).
    pub(crate) replayed: VecDeque<Replayed>,
    pub(crate) receiver: mpsc::Receiver<Box<CommandEvent>>,
    pub(crate) closer: CancellationToken,
    pub(crate) detached: DetachCell,
}

/// The last few times an agent's stream was replaced, and when it was last
/// warned about: bounded, whatever the rate of replacements.
#[derive(Default)]
pub(super) struct Replacements {
    recent: VecDeque<Instant>,
    warned_at: Option<Instant>,
}

impl Replacements {
    /// Records a replacement at `now`; warns, at most once a minute, when more
    /// than three happened within `window`.
    fn record(&mut self, agent_id: &AgentId, now: Instant, window: Duration) {
        if self.recent.len() > DUPLICATE_REPLACEMENTS {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        let within = self
            .recent
            .iter()
            .filter(|at| now.duration_since(**at) < window)
            .count();
        let quiet = self
            .warned_at
            .is_none_or(|at| now.duration_since(at) >= DUPLICATE_WARNING_INTERVAL);
        if within > DUPLICATE_REPLACEMENTS && quiet {
            self.warned_at = Some(now);
            warn!(
                agent_id = %agent_id,
                replacements = within,
                within = %humantime::format_duration(window),
                "stream replaced again and again: likely two processes share this agentId"
            );
        }
    }
}

impl AgentEntry {
    /// Attaches a new stream, detaching the one it replaces; the fleet's
    /// readers are told when the agent was not connected before.
    fn attach_stream(
        &mut self,
        slot: StreamSlot,
        now: Instant,
        stale_after: Duration,
        journal: &mut Journal,
    ) {
        let replaces = self.detach_stream(DetachReason::Replaced, journal);
        if replaces {
            debug!(agent_id = %self.id, "a new stream replaces the open one");
            self.replacements
                .get_or_insert_default()
                .record(&self.id, now, stale_after);
        }
        let was_connected = self.connected();
        self.stream = Some(slot);
        journal.stats.open_streams += 1;
        journal.dirty.stream(&self.id, true);
        if !replaces && !was_connected {
            journal.agent_changed(self);
        }
    }

    /// Takes over the open stream of `other`, the same agent in a state being
    /// replaced (a reload keeps streams open), and its recent replacements.
    pub(super) fn take_stream_from(&mut self, other: &mut AgentEntry, journal: &mut Journal) {
        self.replacements = other.replacements.take();
        if let Some(slot) = other.stream.take() {
            self.stream = Some(slot);
            journal.stats.open_streams += 1;
        }
    }

    /// Whether the stream open here delivers a PENDING command that a log
    /// entry of `version` brought (see [`Opening`]): it is held until the
    /// stream's opening is known to be written.
    pub(super) fn delivers_applied(&mut self, id: CommandId, version: Version) -> bool {
        let Some(stream) = &mut self.stream else {
            return false;
        };
        let opening = &mut stream.opening;
        if !opening.took_over {
            return true;
        }
        match opening.written {
            Some(written) => version > written,
            None => {
                opening.held.push((id, version));
                false
            }
        }
    }

    /// The opening of the stream open here was written as `version`: the
    /// commands held meanwhile that come after it in the log, to deliver.
    pub(super) fn opening_written(&mut self, version: Version) -> Vec<CommandId> {
        let Some(stream) = &mut self.stream else {
            return Vec::new();
        };
        let opening = &mut stream.opening;
        if opening.written.is_some() {
            return Vec::new();
        }
        opening.written = Some(version);
        let held = std::mem::take(&mut opening.held);
        held.into_iter()
            .filter(|(_, entry)| *entry > version)
            .map(|(id, _)| id)
            .collect()
    }

    /// Detaches the open stream, if any, telling it why and ending it; returns
    /// whether there was one. The fleet's readers are told the agent is no
    /// longer connected, unless a newer stream takes its place or the agent
    /// is being deleted (its own event says so).
    pub(super) fn detach_stream(&mut self, reason: DetachReason, journal: &mut Journal) -> bool {
        let Some(slot) = self.stream.take() else {
            return false;
        };
        // Written before the stream is ended, so that it reads why once it has.
        let _ = slot.detached.set(reason);
        slot.closer.cancel();
        journal.stats.open_streams -= 1;
        if reason != DetachReason::Replaced {
            journal.dirty.stream(&self.id, false);
        }
        match reason {
            DetachReason::Replaced => journal.stats.stream_replacements += 1,
            DetachReason::FellBehind => journal.stats.slow_streams_closed += 1,
            DetachReason::AgentDeleted | DetachReason::ReaderGone => {}
        }
        if matches!(reason, DetachReason::FellBehind | DetachReason::ReaderGone)
            && !self.connected()
        {
            journal.agent_changed(self);
        }
        true
    }
}

impl State {
    /// Opens a stream for an agent, replacing the one it had open. With replay
    /// on, the stream starts with the agent's PENDING and DELIVERED commands;
    /// `last_event_id` then names the last one its reader saw.
    pub(crate) fn open_stream(
        &mut self,
        agent_id: &str,
        last_event_id: Option<&str>,
        streams: &CancellationToken,
        now: Instant,
    ) -> Result<OpenedStream, RegistryError> {
        if self.closing {
            return Err(RegistryError::ShuttingDown);
        }
        let limit = self.settings.max_streams;
        let open = self.journal.stats.open_streams;
        let stream_id = self.next_seq();
        let agent = self
            .agents
            .get(agent_id)
            .ok_or_else(|| unknown_agent(agent_id))?;
        if agent.stream.is_none() && limit > 0 && open >= limit {
            return Err(RegistryError::TooManyStreams { limit });
        }
        let took_over = agent.remote_stream.is_some() && self.settings.replay == Replay::None;
        let agent_id = agent.id.clone();
        let replayed = match self.settings.replay {
            Replay::None => VecDeque::new(),
            Replay::Unacknowledged => {
                // A command whose expiry is due is not replayed, backlog or not.
                self.settle_commands_of(agent_id.as_str(), now);
                self.replay(&agent_id, last_event_id, stream_id, now)
            }
        };
        let (sender, receiver) = mpsc::channel(self.settings.stream_queue.max(1));
        let closer = streams.child_token();
        let detached = DetachCell::default();
        let slot = StreamSlot {
            id: stream_id,
            sender,
            closer: closer.clone(),
            detached: Arc::clone(&detached),
            opening: Opening {
                took_over,
                ..Opening::default()
            },
        };
        let stale_after = self.settings.stale_after;
        if let Some(agent) = self.agents.get_mut(&agent_id) {
            agent.attach_stream(slot, now, stale_after, &mut self.journal);
            // Opened here, it replaces one on another replica, which ends it
            // when it applies this replica's commit.
            let remote = agent.remote_stream.take();
            self.unindex_remote_stream(&agent_id, remote);
        }
        Ok(OpenedStream {
            agent_id,
            stream_id,
            replayed,
            receiver,
            closer,
            detached,
        })
    }

    /// The agent's PENDING and DELIVERED commands, in creation order, less the
    /// DELIVERED ones created up to the one `last_event_id` names (when it
    /// names one of the agent's retained commands). The PENDING ones are
    /// DELIVERED from now on; the DELIVERED ones keep their first `deliveredAt`.
    /// Held apart from the stream's queue, so that `stream_queue` never cuts it short.
    fn replay(
        &mut self,
        agent_id: &AgentId,
        last_event_id: Option<&str>,
        stream_id: u64,
        now: Instant,
    ) -> VecDeque<Replayed> {
        let Some(agent) = self.agents.get(agent_id) else {
            return VecDeque::new();
        };
        let seen_up_to = last_event_id
            .and_then(|id| id.trim().parse::<CommandId>().ok())
            .and_then(|id| self.commands.get(&id))
            .filter(|command| command.agent_id == *agent_id)
            .map(|command| (command.seq, command.id));
        let clock = self.journal.clock;
        let mut replayed = VecDeque::new();
        for key in &agent.commands {
            let id = &key.1;
            let Some(command) = self.commands.get_mut(id) else {
                continue;
            };
            let first_delivery = match command.status {
                CommandStatus::Pending => true,
                CommandStatus::Delivered if seen_up_to.is_none_or(|seen| *key > seen) => false,
                _ => continue,
            };
            if first_delivery {
                command.delivered_at = Some(now);
                self.journal
                    .command_status(command, CommandStatus::Delivered, now);
            }
            command.delivered_on = stream_id;
            replayed.push_back(Replayed {
                event: command.event(&clock),
                first_delivery,
            });
        }
        replayed
    }

    /// Detaches a stream whose reader went away; the commands it was handed
    /// and never wrote go back to PENDING.
    pub(crate) fn stream_closed(
        &mut self,
        agent_id: &str,
        stream_id: u64,
        unwritten: &[CommandId],
        now: Instant,
    ) {
        if let Some(agent) = self.agents.get_mut(agent_id)
            && agent
                .stream
                .as_ref()
                .is_some_and(|slot| slot.id == stream_id)
        {
            agent.detach_stream(DetachReason::ReaderGone, &mut self.journal);
        }
        for id in unwritten {
            // One whose expiry is due stays EXPIRED rather than go back to PENDING.
            self.settle_command(*id, now);
            // A newer stream may have been handed it again since (replay): it is that one's now.
            if let Some(command) = self.commands.get_mut(id)
                && command.status == CommandStatus::Delivered
                && command.delivered_on == stream_id
            {
                command.delivered_at = None;
                command.delivered_on = 0;
                self.journal
                    .command_status(command, CommandStatus::Pending, now);
            }
        }
    }

    /// Whether every stream is being closed: the registry is shutting down.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing
    }

    /// Ends every open stream and refuses new ones.
    pub(crate) fn close_all_streams(&mut self, streams: &CancellationToken) {
        self.closing = true;
        streams.cancel();
    }
}

/// Hands a new command to the agent's open stream, if it has one. A reader that
/// has fallen a whole queue behind loses its stream: the agent reconnects, and
/// the command stays PENDING rather than be reported DELIVERED and never written.
pub(super) fn deliver(
    agent: &mut AgentEntry,
    command: &mut CommandEntry,
    now: Instant,
    journal: &mut Journal,
) {
    let Some(stream) = &agent.stream else {
        return;
    };
    match stream
        .sender
        .try_send(Box::new(command.event(&journal.clock)))
    {
        Ok(()) => {
            command.delivered_at = Some(now);
            command.delivered_on = stream.id;
            journal.command_status(command, CommandStatus::Delivered, now);
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            warn!(agent_id = %agent.id, "stream reader fell a whole queue behind; closing its stream");
            agent.detach_stream(DetachReason::FellBehind, journal);
        }
        // The reader is gone and its guard is about to detach the stream.
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}
