//! The operator side (SPEC 3.2): the fleet, one agent, deletes, and commands
//! to one agent, a group, or every LIVE agent.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use registry_core::{AgentFilter, AgentStatus, AgentView, CommandRequest, CommandView};
use serde::{Deserialize, Serialize};
use tracing::instrument;

use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;

/// `?status=` and `?group=` of the agent list; other parameters are ignored.
#[derive(Deserialize)]
pub(super) struct ListQuery {
    status: Option<String>,
    group: Option<String>,
}

/// `?status=DEAD&confirm=true` of the bulk delete.
#[derive(Deserialize)]
pub(super) struct BulkDeleteQuery {
    status: Option<String>,
    confirm: Option<String>,
}

/// The answer to a group or fleet command.
#[derive(Serialize)]
pub(super) struct Targeted {
    targeted: usize,
    commands: Vec<CommandView>,
}

impl From<Vec<CommandView>> for Targeted {
    fn from(commands: Vec<CommandView>) -> Self {
        Self {
            targeted: commands.len(),
            commands,
        }
    }
}

/// The answer to a bulk delete.
#[derive(Serialize)]
pub(super) struct Deleted {
    deleted: usize,
}

fn parse_status(status: &str) -> Result<AgentStatus, ApiError> {
    status
        .parse()
        .map_err(|err: registry_core::InvalidField| ApiError::BadRequest(err.to_string()))
}

/// `GET /api/v1/agents`: every agent, filtered by status and group.
#[instrument(skip_all)]
pub(super) async fn list(
    State(app): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Vec<AgentView>>, ApiError> {
    let filter = AgentFilter {
        status: query.status.as_deref().map(parse_status).transpose()?,
        group: query.group,
    };
    Ok(Json(app.registry().agents(&filter)))
}

/// `GET /api/v1/agents/{agentId}`.
#[instrument(skip_all, fields(agent_id = %agent_id))]
pub(super) async fn agent(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
) -> Result<Json<AgentView>, ApiError> {
    Ok(Json(app.registry().agent(&agent_id)?))
}

/// `DELETE /api/v1/agents/{agentId}`: 204; ends its stream and drops its commands.
#[instrument(skip_all, fields(agent_id = %agent_id))]
pub(super) async fn delete(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    app.registry().delete_agent(&agent_id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/v1/agents?status=DEAD&confirm=true`: deletes every DEAD agent.
/// Anything less explicit is refused, so that a bulk delete never happens by accident.
#[instrument(skip_all)]
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
    let deleted = app.registry().delete_dead_agents();
    Ok(Json(Deleted { deleted }))
}

/// `POST /api/v1/agents/{agentId}/commands`: 202 and the command.
#[instrument(skip_all, fields(agent_id = %agent_id))]
pub(super) async fn send_to_agent(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
    ApiJson(request): ApiJson<CommandRequest>,
) -> Result<(StatusCode, Json<CommandView>), ApiError> {
    let command = app.registry().send_to_agent(&agent_id, request)?;
    Ok((StatusCode::ACCEPTED, Json(command)))
}

/// `POST /api/v1/agents/groups/{group}/commands`: one command per LIVE member.
#[instrument(skip_all, fields(group = %group))]
pub(super) async fn send_to_group(
    State(app): State<AppState>,
    ApiPath(group): ApiPath<String>,
    ApiJson(request): ApiJson<CommandRequest>,
) -> Result<(StatusCode, Json<Targeted>), ApiError> {
    let commands = app.registry().send_to_group(&group, request)?;
    Ok((StatusCode::ACCEPTED, Json(commands.into())))
}

/// `POST /api/v1/agents/commands`: one command per LIVE agent.
#[instrument(skip_all)]
pub(super) async fn send_to_fleet(
    State(app): State<AppState>,
    ApiJson(request): ApiJson<CommandRequest>,
) -> Result<(StatusCode, Json<Targeted>), ApiError> {
    let commands = app.registry().send_to_fleet(request)?;
    Ok((StatusCode::ACCEPTED, Json(commands.into())))
}

/// `GET /api/v1/agents/{agentId}/commands`: its retained commands, newest first.
#[instrument(skip_all, fields(agent_id = %agent_id))]
pub(super) async fn commands_of(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
) -> Result<Json<Vec<CommandView>>, ApiError> {
    Ok(Json(app.registry().commands_of(&agent_id)?))
}

/// `GET /api/v1/agents/{agentId}/commands/{commandId}`.
#[instrument(skip_all, fields(agent_id = %agent_id, command_id = %command_id))]
pub(super) async fn command(
    State(app): State<AppState>,
    ApiPath((agent_id, command_id)): ApiPath<(String, String)>,
) -> Result<Json<CommandView>, ApiError> {
    Ok(Json(app.registry().command(&agent_id, &command_id)?))
}
