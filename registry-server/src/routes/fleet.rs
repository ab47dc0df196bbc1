//! The fleet event stream (SPEC 11): what changes in the fleet, as SSE, for
//! dashboards, scripts and the web page. No replay: a client lists first, then
//! follows. A reader that falls `sse.fleet_queue` events behind loses its
//! stream; shutdown ends it.

use std::convert::Infallible;
use std::future::ready;

use axum::extract::State;
use axum::response::Response;
use axum::response::sse::Event;
use futures_util::{StreamExt, stream};
use registry_core::FleetEvent;
use tracing::{error, instrument};

use crate::error::ApiError;
use crate::openapi::ServiceUnavailable;
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
    let opened = stream::once(ready(Ok::<_, Infallible>(Event::default().comment("open"))));
    let events = stream::unfold(subscription, |mut subscription| async move {
        let event = subscription.next().await?;
        Some((event, subscription))
    })
    .filter_map(|event| ready(to_event(&event).map(Ok)));
    Ok(super::event_stream(
        opened.chain(events),
        app.config().sse.keepalive,
    ))
}

/// The SSE event of one fleet event: its kind as the event name, its data as
/// compact JSON (which escapes control characters), no id (nothing is replayed).
fn to_event(event: &FleetEvent) -> Option<Event> {
    let (name, data) = match event {
        FleetEvent::Agent(agent) => ("agent", serde_json::to_string(agent)),
        FleetEvent::Brake(brake) => ("brake", serde_json::to_string(brake)),
        FleetEvent::Rollout(rollout) => ("rollout", serde_json::to_string(rollout)),
    };
    match data {
        Ok(data) => Some(Event::default().event(name).data(data)),
        Err(err) => {
            error!(%err, "a fleet event could not be serialized");
            None
        }
    }
}
