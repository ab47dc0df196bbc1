//! Liveness, readiness and metrics.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::error::ApiError;
use crate::state::AppState;

/// `GET /livez`: 200 while the process serves HTTP, whatever else is true.
pub(super) async fn livez() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 while the registry accepts work, 503 while starting or shutting down.
pub(super) async fn readyz(State(app): State<AppState>) -> Result<&'static str, ApiError> {
    if app.is_ready() {
        Ok("ready\n")
    } else {
        Err(ApiError::NotReady)
    }
}

/// `GET /metrics`: Prometheus text format.
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
