//! The OpenAPI document (`GET /api/v1/openapi.json`): served open, OpenAPI 3.1,
//! listing every route of SPEC section 3 with exactly its methods, each of which
//! the server really routes; errors as problem+json, the stream as
//! `text/event-stream`, security and command types as configured.

use std::collections::{BTreeMap, BTreeSet};

use registry_server::Config;
use registry_tests::TestServer;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::Value;

const DOCUMENT: &str = "/api/v1/openapi.json";

/// SPEC section 3, route by route: the path as SPEC writes it, and its methods.
const SPEC_ROUTES: &[(&str, &[&str])] = &[
    ("/api/v1/agents/register", &["post"]),
    ("/api/v1/agents/{agentId}/heartbeat", &["post"]),
    ("/api/v1/agents/{agentId}/events", &["get", "head"]),
    (
        "/api/v1/agents/{agentId}/commands/{commandId}/ack",
        &["post"],
    ),
    ("/api/v1/agents", &["get", "delete"]),
    ("/api/v1/agents/{agentId}", &["get", "delete"]),
    ("/api/v1/agents/{agentId}/commands", &["get", "post"]),
    ("/api/v1/agents/groups/{group}/commands", &["post"]),
    ("/api/v1/agents/commands", &["post"]),
    ("/api/v1/agents/{agentId}/commands/{commandId}", &["get"]),
    ("/livez", &["get"]),
    ("/readyz", &["get"]),
    ("/metrics", &["get"]),
    ("/api/v1/events", &["get"]),
    ("/api/v1/rollouts", &["get"]),
    ("/api/v1/rollouts/{rolloutId}", &["get"]),
];

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

const OPERATOR: &str = "operator-secret-5d1a";
const ENROLLMENT: &str = "enrollment-secret-93b0";

/// Fetches the document, checking it is served as JSON without any token.
async fn document(server: &TestServer) -> Value {
    let response = server.get(DOCUMENT).await;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    response.json().await.expect("a JSON document")
}

/// A path with its parameter names erased: `/a/{agentId}` and `/a/{agent_id}` are one route.
fn shape(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "{}"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Every route of the document: its path, shaped, to its methods.
fn documented_routes(document: &Value) -> BTreeMap<String, BTreeSet<String>> {
    document["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(path, item)| {
            let methods = HTTP_METHODS
                .iter()
                .filter(|method| item.get(**method).is_some())
                .map(|method| (*method).to_owned())
                .collect();
            (shape(path), methods)
        })
        .collect()
}

/// Every operation of the document: path, method, operation.
fn operations(document: &Value) -> Vec<(String, String, Value)> {
    let mut all = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in HTTP_METHODS {
            if let Some(operation) = item.get(method) {
                all.push((path.clone(), method.to_owned(), operation.clone()));
            }
        }
    }
    all
}

/// Follows a `$ref` within the document.
fn resolve<'a>(document: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => document
            .pointer(reference.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("a dangling $ref {reference}")),
        None => value,
    }
}

fn response<'a>(document: &'a Value, operation: &'a Value, status: &str) -> Option<&'a Value> {
    operation["responses"]
        .get(status)
        .map(|response| resolve(document, response))
}

#[tokio::test]
async fn the_document_is_served_open_and_is_openapi_3_1() {
    let server = TestServer::start().await;
    let document = document(&server).await;
    let version = document["openapi"].as_str().expect("an openapi version");
    assert!(version.starts_with("3.1"), "{version}");
    assert!(document["info"]["title"].is_string());

    // Like the probes, it needs no token even when tokens are configured.
    let secured = TestServer::start_with(|config: &mut Config| {
        config.auth.operator_tokens = vec![OPERATOR.into()];
        config.auth.enrollment_tokens = vec![ENROLLMENT.into()];
    })
    .await;
    let document = self::document(&secured).await;
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    assert_eq!(
        secured.get("/metrics").await.status(),
        StatusCode::UNAUTHORIZED,
        "the document is open, the API is not"
    );
}

#[tokio::test]
async fn every_route_of_spec_section_3_is_listed_with_its_methods() {
    let server = TestServer::start().await;
    let documented = documented_routes(&document(&server).await);
    for (path, methods) in SPEC_ROUTES {
        let expected: BTreeSet<String> = methods.iter().map(|m| (*m).to_owned()).collect();
        assert_eq!(
            documented.get(&shape(path)),
            Some(&expected),
            "{path} should be listed with exactly {methods:?}"
        );
    }
    let spec: BTreeSet<String> = SPEC_ROUTES.iter().map(|(path, _)| shape(path)).collect();
    let extra: Vec<&String> = documented
        .keys()
        .filter(|path| !spec.contains(*path))
        .collect();
    assert_eq!(
        extra,
        [
            "/",
            "/api/v1/openapi.json",
            "/assets/app.js",
            "/assets/style.css"
        ],
        "only the document itself and the web page (SPEC 11) are added to SPEC 3"
    );
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let server = TestServer::start().await;
    let document = document(&server).await;
    for (path, method, _) in operations(&document) {
        // Unknown ids everywhere: each call is refused (404, 400, 415), none deletes or streams.
        let concrete = path
            .replace("{agent_id}", "no-such-agent")
            .replace("{command_id}", "0190f0c2-0000-7000-8000-000000000000")
            .replace("{group}", "no-such-group")
            .replace("{rollout_id}", "0190f0c2-0000-7000-8000-000000000001");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let response = server
            .client
            .request(method.clone(), server.url(&concrete))
            .send()
            .await
            .expect("a response");
        let status = response.status();
        if path == "/api/v1/events" {
            // The fleet stream has no id to make unknown: it answers with a stream.
            assert_eq!(status, StatusCode::OK, "{method} {path}");
            continue;
        }
        let body = response.text().await.unwrap_or_default();
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(
            !body.contains("no route for"),
            "{method} {path} is documented but not routed: {status} {body}"
        );
    }
}

#[tokio::test]
async fn errors_are_problem_json_and_the_stream_is_an_event_stream() {
    let server = TestServer::start().await;
    let document = document(&server).await;

    let problem = &document["components"]["schemas"]["Problem"];
    let required: BTreeSet<&str> = problem["required"]
        .as_array()
        .expect("required fields")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        required,
        BTreeSet::from(["type", "title", "status", "detail"])
    );

    for (path, method, operation) in operations(&document) {
        let responses = operation["responses"].as_object().expect("responses");
        // The checks in front of every route: the Host, a declared body too
        // large, the head's size.
        for status in ["400", "413", "414", "431"] {
            assert!(
                responses.contains_key(status),
                "{method} {path} lists {status}"
            );
        }
        for status in responses.keys().filter(|status| status.as_str() >= "400") {
            let response = resolve(&document, &responses[status]);
            let content = response["content"].as_object().expect("a body");
            assert_eq!(
                content.keys().collect::<Vec<_>>(),
                ["application/problem+json"],
                "{method} {path} {status}"
            );
        }
    }

    let stream = &document["paths"]["/api/v1/agents/{agent_id}/events"]["get"];
    let open = response(&document, stream, "200").expect("a 200 stream");
    assert!(open["content"]["text/event-stream"].is_object(), "{open}");
    assert!(response(&document, stream, "404").is_some());
    let busy = response(&document, stream, "503").expect("503 when at max_streams");
    assert!(busy["headers"]["Retry-After"].is_object(), "{busy}");
    let description = stream["description"].as_str().expect("a description");
    for word in [
        "retry:",
        "sse.retry",
        ": replaced",
        "sse.replaced_retry",
        "sse.replay",
    ] {
        assert!(
            description.contains(word),
            "the stream's description names {word}"
        );
    }
    let head = &document["paths"]["/api/v1/agents/{agent_id}/events"]["head"];
    let probed = response(&document, head, "200").expect("HEAD answers 200");
    assert!(probed["headers"]["Cache-Control"].is_object(), "{probed}");
    assert!(response(&document, head, "404").is_some());
    assert!(response(&document, head, "403").is_some(), "cross-site");
    let fleet = &document["paths"]["/api/v1/events"]["get"];
    let open = response(&document, fleet, "200").expect("a 200 stream");
    assert!(open["content"]["text/event-stream"].is_object(), "{open}");
    let agent_event = &document["components"]["schemas"]["AgentEvent"]["properties"];
    for field in ["agentId", "group", "from", "to", "at"] {
        assert!(agent_event[field].is_object(), "AgentEvent.{field}");
    }

    for (path, method) in [
        ("/api/v1/agents/register", "post"),
        ("/api/v1/agents/{agent_id}/commands", "post"),
        (
            "/api/v1/agents/{agent_id}/commands/{command_id}/ack",
            "post",
        ),
    ] {
        let operation = &document["paths"][path][method];
        for status in ["400", "408", "413", "415"] {
            assert!(
                response(&document, operation, status).is_some(),
                "{method} {path} reads a JSON body: it lists {status}"
            );
        }
    }
}

#[tokio::test]
async fn security_and_command_types_follow_the_configuration() {
    // Open: no operation asks for a token, and none lists 401; every one the
    // cross-site rule guards lists its 403.
    let open = TestServer::start_with(|config: &mut Config| {
        config.commands.types = vec!["replay".into(), "deep-trace".into()];
    })
    .await;
    let document = document(&open).await;
    for (path, method, operation) in operations(&document) {
        assert!(operation.get("security").is_none(), "{method} {path}");
        assert!(response(&document, &operation, "401").is_none());
        // The API and /metrics; not the probes, nor the web page.
        let guarded = path.starts_with("/api/") || path == "/metrics";
        assert_eq!(
            response(&document, &operation, "403").is_some(),
            guarded,
            "{method} {path}"
        );
    }
    assert_eq!(
        document["components"]["schemas"]["CommandRequest"]["properties"]["type"]["enum"],
        serde_json::json!(["replay", "deep-trace"])
    );

    // Secured: each operation needs its role's bearer token; probes and the document none.
    let secured = TestServer::start_with(|config: &mut Config| {
        config.auth.operator_tokens = vec![OPERATOR.into()];
        config.auth.enrollment_tokens = vec![ENROLLMENT.into()];
    })
    .await;
    let document = self::document(&secured).await;
    let schemes = document["components"]["securitySchemes"]
        .as_object()
        .expect("security schemes");
    for scheme in schemes.values() {
        assert_eq!(scheme["type"], "http");
        assert_eq!(scheme["scheme"], "bearer");
    }
    for (path, method, operation) in operations(&document) {
        let role = match (path.as_str(), method.as_str()) {
            ("/livez" | "/readyz" | DOCUMENT | "/" | "/assets/app.js" | "/assets/style.css", _) => {
                None
            }
            ("/api/v1/agents/register", _) => Some("enrollmentToken"),
            (
                "/api/v1/agents/{agent_id}/heartbeat"
                | "/api/v1/agents/{agent_id}/events"
                | "/api/v1/agents/{agent_id}/commands/{command_id}/ack",
                _,
            ) => Some("agentToken"),
            _ => Some("operatorToken"),
        };
        match role {
            None => assert!(operation.get("security").is_none(), "{method} {path}"),
            Some(role) => {
                assert_eq!(
                    operation["security"],
                    serde_json::json!([{ role: [] }]),
                    "{method} {path}"
                );
                assert!(schemes.contains_key(role));
                let unauthorized =
                    response(&document, &operation, "401").expect("401 without a token");
                assert!(unauthorized["headers"]["WWW-Authenticate"].is_object());
                assert!(response(&document, &operation, "403").is_some());
            }
        }
    }
}
