//! Bulk work kept off the runtime's worker threads. The runtime has one worker
//! per core (two on a small machine): a listing of 100,000 agents serialized on
//! one, and another on the other, would leave no thread for a heartbeat or
//! `/livez` (SPEC 13). Such work (a listing, and the serializing of its
//! answer or of a group or fleet command's) runs on tokio's blocking pool
//! instead; the workers only await it. The core's own bulk work goes there
//! too (`Registry::durably_in_bulk`, its scheduler's backlog, its writer).

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::ApiError;

/// Runs `work` on the blocking pool and waits for it. A panic in `work`
/// panics the caller, as it would have run there.
pub(crate) async fn off_workers<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

/// A JSON answer already serialized, off the workers.
pub(crate) struct JsonBody(Vec<u8>);

impl JsonBody {
    /// Serializes `value`; meant to run inside [`off_workers`].
    pub(crate) fn of(value: &impl Serialize) -> Result<Self, ApiError> {
        serde_json::to_vec(value)
            .map(Self)
            .map_err(|err| ApiError::Internal(format!("the answer could not be written: {err}")))
    }
}

impl IntoResponse for JsonBody {
    fn into_response(self) -> Response {
        let mut response = self.0.into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}
