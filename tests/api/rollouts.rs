//! SPEC 11, rollouts over HTTP: `GET /api/v1/rollouts/{rolloutId}` counting a
//! group or fleet command's commands by status as agents acknowledge them,
//! `done` once none is unfinished, a deleted agent's command counted EXPIRED,
//! `GET /api/v1/rollouts` newest first, 404 for an unknown or malformed id;
//! and the `rollout` events of the fleet stream: coalesced, the one with
//! `done: true` last and once.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use registry_tests::{EventStream, TestServer, assert_problem};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Every field of a rollout view (SPEC 11).
const VIEW_FIELDS: [&str; 14] = [
    "rolloutId",
    "type",
    "target",
    "createdAt",
    "expiresAt",
    "targeted",
    "skipped",
    "pending",
    "delivered",
    "acknowledged",
    "succeeded",
    "failed",
    "expired",
    "done",
];

async fn register(server: &TestServer, agent_id: &str, group: &str) {
    let (status, body) = server.register(agent_id, group).await;
    assert!(status.is_success(), "register {agent_id}: {status} {body}");
}

/// Sends `body` to `path` (a group or the fleet); returns the rollout's answer.
async fn push(server: &TestServer, path: &str, body: Value) -> Value {
    let response = server.post_json(path, &body).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    response.json().await.expect("a rollout")
}

async fn rollout(server: &TestServer, rollout_id: &str) -> Value {
    let response = server.get(&format!("/api/v1/rollouts/{rollout_id}")).await;
    assert_eq!(response.status(), StatusCode::OK, "rollout {rollout_id}");
    response.json().await.expect("a rollout view")
}

/// Acknowledges the rollout's command for `agent_id` with `result`.
async fn ack(server: &TestServer, answer: &Value, agent_id: &str, result: &str) {
    let command = answer["commands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|pair| pair["agentId"] == agent_id)
        .expect("a command for the agent");
    let path = format!(
        "/api/v1/agents/{agent_id}/commands/{}/ack",
        command["commandId"].as_str().unwrap()
    );
    let response = server.post_json(&path, &json!({"result": result})).await;
    assert_eq!(response.status(), StatusCode::OK, "ack {agent_id}");
}

/// `[pending, delivered, acknowledged, succeeded, failed, expired]` and `done`.
fn counts(view: &Value) -> (Vec<u64>, bool) {
    let counts = [
        "pending",
        "delivered",
        "acknowledged",
        "succeeded",
        "failed",
        "expired",
    ]
    .map(|field| {
        view[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field} in {view}"))
    });
    (counts.to_vec(), view["done"].as_bool().expect("done"))
}

#[tokio::test]
async fn a_group_commands_rollout_counts_its_commands_as_agents_acknowledge() {
    let server = TestServer::start().await;
    for id in ["web-1", "web-2", "web-3"] {
        register(&server, id, "web-prod").await;
    }
    let _stream = server.open_stream("web-2").await;
    let answer = push(
        &server,
        "/api/v1/agents/groups/web-prod/commands",
        json!({"type": "config-update", "payload": {"sampling": 0.5}}),
    )
    .await;
    let id = answer["rolloutId"].as_str().unwrap();

    let view = rollout(&server, id).await;
    let fields: BTreeSet<&str> = view
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fields, BTreeSet::from(VIEW_FIELDS));
    assert_eq!(view["rolloutId"], answer["rolloutId"]);
    assert_eq!(view["type"], "config-update");
    assert_eq!(view["target"], "group:web-prod");
    assert_eq!(view["createdAt"], answer["createdAt"]);
    assert_eq!(view["expiresAt"], answer["expiresAt"]);
    assert_eq!(
        (&view["targeted"], &view["skipped"]),
        (&json!(3), &json!(0))
    );
    assert_eq!(counts(&view), (vec![2, 1, 0, 0, 0, 0], false));

    ack(&server, &answer, "web-1", "SUCCESS").await;
    ack(&server, &answer, "web-2", "FAILURE").await;
    assert_eq!(
        counts(&rollout(&server, id).await),
        (vec![1, 0, 2, 1, 1, 0], false)
    );
    // web-3's command is dropped unfinished with its agent: EXPIRED, and the rollout is done.
    assert_eq!(
        server.delete("/api/v1/agents/web-3").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        counts(&rollout(&server, id).await),
        (vec![0, 0, 2, 1, 1, 1], true)
    );
}

#[tokio::test]
async fn rollouts_are_listed_newest_first_and_an_unknown_or_malformed_id_is_404() {
    let server = TestServer::start().await;
    register(&server, "list-1", "list-prod").await;
    let mut ids = Vec::new();
    for path in [
        "/api/v1/agents/commands",
        "/api/v1/agents/groups/list-prod/commands",
        "/api/v1/agents/commands",
    ] {
        let answer = push(&server, path, json!({"type": "replay"})).await;
        ids.push(answer["rolloutId"].as_str().unwrap().to_owned());
    }
    let response = server.get("/api/v1/rollouts").await;
    assert_eq!(response.status(), StatusCode::OK);
    let listed: Vec<Value> = response.json().await.unwrap();
    let listed: Vec<&str> = listed
        .iter()
        .map(|view| view["rolloutId"].as_str().unwrap())
        .collect();
    ids.reverse();
    assert_eq!(listed, ids);
    let targets = rollout(&server, &ids[2]).await;
    assert_eq!(targets["target"], "fleet");

    for id in ["0190f0c2-0000-7000-8000-00000000beef", "not-a-uuid", "%20"] {
        let response = server.get(&format!("/api/v1/rollouts/{id}")).await;
        let problem = assert_problem(response, StatusCode::NOT_FOUND).await;
        assert!(
            problem["detail"].as_str().unwrap().contains("rollout"),
            "{problem}"
        );
    }
}

/// The next `rollout` event's data (agent events skipped) and when it came.
async fn next_rollout_event(fleet: &mut EventStream) -> (Instant, Value) {
    loop {
        let event = fleet.next_event().await.expect("an event");
        if event.event == "rollout" {
            return (
                Instant::now(),
                serde_json::from_str(&event.data).expect("JSON data"),
            );
        }
    }
}

#[tokio::test]
async fn the_fleet_stream_carries_a_rollouts_counts_coalesced_and_done_last_and_once() {
    let server = TestServer::start().await;
    let agents: Vec<String> = (0..6).map(|n| format!("wave-{n}")).collect();
    for id in &agents {
        register(&server, id, "wave-prod").await;
    }
    let mut fleet = server.open_fleet_stream().await;
    let started = Instant::now();
    let answer = push(
        &server,
        "/api/v1/agents/groups/wave-prod/commands",
        json!({"type": "replay"}),
    )
    .await;
    for id in &agents {
        ack(&server, &answer, id, "SUCCESS").await;
    }
    let acked = started.elapsed();

    let mut seen = Vec::new();
    loop {
        let (at, view) = next_rollout_event(&mut fleet).await;
        assert_eq!(view["rolloutId"], answer["rolloutId"]);
        let done = view["done"].as_bool().unwrap();
        seen.push((at, view));
        if done {
            break;
        }
    }
    let (_, last) = seen.last().unwrap();
    assert_eq!(counts(last), (vec![0, 0, 6, 6, 0, 0], true));
    assert_eq!(
        *last,
        rollout(&server, answer["rolloutId"].as_str().unwrap()).await
    );
    // Six acks and a creation, at most one event per 500 ms before done.
    let running = seen.len() - 1;
    let windows = 1 + acked.as_millis() as usize / 500 + 1;
    assert!(
        (1..=windows).contains(&running),
        "{running} events before done for acks within {acked:?}: {seen:?}"
    );
    for pair in seen.windows(2).take(running.saturating_sub(1)) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_millis(450),
            "two events {gap:?} apart"
        );
    }
    // Done goes out once: nothing more for this rollout.
    fleet.expect_nothing_for(Duration::from_millis(700)).await;
}

#[tokio::test]
async fn a_rollout_to_nobody_is_announced_done_at_once() {
    let server = TestServer::start().await;
    let mut fleet = server.open_fleet_stream().await;
    let answer = push(
        &server,
        "/api/v1/agents/commands",
        json!({"type": "replay"}),
    )
    .await;
    let (_, view) = next_rollout_event(&mut fleet).await;
    assert_eq!(view["rolloutId"], answer["rolloutId"]);
    assert_eq!(counts(&view), (vec![0, 0, 0, 0, 0, 0], true));
    fleet.expect_nothing_for(Duration::from_millis(700)).await;
}
