//! SPEC 11, the fleet event stream `GET /api/v1/events`: an `agent` event for a
//! registration, a transition, a revival, a change of metadata or connection and
//! a deletion, each as a user reads it off the wire; keepalives; a reader that
//! falls behind loses its stream while the registry answers on; shutdown ends it.

use std::time::Duration;

use registry_tests::{EventStream, PROMPTLY, RawStream, TestServer, eventually};
use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE};
use serde_json::{Value, json};

/// Short enough for a test to watch an agent go STALE.
const STALE_AFTER: Duration = Duration::from_millis(400);

/// The next `agent` event's data; panics on any other event or the stream's end.
async fn next_agent_event(events: &mut EventStream) -> Value {
    let event = events.next_event().await.expect("an agent event");
    assert_eq!(event.event, "agent", "{event:?}");
    serde_json::from_str(&event.data).expect("JSON data")
}

/// The event's `(agentId, group, from, to, connected)`.
fn summary(event: &Value) -> (&str, &str, &Value, &Value, &Value) {
    (
        event["agentId"].as_str().expect("agentId"),
        event["group"].as_str().expect("group"),
        &event["from"],
        &event["to"],
        &event["connected"],
    )
}

async fn status_changed_at(server: &TestServer, agent_id: &str) -> Value {
    server.agent(agent_id).await.expect("the agent")["statusChangedAt"].clone()
}

#[tokio::test]
async fn a_registration_a_transition_a_revival_and_a_deletion_are_agent_events() {
    let server = TestServer::start_with(|c| c.lifecycle.stale_after = STALE_AFTER).await;
    let mut fleet = server.open_fleet_stream().await;
    assert!(
        fleet.headers[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(fleet.headers[CACHE_CONTROL], "no-cache");
    assert_eq!(fleet.headers["x-accel-buffering"], "no");

    let (status, _) = server.register("order-7f3a", "order-prod").await;
    assert_eq!(status, StatusCode::CREATED);
    let registered = next_agent_event(&mut fleet).await;
    assert_eq!(
        summary(&registered),
        (
            "order-7f3a",
            "order-prod",
            &Value::Null,
            &json!("LIVE"),
            &json!(false)
        )
    );
    assert_eq!(
        registered["at"],
        status_changed_at(&server, "order-7f3a").await
    );

    // No heartbeat: STALE after stale_after, without any request to the server.
    let stale = next_agent_event(&mut fleet).await;
    assert_eq!(
        summary(&stale),
        (
            "order-7f3a",
            "order-prod",
            &json!("LIVE"),
            &json!("STALE"),
            &json!(false)
        )
    );
    assert_eq!(stale["at"], status_changed_at(&server, "order-7f3a").await);

    // A heartbeat revives it.
    assert_eq!(server.heartbeat("order-7f3a").await, StatusCode::NO_CONTENT);
    let revived = next_agent_event(&mut fleet).await;
    assert_eq!(
        summary(&revived),
        (
            "order-7f3a",
            "order-prod",
            &json!("STALE"),
            &json!("LIVE"),
            &json!(false)
        )
    );
    assert_eq!(
        revived["at"],
        status_changed_at(&server, "order-7f3a").await
    );

    // So does a re-registration, from whatever status it was in.
    let _ = next_agent_event(&mut fleet).await; // STALE again
    let (status, _) = server.register("order-7f3a", "order-prod").await;
    assert_eq!(status, StatusCode::OK);
    let resumed = next_agent_event(&mut fleet).await;
    assert_eq!(
        (&resumed["from"], &resumed["to"]),
        (&json!("STALE"), &json!("LIVE"))
    );

    assert_eq!(
        server.delete("/api/v1/agents/order-7f3a").await.status(),
        StatusCode::NO_CONTENT
    );
    let deleted = next_agent_event(&mut fleet).await;
    assert_eq!(
        summary(&deleted),
        (
            "order-7f3a",
            "order-prod",
            &json!("LIVE"),
            &Value::Null,
            &json!(false)
        )
    );
    assert!(deleted["at"].is_string());
}

#[tokio::test]
async fn connecting_disconnecting_and_new_metadata_are_agent_events_with_from_equal_to() {
    let server = TestServer::start().await;
    server.register("order-7f3a", "order-prod").await;
    let mut fleet = server.open_fleet_stream().await;

    let stream = server.open_stream("order-7f3a").await;
    let connected = next_agent_event(&mut fleet).await;
    assert_eq!(
        summary(&connected),
        (
            "order-7f3a",
            "order-prod",
            &json!("LIVE"),
            &json!("LIVE"),
            &json!(true)
        )
    );

    // The same registration again changes nothing a reader would see...
    server.register("order-7f3a", "order-prod").await;
    // ...a new version does.
    let response = server
        .post_json(
            "/api/v1/agents/register",
            &json!({"agentId": "order-7f3a", "name": "order-service", "group": "order-canary",
                    "version": "1.5.0"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let changed = next_agent_event(&mut fleet).await;
    assert_eq!(
        summary(&changed),
        (
            "order-7f3a",
            "order-canary",
            &json!("LIVE"),
            &json!("LIVE"),
            &json!(true)
        )
    );
    assert_eq!(
        changed["at"],
        status_changed_at(&server, "order-7f3a").await
    );

    drop(stream);
    let disconnected = next_agent_event(&mut fleet).await;
    assert_eq!(
        summary(&disconnected),
        (
            "order-7f3a",
            "order-canary",
            &json!("LIVE"),
            &json!("LIVE"),
            &json!(false)
        )
    );
    assert_eq!(
        server.agent("order-7f3a").await.unwrap()["connected"],
        false
    );
}

#[tokio::test]
async fn the_fleet_stream_opens_with_a_comment_and_keeps_alive_when_idle() {
    let server = TestServer::start_with(|c| c.sse.keepalive = Duration::from_millis(100)).await;
    let mut raw = RawStream::open_path(&server, "/api/v1/events").await;
    assert!(raw.read_until(": open", 1, PROMPTLY).await, "{}", raw.text);
    assert!(
        raw.read_until(": keepalive", 2, PROMPTLY).await,
        "{}",
        raw.text
    );
    server.register("a-1", "g").await;
    assert!(raw.read_until("event: agent\ndata: {", 1, PROMPTLY).await);
}

#[tokio::test]
async fn nothing_is_replayed_a_reader_sees_only_what_changes_after_it_opened() {
    let server = TestServer::start().await;
    server.register("before", "g").await;
    let mut fleet = server.open_fleet_stream().await;
    server.register("after", "g").await;
    let event = next_agent_event(&mut fleet).await;
    assert_eq!(event["agentId"], "after");
}

#[tokio::test]
async fn a_reader_that_falls_behind_loses_its_stream_and_the_registry_answers_on() {
    let server = TestServer::start_with(|c| {
        c.sse.fleet_queue = 4;
        c.lifecycle.stale_after = Duration::from_millis(50);
        c.lifecycle.dead_after = Duration::from_millis(50);
        // The whole fleet dies at once here: without the brake (SPEC 13).
        c.lifecycle.brake_threshold = 1.0;
    })
    .await;
    for n in 0..10 {
        server.register(&format!("a-{n}"), "g").await;
    }
    eventually(PROMPTLY, "every agent DEAD", || async {
        let dead = server.get("/api/v1/agents?status=DEAD").await;
        dead.json::<Vec<Value>>().await.unwrap().len() == 10
    })
    .await;

    // One bulk delete sends ten events at once: more than a reader may be behind.
    let mut behind = server.open_fleet_stream().await;
    let response = server
        .delete("/api/v1/agents?status=DEAD&confirm=true")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"deleted": 10})
    );
    behind.expect_end().await;

    // A client lists again and follows anew.
    let mut fleet = server.open_fleet_stream().await;
    server.register("a-10", "g").await;
    assert_eq!(next_agent_event(&mut fleet).await["agentId"], "a-10");
}

#[tokio::test]
async fn shutting_down_ends_the_fleet_stream() {
    let mut server = TestServer::start().await;
    let mut fleet = server.open_fleet_stream().await;
    server.begin_shutdown();
    fleet.expect_end().await;
    server.finished().await.expect("a clean shutdown");
}
