//! An agent's SSE stream: `retry:` first, then one event per command (the
//! replayed ones first, with replay on), a comment when idle; ended by a newer
//! stream (told `: replaced` and a longer `retry:` first), the agent's deletion
//! or shutdown. The stream's drop is what tells the registry the agent went
//! away. `HEAD` answers without opening one.

use std::future::ready;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, stream};
use registry_core::{CommandEvent, DetachReason, Registry, Subscription};
use registry_signing::AheadSigner;
use tracing::{error, instrument};

use super::AgentPath;
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::openapi::{Problem, ServiceUnavailable};
use crate::signing;
use crate::sse::{self, EventFrame};
use crate::state::AppState;

/// The header an EventSource client sends on reconnect: the id of the last event it saw.
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// What `GET` and `HEAD` on the events path say about the stream.
const STREAM_DESCRIPTION: &str = "A Server-Sent Events stream that stays open. Its first \
    lines are `retry: N` (`sse.retry` plus a random jitter of up to as much again, in \
    milliseconds, drawn per stream, so that a fleet that lost its streams at once does not come \
    back at once) and the comment `: open`. Each command then arrives as one event, \
    `id: <commandId>`, `event: <type>`, `data: <SignedCommandEvent as JSON>` (see the \
    `SignedCommandEvent` schema): the command's members, then `signature`, the Ed25519 signature \
    of the RFC 8785 canonical form of the data without it, which verifies with the registration \
    answer's `serverPublicKey` (SPEC 12). When nothing else is sent, a comment is sent at least \
    every `sse.keepalive`. \
    With `sse.replay = \"none\"` (the default) only commands created from now on are pushed: \
    PENDING ones are not sent again on reconnect. With `sse.replay = \"unacknowledged\"` the \
    stream first sends every PENDING and DELIVERED command of the agent in creation order, less \
    the DELIVERED ones created up to the one `Last-Event-ID` names. A new stream for the same \
    agent replaces the older one, which is sent `: replaced` and `retry: N` with \
    N = `sse.replaced_retry` before it ends; deleting the agent, or shutting the server down, \
    ends it. An open stream is not a heartbeat. `HEAD` answers the same without a body, and \
    never opens or replaces a stream.";

/// `GET /api/v1/agents/{agentId}/events`: the agent's stream, replacing any it had open.
#[utoipa::path(
    get,
    path = "/api/v1/agents/{agent_id}/events",
    operation_id = "openEventStream",
    tag = "agent",
    summary = "Open the agent's command stream (SSE)",
    description = STREAM_DESCRIPTION,
    params(
        AgentPath,
        ("Last-Event-ID" = Option<String>, Header, nullable = false, description = "The id of the last event the client saw. With `sse.replay = \"unacknowledged\"`, the DELIVERED commands created up to and including that one are not sent again; an id that names none of the agent's retained commands is ignored. With `sse.replay = \"none\"` it is ignored."),
    ),
    responses(
        (status = 200, description = "The stream, open until closed by either side",
            content_type = "text/event-stream", body = String,
            headers(
                ("Cache-Control" = String, description = "`no-cache`"),
                ("X-Accel-Buffering" = String, description = "`no`: proxies must not buffer the stream"),
            ),
        ),
        (status = 404, description = "No agent has this id: a problem, not a stream", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = ServiceUnavailable),
    ),
)]
#[instrument(level = "debug", skip_all, fields(agent_id = %agent_id))]
pub(super) async fn stream(
    State(app): State<AppState>,
    ApiPath(AgentPath { agent_id }): ApiPath<AgentPath>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let last_event_id = headers
        .get(LAST_EVENT_ID)
        .and_then(|value| value.to_str().ok());
    let registry = app.caught_up().await?;
    let open = |registry: &Registry| registry.open_stream_after(&agent_id, last_event_id);
    // With replicas, the 200 waits for the opening's commit: every replica
    // then reads the agent connected, and the older stream elsewhere ends.
    let subscription = if registry.is_shared() {
        registry.durably(open).await?
    } else {
        open(registry)?
    };
    let config = &app.config().sse;
    // The first lines tell the client when to come back, and that the stream is open.
    let opened = sse::retry_then_comment(with_jitter(config.retry), "open");
    let events = AgentEvents {
        subscription,
        app: app.clone(),
        replaced: Some(sse::comment_then_retry("replaced", config.replaced_retry)),
    };
    Ok(super::event_stream(
        stream::once(ready(opened)).chain(events),
        config.keepalive,
    ))
}

/// `HEAD /api/v1/agents/{agentId}/events`: the answer `GET` would start with,
/// without opening, or replacing, any stream.
#[utoipa::path(
    head,
    path = "/api/v1/agents/{agent_id}/events",
    operation_id = "probeEventStream",
    tag = "agent",
    summary = "Check the agent's command stream without opening it",
    description = "Answers like `GET` without a body: 200 with the stream's headers for a \
        registered agent, 404 for an unknown one. It never opens or replaces a stream, so a \
        client or proxy that checks the URL does not disconnect the agent.",
    params(AgentPath),
    responses(
        (status = 200, description = "The agent's stream can be opened",
            content_type = "text/event-stream",
            headers(
                ("Cache-Control" = String, description = "`no-cache`"),
                ("X-Accel-Buffering" = String, description = "`no`: proxies must not buffer the stream"),
            ),
        ),
        (status = 404, description = "No agent has this id", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = ServiceUnavailable),
    ),
)]
#[instrument(level = "debug", skip_all, fields(agent_id = %agent_id))]
pub(super) async fn probe(
    State(app): State<AppState>,
    ApiPath(AgentPath { agent_id }): ApiPath<AgentPath>,
) -> Result<Response, ApiError> {
    app.caught_up().await?.agent(&agent_id)?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (super::X_ACCEL_BUFFERING, HeaderValue::from_static("no")),
        ],
        (),
    )
        .into_response())
}

/// `retry` plus a random jitter of up to `retry` again, drawn anew for each stream.
fn with_jitter(retry: Duration) -> Duration {
    let millis = u64::try_from(retry.as_millis()).unwrap_or(u64::MAX / 2);
    // Without randomness the stream still works; only the spread is lost.
    let jitter = getrandom::u64().unwrap_or(0) % (millis + 1);
    Duration::from_millis(millis + jitter)
}

/// The events of one agent's open stream: its commands, then, when a newer
/// stream replaced it, a last word telling the client to wait before it takes
/// the stream back (SPEC 10).
struct AgentEvents {
    subscription: Subscription,
    /// Where the signing key is: shared, not copied into every stream.
    app: AppState,
    replaced: Option<Bytes>,
}

impl futures_util::Stream for AgentEvents {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match ready!(self.subscription.poll_next_unpin(cx)) {
                Some(command) => {
                    if let Some(event) =
                        to_event(&command, self.app.signer().map(|signer| &**signer))
                    {
                        return Poll::Ready(Some(event));
                    }
                }
                None => {
                    let replaced =
                        self.subscription.detach_reason() == Some(DetachReason::Replaced);
                    let last = self.replaced.take().filter(|_| replaced);
                    return Poll::Ready(last);
                }
            }
        }
    }
}

/// The SSE event of one command, signed by `signer`, made in one buffer:
/// `id:`, `event:`, then the data serialized and signed in place. Signing
/// happens here, in the stream's own task, not under the registry's lock: a
/// fleet command's signatures are spread over the runtime's workers. Every
/// field is free of CR, LF and NUL: the id is a UUID, the type a configured
/// token, the data compact JSON (which escapes control characters) and base64.
fn to_event(command: &CommandEvent, signer: Option<&AheadSigner>) -> Option<Bytes> {
    let mut id = [0; 36];
    let id = command.command_id.encode(&mut id);
    let mut event = EventFrame::new(
        &command.kind,
        Some(id),
        signing::event_data_room(command, signer),
    );
    let made = signing::write_event_data(command, signer, event.data())
        .map_err(|err| err.to_string())
        .and_then(|()| event.finish().map_err(|err| err.to_string()));
    match made {
        Ok(event) => Some(event),
        Err(err) => {
            error!(command_id = %command.command_id, %err, "command could not be serialized");
            None
        }
    }
}
