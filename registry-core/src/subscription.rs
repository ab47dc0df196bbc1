//! What one agent's open stream reads: the commands replayed to it when it
//! opened, then a bounded queue of new ones, until the registry detaches it (a
//! newer stream replaced it, the agent was deleted, its reader fell behind) or
//! the server shuts down. Dropping it is how the registry learns the reader went away.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::agent::AgentId;
use crate::command::{CommandEvent, CommandId};
use crate::registry::Registry;
use crate::state::OpenedStream;

/// Why the registry detached a stream from its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetachReason {
    /// A newer stream for the same agent took its place.
    Replaced,
    /// The agent was deleted.
    AgentDeleted,
    /// Its reader fell a whole `stream_queue` behind.
    FellBehind,
    /// Its reader went away.
    ReaderGone,
}

/// Where the registry writes why it detached a stream, for the stream to read once it ended.
pub(crate) type DetachCell = Arc<OnceLock<DetachReason>>;

/// A command replayed to a new stream, and whether this stream is the first to
/// deliver it (else it was DELIVERED before, and stays so whatever happens here).
#[derive(Debug)]
pub(crate) struct Replayed {
    pub(crate) event: CommandEvent,
    pub(crate) first_delivery: bool,
}

/// The commands written to one agent's open stream, in order: the replayed
/// ones first, then the new ones.
///
/// Ends when the registry detaches the stream ([`detach_reason`](Self::detach_reason)
/// then says why) or shuts down. When dropped, for whatever reason, it
/// detaches the stream, and commands this stream delivered but never yielded
/// go back to PENDING.
pub struct Subscription {
    agent_id: AgentId,
    stream_id: u64,
    replayed: VecDeque<Replayed>,
    receiver: mpsc::Receiver<Box<CommandEvent>>,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    detached: DetachCell,
    ended: bool,
    registry: Registry,
}

impl Subscription {
    pub(crate) fn new(opened: OpenedStream, registry: Registry) -> Self {
        Self {
            agent_id: opened.agent_id,
            stream_id: opened.stream_id,
            replayed: opened.replayed,
            receiver: opened.receiver,
            closed: Box::pin(opened.closer.cancelled_owned()),
            detached: opened.detached,
            ended: false,
            registry,
        }
    }

    /// The agent this stream belongs to.
    pub fn agent_id(&self) -> &AgentId {
        &self.agent_id
    }

    /// Why the registry detached this stream; `None` while it is attached, and
    /// when it ended because the server shuts down.
    pub fn detach_reason(&self) -> Option<DetachReason> {
        self.detached.get().copied()
    }
}

impl Stream for Subscription {
    type Item = CommandEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<CommandEvent>> {
        if self.ended || self.closed.as_mut().poll(cx).is_ready() {
            self.ended = true;
            return Poll::Ready(None);
        }
        if let Some(replayed) = self.replayed.pop_front() {
            return Poll::Ready(Some(replayed.event));
        }
        self.receiver
            .poll_recv(cx)
            .map(|event| event.map(|event| *event))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.receiver.close();
        let mut unwritten: Vec<CommandId> = self
            .replayed
            .iter()
            .filter(|replayed| replayed.first_delivery)
            .map(|replayed| replayed.event.command_id)
            .collect();
        while let Ok(event) = self.receiver.try_recv() {
            unwritten.push(event.command_id);
        }
        self.registry
            .stream_closed(self.agent_id.as_str(), self.stream_id, &unwritten);
    }
}
