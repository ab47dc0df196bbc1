//! Hostile and broken clients: oversized heads, requests that never finish,
//! a reader that stalls, and churn of streams and agents that must leave
//! nothing behind (counted through `/metrics`).

use std::time::Duration;

use futures_util::future::join_all;
use registry_testkit::Head;
use registry_tests::{PROMPTLY, TestServer, eventually, exchange};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The status code of a raw HTTP answer, `0` if there was no whole head.
fn status_of(answer: &str) -> u16 {
    Head::parse(answer.as_bytes())
        .ok()
        .flatten()
        .map_or(0, |head| head.status)
}

async fn assert_still_serving(server: &TestServer) {
    assert_eq!(server.get("/livez").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_oversized_header_is_refused_with_431_and_the_server_keeps_serving() {
    let server = TestServer::start().await;
    let big = "x".repeat(100 * 1024);
    let answer = server
        .raw_exchange(format!("GET /livez HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await;
    assert_eq!(
        status_of(&answer),
        431,
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn an_oversized_request_line_is_refused_with_a_4xx() {
    let server = TestServer::start().await;
    let path = format!("/api/v1/agents/{}", "a".repeat(100 * 1024));
    let answer = server
        .raw_exchange(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await;
    let status = status_of(&answer);
    assert!(matches!(status, 414 | 431), "answered {status}");
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn a_last_event_id_of_one_mebibyte_is_refused_with_431() {
    let server = TestServer::start().await;
    server.register("big-id", "g").await;
    let id = "7".repeat(1024 * 1024);
    let answer = server
        .raw_exchange(
            format!("GET /api/v1/agents/big-id/events HTTP/1.1\r\nHost: t\r\nLast-Event-ID: {id}\r\n\r\n")
                .as_bytes(),
        )
        .await;
    assert_eq!(status_of(&answer), 431);
    let agent = server.agent("big-id").await.expect("the agent");
    assert_eq!(agent["connected"], false);
}

#[tokio::test]
async fn a_request_head_that_never_finishes_is_cut_off_after_the_head_timeout() {
    let server =
        TestServer::start_with(|c| c.server.head_timeout = Duration::from_millis(300)).await;
    let mut tcp = server.connect().await;
    tcp.write_all(b"GET /livez HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(PROMPTLY, tcp.read_to_end(&mut answer)).await;
    assert!(closed.is_ok(), "the connection stays open");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        status_of(&answer) == 0 || status_of(&answer) == 408,
        "{answer}"
    );
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn a_body_that_never_finishes_is_answered_408() {
    let server =
        TestServer::start_with(|c| c.server.request_timeout = Duration::from_millis(300)).await;
    let mut tcp = server.connect().await;
    tcp.write_all(
        b"POST /api/v1/agents/register HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"agentId\"",
    )
    .await
    .unwrap();
    let mut answer = vec![0; 4096];
    let read = tokio::time::timeout(PROMPTLY, tcp.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
}

/// Opens a stream by hand and reads only its head: a reader that then stalls.
async fn stalled_stream(server: &TestServer, agent_id: &str) -> tokio::net::TcpStream {
    let mut tcp = server.connect().await;
    tcp.write_all(
        format!("GET /api/v1/agents/{agent_id}/events HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut head = vec![0; 1024];
    let read = tcp.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..read]).starts_with("HTTP/1.1 200"));
    tcp
}

#[tokio::test]
async fn a_reader_that_stalls_loses_its_stream_and_later_commands_stay_pending() {
    let server = TestServer::start_with(|c| c.sse.queue = 4).await;
    server.register("stalled", "g").await;
    let _stalled = stalled_stream(&server, "stalled").await;
    // Large commands fill the socket buffers, then the queue of 4.
    let bulk = "p".repeat(200 * 1024);
    let mut statuses = Vec::new();
    for _ in 0..400 {
        let (status, command) = server
            .send("stalled", "replay", json!({ "bulk": bulk }))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        statuses.push(command["status"].as_str().unwrap().to_owned());
        if statuses.last().is_some_and(|s| s == "PENDING") {
            break;
        }
    }
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("PENDING"),
        "never held back"
    );
    assert!(statuses.len() > 4, "the first commands were written");
    assert_eq!(server.agent("stalled").await.unwrap()["connected"], false);
    assert_eq!(
        server.metric("registry_slow_streams_closed_total").await,
        1.0
    );
    let (_, after) = server.send("stalled", "replay", json!({})).await;
    assert_eq!(after["status"], "PENDING");
    assert_still_serving(&server).await;
}

/// Opens the agent's stream by hand, waits for its first comment, and closes it.
async fn connect_and_disconnect(server: &TestServer, agent_id: &str) {
    let mut tcp = server.connect().await;
    tcp.write_all(
        format!("GET /api/v1/agents/{agent_id}/events HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0; 512];
    while !String::from_utf8_lossy(&seen).contains(": open") {
        let read = tcp.read(&mut buffer).await.unwrap();
        assert!(read > 0, "the stream ended before it opened");
        seen.extend_from_slice(&buffer[..read]);
    }
}

/// Asserts that the server holds no stream, command or deadline beyond those of `agents` LIVE agents.
async fn assert_nothing_left_behind(server: &TestServer, agents: f64) {
    eventually(PROMPTLY, "every stream unregistered", || async {
        server.metric("registry_open_streams").await == 0.0
    })
    .await;
    assert_eq!(
        server.metric(r#"registry_agents{status="LIVE"}"#).await,
        agents
    );
    for status in ["PENDING", "DELIVERED", "ACKNOWLEDGED", "EXPIRED"] {
        let series = format!(r#"registry_commands{{status="{status}"}}"#);
        assert_eq!(server.metric(&series).await, 0.0, "{series}");
    }
    // One stale deadline per agent, nothing else.
    assert_eq!(server.metric("registry_scheduled_deadlines").await, agents);
}

#[tokio::test]
async fn ten_thousand_stream_connect_disconnect_cycles_leave_nothing_behind() {
    const WORKERS: usize = 16;
    const CYCLES: usize = 10_000 / WORKERS;
    let server = TestServer::start().await;
    for worker in 0..WORKERS {
        server.register(&format!("churn-{worker}"), "churn").await;
    }
    join_all((0..WORKERS).map(|worker| {
        let server = &server;
        async move {
            let agent_id = format!("churn-{worker}");
            for _ in 0..CYCLES {
                connect_and_disconnect(server, &agent_id).await;
            }
        }
    }))
    .await;
    assert_nothing_left_behind(&server, WORKERS as f64).await;
    assert_eq!(
        server.metric("registry_open_streams").await,
        0.0,
        "after {} cycles",
        WORKERS * CYCLES
    );
}

#[tokio::test]
async fn ten_thousand_register_delete_cycles_leave_no_agent_command_or_deadline_behind() {
    const WORKERS: usize = 16;
    const CYCLES: usize = 10_000 / WORKERS;
    let server = TestServer::start().await;
    join_all((0..WORKERS).map(|worker| {
        let server = &server;
        async move {
            for cycle in 0..CYCLES {
                let agent_id = format!("cycle-{worker}-{cycle}");
                let (status, _) = server.register(&agent_id, "churn").await;
                assert_eq!(status, StatusCode::CREATED);
                let (status, _) = server.send(&agent_id, "config-update", Value::Null).await;
                assert_eq!(status, StatusCode::ACCEPTED);
                let deleted = server.delete(&format!("/api/v1/agents/{agent_id}")).await;
                assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
            }
        }
    }))
    .await;
    assert_nothing_left_behind(&server, 0.0).await;
    let groups = server
        .post_json(
            "/api/v1/agents/groups/churn/commands",
            &json!({"type": "replay"}),
        )
        .await;
    assert_eq!(
        groups.status(),
        StatusCode::NOT_FOUND,
        "the emptied group is gone"
    );
}

#[tokio::test]
async fn a_kept_alive_connection_outlives_the_request_timeout_between_requests() {
    let server = TestServer::start_with(|c| {
        c.server.request_timeout = Duration::from_millis(100);
        c.server.idle_timeout = Duration::from_secs(30);
    })
    .await;
    let mut tcp = server.connect().await;
    let request = b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n";
    assert_eq!(exchange(&mut tcp, request).await.status, 200);
    // Idle for longer than the request timeout, as an agent between heartbeats.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(exchange(&mut tcp, request).await.status, 200);
}
