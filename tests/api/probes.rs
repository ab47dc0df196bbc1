//! SPEC 3.3 and the shutdown of SPEC 5: `/livez`, `/readyz` (200 serving, 503
//! shutting down), `/metrics` in Prometheus text with the families the contract
//! names and numbers that move, and a graceful shutdown that ends every stream,
//! finishes within the grace period and then refuses connections.

use std::collections::HashMap;
use std::time::Duration;

use registry_tests::{PROMPTLY, TestServer, eventually};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEARTBEAT_LATENCY: &str = r#"registry_http_request_duration_seconds_count{method="POST",route="/api/v1/agents/{agent_id}/heartbeat",status="204"}"#;

/// Every sample of `/metrics`, by series as printed (name and labels).
struct Scrape {
    text: String,
    samples: HashMap<String, f64>,
}

impl Scrape {
    async fn of(server: &TestServer) -> Self {
        let response = server.get("/metrics").await;
        assert_eq!(response.status(), StatusCode::OK);
        let text = response.text().await.expect("metrics text");
        let mut samples = HashMap::new();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("a sample line is `series value`: {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|err| panic!("a numeric value in {line:?}: {err}"));
            samples.insert(series.to_owned(), value);
        }
        Self { text, samples }
    }

    /// The value of `series`; 0 when it is not (yet) exported.
    fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    fn expect(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no series {series} in:\n{}", self.text))
    }
}

/// A raw connection, for requests sent at a moment a pooled client can't choose.
async fn connect(server: &TestServer) -> TcpStream {
    TcpStream::connect(server.base.trim_start_matches("http://"))
        .await
        .expect("connect")
}

/// Opens a connection and sends the first line of `GET path`: the server holds
/// bytes of a request it can't dispatch yet.
async fn begin_get(server: &TestServer, path: &str) -> TcpStream {
    let mut tcp = connect(server).await;
    let line = format!("GET {path} HTTP/1.1\r\n");
    tcp.write_all(line.as_bytes()).await.expect("write");
    tcp
}

/// Sends the rest of a request begun with [`begin_get`] and reads the answer
/// to the end of the connection.
async fn finish_get(mut tcp: TcpStream) -> String {
    tcp.write_all(b"Host: registry\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(PROMPTLY, tcp.read_to_end(&mut answer))
        .await
        .expect("an answer before the deadline")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn livez_answers_200() {
    let server = TestServer::start().await;
    let response = server.get("/livez").await;
    assert_eq!(response.status(), StatusCode::OK);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn readyz_answers_200_while_serving() {
    let server = TestServer::start().await;
    assert_eq!(server.get("/readyz").await.status(), StatusCode::OK);
    server.register("order-1", "order-service-prod").await;
    assert_eq!(server.get("/readyz").await.status(), StatusCode::OK);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn probes_need_no_token_when_tokens_are_configured() {
    let server = TestServer::start_with(|config| {
        config.auth.operator_tokens = vec!["operator-secret".into()];
        config.auth.enrollment_tokens = vec!["enrollment-secret".into()];
    })
    .await;
    assert_eq!(server.get("/livez").await.status(), StatusCode::OK);
    assert_eq!(server.get("/readyz").await.status(), StatusCode::OK);
    assert_eq!(
        server.get("/metrics").await.status(),
        StatusCode::UNAUTHORIZED,
        "metrics is an operator route"
    );
    let response = server
        .client
        .get(server.url("/metrics"))
        .header(AUTHORIZATION, "Bearer operator-secret")
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), StatusCode::OK);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn metrics_is_prometheus_text_with_every_family_the_spec_names() {
    let server = TestServer::start().await;
    server.register("order-1", "order-service-prod").await;
    assert_eq!(server.heartbeat("order-1").await, StatusCode::NO_CONTENT);

    let response = server.get("/metrics").await;
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain")
            || content_type.starts_with("application/openmetrics-text"),
        "a Prometheus exposition format: {content_type}"
    );
    let scrape = Scrape::of(&server).await;
    if content_type.starts_with("application/openmetrics-text") {
        assert!(
            scrape.text.trim_end().ends_with("# EOF"),
            "OpenMetrics ends with # EOF"
        );
    }
    for family in [
        "# TYPE registry_agents gauge",
        "# TYPE registry_open_streams gauge",
        "# TYPE registry_commands gauge",
        "# TYPE registry_transitions counter",
        "# TYPE registry_heartbeats counter",
        "# TYPE registry_http_request_duration_seconds histogram",
    ] {
        assert!(
            scrape.text.contains(family),
            "{family} in:\n{}",
            scrape.text
        );
    }
    for status in ["LIVE", "STALE", "DEAD"] {
        scrape.expect(&format!(r#"registry_agents{{status="{status}"}}"#));
    }
    for status in ["PENDING", "DELIVERED", "ACKNOWLEDGED", "EXPIRED"] {
        scrape.expect(&format!(r#"registry_commands{{status="{status}"}}"#));
    }
    scrape.expect("registry_open_streams");
    scrape.expect("registry_heartbeats_total");
    for (from, to) in [("LIVE", "STALE"), ("STALE", "DEAD"), ("STALE", "LIVE")] {
        scrape.expect(&format!(
            r#"registry_transitions_total{{from="{from}",to="{to}"}}"#
        ));
    }
    scrape.expect(HEARTBEAT_LATENCY);
    assert!(
        scrape.text.lines().any(|line| line.starts_with(
            r#"registry_http_request_duration_seconds_bucket{le="+Inf",method="POST",route="/api/v1/agents/{agent_id}/heartbeat",status="204"}"#
        )),
        "a latency histogram by route:\n{}",
        scrape.text
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn metrics_move_with_agents_heartbeats_streams_and_commands() {
    let server = TestServer::start().await;
    let before = Scrape::of(&server).await;
    assert_eq!(before.get(r#"registry_agents{status="LIVE"}"#), 0.0);
    assert_eq!(before.get("registry_open_streams"), 0.0);

    server.register("order-1", "order-service-prod").await;
    server.register("order-2", "order-service-prod").await;
    for _ in 0..3 {
        assert_eq!(server.heartbeat("order-1").await, StatusCode::NO_CONTENT);
    }
    let mut stream = server.open_stream("order-1").await;
    let (_, delivered) = server.send("order-1", "replay", json!({})).await;
    assert_eq!(delivered["status"], "DELIVERED");
    let (_, pending) = server.send("order-2", "replay", json!({})).await;
    assert_eq!(pending["status"], "PENDING");

    let after = Scrape::of(&server).await;
    assert_eq!(after.get(r#"registry_agents{status="LIVE"}"#), 2.0);
    assert_eq!(after.get("registry_open_streams"), 1.0);
    assert_eq!(
        after.get("registry_heartbeats_total") - before.get("registry_heartbeats_total"),
        3.0
    );
    assert_eq!(after.get(r#"registry_commands{status="DELIVERED"}"#), 1.0);
    assert_eq!(after.get(r#"registry_commands{status="PENDING"}"#), 1.0);
    assert_eq!(
        after.get(HEARTBEAT_LATENCY) - before.get(HEARTBEAT_LATENCY),
        3.0
    );

    let event = stream.next_event().await.expect("the command");
    let ack = server
        .post_empty(&format!("/api/v1/agents/order-1/commands/{}/ack", event.id))
        .await;
    assert_eq!(ack.status(), StatusCode::OK);
    let acked = Scrape::of(&server).await;
    assert_eq!(
        acked.get(r#"registry_commands{status="ACKNOWLEDGED"}"#),
        1.0
    );
    assert_eq!(acked.get(r#"registry_commands{status="DELIVERED"}"#), 0.0);

    assert_eq!(
        server.delete("/api/v1/agents/order-1").await.status(),
        StatusCode::NO_CONTENT
    );
    stream.expect_end().await;
    eventually(PROMPTLY, "open streams back to 0", || async {
        Scrape::of(&server).await.get("registry_open_streams") == 0.0
    })
    .await;
    assert_eq!(
        Scrape::of(&server)
            .await
            .get(r#"registry_agents{status="LIVE"}"#),
        1.0
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn metrics_count_lifecycle_transitions_and_agents_by_status() {
    let server = TestServer::start_with(|config| {
        config.lifecycle.stale_after = Duration::from_millis(200);
    })
    .await;
    server.register("order-1", "order-service-prod").await;
    eventually(PROMPTLY, "order-1 STALE", || async {
        server.status_of("order-1").await == "STALE"
    })
    .await;
    let stale = Scrape::of(&server).await;
    assert_eq!(
        stale.get(r#"registry_transitions_total{from="LIVE",to="STALE"}"#),
        1.0
    );
    assert_eq!(stale.get(r#"registry_agents{status="STALE"}"#), 1.0);
    assert_eq!(stale.get(r#"registry_agents{status="LIVE"}"#), 0.0);

    assert_eq!(server.heartbeat("order-1").await, StatusCode::NO_CONTENT);
    let revived = Scrape::of(&server).await;
    assert_eq!(
        revived.get(r#"registry_transitions_total{from="STALE",to="LIVE"}"#),
        1.0
    );
    assert_eq!(revived.get(r#"registry_agents{status="LIVE"}"#), 1.0);
    assert_eq!(revived.get(r#"registry_agents{status="STALE"}"#), 0.0);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_ends_every_stream_finishes_in_the_grace_period_and_then_refuses_connections() {
    let mut server = TestServer::start().await;
    let mut streams = Vec::new();
    for agent_id in ["order-1", "order-2", "order-3"] {
        server.register(agent_id, "order-service-prod").await;
        streams.push(server.open_stream(agent_id).await);
    }
    assert_eq!(Scrape::of(&server).await.get("registry_open_streams"), 3.0);
    let addr = server.base.trim_start_matches("http://").to_owned();

    server.begin_shutdown();
    for stream in &mut streams {
        stream.expect_end().await;
    }
    let finished = tokio::time::timeout(Duration::from_secs(5), server.finished())
        .await
        .expect("the server finished within the 5 s grace period");
    assert!(finished.is_ok(), "serve returned {finished:?}");

    let refused = TcpStream::connect(&addr).await;
    assert!(
        refused.is_err(),
        "the port still accepts connections after shutdown"
    );
}

/// A connection the server accepted, and read part of a request from, before
/// shutdown began is still served: its `/readyz` is 503, its `/livez` 200.
///
/// Deterministic on the current-thread runtime that runs both the server and
/// the test: connections are accepted in the order they were made, and the
/// server reads a connection's bytes as soon as its task runs, which is before
/// a connection accepted later is answered. hyper closes at shutdown only the
/// connections it has read nothing from.
#[tokio::test(flavor = "current_thread")]
async fn readyz_answers_503_and_livez_200_once_shutdown_has_begun() {
    let mut server = TestServer::start().await;
    server.register("order-1", "order-service-prod").await;
    let mut stream = server.open_stream("order-1").await;
    let for_readyz = begin_get(&server, "/readyz").await;
    let for_livez = begin_get(&server, "/livez").await;
    for _ in 0..2 {
        let later = begin_get(&server, "/readyz").await;
        let answer = finish_get(later).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "readyz: {answer:?}");
    }

    server.begin_shutdown();
    // Readiness is turned off before the streams are ended.
    stream.expect_end().await;
    let readyz = finish_get(for_readyz).await;
    assert!(readyz.starts_with("HTTP/1.1 503"), "readyz: {readyz:?}");
    assert!(
        readyz.to_lowercase().contains("application/problem+json"),
        "readyz: {readyz:?}"
    );
    let livez = finish_get(for_livez).await;
    assert!(livez.starts_with("HTTP/1.1 200"), "livez: {livez:?}");

    let finished = tokio::time::timeout(Duration::from_secs(5), server.finished())
        .await
        .expect("the server finished within the 5 s grace period");
    assert!(finished.is_ok(), "serve returned {finished:?}");
}
