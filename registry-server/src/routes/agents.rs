//! The agent side (SPEC 3.1): registration, heartbeat and acknowledgement.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use registry_core::{Ack, AgentId, AgentStatus, CommandView, RegistrationRequest};
use serde::Serialize;
use tracing::instrument;
use utoipa::ToSchema;

use super::{AgentPath, CommandPath};
use crate::auth;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, OptionalJson};
use crate::openapi::{Problem, ServiceUnavailable, TooManyRequests};
use crate::state::AppState;

/// The answer to a registration.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct Registered {
    /// The agent's id, as sent.
    agent_id: AgentId,
    /// Always LIVE: registering makes the agent LIVE.
    status: AgentStatus,
    /// Whether this id was registered already (200), its identity resumed.
    resumed: bool,
    /// The absolute URL of the agent's stream.
    #[schema(format = "uri")]
    sse_endpoint: String,
    /// How often the agent should heartbeat (`lifecycle.heartbeat_interval`).
    heartbeat_interval_ms: u128,
    /// How long without a heartbeat turns the agent STALE (`lifecycle.stale_after`).
    stale_after_ms: u128,
    /// How long STALE turns the agent DEAD (`lifecycle.dead_after`).
    dead_after_ms: u128,
    /// How long a command waits for its acknowledgement (`commands.expiry`).
    command_expiry_ms: u128,
    /// The longest silence on the stream before a comment is sent (`sse.keepalive`).
    keepalive_ms: u128,
    /// The standard base64 (with padding) of the server's 32-byte Ed25519
    /// public key: every command event's `signature` verifies with it (SPEC 12).
    /// Null only when `signing.enabled` is false.
    #[schema(examples("11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="))]
    server_public_key: Option<String>,
    /// The agent's own token, when tokens are in use; the former one stops working.
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_token: Option<String>,
}

/// `POST /api/v1/agents/register`: 201 for a new agent, 200 for a resumed one.
#[utoipa::path(
    post,
    path = "/api/v1/agents/register",
    operation_id = "registerAgent",
    tag = "agent",
    summary = "Register an agent, or resume its identity",
    description = "A new `agentId` answers 201; one registered already answers 200 and resumes \
        that identity: `registeredAt` is kept, the metadata replaced, the status LIVE, an open \
        stream stays open. With authentication on, the answer carries the agent's own token.",
    request_body(content = RegistrationRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "A registered agent, resumed", body = Registered, links(
            ("getAgent" = (operation_id = "getAgent", parameters(("agent_id" = "$response.body#/agentId")))),
            ("heartbeat" = (operation_id = "heartbeat", parameters(("agent_id" = "$response.body#/agentId")))),
            ("sendCommandToAgent" = (operation_id = "sendCommandToAgent", parameters(("agent_id" = "$response.body#/agentId")))),
            ("listAgentCommands" = (operation_id = "listAgentCommands", parameters(("agent_id" = "$response.body#/agentId")))),
            ("sendCommandToGroup" = (operation_id = "sendCommandToGroup", parameters(("group" = "$request.body#/group")))),
            ("deleteAgent" = (operation_id = "deleteAgent", parameters(("agent_id" = "$response.body#/agentId")))),
        )),
        (status = 201, description = "A new agent", body = Registered, links(
            ("getAgent" = (operation_id = "getAgent", parameters(("agent_id" = "$response.body#/agentId")))),
            ("heartbeat" = (operation_id = "heartbeat", parameters(("agent_id" = "$response.body#/agentId")))),
            ("sendCommandToAgent" = (operation_id = "sendCommandToAgent", parameters(("agent_id" = "$response.body#/agentId")))),
            ("listAgentCommands" = (operation_id = "listAgentCommands", parameters(("agent_id" = "$response.body#/agentId")))),
            ("sendCommandToGroup" = (operation_id = "sendCommandToGroup", parameters(("group" = "$request.body#/group")))),
            ("deleteAgent" = (operation_id = "deleteAgent", parameters(("agent_id" = "$response.body#/agentId")))),
        )),
        (status = 429, response = TooManyRequests),
        (status = 503, response = ServiceUnavailable),
    ),
)]
#[instrument(level = "debug", skip_all, fields(agent_id = %request.agent_id))]
pub(super) async fn register(
    State(app): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<RegistrationRequest>,
) -> Result<(StatusCode, Json<Registered>), ApiError> {
    let mut registration = request
        .validate()
        .map_err(registry_core::RegistryError::from)?;
    let mut agent_token = None;
    if app.auth().enabled() {
        let (token, credential) = auth::issue_agent_token()
            .map_err(|err| ApiError::Internal(format!("no randomness for a token: {err}")))?;
        registration = registration.with_credential(credential);
        agent_token = Some(token);
    }
    let (agent, resumed) = app
        .caught_up()
        .await?
        .durably(|registry| registry.register(registration.clone()))
        .await?;
    let config = app.config();
    let body = Registered {
        sse_endpoint: app.sse_endpoint(&headers, &agent.agent_id),
        agent_id: agent.agent_id,
        status: agent.status,
        resumed,
        heartbeat_interval_ms: config.lifecycle.heartbeat_interval.as_millis(),
        stale_after_ms: config.lifecycle.stale_after.as_millis(),
        dead_after_ms: config.lifecycle.dead_after.as_millis(),
        command_expiry_ms: config.commands.expiry.as_millis(),
        keepalive_ms: config.sse.keepalive.as_millis(),
        server_public_key: app.server_public_key().map(str::to_owned),
        agent_token,
    };
    let status = if resumed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(body)))
}

/// `POST /api/v1/agents/{agentId}/heartbeat`: 204; the body is ignored.
#[utoipa::path(
    post,
    path = "/api/v1/agents/{agent_id}/heartbeat",
    operation_id = "heartbeat",
    tag = "agent",
    summary = "Heartbeat: the agent is LIVE",
    description = "Sets `lastHeartbeatAt` to now and the status to LIVE, from any status. The body \
        and its content type are ignored. An agent answered 404 (or 401) registers again.",
    params(AgentPath),
    responses(
        (status = 204, description = "Heartbeat taken"),
        (status = 404, description = "No agent has this id: register again", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = ServiceUnavailable),
    ),
)]
#[instrument(level = "debug", skip_all, fields(agent_id = %agent_id))]
pub(super) async fn heartbeat(
    State(app): State<AppState>,
    ApiPath(AgentPath { agent_id }): ApiPath<AgentPath>,
) -> Result<StatusCode, ApiError> {
    // The agent's token was checked after catching up with the log (see
    // `auth::agent`), so the agent is known here if any replica knows it.
    app.registry()
        .durably(|registry| registry.heartbeat(&agent_id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/agents/{agentId}/commands/{commandId}/ack`: the acknowledged command.
#[utoipa::path(
    post,
    path = "/api/v1/agents/{agent_id}/commands/{command_id}/ack",
    operation_id = "acknowledgeCommand",
    tag = "agent",
    summary = "Acknowledge a command",
    description = "A PENDING or DELIVERED command becomes ACKNOWLEDGED with the result given \
        (SUCCESS when the body is empty). Acknowledging twice keeps the first result.",
    params(CommandPath),
    request_body(
        content = Option<Ack>,
        content_type = "application/json",
        description = "Optional: an empty body is `{\"result\": \"SUCCESS\"}`",
    ),
    responses(
        (status = 200, description = "The command, ACKNOWLEDGED", body = CommandView),
        (status = 404, description = "No such command for this agent", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The command EXPIRED before it was acknowledged", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = ServiceUnavailable),
    ),
)]
#[instrument(level = "debug", skip_all, fields(agent_id = %agent_id, command_id = %command_id))]
pub(super) async fn ack(
    State(app): State<AppState>,
    ApiPath(CommandPath {
        agent_id,
        command_id,
    }): ApiPath<CommandPath>,
    OptionalJson(ack): OptionalJson<Ack>,
) -> Result<Json<CommandView>, ApiError> {
    let command = app
        .caught_up()
        .await?
        .durably(|registry| registry.ack(&agent_id, &command_id, ack.clone()))
        .await?;
    Ok(Json(command))
}
