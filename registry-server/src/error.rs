//! The one error type of the HTTP layer: every refusal, from the core or from
//! request parsing, becomes an `application/problem+json` body (RFC 9457).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use registry_core::RegistryError;
use serde::Serialize;

/// How long a client refused for lack of capacity should wait before retrying.
const RETRY_AFTER_SECONDS: &str = "5";

/// A request the server refuses, with what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The core refused the operation.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Malformed JSON, an invalid field or query parameter.
    #[error("{0}")]
    BadRequest(String),
    /// The body is over `server.max_body_bytes`.
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The body is not JSON.
    #[error("the Content-Type must be application/json")]
    UnsupportedMediaType,
    /// No route has this path.
    #[error("no route for {0}")]
    NotFound(String),
    /// The route exists but not with this method.
    #[error("{0} is not allowed on this path")]
    MethodNotAllowed(String),
    /// The registry is starting or shutting down.
    #[error("the registry is not ready")]
    NotReady,
    /// No token, or one the server does not know.
    #[error("a valid bearer token is needed")]
    Unauthorized,
    /// A valid token of another role, or of another agent.
    #[error("{0}")]
    Forbidden(String),
    /// The server could not do what it should have.
    #[error("{0}")]
    Internal(String),
    /// The request target is too long.
    #[error("the request target is longer than {0} bytes")]
    UriTooLong(usize),
    /// The request's headers are too large.
    #[error("the request headers are larger than {0} bytes")]
    HeadersTooLarge(usize),
    /// The request was not sent in time.
    #[error("the request was not received within {0:?}")]
    RequestTimeout(std::time::Duration),
}

impl ApiError {
    /// The HTTP status this error answers with.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::Registry(err) => match err {
                RegistryError::InvalidField(_) => StatusCode::BAD_REQUEST,
                RegistryError::UnknownAgent(_)
                | RegistryError::UnknownGroup(_)
                | RegistryError::UnknownCommand { .. }
                | RegistryError::UnknownRollout(_) => StatusCode::NOT_FOUND,
                RegistryError::CommandExpired(_) => StatusCode::CONFLICT,
                RegistryError::TooManyUnfinished { .. }
                | RegistryError::CommandsFull(_)
                | RegistryError::TooManyAgents { .. } => StatusCode::TOO_MANY_REQUESTS,
                RegistryError::TooManyStreams { .. }
                | RegistryError::ShuttingDown
                | RegistryError::StorageUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            },
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let retry_after = match &self {
            Self::Registry(err) => err.retry_after(),
            _ => None,
        };
        let problem = Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.to_string(),
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(after) = retry_after {
            // Whole seconds, rounded up: a client that waits that long finds room.
            let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}
