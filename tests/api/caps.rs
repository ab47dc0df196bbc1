//! SPEC 13's caps on what the registry holds, over HTTP: an agent at
//! `commands.max_unfinished_per_agent` answers 429 with `Retry-After` and is
//! skipped by group and fleet commands (counted in `skipped`); a command or
//! rollout past `commands.max_retained` or `commands.max_retained_bytes` is 429
//! and nothing of it is stored; a new agent past `lifecycle.max_agents` is 429.

use registry_tests::{TestServer, assert_problem};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

async fn register(server: &TestServer, agent_id: &str, group: &str) {
    let (status, body) = server.register(agent_id, group).await;
    assert!(status.is_success(), "register {agent_id}: {status} {body}");
}

async fn push(server: &TestServer, path: &str, body: &Value) -> Response {
    server.post_json(path, body).await
}

/// Asserts a 429 problem with a whole number of seconds in `Retry-After`;
/// returns the seconds and the detail.
async fn too_many(response: Response) -> (u64, String) {
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
        .expect("Retry-After in whole seconds");
    let problem = assert_problem(response, StatusCode::TOO_MANY_REQUESTS).await;
    let detail = problem["detail"].as_str().expect("a detail").to_owned();
    (retry_after, detail)
}

async fn commands_of(server: &TestServer, agent_id: &str) -> Vec<Value> {
    let response = server
        .get(&format!("/api/v1/agents/{agent_id}/commands"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("a list")
}

#[tokio::test]
async fn an_agent_at_max_unfinished_is_429_with_retry_after_and_skipped_by_rollouts() {
    let server =
        TestServer::start_with(|config| config.commands.max_unfinished_per_agent = 2).await;
    for id in ["cap-1", "cap-2", "cap-3"] {
        register(&server, id, "capped").await;
    }
    for _ in 0..2 {
        let (status, body) = server.send("cap-2", "replay", json!({})).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }

    let response = push(
        &server,
        "/api/v1/agents/cap-2/commands",
        &json!({"type": "replay"}),
    )
    .await;
    let (retry_after, detail) = too_many(response).await;
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert!(
        detail.contains("cap-2") && detail.contains("commands.max_unfinished_per_agent"),
        "{detail}"
    );
    assert_eq!(
        commands_of(&server, "cap-2").await.len(),
        2,
        "nothing stored"
    );

    for path in [
        "/api/v1/agents/groups/capped/commands",
        "/api/v1/agents/commands",
    ] {
        let response = push(&server, path, &json!({"type": "replay"})).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{path}");
        let rollout: Value = response.json().await.unwrap();
        assert_eq!(rollout["targeted"], 2, "{path}: {rollout}");
        assert_eq!(rollout["skipped"], 1, "{path}: {rollout}");
        let targets: Vec<&str> = rollout["commands"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| pair["agentId"].as_str().unwrap())
            .collect();
        assert_eq!(targets, ["cap-1", "cap-3"], "{path}");
    }
    // cap-1 and cap-3 are at the cap now too: the fleet skips all three.
    let response = push(
        &server,
        "/api/v1/agents/commands",
        &json!({"type": "replay"}),
    )
    .await;
    let rollout: Value = response.json().await.unwrap();
    assert_eq!(
        (&rollout["targeted"], &rollout["skipped"]),
        (&json!(0), &json!(3))
    );
}

#[tokio::test]
async fn past_max_retained_a_rollout_is_429_and_nothing_of_it_is_stored() {
    let server = TestServer::start_with(|config| config.commands.max_retained = 4).await;
    for id in ["ret-1", "ret-2", "ret-3"] {
        register(&server, id, "retained").await;
    }
    let response = push(
        &server,
        "/api/v1/agents/groups/retained/commands",
        &json!({"type": "replay"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    let response = push(
        &server,
        "/api/v1/agents/commands",
        &json!({"type": "replay"}),
    )
    .await;
    let (_, detail) = too_many(response).await;
    assert!(detail.contains("commands.max_retained"), "{detail}");
    for id in ["ret-1", "ret-2", "ret-3"] {
        assert_eq!(
            commands_of(&server, id).await.len(),
            1,
            "{id}: nothing stored"
        );
    }
    // One more fits, then a single command is refused too.
    let (status, _) = server.send("ret-1", "replay", json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let response = push(
        &server,
        "/api/v1/agents/ret-2/commands",
        &json!({"type": "replay"}),
    )
    .await;
    too_many(response).await;
}

#[tokio::test]
async fn past_max_retained_bytes_is_429_and_a_rollouts_payload_counts_once() {
    let server = TestServer::start_with(|config| config.commands.max_retained_bytes = 10_000).await;
    for n in 0..20 {
        register(&server, &format!("bytes-{n}"), "bytes").await;
    }
    // 6,000 bytes to 20 agents count 6,000, not 120,000.
    let blob = "x".repeat(6_000);
    let body = json!({"type": "config-update", "payload": {"blob": blob}});
    let response = push(&server, "/api/v1/agents/groups/bytes/commands", &body).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let held = server.metric("registry_command_payload_bytes").await;
    assert_eq!(held, (6_000 + r#"{"blob":""}"#.len()) as f64);

    let response = push(&server, "/api/v1/agents/commands", &body).await;
    let (_, detail) = too_many(response).await;
    assert!(detail.contains("commands.max_retained_bytes"), "{detail}");
    assert_eq!(
        commands_of(&server, "bytes-0").await.len(),
        1,
        "nothing stored"
    );
    let response = push(&server, "/api/v1/agents/bytes-0/commands", &body).await;
    too_many(response).await;
}

#[tokio::test]
async fn past_max_agents_a_new_agent_is_429_and_a_known_one_registers_again() {
    let server = TestServer::start_with(|config| config.lifecycle.max_agents = 2).await;
    register(&server, "held-1", "held").await;
    register(&server, "held-2", "held").await;

    let response = server
        .post_json(
            "/api/v1/agents/register",
            &json!({"agentId": "held-3", "name": "n", "group": "held"}),
        )
        .await;
    let (retry_after, detail) = too_many(response).await;
    assert!(retry_after >= 1);
    assert!(detail.contains("lifecycle.max_agents"), "{detail}");
    assert!(server.agent("held-3").await.is_none());

    let (status, _) = server.register("held-1", "held").await;
    assert_eq!(status, StatusCode::OK, "a known agent resumes");
    assert_eq!(
        server.delete("/api/v1/agents/held-2").await.status(),
        StatusCode::NO_CONTENT
    );
    register(&server, "held-3", "held").await;
}
