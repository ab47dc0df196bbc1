//! SPEC 10, streams in the wild: `retry:` with a per-stream jitter, a replaced
//! stream told to back off and counted, HEAD that never opens a stream, the
//! cross-site rule, CORS for the allowed origins, and the opt-in replay.

use std::time::Duration;

use registry_server::Config;
use registry_server::config::Replay;
use registry_tests::{PROMPTLY, RawStream, TestServer, assert_problem, eventually};
use reqwest::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, VARY,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

const OPERATOR: &str = "operator-secret";
const ENROLLMENT: &str = "enrollment-secret";
const ALLOWED: &str = "https://ops.example";
const FOREIGN: &str = "https://evil.example";

fn events_path(agent_id: &str) -> String {
    format!("/api/v1/agents/{agent_id}/events")
}

async fn register(server: &TestServer, agent_id: &str) {
    let (status, body) = server.register(agent_id, "wild").await;
    assert_eq!(status, StatusCode::CREATED, "register {agent_id}: {body}");
}

async fn connected(server: &TestServer, agent_id: &str) -> bool {
    server.agent(agent_id).await.expect("a registered agent")["connected"]
        .as_bool()
        .expect("connected is a boolean")
}

fn header(response: &Response, name: impl reqwest::header::AsHeaderName) -> String {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// A request to `path` with the headers a browser adds.
fn from_browser(
    server: &TestServer,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> RequestBuilder {
    headers.iter().fold(
        server
            .client
            .request(method, server.url(path))
            .timeout(Duration::from_secs(3600)),
        |request, (name, value)| request.header(*name, *value),
    )
}

/// The `retry:` value of the first lines of a stream read so far.
fn retry_of(text: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix("retry: "))
        .unwrap_or_else(|| panic!("no retry line in {text:?}"))
        .parse()
        .expect("retry is a number of milliseconds")
}

#[tokio::test]
async fn every_stream_starts_with_retry_of_sse_retry_plus_a_jitter_drawn_per_stream() {
    let server = TestServer::start_with(|c| c.sse.retry = Duration::from_millis(1_000)).await;
    let mut drawn = Vec::new();
    for n in 0..6 {
        let agent_id = format!("retry-{n}");
        register(&server, &agent_id).await;
        let mut raw = RawStream::open(&server, &agent_id).await;
        assert!(raw.read_until("\n\n", 1, PROMPTLY).await, "{:?}", raw.text);
        let first = raw.text.split("\n\n").next().unwrap_or_default();
        assert!(first.starts_with("retry: "), "the first line: {first:?}");
        let retry = retry_of(first);
        assert!((1_000..=2_000).contains(&retry), "retry {retry}");
        drawn.push(retry);
    }
    drawn.dedup();
    assert!(drawn.len() > 1, "the jitter is drawn per stream: {drawn:?}");
}

#[tokio::test]
async fn a_replaced_stream_is_told_so_and_sse_replaced_retry_before_it_ends_and_it_is_counted() {
    let server =
        TestServer::start_with(|c| c.sse.replaced_retry = Duration::from_millis(42_000)).await;
    register(&server, "twin").await;
    let mut older = RawStream::open(&server, "twin").await;
    assert!(older.read_until(": open", 1, PROMPTLY).await);
    let mut newer = RawStream::open(&server, "twin").await;

    assert!(
        older.read_until("retry: 42000", 1, PROMPTLY).await,
        "read {:?}",
        older.text
    );
    let last = older.text.rsplit(": open").next().unwrap_or_default();
    assert!(last.contains("\n: replaced\n"), "{last:?}");
    assert!(
        !older.read_until("\n", usize::MAX, PROMPTLY).await,
        "it ends"
    );
    assert_eq!(
        server.metric("registry_stream_replacements_total").await,
        1.0
    );
    // The newer stream has no such word, and got its own retry.
    assert!(newer.read_until(": open", 1, PROMPTLY).await);
    assert!(!newer.text.contains("replaced"), "{:?}", newer.text);
    assert!(retry_of(&newer.text) < 42_000);
    assert!(connected(&server, "twin").await);
}

#[tokio::test]
async fn a_stream_ended_for_another_reason_is_not_told_replaced() {
    let server = TestServer::start().await;
    register(&server, "gone").await;
    let mut raw = RawStream::open(&server, "gone").await;
    assert!(raw.read_until(": open", 1, PROMPTLY).await);
    server.delete("/api/v1/agents/gone").await;
    assert!(!raw.read_until("replaced", 1, PROMPTLY).await, "it ends");
    assert!(!raw.text.contains("replaced"), "{:?}", raw.text);
    assert_eq!(
        server.metric("registry_stream_replacements_total").await,
        0.0
    );
}

#[tokio::test]
async fn head_answers_like_get_without_a_body_and_never_opens_or_replaces_a_stream() {
    let server = TestServer::start().await;
    register(&server, "probed").await;
    register(&server, "idle").await;
    let mut stream = server.open_stream("probed").await;

    for agent_id in ["probed", "idle"] {
        let response = from_browser(&server, Method::HEAD, &events_path(agent_id), &[])
            .send()
            .await
            .expect("HEAD");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(header(&response, CONTENT_TYPE).starts_with("text/event-stream"));
        assert_eq!(header(&response, CACHE_CONTROL), "no-cache");
        assert_eq!(header(&response, "x-accel-buffering"), "no");
        assert!(response.bytes().await.expect("no body").is_empty());
    }
    assert!(!connected(&server, "idle").await, "HEAD opened no stream");
    let (_, command) = server.send("probed", "replay", json!({})).await;
    assert_eq!(command["status"], "DELIVERED", "the stream is still open");
    let event = stream.next_event().await.expect("the command");
    assert_eq!(event.id, command["commandId"].as_str().unwrap());
    assert_eq!(
        server.metric("registry_stream_replacements_total").await,
        0.0
    );

    let unknown = from_browser(&server, Method::HEAD, &events_path("nobody"), &[])
        .send()
        .await
        .expect("HEAD");
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert!(header(&unknown, CONTENT_TYPE).starts_with("application/problem+json"));
}

#[tokio::test]
async fn a_cross_site_event_source_is_refused_before_it_replaces_the_stream() {
    let server = TestServer::start().await;
    register(&server, "target").await;
    let mut stream = server.open_stream("target").await;

    for headers in [
        &[("Origin", FOREIGN), ("Sec-Fetch-Site", "cross-site")][..],
        &[("Origin", FOREIGN)][..],
        &[("Sec-Fetch-Site", "same-site")][..],
        &[("Origin", "null")][..],
    ] {
        let response = from_browser(&server, Method::GET, &events_path("target"), headers)
            .send()
            .await
            .expect("GET events");
        let problem = assert_problem(response, StatusCode::FORBIDDEN).await;
        assert!(
            problem["detail"].as_str().unwrap().contains("cross-site"),
            "{problem}"
        );
    }
    let (_, command) = server.send("target", "replay", json!({})).await;
    assert_eq!(command["status"], "DELIVERED");
    assert_eq!(
        stream.next_event().await.expect("still open").id,
        command["commandId"].as_str().unwrap()
    );
    assert_eq!(
        server.metric("registry_stream_replacements_total").await,
        0.0
    );
}

#[tokio::test]
async fn a_cross_site_heartbeat_or_registration_has_no_effect() {
    let server = TestServer::start().await;
    register(&server, "kept").await;
    let heartbeats = server.metric("registry_heartbeats_total").await;
    let response = from_browser(
        &server,
        Method::POST,
        "/api/v1/agents/kept/heartbeat",
        &[("Origin", FOREIGN), ("Sec-Fetch-Site", "cross-site")],
    )
    .send()
    .await
    .expect("POST");
    assert_problem(response, StatusCode::FORBIDDEN).await;
    assert_eq!(server.metric("registry_heartbeats_total").await, heartbeats);

    let response = from_browser(
        &server,
        Method::POST,
        "/api/v1/agents/register",
        &[
            ("Sec-Fetch-Site", "cross-site"),
            ("Content-Type", "application/json"),
        ],
    )
    .body(r#"{"agentId":"planted","name":"n","group":"g"}"#)
    .send()
    .await
    .expect("POST");
    assert_problem(response, StatusCode::FORBIDDEN).await;
    assert_eq!(server.agent("planted").await, None);
}

#[tokio::test]
async fn the_servers_own_origin_same_origin_requests_clients_without_either_header_and_probes_pass()
{
    let server = TestServer::start().await;
    register(&server, "own").await;
    let own = server.base.clone();
    for headers in [
        &[("Origin", own.as_str()), ("Sec-Fetch-Site", "same-origin")][..],
        &[("Origin", own.replace("http://", "https://").as_str())][..],
        &[("Sec-Fetch-Site", "none")][..],
        &[][..],
    ] {
        let response = from_browser(
            &server,
            Method::POST,
            "/api/v1/agents/own/heartbeat",
            headers,
        )
        .send()
        .await
        .expect("POST");
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "{headers:?}");
    }
    for probe in ["/livez", "/readyz"] {
        let response = from_browser(
            &server,
            Method::GET,
            probe,
            &[("Origin", FOREIGN), ("Sec-Fetch-Site", "cross-site")],
        )
        .send()
        .await
        .expect("GET");
        assert_eq!(response.status(), StatusCode::OK, "{probe}");
    }
}

#[tokio::test]
async fn with_a_public_url_its_origin_is_the_servers_own_and_the_host_is_not() {
    let server =
        TestServer::start_with(|c| c.server.public_url = "https://registry.example/base".into())
            .await;
    register(&server, "proxied").await;
    let path = "/api/v1/agents/proxied/heartbeat";
    let own = from_browser(
        &server,
        Method::POST,
        path,
        &[("Origin", "https://registry.example")],
    )
    .send()
    .await
    .expect("POST");
    assert_eq!(own.status(), StatusCode::NO_CONTENT);
    let by_host = from_browser(&server, Method::POST, path, &[("Origin", &server.base)])
        .send()
        .await
        .expect("POST");
    assert_problem(by_host, StatusCode::FORBIDDEN).await;
}

fn with_tokens_and_cors(config: &mut Config) {
    config.auth.operator_tokens = vec![OPERATOR.into()];
    config.auth.enrollment_tokens = vec![ENROLLMENT.into()];
    config.server.cors_origins = vec![ALLOWED.into()];
}

#[tokio::test]
async fn a_cross_site_request_is_refused_before_its_token_is_checked() {
    let server = TestServer::start_with(with_tokens_and_cors).await;
    let response = from_browser(
        &server,
        Method::GET,
        "/api/v1/agents",
        &[("Origin", FOREIGN)],
    )
    .send()
    .await
    .expect("GET");
    assert_problem(response, StatusCode::FORBIDDEN).await;
}

#[tokio::test]
async fn an_allowed_origin_gets_a_preflight_without_a_token_and_cors_headers_on_answers() {
    let server = TestServer::start_with(with_tokens_and_cors).await;
    let preflight = from_browser(
        &server,
        Method::OPTIONS,
        &events_path("web-agent"),
        &[
            ("Origin", ALLOWED),
            ("Sec-Fetch-Site", "cross-site"),
            ("Access-Control-Request-Method", "GET"),
            (
                "Access-Control-Request-Headers",
                "authorization,last-event-id",
            ),
        ],
    )
    .send()
    .await
    .expect("OPTIONS");
    assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&preflight, ACCESS_CONTROL_ALLOW_ORIGIN), ALLOWED);
    assert!(header(&preflight, VARY).contains("Origin"));
    let methods = header(&preflight, ACCESS_CONTROL_ALLOW_METHODS);
    for method in ["GET", "HEAD", "POST", "DELETE"] {
        assert!(methods.contains(method), "{methods}");
    }
    let headers = header(&preflight, ACCESS_CONTROL_ALLOW_HEADERS).to_ascii_lowercase();
    for name in ["authorization", "content-type", "last-event-id"] {
        assert!(headers.contains(name), "{headers}");
    }

    let listed = from_browser(
        &server,
        Method::GET,
        "/api/v1/agents",
        &[("Origin", ALLOWED), ("Sec-Fetch-Site", "cross-site")],
    )
    .header(AUTHORIZATION, format!("Bearer {OPERATOR}"))
    .send()
    .await
    .expect("GET");
    assert_eq!(listed.status(), StatusCode::OK);
    assert_eq!(header(&listed, ACCESS_CONTROL_ALLOW_ORIGIN), ALLOWED);
    assert!(header(&listed, VARY).contains("Origin"));
    // The token is still needed for anything but the preflight.
    let refused = from_browser(
        &server,
        Method::GET,
        "/api/v1/agents",
        &[("Origin", ALLOWED)],
    )
    .send()
    .await
    .expect("GET");
    assert_eq!(header(&refused, ACCESS_CONTROL_ALLOW_ORIGIN), ALLOWED);
    assert_problem(refused, StatusCode::UNAUTHORIZED).await;
    // An OPTIONS that is no preflight is still a wrong method.
    let options = from_browser(&server, Method::OPTIONS, "/api/v1/agents", &[])
        .send()
        .await
        .expect("OPTIONS");
    assert_problem(options, StatusCode::METHOD_NOT_ALLOWED).await;
}

/// The ids of the events a stream sends at once, up to `count`.
async fn ids_on(stream: &mut registry_tests::EventStream, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..count {
        ids.push(stream.next_event().await.expect("an event").id);
    }
    ids
}

/// The command's view now.
async fn command(server: &TestServer, agent_id: &str, command_id: &str) -> Value {
    server
        .get(&format!("/api/v1/agents/{agent_id}/commands/{command_id}"))
        .await
        .json()
        .await
        .expect("a JSON command")
}

#[tokio::test]
async fn with_replay_a_reconnect_gets_what_it_missed_and_last_event_id_skips_what_it_saw() {
    let server = TestServer::start_with(|c| c.sse.replay = Replay::Unacknowledged).await;
    register(&server, "resumer").await;
    let mut first = server.open_stream("resumer").await;
    let (_, seen) = server
        .send("resumer", "config-update", json!({"n": 1}))
        .await;
    let seen_id = seen["commandId"].as_str().unwrap().to_owned();
    let first_event = first.next_event().await.expect("the first command");
    assert_eq!(first_event.id, seen_id);
    let delivered_at = command(&server, "resumer", &seen_id).await["deliveredAt"].clone();
    assert!(delivered_at.is_string(), "{delivered_at}");
    drop(first);
    let s = &server;
    eventually(PROMPTLY, "the dropped stream is noticed", || async move {
        !connected(s, "resumer").await
    })
    .await;
    let (_, missed) = server.send("resumer", "deep-trace", json!({"n": 2})).await;
    assert_eq!(missed["status"], "PENDING");
    let missed_id = missed["commandId"].as_str().unwrap().to_owned();

    let mut again = server
        .open_stream_with("resumer", &[("Last-Event-ID", &seen_id)])
        .await;
    assert_eq!(
        ids_on(&mut again, 1).await,
        std::slice::from_ref(&missed_id)
    );
    let (_, fresh) = server.send("resumer", "replay", json!({"n": 3})).await;
    let fresh_id = fresh["commandId"].as_str().unwrap().to_owned();
    assert_eq!(ids_on(&mut again, 1).await, std::slice::from_ref(&fresh_id));
    again.expect_nothing_for(Duration::from_millis(200)).await;
    drop(again);

    // Without Last-Event-ID: everything unacknowledged again, with the same data
    // as when first sent, and the first deliveredAt kept.
    let mut all = server.open_stream("resumer").await;
    let replayed = all.next_event().await.expect("the first command again");
    assert_eq!(replayed.id, seen_id);
    assert_eq!(replayed.event, first_event.event);
    assert_eq!(replayed.data, first_event.data);
    assert_eq!(ids_on(&mut all, 2).await, [missed_id, fresh_id]);
    assert_eq!(
        command(&server, "resumer", &seen_id).await["deliveredAt"],
        delivered_at
    );
}

#[tokio::test]
async fn without_replay_last_event_id_changes_nothing() {
    let server = TestServer::start().await;
    register(&server, "plain").await;
    let (_, pending) = server.send("plain", "replay", json!({})).await;
    let pending_id = pending["commandId"].as_str().unwrap().to_owned();
    let mut stream = server
        .open_stream_with("plain", &[("Last-Event-ID", &pending_id)])
        .await;
    stream.expect_nothing_for(Duration::from_millis(200)).await;
    assert_eq!(
        command(&server, "plain", &pending_id).await["status"],
        "PENDING"
    );
}
