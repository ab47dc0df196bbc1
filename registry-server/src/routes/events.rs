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

use super::AgentPath;
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::openapi::{BadRequest, Forbidden, Problem, ServiceUnavailable, Unauthorized};
use crate::state::AppState;

/// Tells nginx and other proxies not to buffer the stream.
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// `GET /api/v1/agents/{agentId}/events`. `Last-Event-ID` is accepted and
/// ignored: only commands created from now on are sent.
#[utoipa::path(
    get,
    path = "/api/v1/agents/{agent_id}/events",
    operation_id = "openEventStream",
    tag = "agent",
    summary = "Open the agent's command stream (SSE)",
    description = "A Server-Sent Events stream that stays open. It starts with the comment \
        `: open`; each command then arrives as one event, `id: <commandId>`, `event: <type>`, \
        `data: <CommandEvent as JSON>` (see the `CommandEvent` schema); when nothing else is \
        sent, a comment is sent at least every `sse.keepalive`. Only commands created from now on \
        are pushed: PENDING ones are not sent again on reconnect. A new stream for the same agent \
        closes the older one; deleting the agent, or shutting the server down, ends it. An open \
        stream is not a heartbeat.",
    params(
        AgentPath,
        ("Last-Event-ID" = Option<String>, Header, nullable = false, description = "Accepted and ignored: missed events are not replayed"),
    ),
    responses(
        (status = 200, description = "The stream, open until closed by either side",
            content_type = "text/event-stream", body = String,
            headers(
                ("Cache-Control" = String, description = "`no-cache`"),
                ("X-Accel-Buffering" = String, description = "`no`: proxies must not buffer the stream"),
            ),
        ),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, description = "No agent has this id: a problem, not a stream", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = ServiceUnavailable),
    ),
    security(("agentToken" = [])),
)]
#[instrument(level = "debug", skip_all, fields(agent_id = %agent_id))]
pub(super) async fn stream(
    State(app): State<AppState>,
    ApiPath(AgentPath { agent_id }): ApiPath<AgentPath>,
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
