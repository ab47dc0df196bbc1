//! SPEC 3.1, the agent's SSE stream: 404 for an unknown agent, headers, the event
//! format on the wire, keepalive comments, `Last-Event-ID`, one stream per agent,
//! clients that go away, deletion and shutdown, `max_streams`, and order.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use registry_tests::{Event, PROMPTLY, RawStream, TestServer, assert_problem, eventually};
use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

/// Long enough to show that nothing arrives, short enough to keep tests fast.
const QUIET: Duration = Duration::from_millis(300);

fn events_path(agent_id: &str) -> String {
    format!("/api/v1/agents/{agent_id}/events")
}

/// `GET` the agent's stream without asserting anything about the answer.
async fn get_stream(server: &TestServer, agent_id: &str, last_event_id: Option<&str>) -> Response {
    let mut request = server
        .client
        .get(server.url(&events_path(agent_id)))
        .timeout(Duration::from_secs(3600));
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    request.send().await.expect("GET events")
}

/// A stream opened by hand (for headers the harness does not send), parsed as SSE.
struct Sse {
    events: Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>,
}

impl Sse {
    fn new(response: Response) -> Self {
        let events = response
            .bytes_stream()
            .eventsource()
            .map(|event| event.map_err(|err| err.to_string()));
        Self {
            events: Box::pin(events),
        }
    }

    async fn next_event(&mut self) -> Option<Event> {
        match tokio::time::timeout(PROMPTLY, self.events.next()).await {
            Ok(Some(Ok(event))) => Some(event),
            Ok(Some(Err(_)) | None) => None,
            Err(_) => panic!("no event and no end of stream within {PROMPTLY:?}"),
        }
    }

    async fn expect_nothing_for(&mut self, quiet: Duration) {
        if let Ok(item) = tokio::time::timeout(quiet, self.events.next()).await {
            panic!("expected nothing, got {item:?}");
        }
    }
}

/// Registers `agent_id` in a group of its own name; panics unless it is new.
async fn register(server: &TestServer, agent_id: &str) {
    let (status, body) = server.register(agent_id, "stream-tests").await;
    assert_eq!(status, StatusCode::CREATED, "register {agent_id}: {body}");
}

/// Sends a command and returns its id, checking the status it answers with.
async fn send(server: &TestServer, agent_id: &str, kind: &str, payload: Value) -> (String, Value) {
    let (status, command) = server.send(agent_id, kind, payload).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "send to {agent_id}: {command}"
    );
    let id = command["commandId"]
        .as_str()
        .expect("a commandId")
        .to_owned();
    (id, command)
}

/// The command as `GET` answers it now.
async fn command(server: &TestServer, agent_id: &str, command_id: &str) -> Value {
    let response = server
        .get(&format!("/api/v1/agents/{agent_id}/commands/{command_id}"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("a JSON command")
}

async fn connected(server: &TestServer, agent_id: &str) -> bool {
    server.agent(agent_id).await.expect("a registered agent")["connected"]
        .as_bool()
        .expect("connected is a boolean")
}

#[tokio::test]
async fn the_stream_of_an_unknown_agent_is_a_404_problem_not_a_stream() {
    let server = TestServer::start().await;
    let response = get_stream(&server, "nobody-here", None).await;
    let problem = assert_problem(response, StatusCode::NOT_FOUND).await;
    assert!(
        problem["detail"].as_str().unwrap().contains("nobody-here"),
        "{problem}"
    );
}

#[tokio::test]
async fn the_stream_answers_with_event_stream_no_cache_and_no_proxy_buffering() {
    let server = TestServer::start().await;
    register(&server, "hdr-1").await;
    let stream = server.open_stream("hdr-1").await;
    let header = |name: &str| {
        stream
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header(CONTENT_TYPE.as_str()).expect("a Content-Type");
    assert!(
        content_type.starts_with("text/event-stream"),
        "Content-Type {content_type:?}"
    );
    assert_eq!(header(CACHE_CONTROL.as_str()).as_deref(), Some("no-cache"));
    assert_eq!(header("x-accel-buffering").as_deref(), Some("no"));
}

#[tokio::test]
async fn each_command_is_one_event_with_the_command_id_its_type_and_its_data() {
    let server = TestServer::start().await;
    register(&server, "fmt-1").await;
    let mut stream = server.open_stream("fmt-1").await;
    let payload = json!({"routeId": "route-1", "depth": 3, "tags": ["a", "b"]});
    let (id, sent) = send(&server, "fmt-1", "config-update", payload.clone()).await;

    let event = stream.next_event().await.expect("an event");
    assert_eq!(event.id, id);
    assert_eq!(event.event, "config-update");
    let data: Value = serde_json::from_str(&event.data).expect("data is JSON");
    let fields: BTreeSet<&str> = data
        .as_object()
        .expect("data is a JSON object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        BTreeSet::from([
            "commandId",
            "agentId",
            "type",
            "payload",
            "createdAt",
            "expiresAt",
            "signature"
        ]),
        "{data}"
    );
    assert_eq!(data["commandId"], id);
    assert_eq!(data["agentId"], "fmt-1");
    assert_eq!(data["type"], "config-update");
    assert_eq!(data["payload"], payload);
    assert_eq!(data["createdAt"], sent["createdAt"]);
    assert_eq!(data["expiresAt"], sent["expiresAt"]);
}

#[tokio::test]
async fn on_the_wire_an_event_is_an_id_line_an_event_line_and_one_data_line() {
    let server = TestServer::start().await;
    register(&server, "wire-1").await;
    let mut raw = RawStream::open(&server, "wire-1").await;
    let (id, _) = send(&server, "wire-1", "deep-trace", json!({"routeId": "r-1"})).await;

    assert!(
        raw.read_until("}\n\n", 1, PROMPTLY).await,
        "no complete event; read {:?}",
        raw.text
    );
    let block = raw
        .text
        .split("\n\n")
        .find(|block| block.lines().any(|line| line.starts_with("id")))
        .unwrap_or_else(|| panic!("no event with an id in {:?}", raw.text));
    let lines: Vec<&str> = block
        .lines()
        .filter(|line| !line.starts_with(':'))
        .collect();
    assert_eq!(lines.len(), 3, "exactly id, event and data: {block:?}");
    assert!(lines.contains(&format!("id: {id}").as_str()), "{block:?}");
    assert!(lines.contains(&"event: deep-trace"), "{block:?}");
    let data = lines
        .iter()
        .find_map(|line| line.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("no `data: ` line in {block:?}"));
    let data: Value = serde_json::from_str(data).expect("one line of JSON");
    assert_eq!(data["commandId"], id);
    assert_eq!(data["payload"], json!({"routeId": "r-1"}));
}

#[tokio::test]
async fn an_idle_stream_gets_a_comment_line_at_least_every_keepalive() {
    let keepalive = Duration::from_millis(100);
    let server = TestServer::start_with(|c| c.sse.keepalive = keepalive).await;
    register(&server, "idle-1").await;
    let mut raw = RawStream::open(&server, "idle-1").await;
    // Each further comment line must follow the one before within the keepalive
    // and some slack for scheduling, three times in a row (about 300 ms).
    let slack = Duration::from_millis(150);
    for count in 1..=3 {
        assert!(
            raw.read_until("\n:", count, keepalive + slack).await,
            "comment {count} not within {:?} of the one before; read {:?}",
            keepalive + slack,
            raw.text
        );
    }
    let comments = raw
        .text
        .split('\n')
        .filter(|line| line.starts_with(':'))
        .count();
    assert!(comments >= 3, "{comments} comments in {:?}", raw.text);
    assert!(
        !raw.text.contains("data:"),
        "an idle stream carries no event: {:?}",
        raw.text
    );
}

#[tokio::test]
async fn last_event_id_is_accepted_and_nothing_missed_is_replayed() {
    let server = TestServer::start().await;
    register(&server, "lei-1").await;
    let mut first = server.open_stream("lei-1").await;
    let (seen, _) = send(&server, "lei-1", "replay", json!({})).await;
    assert_eq!(first.next_event().await.expect("an event").id, seen);
    drop(first);
    let s = &server;
    eventually(PROMPTLY, "the dropped stream is noticed", || async move {
        !connected(s, "lei-1").await
    })
    .await;
    let (missed, command) = send(&server, "lei-1", "deep-trace", json!({})).await;
    assert_eq!(command["status"], "PENDING");

    let response = get_stream(&server, "lei-1", Some(&seen)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut again = Sse::new(response);
    again.expect_nothing_for(QUIET).await;
    let (next, _) = send(&server, "lei-1", "config-update", json!({})).await;
    let event = again.next_event().await.expect("the next command");
    assert_eq!(event.id, next, "only future commands are delivered");
    assert_ne!(event.id, missed);
    assert_eq!(command_status(&server, "lei-1", &missed).await, "PENDING");
}

async fn command_status(server: &TestServer, agent_id: &str, command_id: &str) -> String {
    command(server, agent_id, command_id).await["status"]
        .as_str()
        .expect("a status")
        .to_owned()
}

#[tokio::test]
async fn commands_pending_before_the_stream_opened_are_not_pushed_on_connect() {
    let server = TestServer::start().await;
    register(&server, "pend-1").await;
    let (pending, command) = send(&server, "pend-1", "replay", json!({"n": 1})).await;
    assert_eq!(command["status"], "PENDING");

    let mut stream = server.open_stream("pend-1").await;
    stream.expect_nothing_for(QUIET).await;
    assert_eq!(command_status(&server, "pend-1", &pending).await, "PENDING");

    let (fresh, _) = send(&server, "pend-1", "replay", json!({"n": 2})).await;
    assert_eq!(stream.next_event().await.expect("an event").id, fresh);
}

#[tokio::test]
async fn a_second_stream_for_the_same_agent_ends_the_first_and_gets_the_next_command() {
    let server = TestServer::start().await;
    register(&server, "dup-1").await;
    let mut first = server.open_stream("dup-1").await;
    let mut second = server.open_stream("dup-1").await;
    first.expect_end().await;

    let (id, command) = send(&server, "dup-1", "deep-trace", json!({})).await;
    assert_eq!(command["status"], "DELIVERED");
    assert_eq!(second.next_event().await.expect("an event").id, id);
    assert!(connected(&server, "dup-1").await);
}

#[tokio::test]
async fn a_client_that_goes_away_is_noticed_and_later_commands_stay_pending() {
    let server = TestServer::start().await;
    register(&server, "gone-1").await;
    let stream = server.open_stream("gone-1").await;
    assert!(connected(&server, "gone-1").await);

    drop(stream);
    let s = &server;
    eventually(
        Duration::from_secs(2),
        "connected turns false",
        || async move { !connected(s, "gone-1").await },
    )
    .await;
    let (id, command) = send(&server, "gone-1", "config-update", json!({})).await;
    assert_eq!(command["status"], "PENDING");
    assert_eq!(command["deliveredAt"], Value::Null);
    assert_eq!(command_status(&server, "gone-1", &id).await, "PENDING");
}

#[tokio::test]
async fn deleting_the_agent_ends_its_stream() {
    let server = TestServer::start().await;
    register(&server, "del-1").await;
    let mut stream = server.open_stream("del-1").await;
    let response = server.delete("/api/v1/agents/del-1").await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    stream.expect_end().await;
}

#[tokio::test]
async fn shutting_the_server_down_ends_every_stream() {
    let mut server = TestServer::start().await;
    register(&server, "down-1").await;
    register(&server, "down-2").await;
    let mut one = server.open_stream("down-1").await;
    let mut two = server.open_stream("down-2").await;
    server.begin_shutdown();
    one.expect_end().await;
    two.expect_end().await;
    tokio::time::timeout(PROMPTLY, server.finished())
        .await
        .expect("the server stops promptly")
        .expect("the server stops cleanly");
}

#[tokio::test]
async fn an_open_stream_is_not_a_heartbeat() {
    let server = TestServer::start_with(|c| {
        c.lifecycle.stale_after = Duration::from_millis(300);
        c.sse.keepalive = Duration::from_millis(50);
    })
    .await;
    register(&server, "hb-1").await;
    let _stream = server.open_stream("hb-1").await;
    let s = &server;
    eventually(
        Duration::from_secs(2),
        "the streaming agent goes STALE",
        || async move { s.status_of("hb-1").await == "STALE" },
    )
    .await;
    assert!(connected(&server, "hb-1").await, "the stream is still open");
}

#[tokio::test]
async fn past_max_streams_a_new_stream_is_503_with_retry_after_but_a_replacement_is_accepted() {
    let server = TestServer::start_with(|c| c.server.max_streams = 2).await;
    for id in ["max-1", "max-2", "max-3"] {
        register(&server, id).await;
    }
    let _one = server.open_stream("max-1").await;
    let mut two = server.open_stream("max-2").await;

    let refused = get_stream(&server, "max-3", None).await;
    let retry_after = refused
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .expect("a Retry-After header");
    assert!(
        retry_after.parse::<u64>().is_ok(),
        "Retry-After {retry_after:?}"
    );
    assert_problem(refused, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(!connected(&server, "max-3").await);

    let replacement = get_stream(&server, "max-2", None).await;
    assert_eq!(replacement.status(), StatusCode::OK);
    two.expect_end().await;
    let refused = get_stream(&server, "max-3", None).await;
    assert_eq!(
        refused.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a replacement takes the place of the stream it replaced"
    );
}

#[tokio::test]
async fn a_closed_stream_frees_its_place_under_max_streams() {
    let server = TestServer::start_with(|c| c.server.max_streams = 1).await;
    register(&server, "free-1").await;
    register(&server, "free-2").await;
    let one = server.open_stream("free-1").await;
    let refused = get_stream(&server, "free-2", None).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    drop(one);
    let s = &server;
    eventually(
        Duration::from_secs(2),
        "the second agent's stream is accepted",
        || async move { get_stream(s, "free-2", None).await.status() == StatusCode::OK },
    )
    .await;
}

#[tokio::test]
async fn events_for_many_commands_arrive_in_the_order_they_were_sent() {
    let server = TestServer::start().await;
    register(&server, "order-1").await;
    let mut stream = server.open_stream("order-1").await;
    let kinds = ["config-update", "deep-trace", "replay"];
    let mut sent = Vec::new();
    for n in 0..30 {
        let kind = kinds[n % kinds.len()];
        let (id, command) = send(&server, "order-1", kind, json!({"n": n})).await;
        assert_eq!(command["status"], "DELIVERED");
        sent.push((id, kind, n));
    }
    for (id, kind, n) in sent {
        let event = stream.next_event().await.expect("an event");
        assert_eq!(event.id, id, "event {n}");
        assert_eq!(event.event, kind, "event {n}");
        let data: Value = serde_json::from_str(&event.data).expect("JSON data");
        assert_eq!(data["payload"], json!({"n": n}));
    }
    stream.expect_nothing_for(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn re_registering_keeps_the_open_stream_open() {
    let server = TestServer::start().await;
    register(&server, "again-1").await;
    let mut stream = server.open_stream("again-1").await;
    let (status, body) = server.register("again-1", "another-group").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["resumed"], true);
    stream.expect_nothing_for(Duration::from_millis(100)).await;
    assert!(connected(&server, "again-1").await);
    let (id, command) = send(&server, "again-1", "replay", json!({})).await;
    assert_eq!(command["status"], "DELIVERED");
    assert_eq!(stream.next_event().await.expect("an event").id, id);
}

#[tokio::test]
async fn any_last_event_id_is_accepted() {
    let server = TestServer::start().await;
    register(&server, "lei-2").await;
    for last in ["0190f0c2-0000-7000-8000-000000000000", "not-an-id", ""] {
        let response = get_stream(&server, "lei-2", Some(last)).await;
        assert_eq!(response.status(), StatusCode::OK, "Last-Event-ID {last:?}");
    }
}
