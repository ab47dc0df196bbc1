//! The fleet event stream (SPEC 11): what changes in the fleet, as SSE, for
//! dashboards, scripts and the web page. No replay: a client lists first, then
//! follows. A reader that falls `sse.fleet_queue` events behind loses its
//! stream; shutdown ends it.

use std::future::ready;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use futures_util::{StreamExt, stream};
use registry_core::FleetEvent;
use tracing::{error, instrument};

use crate::error::ApiError;
use crate::openapi::ServiceUnavailable;
use crate::sse::{self, EventFrame};
use crate::state::AppState;

/// `GET /api/v1/events`.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    operation_id = "followFleet",
    tag = "operator",
    summary = "Follow the fleet's changes (SSE)",
    description = "A Server-Sent Events stream that stays open. It starts with the comment \
        `: open`; then each change in the fleet arrives as one event. `event: agent`, data an \
        `AgentEvent`: for every lifecycle transition (`from` and `to` the statuses), a new agent \
        (`from` null), a deleted one (`to` null), and a change of an agent's metadata or of \
        `connected` (`from` = `to` = its status). `event: rollout`, data a `RolloutView`: a \
        rollout's counts whenever they change, at most one per rollout in any 500 ms, and the \
        one with `done: true` at once, once. `event: brake`: the brake engaged or released. \
        When nothing else is sent, a comment is sent at least every `sse.keepalive`. Nothing is replayed: list first, then follow. A reader \
        that falls `sse.fleet_queue` events behind loses its stream (list again, then \
        reconnect); shutting the server down ends it. Clients ignore fields and events they \
        don't know.",
    responses(
        (status = 200, description = "The stream, open until closed by either side",
            content_type = "text/event-stream", body = String,
            headers(
                ("Cache-Control" = String, description = "`no-cache`"),
                ("X-Accel-Buffering" = String, description = "`no`: proxies must not buffer the stream"),
            ),
        ),
        (status = 503, response = ServiceUnavailable),
    ),
)]
#[instrument(level = "debug", skip_all)]
pub(super) async fn stream(State(app): State<AppState>) -> Result<Response, ApiError> {
    let subscription = app.registry().fleet_events()?;
    // A first comment lets the reader know at once that it follows the fleet.
    let opened = stream::once(ready(sse::comment("open")));
    let events = stream::unfold(subscription, |mut subscription| async move {
        let event = subscription.next().await?;
        Some((event, subscription))
    })
    .filter_map(|event| ready(to_event(&event)));
    Ok(super::event_stream(
        opened.chain(events),
        app.config().sse.keepalive,
    ))
}

/// The SSE event of one fleet event: its kind as the event name, its data as
/// compact JSON (which escapes control characters), no id (nothing is replayed).
fn to_event(event: &FleetEvent) -> Option<Bytes> {
    let name = match event {
        FleetEvent::Agent(_) => "agent",
        FleetEvent::Brake(_) => "brake",
        FleetEvent::Rollout(_) => "rollout",
    };
    let mut frame = EventFrame::new(name, None, DATA_ROOM);
    let written = match event {
        FleetEvent::Agent(agent) => serde_json::to_writer(frame.data(), agent),
        FleetEvent::Brake(brake) => serde_json::to_writer(frame.data(), brake),
        FleetEvent::Rollout(rollout) => serde_json::to_writer(frame.data(), rollout),
    };
    let made = written
        .map_err(|err| err.to_string())
        .and_then(|()| frame.finish().map_err(|err| err.to_string()));
    match made {
        Ok(event) => Some(event),
        Err(err) => {
            error!(%err, "a fleet event could not be serialized");
            None
        }
    }
}

/// Room for a fleet event's data, most of which are an agent's view.
const DATA_ROOM: usize = 512;
