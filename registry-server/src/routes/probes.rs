//! Liveness, readiness and metrics.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::error::ApiError;
use crate::openapi::ServiceUnavailable;
use crate::state::AppState;

/// `GET /livez`: 200 while the process serves HTTP, whatever else is true.
#[utoipa::path(
    get,
    path = "/livez",
    operation_id = "livez",
    tag = "probes",
    summary = "Liveness",
    responses((status = 200, description = "The process serves HTTP", body = String, content_type = "text/plain", example = "ok\n")),
)]
pub(super) async fn livez() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 while the registry accepts work, 503 while starting,
/// shutting down, or while its storage can't be written (Redis unreachable).
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "probes",
    summary = "Readiness",
    responses(
        (status = 200, description = "The registry accepts work", body = String, content_type = "text/plain", example = "ready\n"),
        (status = 503, response = ServiceUnavailable),
    ),
)]
pub(super) async fn readyz(State(app): State<AppState>) -> Result<&'static str, ApiError> {
    if app.is_ready() {
        Ok("ready\n")
    } else {
        Err(ApiError::NotReady)
    }
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operator",
    summary = "Metrics, in Prometheus text format",
    description = "Agents by status, open streams, commands by status, transitions, heartbeats, \
        request latencies by route.",
    responses(
        (status = 200, description = "Every metric", body = String, content_type = "application/openmetrics-text"),
    ),
)]
pub(super) async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    match app.metrics().render() {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            "metrics could not be encoded\n".to_owned(),
        ),
    }
}
