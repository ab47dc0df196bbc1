//! The rules of streams: at most one per agent, the `max_streams` limit, and
//! what happens to commands a stream never wrote.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{OpenedStream, State, StreamSlot, unknown_agent};
use crate::command::{CommandId, CommandStatus};
use crate::error::RegistryError;

impl State {
    /// Opens a stream for an agent, closing the one it had open.
    pub(crate) fn open_stream(
        &mut self,
        agent_id: &str,
        streams: &CancellationToken,
    ) -> Result<OpenedStream, RegistryError> {
        if self.closing {
            return Err(RegistryError::ShuttingDown);
        }
        let limit = self.settings.max_streams;
        let open = self.journal.stats.open_streams;
        let stream_id = self.next_seq();
        let agent = self
            .agents
            .get_mut(agent_id)
            .ok_or_else(|| unknown_agent(agent_id))?;
        if agent.stream.is_none() && limit > 0 && open >= limit {
            return Err(RegistryError::TooManyStreams { limit });
        }
        let (sender, receiver) = mpsc::channel(self.settings.stream_queue.max(1));
        let closer = streams.child_token();
        let slot = StreamSlot {
            id: stream_id,
            sender,
            closer: closer.clone(),
        };
        match agent.stream.replace(slot) {
            Some(old) => {
                debug!(agent_id, "a new stream replaces the open one");
                old.closer.cancel();
            }
            None => {
                self.journal.stats.open_streams += 1;
                self.journal.agent_changed(agent);
            }
        }
        Ok(OpenedStream {
            agent_id: agent.id.clone(),
            stream_id,
            receiver,
            closer,
        })
    }

    /// Unregisters a stream whose reader went away; commands it had queued but
    /// not written go back to PENDING.
    pub(crate) fn stream_closed(
        &mut self,
        agent_id: &str,
        stream_id: u64,
        unwritten: &[CommandId],
    ) {
        if let Some(agent) = self.agents.get_mut(agent_id)
            && agent
                .stream
                .as_ref()
                .is_some_and(|slot| slot.id == stream_id)
        {
            agent.stream = None;
            self.journal.stats.open_streams -= 1;
            self.journal.agent_changed(agent);
        }
        for id in unwritten {
            if let Some(command) = self.commands.get_mut(id)
                && command.status == CommandStatus::Delivered
            {
                command.delivered_at = None;
                self.journal.command_status(command, CommandStatus::Pending);
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
