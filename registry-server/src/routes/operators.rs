//! The operator side (SPEC 3.2): the fleet, one agent, deletes, and commands
//! to one agent, a group, or every LIVE agent.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use registry_core::{AgentFilter, AgentStatus, AgentView, CommandRequest, CommandView, NewRollout};
use serde::{Deserialize, Serialize};
use tracing::instrument;
use utoipa::{IntoParams, ToSchema};

use super::{AgentPath, CommandPath, GroupPath};
use crate::bulk::{JsonBody, off_workers};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::openapi::{Problem, ServiceUnavailable, TooManyRequests};
use crate::state::AppState;

/// `?status=` and `?group=` of the agent list; other parameters are ignored.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only agents in this status: LIVE, STALE or DEAD, in any letter case.
    #[param(
        value_type = String,
        required = false,
        pattern = "^([Ll][Ii][Vv][Ee]|[Ss][Tt][Aa][Ll][Ee]|[Dd][Ee][Aa][Dd])$",
        example = "LIVE"
    )]
    status: Option<String>,
    /// Only agents of this group.
    #[param(value_type = String, required = false, example = "order-service-prod")]
    group: Option<String>,
}

/// `?status=DEAD&confirm=true` of the bulk delete.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct BulkDeleteQuery {
    /// `DEAD` (any letter case), and only DEAD.
    #[param(value_type = String, required = true, pattern = "^[Dd][Ee][Aa][Dd]$", example = "DEAD")]
    status: Option<String>,
    /// `true`: a bulk delete never happens by accident.
    #[param(value_type = String, required = true, pattern = "^true$", example = "true")]
    confirm: Option<String>,
}

/// The answer to a bulk delete.
#[derive(Serialize, ToSchema)]
pub(super) struct Deleted {
    /// How many DEAD agents were deleted.
    deleted: usize,
}

fn parse_status(status: &str) -> Result<AgentStatus, ApiError> {
    status
        .parse()
        .map_err(|err: registry_core::InvalidField| ApiError::BadRequest(err.to_string()))
}

/// `GET /api/v1/agents`: every agent, filtered by status and group.
#[utoipa::path(
    get,
    path = "/api/v1/agents",
    operation_id = "listAgents",
    tag = "operator",
    summary = "List agents",
    description = "Every agent, LIVE, STALE and DEAD, filtered by `status` and `group` when given (both combine).",
    params(ListQuery),
    responses(
        (status = 200, description = "The agents", body = Vec<AgentView>),
        (status = 503, response = ServiceUnavailable),
    ),
)]
#[instrument(level = "debug", skip_all)]
pub(super) async fn list(
    State(app): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<JsonBody, ApiError> {
    let filter = AgentFilter {
        status: query.status.as_deref().map(parse_status).transpose()?,
        group: query.group,
    };
    let registry = app.caught_up().await?.clone();
    off_workers(move || JsonBody::of(&registry.agents(&filter))).await
}

/// `GET /api/v1/agents/{agentId}`.
#[utoipa::path(
    get,
    path = "/api/v1/agents/{agent_id}",
    operation_id = "getAgent",
    tag = "operator",
    summary = "Get one agent",
    params(AgentPath),
    responses(
        (status = 200, description = "The agent", body = AgentView),
        (status = 404, description = "No agent has this id", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = ServiceUnavailable),
    ),
)]
#[instrument(level = "debug", skip_all, fields(agent_id = %agent_id))]
pub(super) async fn agent(
    State(app): State<AppState>,
    ApiPath(AgentPath { agent_id }): ApiPath<AgentPath>,
) -> Result<Json<AgentView>, ApiError> {
    Ok(Json(app.caught_up().await?.agent(&agent_id)?))
}

/// `DELETE /api/v1/agents/{agentId}`: 204; ends its stream and drops its commands.
#[utoipa::path(
    delete,
    path = "/api/v1/agents/{agent_id}",
    operation_id = "deleteAgent",
    tag = "operator",
    summary = "Delete an agent",
    description = "Ends its stream and drops its commands.",
    params(AgentPath),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No agent has this id", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = ServiceUnavailable),
    ),
)]
#[instrument(level = "debug", skip_all, fields(agent_id = %agent_id))]
pub(super) async fn delete(
    State(app): State<AppState>,
    ApiPath(AgentPath { agent_id }): ApiPath<AgentPath>,
) -> Result<StatusCode, ApiError> {
    app.caught_up()
        .await?
        .durably(|registry| registry.delete_agent(&agent_id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/v1/agents?status=DEAD&confirm=true`: deletes every DEAD agent.
/// Anything less explicit is refused, so that a bulk delete never happens by accident.
#[utoipa::path(
    delete,
    path = "/api/v1/agents",
    operation_id = "deleteDeadAgents",
    tag = "operator",
    summary = "Delete every DEAD agent",
    description = "Needs `status=DEAD&confirm=true`; anything else is 400, so that a bulk delete never happens by accident.",
    params(BulkDeleteQuery),
    responses(
        (status = 200, description = "How many were deleted", body = Deleted),
        (status = 503, response = ServiceUnavailable),
    ),
)]
#[instrument(level = "debug", skip_all)]
pub(super) async fn delete_dead(
    State(app): State<AppState>,
    ApiQuery(query): ApiQuery<BulkDeleteQuery>,
) -> Result<Json<Deleted>, ApiError> {
    let status = query.status.as_deref().map(parse_status).transpose()?;
    if status != Some(AgentStatus::Dead) {
        return Err(ApiError::BadRequest(
            "status: a bulk delete takes status=DEAD, and only DEAD".into(),
        ));
    }
    if query.confirm.as_deref() != Some("true") {
        return Err(ApiError::BadRequest(
            "confirm: a bulk delete needs confirm=true".into(),
        ));
    }
    let deleted = app
        .caught_up()
        .await?
        .durably(|registry| Ok(registry.delete_dead_agents()))
        .await?;
    Ok(Json(Deleted { deleted }))
}

/// `POST /api/v1/agents/{agentId}/commands`: 202 and the command.
#[utoipa::path(
    post,
    path = "/api/v1/agents/{agent_id}/commands",
    operation_id = "sendCommandToAgent",
    tag = "operator",
    summary = "Send a command to one agent",
    description = "Any status may be targeted. The command is written at once to the agent's open stream (DELIVERED), else stays PENDING until it expires.",
    params(AgentPath),
    request_body(content = CommandRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "The command", body = CommandView, links(
            ("getAgentCommand" = (
                operation_id = "getAgentCommand",
                parameters(("agent_id" = "$response.body#/agentId"), ("command_id" = "$response.body#/commandId")),
            )),
            ("acknowledgeCommand" = (
                operation_id = "acknowledgeCommand",
                parameters(("agent_id" = "$response.body#/agentId"), ("command_id" = "$response.body#/commandId")),
            )),
        )),
        (status = 404, description = "No agent has this id", body = Problem, content_type = "application/problem+json"),
        (status = 429, response = TooManyRequests),
        (status = 503, response = ServiceUnavailable),
    ),
)]
#[instrument(level = "debug", skip_all, fields(agent_id = %agent_id))]
pub(super) async fn send_to_agent(
    State(app): State<AppState>,
    ApiPath(AgentPath { agent_id }): ApiPath<AgentPath>,
    ApiJson(request): ApiJson<CommandRequest>,
) -> Result<(StatusCode, Json<CommandView>), ApiError> {
    let command = app
        .caught_up()
        .await?
        .durably(|registry| registry.send_to_agent(&agent_id, request.clone()))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(command)))
}

/// `POST /api/v1/agents/groups/{group}/commands`: one command per LIVE member.
#[utoipa::path(
    post,
    path = "/api/v1/agents/groups/{group}/commands",
    operation_id = "sendCommandToGroup",
    tag = "operator",
    summary = "Send a command to every LIVE agent of a group",
    params(GroupPath),
    request_body(content = CommandRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "A rollout: one command per LIVE agent of the group, the payload named once", body = NewRollout),
        (status = 404, description = "No agent, in any status, has this group", body = Problem, content_type = "application/problem+json"),
        (status = 429, response = TooManyRequests),
        (status = 503, response = ServiceUnavailable),
    ),
)]
#[instrument(level = "debug", skip_all, fields(group = %group))]
pub(super) async fn send_to_group(
    State(app): State<AppState>,
    ApiPath(GroupPath { group }): ApiPath<GroupPath>,
    ApiJson(request): ApiJson<CommandRequest>,
) -> Result<(StatusCode, JsonBody), ApiError> {
    let rollout = app
        .caught_up()
        .await?
        .durably_in_bulk(move |registry| registry.send_to_group(&group, request.clone()))
        .await?;
    let body = off_workers(move || JsonBody::of(&rollout)).await?;
    Ok((StatusCode::ACCEPTED, body))
}

/// `POST /api/v1/agents/commands`: one command per LIVE agent.
#[utoipa::path(
    post,
    path = "/api/v1/agents/commands",
    operation_id = "sendCommandToFleet",
    tag = "operator",
    summary = "Send a command to every LIVE agent",
    request_body(content = CommandRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "A rollout: one command per LIVE agent, the payload named once", body = NewRollout),
        (status = 429, response = TooManyRequests),
        (status = 503, response = ServiceUnavailable),
    ),
)]
#[instrument(level = "debug", skip_all)]
pub(super) async fn send_to_fleet(
    State(app): State<AppState>,
    ApiJson(request): ApiJson<CommandRequest>,
) -> Result<(StatusCode, JsonBody), ApiError> {
    let rollout = app
        .caught_up()
        .await?
        .durably_in_bulk(move |registry| registry.send_to_fleet(request.clone()))
        .await?;
    let body = off_workers(move || JsonBody::of(&rollout)).await?;
    Ok((StatusCode::ACCEPTED, body))
}

/// `GET /api/v1/agents/{agentId}/commands`: its retained commands, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/agents/{agent_id}/commands",
    operation_id = "listAgentCommands",
    tag = "operator",
    summary = "List an agent's commands",
    description = "Its commands still retained, newest first.",
    params(AgentPath),
    responses(
        (status = 200, description = "Its commands, newest first", body = Vec<CommandView>),
        (status = 404, description = "No agent has this id", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = ServiceUnavailable),
    ),
)]
#[instrument(level = "debug", skip_all, fields(agent_id = %agent_id))]
pub(super) async fn commands_of(
    State(app): State<AppState>,
    ApiPath(AgentPath { agent_id }): ApiPath<AgentPath>,
) -> Result<Json<Vec<CommandView>>, ApiError> {
    Ok(Json(app.caught_up().await?.commands_of(&agent_id)?))
}

/// `GET /api/v1/agents/{agentId}/commands/{commandId}`.
#[utoipa::path(
    get,
    path = "/api/v1/agents/{agent_id}/commands/{command_id}",
    operation_id = "getAgentCommand",
    tag = "operator",
    summary = "Get one command of an agent",
    params(CommandPath),
    responses(
        (status = 200, description = "The command", body = CommandView),
        (status = 404, description = "No such command for this agent", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = ServiceUnavailable),
    ),
)]
#[instrument(level = "debug", skip_all, fields(agent_id = %agent_id, command_id = %command_id))]
pub(super) async fn command(
    State(app): State<AppState>,
    ApiPath(CommandPath {
        agent_id,
        command_id,
    }): ApiPath<CommandPath>,
) -> Result<Json<CommandView>, ApiError> {
    Ok(Json(
        app.caught_up().await?.command(&agent_id, &command_id)?,
    ))
}
