//! The route table of SPEC section 3, in one place, and the fallbacks that make
//! an unknown path 404 and a wrong method 405 in problem+json.

mod agents;
mod events;
mod operators;
mod probes;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::middleware;
use axum::routing::{get, post};

use crate::auth;
use crate::error::ApiError;
use crate::limits;
use crate::metrics::track_requests;
use crate::state::AppState;

/// The whole HTTP API over `state`. Each role's routes sit behind the check of
/// that role's token (a no-op while no token is configured).
pub fn router(state: AppState) -> Router {
    let max_body_bytes = state.config().server.max_body_bytes;
    let enrollment = Router::new()
        .route("/api/v1/agents/register", post(agents::register))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::enrollment,
        ));
    let agent = Router::new()
        .route(
            "/api/v1/agents/{agent_id}/heartbeat",
            post(agents::heartbeat),
        )
        .route("/api/v1/agents/{agent_id}/events", get(events::stream))
        .route(
            "/api/v1/agents/{agent_id}/commands/{command_id}/ack",
            post(agents::ack),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::agent));
    let operator = Router::new()
        .route(
            "/api/v1/agents",
            get(operators::list).delete(operators::delete_dead),
        )
        .route(
            "/api/v1/agents/{agent_id}",
            get(operators::agent).delete(operators::delete),
        )
        .route(
            "/api/v1/agents/{agent_id}/commands",
            post(operators::send_to_agent).get(operators::commands_of),
        )
        .route(
            "/api/v1/agents/{agent_id}/commands/{command_id}",
            get(operators::command),
        )
        .route(
            "/api/v1/agents/groups/{group}/commands",
            post(operators::send_to_group),
        )
        .route("/api/v1/agents/commands", post(operators::send_to_fleet))
        .route("/metrics", get(probes::metrics))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::operator,
        ));
    let api = Router::new()
        .merge(enrollment)
        .merge(agent)
        .merge(operator)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            track_requests,
        ));
    Router::new()
        .route("/livez", get(probes::livez))
        .route("/readyz", get(probes::readyz))
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(limits::check_head_size))
        .with_state(state)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_owned())
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}
