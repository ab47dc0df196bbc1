//! The delivery channel an agent's stream reads from: a bounded queue per agent,
//! closed when a newer stream replaces it, the agent is deleted, or the server
//! shuts down. Dropping it is how the registry learns the reader went away.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::agent::AgentId;
use crate::command::{CommandEvent, CommandId};
use crate::registry::Registry;
use crate::state::OpenedStream;

/// The commands written to one agent's open stream, in order.
///
/// Ends when the registry closes the stream. When dropped, for whatever reason,
/// it unregisters the stream, and commands still queued go back to PENDING.
pub struct Subscription {
    agent_id: AgentId,
    stream_id: u64,
    receiver: mpsc::Receiver<Box<CommandEvent>>,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    ended: bool,
    registry: Registry,
}

impl Subscription {
    pub(crate) fn new(opened: OpenedStream, registry: Registry) -> Self {
        Self {
            agent_id: opened.agent_id,
            stream_id: opened.stream_id,
            receiver: opened.receiver,
            closed: Box::pin(opened.closer.cancelled_owned()),
            ended: false,
            registry,
        }
    }

    /// The agent this stream belongs to.
    pub fn agent_id(&self) -> &AgentId {
        &self.agent_id
    }
}

impl Stream for Subscription {
    type Item = CommandEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<CommandEvent>> {
        if self.ended || self.closed.as_mut().poll(cx).is_ready() {
            self.ended = true;
            return Poll::Ready(None);
        }
        self.receiver
            .poll_recv(cx)
            .map(|event| event.map(|event| *event))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.receiver.close();
        let mut unwritten: Vec<CommandId> = Vec::new();
        while let Ok(event) = self.receiver.try_recv() {
            unwritten.push(event.command_id);
        }
        self.registry
            .stream_closed(self.agent_id.as_str(), self.stream_id, &unwritten);
    }
}
