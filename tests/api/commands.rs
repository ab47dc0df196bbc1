//! SPEC 3.2 and 4, commands: sending to one agent, a group or the fleet, the
//! command view, listing and reading, acknowledgement, expiry, retention, and
//! commands by status in `/metrics`.

use std::collections::BTreeSet;
use std::time::Duration;

use registry_tests::{TestServer, assert_problem, eventually, now_millis, unix_millis};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

/// Long enough for a short server-clock deadline to pass, well under a test's budget.
const WITHIN: Duration = Duration::from_secs(2);

/// `lifecycle.stale_after` in the tests that keep some agents LIVE while
/// another goes STALE: the kept agents' heartbeats must come less than this
/// apart, on a loaded CI machine too (400 ms once was not: a kept agent went
/// STALE between two rounds of heartbeats).
const KEEP_LIVE_STALE_AFTER: Duration = Duration::from_millis(1_500);

/// Every field of a command view (SPEC 4).
const VIEW_FIELDS: [&str; 11] = [
    "commandId",
    "agentId",
    "type",
    "payload",
    "status",
    "createdAt",
    "expiresAt",
    "deliveredAt",
    "acknowledgedAt",
    "result",
    "message",
];

/// Every field of the answer to a group or fleet command (SPEC 3.2).
const ROLLOUT_FIELDS: [&str; 8] = [
    "rolloutId",
    "type",
    "payload",
    "targeted",
    "skipped",
    "createdAt",
    "expiresAt",
    "commands",
];

/// The command view of each `{commandId, agentId}` of a rollout's answer.
async fn views_of(server: &TestServer, rollout: &Value) -> Vec<Value> {
    let mut views = Vec::new();
    for pair in rollout["commands"].as_array().expect("a list of commands") {
        assert_eq!(
            keys(pair),
            BTreeSet::from(["commandId", "agentId"]),
            "{pair}"
        );
        let agent_id = pair["agentId"].as_str().expect("an agentId");
        let (status, view) = get_command(server, agent_id, &id_of(pair)).await;
        assert_eq!(status, StatusCode::OK, "{pair}");
        views.push(view);
    }
    views
}

/// Asserts that `body` is a rollout's answer of `kind` that targeted nobody.
fn assert_targets_nobody(body: &Value, kind: &str) {
    assert_eq!(keys(body), BTreeSet::from(ROLLOUT_FIELDS), "{body}");
    assert!(is_uuid(body["rolloutId"].as_str().unwrap()), "{body}");
    assert_eq!(body["type"], kind);
    assert_eq!(body["payload"], json!({}));
    assert_eq!(
        (&body["targeted"], &body["skipped"]),
        (&json!(0), &json!(0))
    );
    assert_eq!(body["commands"], json!([]));
}

/// Whether `text` is a UUID written 8-4-4-4-12 in hex.
fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|group| group.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|group| group.chars().all(|c| c.is_ascii_hexdigit()))
}

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("a JSON object, got {value}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn id_of(command: &Value) -> String {
    command["commandId"]
        .as_str()
        .unwrap_or_else(|| panic!("a commandId in {command}"))
        .to_owned()
}

async fn register(server: &TestServer, agent_id: &str, group: &str) {
    let (status, body) = server.register(agent_id, group).await;
    assert!(status.is_success(), "register {agent_id}: {status} {body}");
}

/// Sends a command that must be accepted; returns the command view.
async fn send(server: &TestServer, agent_id: &str, kind: &str, payload: Value) -> Value {
    let (status, command) = server.send(agent_id, kind, payload).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "send to {agent_id}: {command}"
    );
    command
}

fn command_path(agent_id: &str, command_id: &str) -> String {
    format!("/api/v1/agents/{agent_id}/commands/{command_id}")
}

fn ack_path(agent_id: &str, command_id: &str) -> String {
    format!("/api/v1/agents/{agent_id}/commands/{command_id}/ack")
}

/// `GET` one command: the status and, for 200, the view.
async fn get_command(server: &TestServer, agent_id: &str, command_id: &str) -> (StatusCode, Value) {
    let response = server.get(&command_path(agent_id, command_id)).await;
    let status = response.status();
    (status, response.json().await.expect("a JSON body"))
}

async fn status_of_command(server: &TestServer, agent_id: &str, command_id: &str) -> String {
    let (status, command) = get_command(server, agent_id, command_id).await;
    assert_eq!(status, StatusCode::OK, "{command}");
    command["status"].as_str().expect("a status").to_owned()
}

/// `GET` the agent's commands; panics unless 200.
async fn list(server: &TestServer, agent_id: &str) -> Vec<Value> {
    let response = server
        .get(&format!("/api/v1/agents/{agent_id}/commands"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("a JSON array");
    body.as_array().expect("a JSON array").clone()
}

async fn ack(server: &TestServer, agent_id: &str, command_id: &str, body: &Value) -> Response {
    server
        .post_json(&ack_path(agent_id, command_id), body)
        .await
}

/// `POST` a command to a group or the fleet: the status and the body.
async fn send_many(server: &TestServer, path: &str, body: &Value) -> (StatusCode, Value) {
    let response = server.post_json(path, body).await;
    let status = response.status();
    (status, response.json().await.expect("a JSON body"))
}

/// Asserts `response` is a problem with `status`; returns its `detail`.
async fn problem_detail(response: Response, status: StatusCode) -> String {
    let problem = assert_problem(response, status).await;
    problem["detail"].as_str().expect("a detail").to_owned()
}

/// Heartbeats `keep` until `target` is STALE.
async fn make_stale_while_heartbeating(server: &TestServer, target: &str, keep: &[&str]) {
    eventually(
        KEEP_LIVE_STALE_AFTER + WITHIN,
        "the one agent goes STALE",
        || async move {
            for id in keep {
                assert_eq!(server.heartbeat(id).await, StatusCode::NO_CONTENT);
            }
            server.status_of(target).await == "STALE"
        },
    )
    .await;
    for id in keep {
        assert_eq!(server.status_of(id).await, "LIVE", "{id} kept LIVE");
    }
}

#[tokio::test]
async fn a_command_answers_202_with_every_field_of_the_command_view() {
    let server = TestServer::start().await;
    register(&server, "view-1", "g").await;
    let before = now_millis();
    let response = server
        .post_json(
            "/api/v1/agents/view-1/commands",
            &json!({"type": "deep-trace", "payload": {"routeId": "route-1"}}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let command: Value = response.json().await.expect("a JSON command");

    assert_eq!(keys(&command), BTreeSet::from(VIEW_FIELDS), "{command}");
    assert!(is_uuid(&id_of(&command)), "{command}");
    assert_eq!(command["agentId"], "view-1");
    assert_eq!(command["type"], "deep-trace");
    assert_eq!(command["payload"], json!({"routeId": "route-1"}));
    assert_eq!(command["status"], "PENDING");
    for field in ["deliveredAt", "acknowledgedAt", "result", "message"] {
        assert_eq!(command[field], Value::Null, "{field}");
    }
    let created = unix_millis(&command["createdAt"]);
    assert!(
        (before - 1000..=now_millis() + 1000).contains(&created),
        "createdAt {} is not now",
        command["createdAt"]
    );
    assert_eq!(
        unix_millis(&command["expiresAt"]) - created,
        60_000,
        "expiresAt = createdAt + the default expiry of 60 s"
    );
}

#[tokio::test]
async fn expires_at_is_created_at_plus_the_configured_expiry() {
    let server = TestServer::start_with(|c| c.commands.expiry = Duration::from_millis(1_500)).await;
    register(&server, "exp-at-1", "g").await;
    let command = send(&server, "exp-at-1", "replay", json!({})).await;
    assert_eq!(
        unix_millis(&command["expiresAt"]) - unix_millis(&command["createdAt"]),
        1_500
    );
}

#[tokio::test]
async fn the_payload_defaults_to_an_empty_object() {
    let server = TestServer::start().await;
    register(&server, "pl-1", "g").await;
    let response = server
        .post_json("/api/v1/agents/pl-1/commands", &json!({"type": "replay"}))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let command: Value = response.json().await.unwrap();
    assert_eq!(command["payload"], json!({}));
}

#[tokio::test]
async fn the_payload_may_be_any_json_value_and_unknown_fields_are_ignored() {
    let server = TestServer::start().await;
    register(&server, "pl-2", "g").await;
    for payload in [json!([1, "two", {"three": 3}]), json!("text"), json!(42)] {
        let response = server
            .post_json(
                "/api/v1/agents/pl-2/commands",
                &json!({"type": "config-update", "payload": payload, "priority": "high"}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{payload}");
        let command: Value = response.json().await.unwrap();
        assert_eq!(command["payload"], payload);
        let (_, stored) = get_command(&server, "pl-2", &id_of(&command)).await;
        assert_eq!(stored["payload"], payload);
    }
}

#[tokio::test]
async fn a_command_is_pending_without_a_stream_and_delivered_with_one() {
    let server = TestServer::start().await;
    register(&server, "dlv-1", "g").await;
    let pending = send(&server, "dlv-1", "replay", json!({})).await;
    assert_eq!(pending["status"], "PENDING");
    assert_eq!(pending["deliveredAt"], Value::Null);

    let mut stream = server.open_stream("dlv-1").await;
    let delivered = send(&server, "dlv-1", "replay", json!({})).await;
    assert_eq!(delivered["status"], "DELIVERED");
    let delivered_at = unix_millis(&delivered["deliveredAt"]);
    assert!(delivered_at >= unix_millis(&delivered["createdAt"]));
    assert_eq!(
        stream.next_event().await.expect("an event").id,
        id_of(&delivered)
    );

    let (_, stored) = get_command(&server, "dlv-1", &id_of(&delivered)).await;
    assert_eq!(stored["status"], "DELIVERED");
    assert_eq!(stored["deliveredAt"], delivered["deliveredAt"]);
    assert_eq!(
        status_of_command(&server, "dlv-1", &id_of(&pending)).await,
        "PENDING",
        "opening a stream does not deliver what was pending"
    );
}

#[tokio::test]
async fn a_command_for_an_unknown_agent_is_404() {
    let server = TestServer::start().await;
    let response = server
        .post_json(
            "/api/v1/agents/ghost-1/commands",
            &json!({"type": "replay", "payload": {}}),
        )
        .await;
    let detail = problem_detail(response, StatusCode::NOT_FOUND).await;
    assert!(detail.contains("ghost-1"), "{detail}");
}

#[tokio::test]
async fn an_unknown_type_is_400_naming_the_allowed_types() {
    let server = TestServer::start().await;
    register(&server, "type-1", "g").await;
    let response = server
        .post_json(
            "/api/v1/agents/type-1/commands",
            &json!({"type": "reboot", "payload": {}}),
        )
        .await;
    let detail = problem_detail(response, StatusCode::BAD_REQUEST).await;
    for allowed in ["type", "config-update", "deep-trace", "replay"] {
        assert!(detail.contains(allowed), "{allowed} not in {detail:?}");
    }
    assert!(list(&server, "type-1").await.is_empty(), "nothing created");
}

#[tokio::test]
async fn the_configured_command_types_are_the_ones_allowed() {
    let server = TestServer::start_with(|c| {
        c.commands.types = vec!["restart".into(), "config-update".into()];
    })
    .await;
    register(&server, "type-2", "g").await;
    let restart = send(&server, "type-2", "restart", json!({"now": true})).await;
    assert_eq!(restart["type"], "restart");
    send(&server, "type-2", "config-update", json!({})).await;

    let response = server
        .post_json(
            "/api/v1/agents/type-2/commands",
            &json!({"type": "deep-trace"}),
        )
        .await;
    let detail = problem_detail(response, StatusCode::BAD_REQUEST).await;
    assert!(
        detail.contains("restart") && detail.contains("config-update"),
        "{detail:?}"
    );
}

#[tokio::test]
async fn stale_and_dead_agents_can_be_targeted() {
    let server = TestServer::start_with(|c| {
        c.lifecycle.stale_after = Duration::from_millis(200);
        c.lifecycle.dead_after = Duration::from_millis(600);
    })
    .await;
    register(&server, "old-1", "g").await;
    let s = &server;
    eventually(WITHIN, "the agent goes STALE", || async move {
        s.status_of("old-1").await == "STALE"
    })
    .await;
    let to_stale = send(&server, "old-1", "replay", json!({})).await;
    assert_eq!(to_stale["status"], "PENDING");
    assert_eq!(
        server.status_of("old-1").await,
        "STALE",
        "still STALE when sent"
    );

    eventually(WITHIN, "the agent goes DEAD", || async move {
        s.status_of("old-1").await == "DEAD"
    })
    .await;
    let to_dead = send(&server, "old-1", "replay", json!({})).await;
    assert_eq!(to_dead["status"], "PENDING");
    assert_eq!(list(&server, "old-1").await.len(), 2);
}

#[tokio::test]
async fn a_group_command_targets_only_the_live_members_of_that_group() {
    let server = TestServer::start_with(|c| c.lifecycle.stale_after = KEEP_LIVE_STALE_AFTER).await;
    for id in ["grp-a", "grp-b", "grp-c"] {
        register(&server, id, "orders").await;
    }
    register(&server, "other-a", "billing").await;
    make_stale_while_heartbeating(&server, "grp-c", &["grp-a", "grp-b", "other-a"]).await;

    let (status, body) = send_many(
        &server,
        "/api/v1/agents/groups/orders/commands",
        &json!({"type": "deep-trace", "payload": {"routeId": "route-9"}}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(keys(&body), BTreeSet::from(ROLLOUT_FIELDS));
    assert!(is_uuid(body["rolloutId"].as_str().unwrap()), "{body}");
    assert_eq!(body["type"], "deep-trace");
    assert_eq!(body["payload"], json!({"routeId": "route-9"}));
    assert_eq!(
        (&body["targeted"], &body["skipped"]),
        (&json!(2), &json!(0))
    );
    let targets: Vec<&str> = body["commands"]
        .as_array()
        .expect("a list of commands")
        .iter()
        .map(|command| command["agentId"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["grp-a", "grp-b"], "ordered by agentId");
    let commands = views_of(&server, &body).await;
    for command in &commands {
        assert_eq!(command["type"], "deep-trace");
        assert_eq!(command["payload"], json!({"routeId": "route-9"}));
        assert_eq!(command["status"], "PENDING");
        assert_eq!(command["rolloutId"], body["rolloutId"]);
        assert_eq!(command["createdAt"], body["createdAt"]);
        assert_eq!(command["expiresAt"], body["expiresAt"]);
    }
    assert_ne!(id_of(&commands[0]), id_of(&commands[1]));
    assert!(
        list(&server, "grp-c").await.is_empty(),
        "STALE not targeted"
    );
    assert!(list(&server, "other-a").await.is_empty(), "other group");
}

#[tokio::test]
async fn a_group_whose_members_are_all_stale_answers_202_with_none_targeted() {
    let server =
        TestServer::start_with(|c| c.lifecycle.stale_after = Duration::from_millis(200)).await;
    register(&server, "lone-1", "quiet-group").await;
    let s = &server;
    eventually(WITHIN, "the agent goes STALE", || async move {
        s.status_of("lone-1").await == "STALE"
    })
    .await;
    let (status, body) = send_many(
        &server,
        "/api/v1/agents/groups/quiet-group/commands",
        &json!({"type": "replay"}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_targets_nobody(&body, "replay");
}

#[tokio::test]
async fn a_group_no_agent_has_is_404() {
    let server = TestServer::start().await;
    register(&server, "some-1", "known-group").await;
    let response = server
        .post_json(
            "/api/v1/agents/groups/unknown-group/commands",
            &json!({"type": "replay"}),
        )
        .await;
    let detail = problem_detail(response, StatusCode::NOT_FOUND).await;
    assert!(detail.contains("unknown-group"), "{detail}");
}

#[tokio::test]
async fn an_agent_that_re_registers_in_another_group_leaves_its_old_group() {
    let server = TestServer::start().await;
    register(&server, "mover-1", "old-group").await;
    let (status, _) = server.register("mover-1", "new-group").await;
    assert_eq!(status, StatusCode::OK);

    let response = server
        .post_json(
            "/api/v1/agents/groups/old-group/commands",
            &json!({"type": "replay"}),
        )
        .await;
    problem_detail(response, StatusCode::NOT_FOUND).await;

    let (status, body) = send_many(
        &server,
        "/api/v1/agents/groups/new-group/commands",
        &json!({"type": "replay"}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["targeted"], 1);
    assert_eq!(body["commands"][0]["agentId"], "mover-1");
}

#[tokio::test]
async fn a_fleet_command_gives_each_live_agent_its_own_command_on_its_stream() {
    let server = TestServer::start_with(|c| c.lifecycle.stale_after = KEEP_LIVE_STALE_AFTER).await;
    register(&server, "fleet-a", "g1").await;
    register(&server, "fleet-b", "g2").await;
    register(&server, "fleet-c", "g1").await;
    let mut stream_a = server.open_stream("fleet-a").await;
    let mut stream_b = server.open_stream("fleet-b").await;
    make_stale_while_heartbeating(&server, "fleet-c", &["fleet-a", "fleet-b"]).await;

    let (status, body) = send_many(
        &server,
        "/api/v1/agents/commands",
        &json!({"type": "config-update", "payload": {"level": "debug"}}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(keys(&body), BTreeSet::from(ROLLOUT_FIELDS));
    assert_eq!(body["targeted"], 2);
    let commands = views_of(&server, &body).await;
    assert_eq!(commands.len(), 2);
    let id_for = |agent_id: &str| {
        commands
            .iter()
            .find(|command| command["agentId"] == agent_id)
            .map(id_of)
            .unwrap_or_else(|| panic!("no command for {agent_id} in {body}"))
    };
    let (id_a, id_b) = (id_for("fleet-a"), id_for("fleet-b"));
    assert_ne!(id_a, id_b);
    for command in commands {
        assert_eq!(command["status"], "DELIVERED", "{command}");
    }

    for (stream, id) in [(&mut stream_a, &id_a), (&mut stream_b, &id_b)] {
        let event = stream.next_event().await.expect("an event");
        assert_eq!(&event.id, id);
        assert_eq!(event.event, "config-update");
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(data["payload"], json!({"level": "debug"}));
        stream.expect_nothing_for(Duration::from_millis(100)).await;
    }
    assert!(
        list(&server, "fleet-c").await.is_empty(),
        "STALE not targeted"
    );
}

#[tokio::test]
async fn a_fleet_command_with_no_live_agent_targets_none() {
    let server = TestServer::start().await;
    let (status, body) = send_many(
        &server,
        "/api/v1/agents/commands",
        &json!({"type": "replay"}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_targets_nobody(&body, "replay");
}

#[tokio::test]
async fn group_and_fleet_commands_refuse_an_unknown_type_with_400() {
    let server = TestServer::start().await;
    register(&server, "many-1", "g").await;
    for path in [
        "/api/v1/agents/groups/g/commands",
        "/api/v1/agents/commands",
    ] {
        let response = server.post_json(path, &json!({"type": "reboot"})).await;
        let detail = problem_detail(response, StatusCode::BAD_REQUEST).await;
        assert!(detail.contains("config-update"), "{path}: {detail}");
    }
    assert!(list(&server, "many-1").await.is_empty());
}

#[tokio::test]
async fn an_agents_commands_are_listed_newest_first() {
    let server = TestServer::start().await;
    register(&server, "list-1", "g").await;
    register(&server, "list-2", "g").await;
    let mut sent = Vec::new();
    for n in 0..5 {
        sent.push(id_of(
            &send(&server, "list-1", "replay", json!({"n": n})).await,
        ));
    }
    send(&server, "list-2", "replay", json!({})).await;

    let listed = list(&server, "list-1").await;
    let listed_ids: Vec<String> = listed.iter().map(id_of).collect();
    sent.reverse();
    assert_eq!(listed_ids, sent);
    for command in &listed {
        assert_eq!(keys(command), BTreeSet::from(VIEW_FIELDS));
        assert_eq!(command["agentId"], "list-1");
    }
}

#[tokio::test]
async fn the_command_list_of_an_unknown_agent_is_404() {
    let server = TestServer::start().await;
    let response = server.get("/api/v1/agents/ghost-2/commands").await;
    problem_detail(response, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn one_command_is_read_by_its_id() {
    let server = TestServer::start().await;
    register(&server, "one-1", "g").await;
    let sent = send(&server, "one-1", "deep-trace", json!({"routeId": "r"})).await;
    let (status, read) = get_command(&server, "one-1", &id_of(&sent)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read, sent);
}

#[tokio::test]
async fn an_unknown_a_malformed_or_another_agents_command_id_is_404() {
    let server = TestServer::start().await;
    register(&server, "mine-1", "g").await;
    register(&server, "theirs-1", "g").await;
    let theirs = id_of(&send(&server, "theirs-1", "replay", json!({})).await);
    for command_id in [
        "0190f0c2-0000-7000-8000-000000000000",
        "not-a-uuid",
        theirs.as_str(),
    ] {
        let response = server.get(&command_path("mine-1", command_id)).await;
        problem_detail(response, StatusCode::NOT_FOUND).await;
    }
    let response = server.get(&command_path("ghost-3", &theirs)).await;
    problem_detail(response, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn an_ack_answers_200_acknowledged_with_success_by_default() {
    let server = TestServer::start().await;
    register(&server, "ack-1", "g").await;
    let id = id_of(&send(&server, "ack-1", "replay", json!({})).await);
    let response = ack(&server, "ack-1", &id, &json!({})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let acked: Value = response.json().await.unwrap();
    assert_eq!(keys(&acked), BTreeSet::from(VIEW_FIELDS));
    assert_eq!(acked["status"], "ACKNOWLEDGED");
    assert_eq!(acked["result"], "SUCCESS");
    assert_eq!(acked["message"], Value::Null);
    assert!(unix_millis(&acked["acknowledgedAt"]) >= unix_millis(&acked["createdAt"]));
    let (_, stored) = get_command(&server, "ack-1", &id).await;
    assert_eq!(stored, acked);
}

#[tokio::test]
async fn a_delivered_command_can_be_acknowledged() {
    let server = TestServer::start().await;
    register(&server, "ack-2", "g").await;
    let mut stream = server.open_stream("ack-2").await;
    let id = id_of(&send(&server, "ack-2", "deep-trace", json!({})).await);
    assert_eq!(stream.next_event().await.expect("an event").id, id);
    let response = ack(&server, "ack-2", &id, &json!({"result": "SUCCESS"})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let acked: Value = response.json().await.unwrap();
    assert_eq!(acked["status"], "ACKNOWLEDGED");
    assert!(acked["deliveredAt"].is_string(), "delivery is remembered");
}

#[tokio::test]
async fn an_ack_stores_a_failure_and_its_message() {
    let server = TestServer::start().await;
    register(&server, "ack-3", "g").await;
    let id = id_of(&send(&server, "ack-3", "replay", json!({})).await);
    let response = ack(
        &server,
        "ack-3",
        &id,
        &json!({"result": "FAILURE", "message": "boom"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let acked: Value = response.json().await.unwrap();
    assert_eq!(acked["status"], "ACKNOWLEDGED");
    assert_eq!(acked["result"], "FAILURE");
    assert_eq!(acked["message"], "boom");
    let (_, stored) = get_command(&server, "ack-3", &id).await;
    assert_eq!(stored["result"], "FAILURE");
    assert_eq!(stored["message"], "boom");
}

#[tokio::test]
async fn a_second_ack_answers_200_and_keeps_the_first_result() {
    let server = TestServer::start().await;
    register(&server, "ack-4", "g").await;
    let id = id_of(&send(&server, "ack-4", "replay", json!({})).await);
    let first: Value = ack(
        &server,
        "ack-4",
        &id,
        &json!({"result": "FAILURE", "message": "boom"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let response = ack(
        &server,
        "ack-4",
        &id,
        &json!({"result": "SUCCESS", "message": "fine after all"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let second: Value = response.json().await.unwrap();
    assert_eq!(second["result"], "FAILURE");
    assert_eq!(second["message"], "boom");
    assert_eq!(second["acknowledgedAt"], first["acknowledgedAt"]);
    assert_eq!(second, first);
}

#[tokio::test]
async fn an_ack_for_another_agents_an_unknown_command_or_an_unknown_agent_is_404() {
    let server = TestServer::start().await;
    register(&server, "ack-5", "g").await;
    register(&server, "ack-6", "g").await;
    let theirs = id_of(&send(&server, "ack-6", "replay", json!({})).await);

    let response = ack(&server, "ack-5", &theirs, &json!({})).await;
    problem_detail(response, StatusCode::NOT_FOUND).await;
    assert_eq!(
        status_of_command(&server, "ack-6", &theirs).await,
        "PENDING",
        "another agent can't acknowledge it"
    );
    let unknown = "0190f0c2-0000-7000-8000-000000000001";
    let response = ack(&server, "ack-5", unknown, &json!({})).await;
    problem_detail(response, StatusCode::NOT_FOUND).await;
    let response = ack(&server, "ghost-4", &theirs, &json!({})).await;
    problem_detail(response, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn an_ack_after_expiry_is_409() {
    let server = TestServer::start_with(|c| c.commands.expiry = Duration::from_millis(300)).await;
    register(&server, "late-1", "g").await;
    let id = id_of(&send(&server, "late-1", "replay", json!({})).await);
    let s = &server;
    let id = id.as_str();
    eventually(WITHIN, "the command expires", || async move {
        status_of_command(s, "late-1", id).await == "EXPIRED"
    })
    .await;
    let response = ack(&server, "late-1", id, &json!({"result": "SUCCESS"})).await;
    let detail = problem_detail(response, StatusCode::CONFLICT).await;
    assert!(detail.contains(id), "{detail}");
    let (_, stored) = get_command(&server, "late-1", id).await;
    assert_eq!(stored["status"], "EXPIRED");
    assert_eq!(stored["acknowledgedAt"], Value::Null);
    assert_eq!(stored["result"], Value::Null);
}

#[tokio::test]
async fn an_ack_with_an_empty_body_and_no_content_type_is_a_success() {
    let server = TestServer::start().await;
    register(&server, "ack-7", "g").await;
    let id = id_of(&send(&server, "ack-7", "replay", json!({})).await);
    let response = server.post_empty(&ack_path("ack-7", &id)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let acked: Value = response.json().await.unwrap();
    assert_eq!(acked["status"], "ACKNOWLEDGED");
    assert_eq!(acked["result"], "SUCCESS");
}

#[tokio::test]
async fn an_ack_with_a_body_that_is_not_json_is_415() {
    let server = TestServer::start().await;
    register(&server, "ack-8", "g").await;
    let id = id_of(&send(&server, "ack-8", "replay", json!({})).await);
    let response = server
        .client
        .post(server.url(&ack_path("ack-8", &id)))
        .header(CONTENT_TYPE, "text/plain")
        .body(r#"{"result":"FAILURE"}"#)
        .send()
        .await
        .unwrap();
    problem_detail(response, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    assert_eq!(status_of_command(&server, "ack-8", &id).await, "PENDING");
}

#[tokio::test]
async fn an_ack_with_an_unknown_result_is_400_naming_result() {
    let server = TestServer::start().await;
    register(&server, "ack-9", "g").await;
    let id = id_of(&send(&server, "ack-9", "replay", json!({})).await);
    let response = ack(&server, "ack-9", &id, &json!({"result": "MAYBE"})).await;
    let detail = problem_detail(response, StatusCode::BAD_REQUEST).await;
    assert!(detail.contains("result"), "{detail:?}");
    assert_eq!(status_of_command(&server, "ack-9", &id).await, "PENDING");
}

#[tokio::test]
async fn an_unacknowledged_command_expires_after_the_expiry() {
    let expiry = Duration::from_millis(300);
    let server = TestServer::start_with(|c| c.commands.expiry = expiry).await;
    register(&server, "exp-1", "g").await;
    let started = tokio::time::Instant::now();
    let pending = id_of(&send(&server, "exp-1", "replay", json!({})).await);
    let _stream = server.open_stream("exp-1").await;
    let delivered = send(&server, "exp-1", "replay", json!({})).await;
    assert_eq!(delivered["status"], "DELIVERED");
    let delivered = id_of(&delivered);

    let s = &server;
    for id in [pending.as_str(), delivered.as_str()] {
        eventually(WITHIN, "the command expires", || async move {
            status_of_command(s, "exp-1", id).await == "EXPIRED"
        })
        .await;
    }
    assert!(
        started.elapsed() >= expiry,
        "expired after {:?}, before its expiry",
        started.elapsed()
    );
    let (_, expired) = get_command(&server, "exp-1", &pending).await;
    assert_eq!(expired["acknowledgedAt"], Value::Null);
    assert_eq!(expired["result"], Value::Null);
}

#[tokio::test]
async fn an_acknowledged_command_is_dropped_after_the_retention() {
    let retention = Duration::from_millis(300);
    let server = TestServer::start_with(|c| c.commands.retention = retention).await;
    register(&server, "ret-1", "g").await;
    let id = id_of(&send(&server, "ret-1", "replay", json!({})).await);
    let kept = id_of(&send(&server, "ret-1", "replay", json!({})).await);
    let acked_at = tokio::time::Instant::now();
    let response = ack(&server, "ret-1", &id, &json!({})).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        status_of_command(&server, "ret-1", &id).await,
        "ACKNOWLEDGED",
        "still readable right after it became final"
    );

    let s = &server;
    let id = id.as_str();
    eventually(WITHIN, "the command is dropped", || async move {
        get_command(s, "ret-1", id).await.0 == StatusCode::NOT_FOUND
    })
    .await;
    assert!(
        acked_at.elapsed() >= retention,
        "dropped {:?} after the ack, before the retention",
        acked_at.elapsed()
    );
    let listed: Vec<String> = list(&server, "ret-1").await.iter().map(id_of).collect();
    assert_eq!(listed, [kept], "gone from the list too");
    let response = ack(&server, "ret-1", id, &json!({})).await;
    problem_detail(response, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn an_expired_command_is_kept_for_the_retention_from_the_moment_it_expired() {
    let expiry = Duration::from_millis(400);
    let retention = Duration::from_millis(400);
    let server = TestServer::start_with(|c| {
        c.commands.expiry = expiry;
        c.commands.retention = retention;
    })
    .await;
    register(&server, "ret-2", "g").await;
    let started = tokio::time::Instant::now();
    let id = id_of(&send(&server, "ret-2", "replay", json!({})).await);
    let s = &server;
    let id = id.as_str();
    eventually(WITHIN, "the command expires", || async move {
        status_of_command(s, "ret-2", id).await == "EXPIRED"
    })
    .await;
    assert_eq!(list(&server, "ret-2").await.len(), 1, "still listed");
    eventually(WITHIN, "the command is dropped", || async move {
        get_command(s, "ret-2", id).await.0 == StatusCode::NOT_FOUND
    })
    .await;
    assert!(
        started.elapsed() >= expiry + retention,
        "dropped {:?} after creation, before expiry + retention",
        started.elapsed()
    );
    assert!(
        list(&server, "ret-2").await.is_empty(),
        "gone from the list"
    );
}

/// The value of the sample of a commands-by-status metric for `status`.
fn commands_metric(text: &str, status: &str) -> Option<f64> {
    let label = format!("status=\"{status}\"");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, rest) = line.split_once('{')?;
            let (labels, value) = rest.rsplit_once('}')?;
            let is_commands = name.contains("command") && !name.contains("created");
            (is_commands && labels.split(',').any(|l| l.trim() == label))
                .then(|| value.trim().parse().ok())?
        })
        .next()
}

#[tokio::test]
async fn metrics_count_commands_by_status() {
    let server = TestServer::start().await;
    register(&server, "met-1", "g").await;
    register(&server, "met-2", "g").await;
    for _ in 0..2 {
        send(&server, "met-1", "replay", json!({})).await;
    }
    let acked = id_of(&send(&server, "met-1", "replay", json!({})).await);
    assert_eq!(
        ack(&server, "met-1", &acked, &json!({})).await.status(),
        StatusCode::OK
    );
    let mut stream = server.open_stream("met-2").await;
    send(&server, "met-2", "deep-trace", json!({})).await;
    stream.next_event().await.expect("an event");

    let response = server.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    for (status, count) in [
        ("PENDING", 2.0),
        ("DELIVERED", 1.0),
        ("ACKNOWLEDGED", 1.0),
        ("EXPIRED", 0.0),
    ] {
        assert_eq!(
            commands_metric(&text, status),
            Some(count),
            "commands {status} in:\n{text}"
        );
    }
}
