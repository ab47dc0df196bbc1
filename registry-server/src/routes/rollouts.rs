//! Rollouts (SPEC 11): the progress of a group or fleet command, one
//! rollout or all retained ones, newest first.

use axum::Json;
use axum::extract::State;
use registry_core::{RolloutId, RolloutView};
use serde::Deserialize;
use tracing::instrument;
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::openapi::{Problem, ServiceUnavailable};
use crate::state::AppState;

/// The path of one rollout.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct RolloutPath {
    /// The rollout's id, as the group or fleet command answered it.
    #[param(value_type = RolloutId)]
    rollout_id: String,
}

/// `GET /api/v1/rollouts`: every retained rollout, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/rollouts",
    operation_id = "listRollouts",
    tag = "operator",
    summary = "List rollouts",
    description = "Every retained rollout (a group or fleet command's progress), newest \
        (`createdAt`) first. A rollout is kept while any of its commands is, and at least \
        `commands.retention` after it is done.",
    responses(
        (status = 200, description = "The rollouts, newest first", body = Vec<RolloutView>),
        (status = 503, response = ServiceUnavailable),
    ),
)]
#[instrument(level = "debug", skip_all)]
pub(super) async fn list(State(app): State<AppState>) -> Result<Json<Vec<RolloutView>>, ApiError> {
    Ok(Json(app.caught_up().await?.rollouts()))
}

/// `GET /api/v1/rollouts/{rolloutId}`: its commands counted by status now.
#[utoipa::path(
    get,
    path = "/api/v1/rollouts/{rollout_id}",
    operation_id = "getRollout",
    tag = "operator",
    summary = "Get a rollout's progress",
    description = "Its commands counted by status now (`pending + delivered + acknowledged + \
        expired = targeted`, `succeeded + failed = acknowledged`); `done` once none is PENDING \
        or DELIVERED. A command dropped with its deleted agent counts as EXPIRED if it was \
        unfinished.",
    params(RolloutPath),
    responses(
        (status = 200, description = "The rollout", body = RolloutView),
        (status = 404, description = "No rollout with this id is retained (a rolloutId that is not a UUID included)", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = ServiceUnavailable),
    ),
)]
#[instrument(level = "debug", skip_all, fields(rollout_id = %rollout_id))]
pub(super) async fn rollout(
    State(app): State<AppState>,
    ApiPath(RolloutPath { rollout_id }): ApiPath<RolloutPath>,
) -> Result<Json<RolloutView>, ApiError> {
    Ok(Json(app.caught_up().await?.rollout(&rollout_id)?))
}
