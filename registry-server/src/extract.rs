//! Extractors whose rejections are [`ApiError`]s, so that bad input gets the same
//! problem+json shape as every other error, with the field at fault named.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::{header, request::Parts};
use http_body_util::{BodyExt, Collected, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON body: `Content-Type: application/json` (415 otherwise), at most
/// `server.max_body_bytes` (413), well-formed and of the right shape (400,
/// naming the field).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        if !is_json(&request) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let body = body_bytes(request, state).await?;
        parse_json(&body).map(Self)
    }
}

/// A JSON body that may be left out: an empty body is `T::default()`; a body
/// that is there follows the rules of [`ApiJson`].
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let json = is_json(&request);
        let body = body_bytes(request, state).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(T::default()));
        }
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        parse_json(&body).map(Self)
    }
}

/// Path parameters, with a 400 when they can't be decoded.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| Self(value))
            .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
    }
}

/// Query parameters, with a 400 when they can't be decoded. Unknown ones are ignored.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned> FromRequestParts<AppState> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| Self(value))
            .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
    }
}

/// Whether the request says its body is JSON (`application/json` or `application/*+json`).
fn is_json(request: &Request) -> bool {
    let Some(content_type) = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Reads the whole body, within `server.max_body_bytes` and `server.request_timeout`.
/// The limit is applied here, where bodies are read, rather than by a layer that
/// would put it in every request's extensions, heartbeats' included.
async fn body_bytes(request: Request, state: &AppState) -> Result<Bytes, ApiError> {
    let server = &state.config().server;
    let limited = Limited::new(request.into_body(), server.max_body_bytes);
    tokio::time::timeout(server.request_timeout, limited.collect())
        .await
        .map_err(|_| ApiError::RequestTimeout(server.request_timeout))?
        .map(Collected::to_bytes)
        .map_err(|err| {
            if err.is::<LengthLimitError>() {
                ApiError::PayloadTooLarge {
                    limit: server.max_body_bytes,
                }
            } else {
                ApiError::BadRequest(format!("Failed to buffer the request body: {err}"))
            }
        })
}

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // Every body of the API is an object; serde would also read an array by position.
    let first = body.iter().find(|byte| !byte.is_ascii_whitespace());
    if first.is_some_and(|byte| *byte != b'{')
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
    {
        return Err(ApiError::BadRequest(
            "invalid body: expected a JSON object".into(),
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        json_error(&path, &err.into_inner())
    })?;
    deserializer.end().map_err(|err| json_error(".", &err))?;
    Ok(value)
}

/// Describes a JSON error; `path` is where in the document it is (`.` for the root).
fn json_error(path: &str, err: &serde_json::Error) -> ApiError {
    let malformed = err.is_syntax() || err.is_eof() || err.is_io();
    let detail = match (malformed, path) {
        (true, ".") => format!("malformed JSON: {err}"),
        (true, path) => format!("malformed JSON at {path}: {err}"),
        (false, ".") => format!("invalid body: {err}"),
        (false, path) => format!("{path}: {err}"),
    };
    ApiError::BadRequest(detail)
}
