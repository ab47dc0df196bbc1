//! The agent side (SPEC 3.1): registration, heartbeat and acknowledgement.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use registry_core::{Ack, AgentId, AgentStatus, CommandView, RegistrationRequest};
use serde::Serialize;
use tracing::instrument;

use crate::auth;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, OptionalJson};
use crate::state::AppState;

/// The answer to a registration.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Registered {
    agent_id: AgentId,
    status: AgentStatus,
    resumed: bool,
    sse_endpoint: String,
    heartbeat_interval_ms: u128,
    stale_after_ms: u128,
    dead_after_ms: u128,
    command_expiry_ms: u128,
    keepalive_ms: u128,
    /// Null until command signing exists.
    server_public_key: Option<String>,
    /// The agent's own token, when tokens are in use; the former one stops working.
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_token: Option<String>,
}

/// `POST /api/v1/agents/register`: 201 for a new agent, 200 for a resumed one.
#[instrument(skip_all, fields(agent_id = %request.agent_id))]
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
    let (agent, resumed) = app.registry().register(registration);
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
        server_public_key: None,
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
#[instrument(skip_all, fields(agent_id = %agent_id))]
pub(super) async fn heartbeat(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    app.registry().heartbeat(&agent_id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/agents/{agentId}/commands/{commandId}/ack`: the acknowledged command.
#[instrument(skip_all, fields(agent_id = %agent_id, command_id = %command_id))]
pub(super) async fn ack(
    State(app): State<AppState>,
    ApiPath((agent_id, command_id)): ApiPath<(String, String)>,
    OptionalJson(ack): OptionalJson<Ack>,
) -> Result<Json<CommandView>, ApiError> {
    Ok(Json(app.registry().ack(&agent_id, &command_id, ack)?))
}
