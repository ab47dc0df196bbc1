//! SPEC 13's bounds on connections and requests: at most
//! `server.max_connections` open (the one idle longest closed to admit a new
//! one, a new one closed when none is idle), a head due within
//! `server.head_timeout` of its first byte while a kept-alive connection may
//! idle between requests, 413 at once for a body declared too large, a `Host`
//! that is not `host[:port]` refused, and settings at their longest that never
//! make a request fail.

use std::time::Duration;

use registry_server::config::MAX_DURATION;
use registry_tests::{PROMPTLY, TestServer, assert_problem, exchange};
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether the server closes `tcp` within `within` (reading nothing or a
/// reset); false if it is still open then.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0_u8; 1024];
    loop {
        match tokio::time::timeout(within, tcp.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn at_the_connection_cap_the_connection_idle_longest_makes_room() {
    let server = TestServer::start_with(|config| config.server.max_connections = 100).await;
    server.register("hb", "g").await;
    let mut idle = Vec::new();
    for _ in 0..150 {
        idle.push(server.connect().await);
    }
    // A new heartbeat is still answered, on a connection of its own.
    let answer = server
        .raw_exchange(
            b"POST /api/v1/agents/hb/heartbeat HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await;
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer:?}");
    // The oldest went first: the first fifty (and the client's pooled one) are closed,
    // the last ones kept.
    for (n, tcp) in idle.iter_mut().take(50).enumerate() {
        assert!(
            closed_within(tcp, PROMPTLY).await,
            "connection {n} is still open"
        );
    }
    for (n, tcp) in idle.iter_mut().skip(60).enumerate() {
        assert!(
            !closed_within(tcp, Duration::from_millis(1)).await,
            "connection {} was closed",
            n + 60
        );
    }
    let evicted = server
        .metric(r#"registry_connections_closed_total{reason="evicted"}"#)
        .await;
    assert!(evicted >= 51.0, "evicted {evicted}");
    assert!(server.metric("registry_connections").await <= 100.0);
}

#[tokio::test]
async fn at_the_connection_cap_with_none_idle_a_new_connection_is_closed() {
    let server = TestServer::start_with(|config| config.server.max_connections = 4).await;
    let mut streams = Vec::new();
    for n in 0..4 {
        let agent = format!("busy-{n}");
        server.register(&agent, "g").await;
        streams.push(server.open_stream(&agent).await);
    }
    let mut refused = server.connect().await;
    assert!(closed_within(&mut refused, PROMPTLY).await);
    // Once a stream ends, there is room again.
    drop(streams.pop());
    registry_tests::eventually(PROMPTLY, "a connection is admitted", || async {
        let answer = server
            .raw_exchange(b"GET /livez HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await;
        answer.starts_with("HTTP/1.1 200")
    })
    .await;
}

#[tokio::test]
async fn a_head_trickled_past_head_timeout_is_closed() {
    let server = TestServer::start_with(|config| {
        config.server.head_timeout = Duration::from_millis(300);
    })
    .await;
    let mut tcp = server.connect().await;
    tcp.write_all(b"GET /livez HTTP/1.1\r\nHost: t\r\n")
        .await
        .expect("write");
    // A header byte every 50 ms, never the end of the head.
    let trickle = async {
        for _ in 0..40 {
            if tcp.write_all(b"X-Slow: 1\r\n").await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    let write_failed = trickle.await;
    assert!(
        write_failed || closed_within(&mut tcp, Duration::from_millis(1)).await,
        "the connection outlived 2 s of a head due in 300 ms"
    );
    assert_eq!(
        server
            .metric(r#"registry_connections_closed_total{reason="head_timeout"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_kept_alive_connection_idles_between_requests_longer_than_head_timeout() {
    let server = TestServer::start_with(|config| {
        config.server.head_timeout = Duration::from_millis(100);
    })
    .await;
    let mut tcp = server.connect().await;
    let request = "GET /livez HTTP/1.1\r\nHost: t\r\n\r\n";
    assert_eq!(exchange(&mut tcp, request.as_bytes()).await.status, 200);
    // Idle for several head timeouts, as an agent between heartbeats.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(exchange(&mut tcp, request.as_bytes()).await.status, 200);
}

#[tokio::test]
async fn expect_100_continue_with_a_body_over_the_limit_is_413_at_once() {
    let server = TestServer::start().await;
    let mut tcp = server.connect().await;
    let answer = exchange(
        &mut tcp,
        b"POST /api/v1/agents/register HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Content-Length: 10000000\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    // At once: the first answer is the 413, never a 100 Continue.
    assert_eq!(answer.status, 413, "{answer:?}");
    assert!(
        answer
            .header("content-type")
            .is_some_and(|value| value.starts_with("application/problem+json")),
        "{answer:?}"
    );
    assert!(answer.body.contains(r#""status":413"#), "{answer:?}");
}

#[tokio::test]
async fn a_host_that_is_not_host_and_port_is_400_and_never_echoed() {
    let server = TestServer::start().await;
    let body = json!({"agentId": "h-1", "name": "svc", "group": "g"});
    for host in [
        "user@registry.example",
        "evil.example/x?",
        "evil.example?q=1",
        "evil.example#frag",
        "registry.example:99999",
        "registry.example:http",
    ] {
        let response = server
            .client
            .post(server.url("/api/v1/agents/register"))
            .header("Host", host)
            .json(&body)
            .send()
            .await
            .expect("POST");
        let problem = assert_problem(response, StatusCode::BAD_REQUEST).await;
        assert!(
            problem["detail"].as_str().unwrap().contains("Host"),
            "{problem}"
        );
        // The probes answer whatever the Host.
        let livez = server
            .client
            .get(server.url("/livez"))
            .header("Host", host)
            .send()
            .await
            .expect("GET");
        assert_eq!(livez.status(), StatusCode::OK, "{host}");
    }
    assert!(server.agent("h-1").await.is_none());

    let response = server
        .client
        .post(server.url("/api/v1/agents/register"))
        .header("Host", "[::1]:8080")
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::CREATED);
    let registered: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(
        registered["sseEndpoint"],
        "http://[::1]:8080/api/v1/agents/h-1/events"
    );
}

#[tokio::test]
async fn an_http_1_1_request_without_a_host_or_with_two_is_400() {
    let server = TestServer::start().await;
    for request in [
        "GET /api/v1/agents HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET /api/v1/agents HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    ] {
        let answer = server.raw_exchange(request.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{request:?}: {answer:?}"
        );
    }
    let answer = server
        .raw_exchange(b"GET /api/v1/agents HTTP/1.0\r\n\r\n")
        .await;
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer:?}"
    );
}

#[tokio::test]
async fn durations_at_their_longest_never_make_a_request_fail() {
    let server = TestServer::start_with(|config| {
        config.commands.expiry = MAX_DURATION;
        config.commands.retention = MAX_DURATION;
        config.lifecycle.stale_after = MAX_DURATION;
        config.lifecycle.dead_after = MAX_DURATION;
        config.lifecycle.heartbeat_interval = MAX_DURATION;
        config.server.idle_timeout = MAX_DURATION;
        config.server.head_timeout = MAX_DURATION;
        config.server.request_timeout = MAX_DURATION;
        config.sse.keepalive = MAX_DURATION;
    })
    .await;
    let (status, _) = server.register("long-1", "long").await;
    assert_eq!(status, StatusCode::CREATED);
    let mut stream = server.open_stream("long-1").await;
    let (status, command) = server.send("long-1", "replay", json!({"a": 1})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{command}");
    let expires = command["expiresAt"].as_str().expect("expiresAt");
    let created = command["createdAt"].as_str().expect("createdAt");
    let year = |at: &str| at[..4].parse::<i32>().expect("a year");
    assert_eq!(year(expires) - year(created), 1, "{command}");
    assert!(stream.next_event().await.is_some());
    let id = command["commandId"].as_str().expect("commandId");
    for path in [
        "/api/v1/agents".to_owned(),
        "/api/v1/agents/long-1".to_owned(),
        "/api/v1/agents/long-1/commands".to_owned(),
        format!("/api/v1/agents/long-1/commands/{id}"),
    ] {
        assert_eq!(server.get(&path).await.status(), StatusCode::OK, "{path}");
    }
    for path in [
        "/api/v1/agents/groups/long/commands",
        "/api/v1/agents/commands",
    ] {
        let response = server.post_json(path, &json!({"type": "replay"})).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{path}");
    }
    let ack = server
        .post_json(
            &format!("/api/v1/agents/long-1/commands/{id}/ack"),
            &json!({"result": "SUCCESS"}),
        )
        .await;
    assert_eq!(ack.status(), StatusCode::OK);
    assert_eq!(server.heartbeat("long-1").await, StatusCode::NO_CONTENT);
}
