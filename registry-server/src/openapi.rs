//! The OpenAPI 3.1 document of the HTTP API, served open (no token, like the
//! probes) at `GET /api/v1/openapi.json`.
//!
//! The paths come from the `#[utoipa::path]` annotations of the handlers in
//! `routes`, collected by the same `utoipa_axum` router that routes requests to
//! them: a route can't be served undocumented, nor documented and not served.
//! This module holds what the handlers share: the document's header, the
//! [`Problem`] schema of every error, the reusable error responses, the bearer
//! scheme of each role, and the responses that follow from the checks every
//! request of a kind passes rather than from its handler. A handler's
//! annotation lists only what its own code answers (its success, its 404 or
//! 409, a cap's 429, 503); the rest is added here, each by its rule, once
//! the router is built:
//!
//! - every operation lists 400, 413, 414 and 431, which the checks in front
//!   of the router (`front`: the Host, a declared body too large, the head's
//!   size) answer on every route;
//! - every operation that reads a body lists 408, 413 and 415 (`extract`);
//! - the operations of a role whose token is checked need that role's bearer
//!   token and list 401 and 403, said where the check is attached
//!   ([`require_token`]); an open server (no token configured) attaches no
//!   check, so its document asks for no token, as the server does;
//! - every operation the cross-site rule guards lists 403, tokens or not;
//! - the `type` of a command request is one of `commands.types`.

use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use utoipa::openapi::request_body::RequestBody;
use utoipa::openapi::schema::{SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{OpenApi, PathItem, RefOr, Required, Schema};
use utoipa::{Modify, ToResponse, ToSchema};

use crate::error::ApiError;

/// Where the document is served.
pub const PATH: &str = "/api/v1/openapi.json";

/// The bearer scheme of operators: every operator route and `/metrics`.
pub const OPERATOR_TOKEN: &str = "operatorToken";
/// The bearer scheme of enrollment: registration only.
pub const ENROLLMENT_TOKEN: &str = "enrollmentToken";
/// The bearer scheme of one agent, issued at its registration: its heartbeat,
/// stream and acknowledgements only.
pub const AGENT_TOKEN: &str = "agentToken";

/// The document's header, shared components and tags; the paths are added by
/// the router from the handlers' annotations.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Agent registry",
        description = "Agents register, heartbeat and hold one SSE stream on which they receive \
            commands; operators list agents and push commands to one agent, a group, or every \
            LIVE agent. Every error is `application/problem+json` (RFC 9457). Timestamps are \
            RFC 3339 UTC with millisecond precision. Unknown request fields are ignored.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    components(
        schemas(
            Problem,
            registry_core::CommandEvent,
            SignedCommandEvent,
            registry_core::AgentEvent,
            registry_core::RolloutView
        ),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            RequestTimeout,
            PayloadTooLarge,
            UriTooLong,
            UnsupportedMediaType,
            HeadersTooLarge,
            TooManyRequests,
            ServiceUnavailable
        ),
    ),
    modifiers(&BearerSchemes),
    tags(
        (name = "agent", description = "What agents call (SPEC 3.1): registration, heartbeat, \
            their stream, acknowledgements."),
        (name = "operator", description = "What operators call (SPEC 3.2 and `/metrics`)."),
        (name = "probes", description = "Liveness, readiness and this document: open, no token."),
        (name = "page", description = "The web page and its assets, embedded in the server: open, \
            no token (the page asks for an operator token and sends it itself)."),
    )
)]
pub struct ApiDoc;

/// An RFC 9457 problem document: the body of every error.
#[derive(ToSchema)]
#[schema(examples(json!({
    "type": "about:blank",
    "title": "Not Found",
    "status": 404,
    "detail": "agent 'x' is not registered"
})))]
pub struct Problem {
    /// Always `about:blank`: the status says what kind of problem it is.
    #[schema(rename = "type")]
    pub kind: String,
    /// The status's reason phrase.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What was wrong, naming the field at fault when there is one.
    pub detail: String,
}

/// The `data` of a command event as an agent's stream carries it (SPEC 3.1
/// and 12): the command's members, then `signature`. Only the document uses
/// this type: the stream appends the signature to the canonical text it signed.
#[derive(serde::Serialize, ToSchema)]
pub struct SignedCommandEvent {
    /// The command.
    #[serde(flatten)]
    pub event: registry_core::CommandEvent,
    /// The last member: the standard base64 (with padding) of the Ed25519
    /// signature of the UTF-8 bytes of the RFC 8785 canonical form of this
    /// object without `signature`. It verifies with the registration answer's
    /// `serverPublicKey`. Absent only when the server runs with
    /// `signing.enabled = false`.
    #[schema(examples(
        "3KTl+DLlVdjHQ8m9o4cy3jYziCOvnmNwa6PURg29TBhAoLs7UU/GSjRxnz49tU1dRRi57ePsmy37WsYU2kSHAw=="
    ))]
    pub signature: String,
}

/// Malformed JSON, an invalid field or parameter (named in `detail`), or a path that does not decode.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct BadRequest(pub Problem);

/// No bearer token, or one the server does not know.
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    headers(("WWW-Authenticate" = String, description = "`Bearer`"))
)]
pub struct Unauthorized(pub Problem);

/// A cross-site request (SPEC 10): its `Origin` is neither the server's own nor one of
/// `server.cors_origins`, or its `Sec-Fetch-Site` is `cross-site` or `same-site`; refused
/// before it has any effect, with or without tokens. With tokens configured, also a valid
/// token of another role, or of another agent.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct Forbidden(pub Problem);

/// The body was not received within `server.request_timeout`.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct RequestTimeout(pub Problem);

/// The body is larger than `server.max_body_bytes`.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct PayloadTooLarge(pub Problem);

/// The request target is longer than 8 KiB.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct UriTooLong(pub Problem);

/// The body's `Content-Type` is not `application/json` (nor `application/*+json`).
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct UnsupportedMediaType(pub Problem);

/// The request's headers are larger than 16 KiB.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct HeadersTooLarge(pub Problem);

/// Not now: the registry is starting or shutting down, or as many streams are
/// open as `server.max_streams` allows. Retry after the delay given.
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))
)]
pub struct ServiceUnavailable(pub Problem);

/// A cap of SPEC 13 is reached and nothing was stored: the agent's unfinished
/// commands (`commands.max_unfinished_per_agent`; `Retry-After` is when its
/// oldest expires), the commands or payload bytes the registry retains
/// (`commands.max_retained`, `commands.max_retained_bytes`), or the agents it
/// holds (`lifecycle.max_agents`).
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))
)]
pub struct TooManyRequests(pub Problem);

/// Adds the bearer scheme of each role.
struct BearerSchemes;

impl Modify for BearerSchemes {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, description) in [
            (
                OPERATOR_TOKEN,
                "A token of `auth.operator_tokens` (or its file): every operator route and `/metrics`.",
            ),
            (
                ENROLLMENT_TOKEN,
                "A token of `auth.enrollment_tokens` (or its file): registration only.",
            ),
            (
                AGENT_TOKEN,
                "The `agentToken` issued by the agent's last registration: its own heartbeat, \
                 stream and acknowledgements only.",
            ),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(description))
                        .build(),
                ),
            );
        }
    }
}

/// The finished document of one server, as served.
#[derive(Clone, Default)]
pub(crate) struct Document(Arc<OnceLock<Bytes>>);

impl Document {
    /// Finishes `openapi`, as collected from the handlers, for a server with
    /// these command types, and keeps it to serve.
    pub(crate) fn set(&self, openapi: OpenApi, command_types: &[String]) {
        let openapi = finish(openapi, command_types);
        // Serializing plain data can't fail; the fallback keeps the route total.
        let mut json = serde_json::to_value(&openapi).unwrap_or_default();
        camel_case_links(&mut json);
        let json = serde_json::to_vec(&json).unwrap_or_default();
        // Set once, by the router that owns this document.
        let _ = self.0.set(Bytes::from(json));
    }
}

/// `GET /api/v1/openapi.json`: this document.
#[utoipa::path(
    get,
    path = PATH,
    operation_id = "openapi",
    tag = "probes",
    summary = "This document",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this server", content_type = "application/json", body = Object),
    ),
)]
pub(crate) async fn serve(State(document): State<Document>) -> Response {
    match document.0.get() {
        Some(json) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            json.clone(),
        )
            .into_response(),
        // Only between building the router and finishing its document, never once serving.
        None => ApiError::NotReady.into_response(),
    }
}

/// Says in `openapi` that each of its operations needs the bearer token of
/// `scheme` and may answer 401 (no token, or one the server does not know) and
/// 403 (another role's token, or another agent's). Called where the check of
/// that role is attached to the routes, and only then.
pub(crate) fn require_token(openapi: &mut OpenApi, scheme: &str) {
    for item in openapi.paths.paths.values_mut() {
        for operation in operations(item) {
            operation.security = Some(vec![SecurityRequirement::new::<_, _, String>(scheme, [])]);
            let responses = &mut operation.responses.responses;
            responses.insert("401".into(), response_ref("Unauthorized"));
            responses.insert("403".into(), response_ref("Forbidden"));
        }
    }
}

/// What every request passes in front of the router (`front`), whatever its route.
const FRONT_RESPONSES: [(&str, &str); 4] = [
    ("400", "BadRequest"),
    ("413", "PayloadTooLarge"),
    ("414", "UriTooLong"),
    ("431", "HeadersTooLarge"),
];

/// What reading a request's body may answer besides (`extract`).
const BODY_RESPONSES: [(&str, &str); 3] = [
    ("408", "RequestTimeout"),
    ("413", "PayloadTooLarge"),
    ("415", "UnsupportedMediaType"),
];

/// Applies what follows from the checks in front of the handlers and from
/// the configuration (see the module's doc).
fn finish(mut openapi: OpenApi, command_types: &[String]) -> OpenApi {
    for (path, item) in openapi.paths.paths.iter_mut() {
        let cross_site_guarded = crate::cross_site::guards(path);
        for operation in operations(item) {
            let reads_body = operation.request_body.is_some();
            let responses = &mut operation.responses.responses;
            let checks = FRONT_RESPONSES
                .iter()
                .chain(BODY_RESPONSES.iter().filter(|_| reads_body));
            for (status, name) in checks {
                responses
                    .entry((*status).into())
                    .or_insert_with(|| response_ref(name));
            }
            if cross_site_guarded {
                responses.insert("403".into(), response_ref("Forbidden"));
            }
            if let Some(body) = operation.request_body.as_mut() {
                optional_body_is_not_null(body);
            }
        }
    }
    if let Some(components) = openapi.components.as_mut()
        && let Some(RefOr::T(Schema::Object(request))) =
            components.schemas.get_mut("CommandRequest")
        && let Some(RefOr::T(Schema::Object(kind))) = request.properties.get_mut("type")
    {
        kind.enum_values = Some(command_types.iter().map(|t| t.as_str().into()).collect());
    }
    openapi
}

/// utoipa 5 writes the fields of a Link Object in snake case (`operation_id`);
/// OpenAPI names them `operationId`, `operationRef` and `requestBody`.
fn camel_case_links(document: &mut Value) {
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    let links = paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(|operation| operation.get_mut("responses")?.as_object_mut())
        .flat_map(|responses| responses.values_mut())
        .filter_map(|response| response.get_mut("links")?.as_object_mut())
        .flat_map(|links| links.values_mut())
        .filter_map(Value::as_object_mut);
    for link in links {
        for (snake, camel) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(value) = link.remove(snake) {
                link.insert(camel.into(), value);
            }
        }
    }
}

/// utoipa writes an `Option<T>` body as `oneOf: [null, T]`, not required; what
/// the server means by it is a body that may be left out, and when present is a
/// `T` (a JSON `null` is not).
fn optional_body_is_not_null(body: &mut RequestBody) {
    if body.required == Some(Required::True) {
        return;
    }
    for content in body.content.values_mut() {
        if let Some(RefOr::T(Schema::OneOf(one_of))) = &mut content.schema {
            let is_null = |schema: &RefOr<Schema>| {
                matches!(schema, RefOr::T(Schema::Object(object))
                    if object.schema_type == SchemaType::Type(Type::Null))
            };
            if one_of.items.len() == 2 && one_of.items.iter().any(is_null) {
                content.schema = one_of.items.iter().find(|item| !is_null(item)).cloned();
            }
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

fn response_ref(name: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::Ref(utoipa::openapi::Ref::from_response_name(name))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use utoipa::PartialSchema;

    use super::*;

    #[tokio::test]
    async fn the_problem_schema_has_the_fields_of_an_error_body() {
        let response = ApiError::NotFound("/nowhere".into()).into_response();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        let sent: BTreeSet<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let RefOr::T(Schema::Object(schema)) = Problem::schema() else {
            panic!("Problem is an object schema");
        };
        let documented: BTreeSet<&str> = schema.properties.keys().map(String::as_str).collect();
        let required: BTreeSet<&str> = schema.required.iter().map(String::as_str).collect();
        assert_eq!(sent, documented);
        assert_eq!(sent, required);
    }

    #[test]
    fn optional_bodies_lose_their_null_alternative() {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder};
        let nullable = OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .item(utoipa::openapi::Ref::from_schema_name("Ack"))
            .build();
        let mut body = RequestBody::new();
        body.content.insert(
            "application/json".into(),
            utoipa::openapi::Content::new(Some(Schema::OneOf(nullable))),
        );
        optional_body_is_not_null(&mut body);
        let schema = serde_json::to_value(&body.content["application/json"].schema).unwrap();
        assert_eq!(schema["$ref"], "#/components/schemas/Ack", "{schema}");
    }

    #[test]
    fn links_are_written_in_camel_case() {
        let mut document = serde_json::json!({"paths": {"/a": {"post": {"responses": {"201": {
            "links": {"next": {"operation_id": "getA", "parameters": {"id": "$response.body#/id"}}}
        }}}}}});
        camel_case_links(&mut document);
        let link = &document["paths"]["/a"]["post"]["responses"]["201"]["links"]["next"];
        assert_eq!(link["operationId"], "getA");
        assert!(link.get("operation_id").is_none());
    }
}
