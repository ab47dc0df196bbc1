//! The route table of SPEC section 3, in one place, and the fallbacks that make
//! an unknown path 404 and a wrong method 405 in problem+json.
//!
//! Each route is added with `utoipa_axum`'s `routes!` from its handler's
//! `#[utoipa::path]` annotation, which gives both the route and its entry in the
//! OpenAPI document ([`crate::openapi`]), served at `GET /api/v1/openapi.json`.

mod agents;
mod events;
mod fleet;
mod operators;
mod page;
mod probes;
mod rollouts;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::http::Request;
use axum::http::{HeaderName, HeaderValue, header};
use axum::http::{Method, Uri};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use registry_core::{AgentId, CommandId, GroupName};
use serde::Deserialize;
use tower::ServiceBuilder;
use utoipa::{IntoParams, OpenApi};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::auth;
use crate::connections::{App, WrittenPastHyper};
use crate::error::ApiError;
use crate::front::{Front, FrontLayer};
use crate::metrics::ApiRoutes;
use crate::openapi::{self, ApiDoc, Document};
use crate::sse::WithKeepAlive;
use crate::state::AppState;

/// The path of an agent's routes.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct AgentPath {
    /// The agent's id.
    #[param(value_type = AgentId)]
    agent_id: String,
}

/// The path of one command of an agent.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct CommandPath {
    /// The agent's id.
    #[param(value_type = AgentId)]
    agent_id: String,
    /// The command's id.
    #[param(value_type = CommandId)]
    command_id: String,
}

/// The path of a group's routes.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct GroupPath {
    /// The group's name.
    #[param(value_type = GroupName)]
    group: String,
}

/// The whole HTTP API over `state`, with the checks in front of it. Each
/// role's routes sit behind the check of that role's token when tokens are
/// configured; the probes, the OpenAPI document and the web page are open.
pub(crate) fn router(state: AppState) -> impl App {
    let mut enrollment = OpenApiRouter::new().routes(routes!(agents::register));
    let mut agent = OpenApiRouter::new()
        .routes(routes!(agents::heartbeat))
        .routes(routes!(events::stream, events::probe))
        .routes(routes!(agents::ack));
    let mut operator = OpenApiRouter::new()
        .routes(routes!(operators::list, operators::delete_dead))
        .routes(routes!(operators::agent, operators::delete))
        .routes(routes!(operators::send_to_agent, operators::commands_of))
        .routes(routes!(operators::command))
        .routes(routes!(operators::send_to_group))
        .routes(routes!(operators::send_to_fleet))
        .routes(routes!(rollouts::list))
        .routes(routes!(rollouts::rollout))
        .routes(routes!(fleet::stream))
        .routes(routes!(probes::metrics));
    // With no token configured every check would pass: leave them out of the
    // way, and out of the document. Each role's check and its entry in the
    // document are attached together.
    if state.auth().enabled() {
        let gate = state.gate();
        openapi::require_token(enrollment.get_openapi_mut(), openapi::ENROLLMENT_TOKEN);
        enrollment = enrollment.route_layer(middleware::from_fn_with_state(
            gate.clone(),
            auth::enrollment,
        ));
        openapi::require_token(agent.get_openapi_mut(), openapi::AGENT_TOKEN);
        agent = agent.route_layer(middleware::from_fn_with_state(gate.clone(), auth::agent));
        openapi::require_token(operator.get_openapi_mut(), openapi::OPERATOR_TOKEN);
        operator = operator.route_layer(middleware::from_fn_with_state(gate, auth::operator));
    }
    let api = OpenApiRouter::new()
        .merge(enrollment)
        .merge(agent)
        .merge(operator);
    // The API's routes are timed, in front of the router.
    let timed = ApiRoutes::new(state.metrics(), api.get_openapi().paths.paths.keys());
    let front = Front::new(&state.config().server, timed);
    // The document route serves what the split below collects, itself included.
    let document = Document::default();
    let document_route: UtoipaMethodRouter<Document> = routes!(openapi::serve);
    let (router, api_doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(probes::livez))
        .routes(routes!(probes::readyz))
        .routes(routes!(page::index))
        .routes(routes!(page::script))
        .routes(routes!(page::style))
        .routes(document_route.with_state(document.clone()))
        .merge(api)
        .split_for_parts();
    document.set(api_doc, &state.config().commands.types);
    let routes = router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    // Around the router, once: a layer on the router would wrap each route,
    // and cost every request a boxed copy of the route and a boxed future.
    ServiceBuilder::new()
        .map_request(|request: Request<Incoming>| request.map(Body::new))
        // In front of everything else, tokens included (SPEC 7, 10).
        .layer(FrontLayer::new(front))
        .service(routes)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_owned())
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}

/// Tells nginx and other proxies not to buffer an event stream.
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// The answer of every event-stream route (an agent's, the fleet's):
/// `events` (each already in the wire's form, `crate::sse`) with a keepalive
/// comment whenever nothing was sent for `keepalive`, unbuffered by proxies,
/// and, since it lasts hours, written past hyper once its head is
/// (`connections::handoff`).
fn event_stream(
    events: impl futures_util::Stream<Item = Bytes> + Send + 'static,
    keepalive: std::time::Duration,
) -> Response {
    (
        Extension(WrittenPastHyper),
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (X_ACCEL_BUFFERING, HeaderValue::from_static("no")),
        ],
        Body::from_stream(WithKeepAlive::new(events, keepalive)),
    )
        .into_response()
}
