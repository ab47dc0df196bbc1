//! SPEC 2 over HTTP: LIVE -> STALE -> DEAD on the server's deadlines, revival by heartbeat or registration, and transitions counted in /metrics.

use std::time::Duration;

use registry_tests::{TestServer, eventually, now_millis, unix_millis};
use reqwest::StatusCode;
use serde_json::Value;

const STALE_AFTER_MS: u64 = 300;
const DEAD_AFTER_MS: u64 = 300;
/// SPEC 2: a transition happens within 1 second of its deadline.
const TRANSITION_SLACK: Duration = Duration::from_secs(1);

/// A server whose agents go STALE after `stale_ms` and DEAD `dead_ms` later.
async fn server_with(stale_ms: u64, dead_ms: u64) -> TestServer {
    TestServer::start_with(|c| {
        c.lifecycle.stale_after = Duration::from_millis(stale_ms);
        c.lifecycle.dead_after = Duration::from_millis(dead_ms);
    })
    .await
}

/// A server with the short timings of this file.
async fn short_server() -> TestServer {
    server_with(STALE_AFTER_MS, DEAD_AFTER_MS).await
}

/// Waits, at most `deadline` plus the slack the SPEC allows, until the agent has `status`.
async fn wait_for_status(server: &TestServer, agent_id: &str, status: &str, deadline: Duration) {
    eventually(
        deadline + TRANSITION_SLACK,
        &format!("{agent_id} turns {status}"),
        || async { server.status_of(agent_id).await == status },
    )
    .await;
}

/// The agent view; panics unless it is registered.
async fn view(server: &TestServer, agent_id: &str) -> Value {
    server.agent(agent_id).await.expect("a registered agent")
}

/// The `registry_transitions_total` sample from `from` to `to`.
async fn transitions(server: &TestServer, from: &str, to: &str) -> f64 {
    server
        .metric(&format!(
            "registry_transitions_total{{from=\"{from}\",to=\"{to}\"}}"
        ))
        .await
}

#[tokio::test]
async fn a_live_agent_turns_stale_once_stale_after_passes_without_a_heartbeat() {
    let server = server_with(STALE_AFTER_MS, 60_000).await;
    let (status, _) = server.register("a-1", "g").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        server.status_of("a-1").await,
        "LIVE",
        "not STALE before stale_after"
    );
    wait_for_status(
        &server,
        "a-1",
        "STALE",
        Duration::from_millis(STALE_AFTER_MS),
    )
    .await;
    let agent = view(&server, "a-1").await;
    assert_eq!(
        agent["lastHeartbeatAt"], agent["registeredAt"],
        "going STALE is not a heartbeat"
    );
}

#[tokio::test]
async fn a_stale_agents_status_changed_at_is_last_heartbeat_plus_stale_after() {
    let server = server_with(STALE_AFTER_MS, 60_000).await;
    server.register("a-1", "g").await;
    wait_for_status(
        &server,
        "a-1",
        "STALE",
        Duration::from_millis(STALE_AFTER_MS),
    )
    .await;
    let agent = view(&server, "a-1").await;
    let gap = unix_millis(&agent["statusChangedAt"]) - unix_millis(&agent["lastHeartbeatAt"]);
    assert_eq!(
        gap,
        i64::try_from(STALE_AFTER_MS).unwrap(),
        "statusChangedAt - lastHeartbeatAt: {agent}"
    );
}

#[tokio::test]
async fn heartbeats_at_intervals_under_stale_after_keep_an_agent_live() {
    let server = server_with(500, 60_000).await;
    server.register("a-1", "g").await;
    let registered = view(&server, "a-1").await;
    let started = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    // Longer than stale_after, heartbeating every fifth of it.
    while started.elapsed() < Duration::from_millis(800) {
        ticks.tick().await;
        assert_eq!(server.heartbeat("a-1").await, StatusCode::NO_CONTENT);
        assert_eq!(server.status_of("a-1").await, "LIVE");
    }
    let agent = view(&server, "a-1").await;
    assert_eq!(
        agent["statusChangedAt"], registered["statusChangedAt"],
        "the status never changed: {agent}"
    );
    assert!(unix_millis(&agent["lastHeartbeatAt"]) > unix_millis(&registered["lastHeartbeatAt"]));
    assert_eq!(transitions(&server, "LIVE", "STALE").await, 0.0);
}

#[tokio::test]
async fn a_stale_agent_turns_dead_once_dead_after_passes() {
    let server = short_server().await;
    server.register("a-1", "g").await;
    wait_for_status(
        &server,
        "a-1",
        "STALE",
        Duration::from_millis(STALE_AFTER_MS),
    )
    .await;
    wait_for_status(&server, "a-1", "DEAD", Duration::from_millis(DEAD_AFTER_MS)).await;
    let agent = view(&server, "a-1").await;
    let gap = unix_millis(&agent["statusChangedAt"]) - unix_millis(&agent["lastHeartbeatAt"]);
    assert_eq!(
        gap,
        i64::try_from(STALE_AFTER_MS + DEAD_AFTER_MS).unwrap(),
        "DEAD dead_after after STALE, which was stale_after after the heartbeat: {agent}"
    );
}

#[tokio::test]
async fn a_stale_agent_that_heartbeats_is_live_again_from_that_moment() {
    let server = server_with(STALE_AFTER_MS, 60_000).await;
    server.register("a-1", "g").await;
    wait_for_status(
        &server,
        "a-1",
        "STALE",
        Duration::from_millis(STALE_AFTER_MS),
    )
    .await;
    let stale = view(&server, "a-1").await;

    let before = now_millis();
    assert_eq!(server.heartbeat("a-1").await, StatusCode::NO_CONTENT);
    let revived = view(&server, "a-1").await;
    assert_eq!(revived["status"], "LIVE");
    let changed = unix_millis(&revived["statusChangedAt"]);
    assert!(
        changed >= before,
        "statusChangedAt {changed} is the revival, not before {before}"
    );
    assert!(changed > unix_millis(&stale["statusChangedAt"]));
    assert_eq!(
        revived["statusChangedAt"], revived["lastHeartbeatAt"],
        "revived by that heartbeat"
    );
    assert_eq!(revived["registeredAt"], stale["registeredAt"]);
}

#[tokio::test]
async fn a_dead_agent_that_heartbeats_is_live_again_and_its_lifecycle_restarts() {
    let server = short_server().await;
    server.register("a-1", "g").await;
    wait_for_status(
        &server,
        "a-1",
        "DEAD",
        Duration::from_millis(STALE_AFTER_MS + DEAD_AFTER_MS),
    )
    .await;
    let before = now_millis();
    assert_eq!(server.heartbeat("a-1").await, StatusCode::NO_CONTENT);
    let revived = view(&server, "a-1").await;
    assert_eq!(revived["status"], "LIVE");
    assert!(unix_millis(&revived["statusChangedAt"]) >= before);
    assert_eq!(revived["statusChangedAt"], revived["lastHeartbeatAt"]);
    // Its deadlines run again from the heartbeat.
    wait_for_status(
        &server,
        "a-1",
        "STALE",
        Duration::from_millis(STALE_AFTER_MS),
    )
    .await;
}

#[tokio::test]
async fn re_registering_a_dead_agent_revives_it_with_200_and_resumed_true() {
    let server = short_server().await;
    server.register("a-1", "g").await;
    let registered = view(&server, "a-1").await;
    wait_for_status(
        &server,
        "a-1",
        "DEAD",
        Duration::from_millis(STALE_AFTER_MS + DEAD_AFTER_MS),
    )
    .await;
    let before = now_millis();
    let (status, body) = server.register("a-1", "g").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["resumed"], true);
    assert_eq!(body["status"], "LIVE");
    let revived = view(&server, "a-1").await;
    assert_eq!(revived["status"], "LIVE");
    assert_eq!(revived["registeredAt"], registered["registeredAt"]);
    assert!(unix_millis(&revived["statusChangedAt"]) >= before);
    assert!(unix_millis(&revived["lastHeartbeatAt"]) >= before);
}

#[tokio::test]
async fn re_registering_a_stale_agent_revives_it() {
    let server = server_with(STALE_AFTER_MS, 60_000).await;
    server.register("a-1", "g").await;
    wait_for_status(
        &server,
        "a-1",
        "STALE",
        Duration::from_millis(STALE_AFTER_MS),
    )
    .await;
    let (status, body) = server.register("a-1", "g").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["resumed"], true);
    assert_eq!(body["status"], "LIVE");
    assert_eq!(server.status_of("a-1").await, "LIVE");
}

#[tokio::test]
async fn dead_agents_are_kept_and_listed() {
    let server = short_server().await;
    server.register("a-1", "g").await;
    wait_for_status(
        &server,
        "a-1",
        "DEAD",
        Duration::from_millis(STALE_AFTER_MS + DEAD_AFTER_MS),
    )
    .await;
    let response = server.get("/api/v1/agents").await;
    assert_eq!(response.status(), StatusCode::OK);
    let list: Value = response.json().await.unwrap();
    let agents = list.as_array().unwrap();
    assert_eq!(agents.len(), 1, "{list}");
    assert_eq!(agents[0]["agentId"], "a-1");
    assert_eq!(agents[0]["status"], "DEAD");
    let dead: Value = server
        .get("/api/v1/agents?status=dead&group=g")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(dead.as_array().unwrap().len(), 1, "{dead}");
    // A DEAD agent has no further deadline: still there and still DEAD.
    let agent = view(&server, "a-1").await;
    assert_eq!(agent["status"], "DEAD");
    assert_eq!(agent["name"], "order-service");
}

#[tokio::test]
async fn an_open_stream_is_not_a_heartbeat() {
    let server = server_with(STALE_AFTER_MS, 60_000).await;
    server.register("a-1", "g").await;
    let _stream = server.open_stream("a-1").await;
    assert_eq!(view(&server, "a-1").await["connected"], true);
    wait_for_status(
        &server,
        "a-1",
        "STALE",
        Duration::from_millis(STALE_AFTER_MS),
    )
    .await;
    let agent = view(&server, "a-1").await;
    assert_eq!(agent["connected"], true, "the stream is still open");
    assert_eq!(agent["lastHeartbeatAt"], agent["registeredAt"]);
}

#[tokio::test]
async fn transitions_are_counted_in_metrics() {
    let server = short_server().await;
    server.register("a-1", "g").await;
    for (from, to) in [
        ("LIVE", "STALE"),
        ("STALE", "DEAD"),
        ("STALE", "LIVE"),
        ("DEAD", "LIVE"),
    ] {
        assert_eq!(transitions(&server, from, to).await, 0.0, "{from} -> {to}");
    }
    // LIVE -> STALE, revived: STALE -> LIVE.
    wait_for_status(
        &server,
        "a-1",
        "STALE",
        Duration::from_millis(STALE_AFTER_MS),
    )
    .await;
    assert_eq!(server.heartbeat("a-1").await, StatusCode::NO_CONTENT);
    // LIVE -> STALE -> DEAD, revived: DEAD -> LIVE.
    wait_for_status(
        &server,
        "a-1",
        "DEAD",
        Duration::from_millis(STALE_AFTER_MS + DEAD_AFTER_MS),
    )
    .await;
    assert_eq!(server.heartbeat("a-1").await, StatusCode::NO_CONTENT);

    assert_eq!(transitions(&server, "LIVE", "STALE").await, 2.0);
    assert_eq!(transitions(&server, "STALE", "LIVE").await, 1.0);
    assert_eq!(transitions(&server, "STALE", "DEAD").await, 1.0);
    assert_eq!(transitions(&server, "DEAD", "LIVE").await, 1.0);
    assert_eq!(server.metric("registry_agents{status=\"LIVE\"}").await, 1.0);
    assert_eq!(server.metric("registry_agents{status=\"DEAD\"}").await, 0.0);
}
