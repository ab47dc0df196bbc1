//! What changes in the fleet, as one broadcast every operator stream reads:
//! an [`AgentEvent`] for every transition, registration, deletion, and change
//! of an agent's metadata or connection; a rollout's view as its counts change
//! (at most one per rollout per [`ROLLOUT_EVENT_INTERVAL`], the one saying it
//! is done at once); the brake. Each reader has a bounded backlog; one that
//! falls behind loses its subscription and never slows the registry.

use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::info;

use crate::agent::{AgentId, AgentStatus, GroupName, StatusChange};
use crate::brake::BrakeChange;
use crate::clock::Timestamp;
use crate::rollout::RolloutView;

/// A rollout's counts are announced at most once in this long (SPEC 11); the
/// announcement that it is done goes out at once.
pub const ROLLOUT_EVENT_INTERVAL: Duration = Duration::from_millis(500);

/// One change in the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetEvent {
    /// The brake engaged or released (SPEC 13).
    Brake(BrakeChange),
    /// An agent appeared, changed status, connection or metadata, or was deleted.
    Agent(AgentEvent),
    /// A rollout's counts changed.
    Rollout(RolloutView),
}

/// The data of an `agent` event of the fleet stream.
///
/// `from` is null for a new agent, `to` null for a deleted one; a change of
/// `connected` or of the metadata has `from` = `to` = the agent's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct AgentEvent {
    /// The agent that changed.
    pub agent_id: AgentId,
    /// Its group (its new group, if it changed).
    pub group: GroupName,
    /// Its status before; null for a new agent.
    pub from: Option<AgentStatus>,
    /// Its status after; null for a deleted agent.
    pub to: Option<AgentStatus>,
    /// The agent's `statusChangedAt`; for a deletion, the moment it was deleted.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: Timestamp,
    /// Whether a stream is open for it after the change (an addition to the
    /// contract's fields, which clients may ignore).
    pub connected: bool,
}

/// A reader of the fleet's events from the moment it subscribed. It ends
/// (returns `None`) when the reader fell more than `fleet_queue` events behind,
/// when the state is read again from storage (the events no longer lead to
/// the registry's state), or when the registry shuts down.
pub struct FleetSubscription {
    receiver: broadcast::Receiver<FleetEvent>,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    ended: bool,
}

impl FleetSubscription {
    pub(crate) fn new(
        receiver: broadcast::Receiver<FleetEvent>,
        closed: WaitForCancellationFutureOwned,
    ) -> Self {
        Self {
            receiver,
            closed: Box::pin(closed),
            ended: false,
        }
    }

    /// The next event, or `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<FleetEvent> {
        if self.ended {
            return None;
        }
        let received = tokio::select! {
            biased;
            () = self.closed.as_mut() => None,
            received = self.receiver.recv() => Some(received),
        };
        match received {
            Some(Ok(event)) => Some(event),
            Some(Err(RecvError::Lagged(missed))) => {
                info!(missed, "a fleet stream reader fell behind; its stream ends");
                self.ended = true;
                None
            }
            Some(Err(RecvError::Closed)) | None => {
                self.ended = true;
                None
            }
        }
    }
}

/// The lifecycle transitions among the fleet's events, for subscribers that
/// follow only those.
pub struct StatusChanges {
    receiver: broadcast::Receiver<FleetEvent>,
}

impl StatusChanges {
    pub(crate) fn new(receiver: broadcast::Receiver<FleetEvent>) -> Self {
        Self { receiver }
    }

    /// Waits for the next transition.
    pub async fn recv(&mut self) -> Result<StatusChange, RecvError> {
        loop {
            if let Some(change) = transition(self.receiver.recv().await?) {
                return Ok(change);
            }
        }
    }

    /// The next transition already sent, if any.
    pub fn try_recv(&mut self) -> Result<StatusChange, TryRecvError> {
        loop {
            if let Some(change) = transition(self.receiver.try_recv()?) {
                return Ok(change);
            }
        }
    }
}

fn transition(event: FleetEvent) -> Option<StatusChange> {
    let FleetEvent::Agent(event) = event else {
        return None;
    };
    match (event.from, event.to) {
        (Some(from), Some(to)) if from != to => Some(StatusChange {
            agent_id: event.agent_id,
            from,
            to,
            at: event.at,
        }),
        _ => None,
    }
}
