//! An agent's SSE stream: one event per command, a comment when idle, ended by
//! a newer stream, the agent's deletion or shutdown. The stream's drop is what
//! tells the registry the agent went away.

use std::convert::Infallible;
use std::future::ready;

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, stream};
use registry_core::CommandEvent;
use tracing::{error, instrument};

use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::state::AppState;

/// Tells nginx and other proxies not to buffer the stream.
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// `GET /api/v1/agents/{agentId}/events`. `Last-Event-ID` is accepted and
/// ignored: only commands created from now on are sent.
#[instrument(skip_all, fields(agent_id = %agent_id))]
pub(super) async fn stream(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let subscription = app.registry().open_stream(&agent_id)?;
    // A first comment lets the agent know at once that the stream is open.
    let opened = stream::once(ready(Ok::<_, Infallible>(Event::default().comment("open"))));
    let commands = subscription.filter_map(|command| ready(to_event(&command).map(Ok)));
    let keep_alive = KeepAlive::new()
        .interval(app.config().sse.keepalive)
        .text("keepalive");
    let sse = Sse::new(opened.chain(commands)).keep_alive(keep_alive);
    Ok(([(X_ACCEL_BUFFERING, HeaderValue::from_static("no"))], sse).into_response())
}

/// The SSE event of one command. Every field is free of CR, LF and NUL: the id
/// is a UUID, the type a configured token, the data compact JSON (which escapes
/// control characters).
fn to_event(command: &CommandEvent) -> Option<Event> {
    match serde_json::to_string(command) {
        Ok(data) => Some(
            Event::default()
                .id(command.command_id.to_string())
                .event(&*command.kind)
                .data(data),
        ),
        Err(err) => {
            error!(command_id = %command.command_id, %err, "command could not be serialized");
            None
        }
    }
}
