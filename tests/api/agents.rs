//! SPEC 3.1 registration and heartbeat, and SPEC 3.2 agent reads and deletes, over HTTP.

use std::time::Duration;

use registry_tests::{PROMPTLY, TestServer, assert_problem, eventually};
use reqwest::{Response, StatusCode, header};
use serde_json::{Value, json};

const REGISTER: &str = "/api/v1/agents/register";

/// A full registration body for `agent_id` in `group`.
fn registration(agent_id: &str, group: &str) -> Value {
    json!({"agentId": agent_id, "name": "order-service", "group": group,
           "version": "1.4.2", "routeIds": ["route-1", "route-2"],
           "capabilities": ["deep-trace", "replay"]})
}

/// Posts `body` to the registration route; returns the status and the JSON body.
async fn register_body(server: &TestServer, body: &Value) -> (StatusCode, Value) {
    let response = server.post_json(REGISTER, body).await;
    let status = response.status();
    (status, response.json().await.expect("a JSON body"))
}

/// Asserts `response` is a problem with `status`; returns its `detail`.
async fn problem(response: Response, status: StatusCode) -> String {
    let problem = assert_problem(response, status).await;
    problem["detail"].as_str().expect("a detail").to_owned()
}

/// Registers `body` and asserts a 400 problem whose `detail` names `field`.
async fn assert_refused(server: &TestServer, body: &Value, field: &str) {
    let response = server.post_json(REGISTER, body).await;
    let detail = problem(response, StatusCode::BAD_REQUEST).await;
    assert!(
        detail.contains(field),
        "detail {detail:?} should name {field} (body {body})"
    );
}

/// `GET path` as JSON, asserting 200.
async fn get_json(server: &TestServer, path: &str) -> Value {
    let response = server.get(path).await;
    assert_eq!(response.status(), StatusCode::OK, "GET {path}");
    response.json().await.expect("a JSON body")
}

/// The sorted `agentId`s of a list answer.
fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|agent| agent["agentId"].as_str().expect("an agentId").to_owned())
        .collect();
    ids.sort();
    ids
}

/// The sorted `agentId`s that `GET /api/v1/agents{query}` lists.
async fn listed(server: &TestServer, query: &str) -> Vec<String> {
    ids(&get_json(server, &format!("/api/v1/agents{query}")).await)
}

/// Whether `value` is an RFC 3339 UTC timestamp with milliseconds: `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn is_millisecond_utc_timestamp(value: &str) -> bool {
    let pattern = "dddd-dd-ddTdd:dd:dd.dddZ";
    value.len() == pattern.len()
        && value.bytes().zip(pattern.bytes()).all(|(c, p)| match p {
            b'd' => c.is_ascii_digit(),
            other => c == other,
        })
}

/// The agent's `connected` field.
async fn connected(server: &TestServer, agent_id: &str) -> bool {
    let agent = server.agent(agent_id).await.expect("a registered agent");
    agent["connected"].as_bool().expect("a boolean connected")
}

// ---- 3.1 registration ----

#[tokio::test]
async fn a_new_agent_id_answers_201_with_the_registration_body() {
    let server = TestServer::start().await;
    let (status, body) = register_body(&server, &registration("order-7f3a", "orders")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["agentId"], "order-7f3a");
    assert_eq!(body["status"], "LIVE");
    assert_eq!(body["resumed"], false);
    assert_eq!(body["heartbeatIntervalMs"], 30_000);
    let key = body["serverPublicKey"].as_str().expect("a serverPublicKey");
    assert_eq!(
        key.len(),
        44,
        "32 bytes in standard base64 with padding: {key}"
    );
    assert!(
        registry_signing::PublicKey::from_base64(key).is_ok(),
        "{key}"
    );
    let endpoint = body["sseEndpoint"].as_str().expect("an sseEndpoint");
    assert!(endpoint.ends_with("/api/v1/agents/order-7f3a/events"));
}

#[tokio::test]
async fn heartbeat_interval_ms_follows_the_configured_heartbeat_interval() {
    let server =
        TestServer::start_with(|c| c.lifecycle.heartbeat_interval = Duration::from_secs(5)).await;
    let (status, body) = server.register("a-1", "g").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["heartbeatIntervalMs"], 5_000);
}

#[tokio::test]
async fn re_registration_answers_200_resumed_and_keeps_registered_at() {
    let server = TestServer::start().await;
    let (status, _) = server.register("order-7f3a", "orders").await;
    assert_eq!(status, StatusCode::CREATED);
    let first = server.agent("order-7f3a").await.unwrap();
    // Heartbeat until the server's clock has moved on from the registration's millisecond,
    // so that a reset registeredAt would show.
    eventually(PROMPTLY, "the server's clock moves on", || async {
        assert_eq!(server.heartbeat("order-7f3a").await, StatusCode::NO_CONTENT);
        let agent = server.agent("order-7f3a").await.unwrap();
        agent["lastHeartbeatAt"] != first["registeredAt"]
    })
    .await;

    let (status, body) = server.register("order-7f3a", "orders").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["resumed"], true);
    assert_eq!(body["status"], "LIVE");
    assert_eq!(body["agentId"], "order-7f3a");
    let again = server.agent("order-7f3a").await.unwrap();
    assert_eq!(again["registeredAt"], first["registeredAt"]);
    assert_ne!(again["lastHeartbeatAt"], first["registeredAt"]);
    assert_eq!(listed(&server, "").await, ["order-7f3a"], "still one agent");
}

#[tokio::test]
async fn re_registration_replaces_the_metadata() {
    let server = TestServer::start().await;
    let (status, _) = register_body(&server, &registration("order-7f3a", "orders-old")).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = register_body(
        &server,
        &json!({"agentId": "order-7f3a", "name": "order-service-v2", "group": "orders-new",
                "version": "2.0.0", "routeIds": ["route-9"], "capabilities": ["config-update"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let agent = server.agent("order-7f3a").await.unwrap();
    assert_eq!(agent["name"], "order-service-v2");
    assert_eq!(agent["group"], "orders-new");
    assert_eq!(agent["version"], "2.0.0");
    assert_eq!(agent["routeIds"], json!(["route-9"]));
    assert_eq!(agent["capabilities"], json!(["config-update"]));
    assert_eq!(listed(&server, "?group=orders-new").await, ["order-7f3a"]);
    assert!(listed(&server, "?group=orders-old").await.is_empty());
}

#[tokio::test]
async fn re_registration_keeps_an_open_stream_open() {
    let server = TestServer::start().await;
    server.register("a-1", "g").await;
    let _stream = server.open_stream("a-1").await;
    assert!(connected(&server, "a-1").await);
    let (status, _) = server.register("a-1", "g").await;
    assert_eq!(status, StatusCode::OK);
    assert!(connected(&server, "a-1").await);
}

#[tokio::test]
async fn sse_endpoint_is_built_from_the_request_host() {
    let server = TestServer::start().await;
    let (_, body) = server.register("order-7f3a", "orders").await;
    assert_eq!(
        body["sseEndpoint"],
        format!("{}/api/v1/agents/order-7f3a/events", server.base)
    );
    assert!(server.base.starts_with("http://127.0.0.1:"));
}

#[tokio::test]
async fn sse_endpoint_uses_public_url_without_its_trailing_slash() {
    let server =
        TestServer::start_with(|c| c.server.public_url = "https://reg.example:8443/".into()).await;
    let (_, body) = server.register("order-7f3a", "orders").await;
    assert_eq!(
        body["sseEndpoint"],
        "https://reg.example:8443/api/v1/agents/order-7f3a/events"
    );
}

#[tokio::test]
async fn sse_endpoint_keeps_the_path_of_public_url() {
    let server =
        TestServer::start_with(|c| c.server.public_url = "https://reg.example/base/".into()).await;
    let (_, body) = server.register("order-7f3a", "orders").await;
    assert_eq!(
        body["sseEndpoint"],
        "https://reg.example/base/api/v1/agents/order-7f3a/events"
    );
}

// ---- 3.1 validation ----

#[tokio::test]
async fn a_missing_required_field_is_400_naming_it() {
    let server = TestServer::start().await;
    for field in ["agentId", "name", "group"] {
        let mut body = registration("a-1", "g");
        body.as_object_mut().unwrap().remove(field);
        assert_refused(&server, &body, field).await;
    }
    assert!(listed(&server, "").await.is_empty());
}

#[tokio::test]
async fn only_agent_id_name_and_group_are_required() {
    let server = TestServer::start().await;
    let (status, _) = register_body(
        &server,
        &json!({"agentId": "a-1", "name": "order-service", "group": "g"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let agent = server.agent("a-1").await.unwrap();
    assert_eq!(agent["routeIds"], json!([]));
    assert_eq!(agent["capabilities"], json!([]));
}

#[tokio::test]
async fn an_agent_id_outside_the_id_rule_is_400_naming_agent_id() {
    let server = TestServer::start().await;
    let too_long = "a".repeat(129);
    for bad in ["order 7f3a", too_long.as_str(), "", "a/b", "é"] {
        assert_refused(&server, &registration(bad, "g"), "agentId").await;
    }
    assert!(listed(&server, "").await.is_empty());
}

#[tokio::test]
async fn reserved_words_are_refused_as_agent_id() {
    let server = TestServer::start().await;
    for word in ["register", "commands", "groups", "events"] {
        assert_refused(&server, &registration(word, "g"), "agentId").await;
    }
    assert!(listed(&server, "").await.is_empty());
}

#[tokio::test]
async fn an_agent_id_of_128_characters_from_the_whole_charset_is_accepted() {
    let server = TestServer::start().await;
    let id = format!("Az09._-:{}", "x".repeat(120));
    assert_eq!(id.len(), 128);
    let (status, body) = register_body(&server, &registration(&id, "g")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["agentId"], id.as_str());
    let agent = server.agent(&id).await.expect("readable by its id");
    assert_eq!(agent["agentId"], id.as_str());
}

#[tokio::test]
async fn an_invalid_group_is_400_naming_group() {
    let server = TestServer::start().await;
    let too_long = "g".repeat(129);
    for bad in ["order service", "", too_long.as_str()] {
        assert_refused(&server, &registration("a-1", bad), "group").await;
    }
    assert!(listed(&server, "").await.is_empty());
}

#[tokio::test]
async fn an_empty_or_too_long_name_is_400_naming_name() {
    let server = TestServer::start().await;
    for bad in [String::new(), "n".repeat(257)] {
        let mut body = registration("a-1", "g");
        body["name"] = json!(bad);
        assert_refused(&server, &body, "name").await;
    }
    let mut body = registration("a-1", "g");
    body["name"] = json!("n".repeat(256));
    assert_eq!(
        register_body(&server, &body).await.0,
        StatusCode::CREATED,
        "256 characters are allowed"
    );
}

#[tokio::test]
async fn a_field_of_the_wrong_json_type_is_400_naming_it() {
    let server = TestServer::start().await;
    let mut body = registration("a-1", "g");
    body["agentId"] = json!(5);
    assert_refused(&server, &body, "agentId").await;
    let mut body = registration("a-1", "g");
    body["routeIds"] = json!("route-1");
    assert_refused(&server, &body, "routeIds").await;
}

#[tokio::test]
async fn unknown_registration_fields_are_ignored() {
    let server = TestServer::start().await;
    let mut body = registration("a-1", "g");
    body["colour"] = json!("blue");
    body["nested"] = json!({"deep": [1, 2, 3]});
    let (status, reply) = register_body(&server, &body).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(reply["agentId"], "a-1");
}

// ---- 3.1 heartbeat ----

#[tokio::test]
async fn heartbeat_answers_204_for_a_registered_agent_and_moves_last_heartbeat_at() {
    let server = TestServer::start().await;
    server.register("a-1", "g").await;
    let registered = server.agent("a-1").await.unwrap();
    eventually(PROMPTLY, "lastHeartbeatAt moves on", || async {
        let response = server.post_empty("/api/v1/agents/a-1/heartbeat").await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert!(
            response.bytes().await.unwrap().is_empty(),
            "204 has no body"
        );
        let agent = server.agent("a-1").await.unwrap();
        agent["lastHeartbeatAt"] != registered["lastHeartbeatAt"]
    })
    .await;
    let agent = server.agent("a-1").await.unwrap();
    assert_eq!(agent["registeredAt"], registered["registeredAt"]);
    assert_eq!(agent["status"], "LIVE");
}

#[tokio::test]
async fn heartbeat_for_an_unknown_agent_is_404_problem_json() {
    let server = TestServer::start().await;
    let response = server.post_empty("/api/v1/agents/nobody/heartbeat").await;
    let detail = problem(response, StatusCode::NOT_FOUND).await;
    assert!(detail.contains("nobody"), "{detail}");
}

#[tokio::test]
async fn heartbeat_ignores_its_body_and_content_type() {
    let server = TestServer::start().await;
    server.register("a-1", "g").await;
    let url = server.url("/api/v1/agents/a-1/heartbeat");
    for (content_type, body) in [
        ("text/plain", "still here"),
        ("application/json", "{not json"),
        ("application/octet-stream", "\u{0}\u{1}\u{2}"),
    ] {
        let response = server
            .client
            .post(&url)
            .header(header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "{content_type}");
    }
}

// ---- 3.2 one agent ----

#[tokio::test]
async fn get_agent_answers_the_view_with_every_field() {
    let server = TestServer::start().await;
    register_body(&server, &registration("order-7f3a", "orders")).await;
    let response = server.get("/api/v1/agents/order-7f3a").await;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let agent: Value = response.json().await.unwrap();
    assert_eq!(agent["agentId"], "order-7f3a");
    assert_eq!(agent["name"], "order-service");
    assert_eq!(agent["group"], "orders");
    assert_eq!(agent["version"], "1.4.2");
    assert_eq!(agent["routeIds"], json!(["route-1", "route-2"]));
    assert_eq!(agent["capabilities"], json!(["deep-trace", "replay"]));
    assert_eq!(agent["status"], "LIVE");
    assert_eq!(agent["connected"], false);
    for field in ["registeredAt", "lastHeartbeatAt", "statusChangedAt"] {
        let value = agent[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field}: {agent}"));
        assert!(
            is_millisecond_utc_timestamp(value),
            "{field} = {value:?} is not RFC 3339 UTC with milliseconds"
        );
    }
    // A fresh agent registered, last heartbeated and changed status at one moment.
    assert_eq!(agent["registeredAt"], agent["lastHeartbeatAt"]);
    assert_eq!(agent["registeredAt"], agent["statusChangedAt"]);
}

#[tokio::test]
async fn get_an_unknown_agent_is_404_problem_json() {
    let server = TestServer::start().await;
    let response = server.get("/api/v1/agents/nobody").await;
    let detail = problem(response, StatusCode::NOT_FOUND).await;
    assert!(detail.contains("nobody"), "{detail}");
}

// ---- 3.2 list ----

#[tokio::test]
async fn list_answers_every_agent() {
    let server = TestServer::start().await;
    assert_eq!(get_json(&server, "/api/v1/agents").await, json!([]));
    for (id, group) in [("a-1", "g1"), ("a-2", "g2"), ("a-3", "g1")] {
        server.register(id, group).await;
    }
    let list = get_json(&server, "/api/v1/agents").await;
    assert_eq!(ids(&list), ["a-1", "a-2", "a-3"]);
    for agent in list.as_array().unwrap() {
        assert_eq!(agent["status"], "LIVE");
        assert!(agent.get("connected").is_some(), "an agent view: {agent}");
    }
}

#[tokio::test]
async fn list_filters_by_status_in_any_letter_case() {
    let server = TestServer::start().await;
    server.register("a-1", "g1").await;
    server.register("a-2", "g2").await;
    for query in [
        "?status=LIVE",
        "?status=live",
        "?status=Live",
        "?status=lIvE",
    ] {
        assert_eq!(listed(&server, query).await, ["a-1", "a-2"], "{query}");
    }
    for query in [
        "?status=STALE",
        "?status=stale",
        "?status=dead",
        "?status=Dead",
    ] {
        assert!(listed(&server, query).await.is_empty(), "{query}");
    }
}

#[tokio::test]
async fn list_filters_by_group() {
    let server = TestServer::start().await;
    for (id, group) in [("a-1", "g1"), ("a-2", "g2"), ("a-3", "g1")] {
        server.register(id, group).await;
    }
    assert_eq!(listed(&server, "?group=g1").await, ["a-1", "a-3"]);
    assert_eq!(listed(&server, "?group=g2").await, ["a-2"]);
    assert!(listed(&server, "?group=nobody").await.is_empty());
}

#[tokio::test]
async fn list_combines_the_status_and_group_filters() {
    let server = TestServer::start_with(|c| {
        c.lifecycle.stale_after = Duration::from_millis(500);
        c.lifecycle.dead_after = Duration::from_secs(60);
    })
    .await;
    server.register("old-1", "g1").await;
    server.register("old-2", "g2").await;
    eventually(PROMPTLY, "the first agents go STALE", || async {
        server.status_of("old-1").await == "STALE" && server.status_of("old-2").await == "STALE"
    })
    .await;
    server.register("new-1", "g1").await;
    server.register("new-2", "g2").await;
    // Well within stale_after of the new registrations.
    assert_eq!(listed(&server, "?status=stale&group=g1").await, ["old-1"]);
    assert_eq!(listed(&server, "?group=g1&status=LIVE").await, ["new-1"]);
    assert_eq!(listed(&server, "?status=Live&group=g2").await, ["new-2"]);
    assert_eq!(listed(&server, "?status=live").await, ["new-1", "new-2"]);
    assert_eq!(listed(&server, "?status=STALE").await, ["old-1", "old-2"]);
    assert!(listed(&server, "?status=dead&group=g1").await.is_empty());
    assert_eq!(
        listed(&server, "").await,
        ["new-1", "new-2", "old-1", "old-2"]
    );
}

#[tokio::test]
async fn list_with_an_unknown_status_is_400_naming_status() {
    let server = TestServer::start().await;
    server.register("a-1", "g").await;
    for query in ["?status=GONE", "?status=", "?status=LIVE,STALE"] {
        let response = server.get(&format!("/api/v1/agents{query}")).await;
        let detail = problem(response, StatusCode::BAD_REQUEST).await;
        assert!(detail.contains("status"), "{query}: {detail}");
    }
}

#[tokio::test]
async fn list_ignores_unknown_query_parameters() {
    let server = TestServer::start().await;
    server.register("a-1", "g1").await;
    server.register("a-2", "g2").await;
    assert_eq!(listed(&server, "?colour=blue").await, ["a-1", "a-2"]);
    assert_eq!(listed(&server, "?group=g2&page=3&limit=1").await, ["a-2"]);
}

// ---- 3.2 delete one ----

#[tokio::test]
async fn delete_answers_204_then_the_agent_is_gone() {
    let server = TestServer::start().await;
    server.register("a-1", "g").await;
    server.register("a-2", "g").await;
    let response = server.delete("/api/v1/agents/a-1").await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(
        server.agent("a-1").await.is_none(),
        "GET after DELETE is 404"
    );
    assert_eq!(server.heartbeat("a-1").await, StatusCode::NOT_FOUND);
    assert_eq!(listed(&server, "").await, ["a-2"]);
    assert_eq!(listed(&server, "?group=g").await, ["a-2"]);
    // The agent comes back by registering again, as a new agent.
    let (status, body) = server.register("a-1", "g").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["resumed"], false);
}

#[tokio::test]
async fn delete_an_unknown_agent_is_404_problem_json() {
    let server = TestServer::start().await;
    let response = server.delete("/api/v1/agents/nobody").await;
    problem(response, StatusCode::NOT_FOUND).await;
    server.register("a-1", "g").await;
    assert_eq!(
        server.delete("/api/v1/agents/a-1").await.status(),
        StatusCode::NO_CONTENT
    );
    let again = server.delete("/api/v1/agents/a-1").await;
    problem(again, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn delete_ends_the_agents_open_stream() {
    let server = TestServer::start().await;
    server.register("a-1", "g").await;
    let mut stream = server.open_stream("a-1").await;
    let response = server.delete("/api/v1/agents/a-1").await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    stream.expect_end().await;
}

// ---- 3.2 bulk delete ----

/// `DELETE /api/v1/agents{query}`.
async fn bulk_delete(server: &TestServer, query: &str) -> Response {
    server.delete(&format!("/api/v1/agents{query}")).await
}

#[tokio::test]
async fn bulk_delete_without_confirm_true_is_400() {
    let server = TestServer::start_with(|c| {
        c.lifecycle.stale_after = Duration::from_millis(100);
        c.lifecycle.dead_after = Duration::from_millis(100);
    })
    .await;
    server.register("a-1", "g").await;
    eventually(PROMPTLY, "a-1 is DEAD", || async {
        server.status_of("a-1").await == "DEAD"
    })
    .await;
    for query in [
        "?status=DEAD",
        "?status=DEAD&confirm=false",
        "?status=DEAD&confirm=yes",
    ] {
        let detail = problem(bulk_delete(&server, query).await, StatusCode::BAD_REQUEST).await;
        assert!(detail.contains("confirm"), "{query}: {detail}");
    }
    assert_eq!(listed(&server, "").await, ["a-1"], "nothing was deleted");
}

#[tokio::test]
async fn bulk_delete_of_any_status_but_dead_is_400() {
    let server = TestServer::start().await;
    server.register("a-1", "g").await;
    for query in [
        "?status=STALE&confirm=true",
        "?status=LIVE&confirm=true",
        "?status=GONE&confirm=true",
        "?confirm=true",
        "",
    ] {
        let detail = problem(bulk_delete(&server, query).await, StatusCode::BAD_REQUEST).await;
        assert!(detail.contains("status"), "{query:?}: {detail}");
    }
    assert_eq!(listed(&server, "").await, ["a-1"], "nothing was deleted");
}

#[tokio::test]
async fn bulk_delete_of_dead_agents_answers_their_count_and_spares_live_ones() {
    let server = TestServer::start_with(|c| {
        c.lifecycle.stale_after = Duration::from_millis(300);
        c.lifecycle.dead_after = Duration::from_millis(300);
    })
    .await;
    server.register("dead-1", "g").await;
    server.register("dead-2", "g").await;
    eventually(PROMPTLY, "both agents are DEAD", || async {
        listed(&server, "?status=DEAD").await == ["dead-1", "dead-2"]
    })
    .await;
    server.register("live-1", "g").await;
    assert_eq!(server.status_of("live-1").await, "LIVE");

    let response = bulk_delete(&server, "?status=DEAD&confirm=true").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"deleted": 2}));
    assert!(server.agent("dead-1").await.is_none());
    assert!(server.agent("dead-2").await.is_none());
    assert!(
        server.agent("live-1").await.is_some(),
        "the LIVE agent survives"
    );
    assert_eq!(listed(&server, "").await, ["live-1"]);

    let response = bulk_delete(&server, "?status=dead&confirm=true").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"deleted": 0}), "nothing DEAD is left");
}

// ---- 3.2 connected ----

#[tokio::test]
async fn connected_is_true_while_a_stream_is_open_and_false_once_the_client_drops_it() {
    let server = TestServer::start().await;
    server.register("a-1", "g").await;
    assert!(!connected(&server, "a-1").await);
    let stream = server.open_stream("a-1").await;
    assert!(connected(&server, "a-1").await);
    let listed = get_json(&server, "/api/v1/agents").await;
    assert_eq!(listed[0]["connected"], true);
    drop(stream);
    eventually(PROMPTLY, "connected turns false", || async {
        !connected(&server, "a-1").await
    })
    .await;
}
