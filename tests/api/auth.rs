//! Authentication (SPEC 7): every cell of the role table, token rotation,
//! protected mode, and no token in the logs.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use registry_server::{Config, ServeError};
use registry_tests::{TestServer, memory_config};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;

const OPERATOR: &str = "operator-secret-0f9e";
const ENROLLMENT: &str = "enrollment-secret-71c2";

async fn secured_server() -> TestServer {
    TestServer::start_with(|config: &mut Config| {
        config.auth.operator_tokens = vec![OPERATOR.into()];
        config.auth.enrollment_tokens = vec![ENROLLMENT.into()];
    })
    .await
}

/// Sends `method path` with an optional bearer token and, for POSTs, a JSON body.
async fn call(
    server: &TestServer,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> reqwest::Response {
    let mut request = server.client.request(method.clone(), server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if method == Method::POST {
        request =
            request.json(&json!({"type": "replay", "agentId": "x", "name": "n", "group": "g"}));
    }
    request.send().await.expect("a response")
}

/// Registers `agent_id` with the enrollment token; returns its agent token.
async fn enroll(server: &TestServer, agent_id: &str) -> String {
    let response = server
        .client
        .post(server.url("/api/v1/agents/register"))
        .bearer_auth(ENROLLMENT)
        .json(&json!({"agentId": agent_id, "name": "svc", "group": "grp"}))
        .send()
        .await
        .expect("register");
    assert!(response.status().is_success(), "{}", response.status());
    let body: Value = response.json().await.expect("JSON");
    body["agentToken"]
        .as_str()
        .expect("an agentToken")
        .to_owned()
}

/// Every route of SPEC 3.2 and `/metrics`: operator only.
const OPERATOR_ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/agents"),
    ("GET", "/api/v1/agents/alpha"),
    ("DELETE", "/api/v1/agents/nobody"),
    ("DELETE", "/api/v1/agents?status=DEAD&confirm=true"),
    ("POST", "/api/v1/agents/alpha/commands"),
    ("POST", "/api/v1/agents/groups/grp/commands"),
    ("POST", "/api/v1/agents/commands"),
    ("GET", "/api/v1/agents/alpha/commands"),
    (
        "GET",
        "/api/v1/agents/alpha/commands/0190f0c2-0000-7000-8000-000000000000",
    ),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/rollouts"),
    (
        "GET",
        "/api/v1/rollouts/0190f0c2-0000-7000-8000-000000000001",
    ),
    ("GET", "/metrics"),
];

/// The agent's own routes, on alpha's path.
const AGENT_ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/agents/alpha/heartbeat"),
    ("GET", "/api/v1/agents/alpha/events"),
    (
        "POST",
        "/api/v1/agents/alpha/commands/0190f0c2-0000-7000-8000-000000000000/ack",
    ),
];

fn method(name: &str) -> Method {
    name.parse().expect("a method")
}

fn assert_denied(response: &reqwest::Response, expected: StatusCode, what: &str) {
    assert_eq!(response.status(), expected, "{what}");
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert_eq!(content_type, "application/problem+json", "{what}");
    if expected == StatusCode::UNAUTHORIZED {
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{what}");
    }
}

#[tokio::test]
async fn every_route_but_the_probes_refuses_a_missing_or_unknown_token_with_401() {
    let server = secured_server().await;
    let all = OPERATOR_ROUTES
        .iter()
        .chain(AGENT_ROUTES)
        .chain(&[("POST", "/api/v1/agents/register")]);
    for (verb, path) in all {
        for token in [None, Some("not-a-token")] {
            let response = call(&server, method(verb), path, token).await;
            assert_denied(
                &response,
                StatusCode::UNAUTHORIZED,
                &format!("{verb} {path} with {token:?}"),
            );
        }
    }
    for probe in ["/livez", "/readyz"] {
        assert_eq!(server.get(probe).await.status(), StatusCode::OK, "{probe}");
    }
}

#[tokio::test]
async fn operator_routes_take_the_operator_token_and_refuse_other_roles_with_403() {
    let server = secured_server().await;
    let alpha = enroll(&server, "alpha").await;
    for (verb, path) in OPERATOR_ROUTES {
        let response = call(&server, method(verb), path, Some(OPERATOR)).await;
        assert!(
            !matches!(
                response.status(),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
            ),
            "{verb} {path} with the operator token: {}",
            response.status()
        );
        for (role, token) in [("enrollment", ENROLLMENT), ("agent", alpha.as_str())] {
            let response = call(&server, method(verb), path, Some(token)).await;
            assert_denied(
                &response,
                StatusCode::FORBIDDEN,
                &format!("{verb} {path} with the {role} token"),
            );
        }
    }
}

#[tokio::test]
async fn registration_takes_the_enrollment_token_and_answers_with_an_agent_token() {
    let server = secured_server().await;
    let token = enroll(&server, "alpha").await;
    assert!(token.len() >= 43, "256 bits of token: {token}");
    let beta = enroll(&server, "beta").await;
    for (role, token) in [("operator", OPERATOR), ("agent", beta.as_str())] {
        let response = call(
            &server,
            Method::POST,
            "/api/v1/agents/register",
            Some(token),
        )
        .await;
        assert_denied(
            &response,
            StatusCode::FORBIDDEN,
            &format!("register with the {role} token"),
        );
    }
}

#[tokio::test]
async fn agent_routes_take_only_that_agents_own_token() {
    let server = secured_server().await;
    let alpha = enroll(&server, "alpha").await;
    let beta = enroll(&server, "beta").await;
    let heartbeat = call(
        &server,
        Method::POST,
        "/api/v1/agents/alpha/heartbeat",
        Some(&alpha),
    )
    .await;
    assert_eq!(heartbeat.status(), StatusCode::NO_CONTENT);
    let stream = call(
        &server,
        Method::GET,
        "/api/v1/agents/alpha/events",
        Some(&alpha),
    )
    .await;
    assert_eq!(stream.status(), StatusCode::OK);
    drop(stream);
    let ack = call(&server, Method::POST, AGENT_ROUTES[2].1, Some(&alpha)).await;
    assert_eq!(
        ack.status(),
        StatusCode::NOT_FOUND,
        "past auth, an unknown command"
    );

    for (verb, path) in AGENT_ROUTES {
        for (who, token) in [
            ("beta", beta.as_str()),
            ("operator", OPERATOR),
            ("enrollment", ENROLLMENT),
        ] {
            let response = call(&server, method(verb), path, Some(token)).await;
            assert_denied(
                &response,
                StatusCode::FORBIDDEN,
                &format!("{verb} {path} with {who}'s token"),
            );
        }
    }
}

#[tokio::test]
async fn the_token_is_checked_before_the_agent_is_looked_up() {
    let server = secured_server().await;
    let alpha = enroll(&server, "alpha").await;
    let path = "/api/v1/agents/ghost/heartbeat";
    assert_denied(
        &call(&server, Method::POST, path, None).await,
        StatusCode::UNAUTHORIZED,
        "no token, unknown agent",
    );
    assert_denied(
        &call(&server, Method::POST, path, Some(&alpha)).await,
        StatusCode::FORBIDDEN,
        "alpha's token, unknown agent",
    );
}

#[tokio::test]
async fn registering_again_rotates_the_token_and_keeps_the_stream_open() {
    let server = secured_server().await;
    let first = enroll(&server, "alpha").await;
    let mut stream = call(
        &server,
        Method::GET,
        "/api/v1/agents/alpha/events",
        Some(&first),
    )
    .await;
    assert_eq!(stream.status(), StatusCode::OK);
    let second = enroll(&server, "alpha").await;
    assert_ne!(first, second);

    let old = call(
        &server,
        Method::POST,
        "/api/v1/agents/alpha/heartbeat",
        Some(&first),
    )
    .await;
    assert_denied(&old, StatusCode::UNAUTHORIZED, "the former token");
    let new = call(
        &server,
        Method::POST,
        "/api/v1/agents/alpha/heartbeat",
        Some(&second),
    )
    .await;
    assert_eq!(new.status(), StatusCode::NO_CONTENT);

    let agent: Value = call(&server, Method::GET, "/api/v1/agents/alpha", Some(OPERATOR))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        agent["connected"], true,
        "the stream opened with the former token stays open"
    );
    let pushed = call(
        &server,
        Method::POST,
        "/api/v1/agents/alpha/commands",
        Some(OPERATOR),
    )
    .await;
    assert_eq!(pushed.status(), StatusCode::ACCEPTED);
    let chunk = tokio::time::timeout(registry_tests::PROMPTLY, async {
        let mut seen = String::new();
        while !seen.contains("event: replay") {
            let bytes = stream
                .chunk()
                .await
                .expect("a chunk")
                .expect("an open stream");
            seen.push_str(&String::from_utf8_lossy(&bytes));
        }
        seen
    })
    .await
    .expect("the command on the stream");
    assert!(chunk.contains("event: replay"));
}

#[tokio::test]
async fn an_open_server_refuses_to_start_on_a_non_loopback_address() {
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let result = registry_server::serve(listener, memory_config(), std::future::pending()).await;
    match result {
        Err(ServeError::Config(err)) => {
            assert!(err.to_string().contains("auth.allow_open"), "{err}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn allow_open_serves_an_open_server_on_a_non_loopback_address() {
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut config = memory_config();
    config.auth.allow_open = true;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(registry_server::serve(listener, config, async {
        let _ = stopped.await;
    }));
    let livez = reqwest::get(format!("http://127.0.0.1:{port}/livez"))
        .await
        .unwrap();
    assert_eq!(livez.status(), StatusCode::OK);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// Log lines of the whole test process, from the first test that asks on.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || SharedWriter(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        logs
    })
    .clone()
}

struct SharedWriter(Arc<Mutex<Vec<u8>>>);

impl Write for SharedWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_token_ever_reaches_the_logs() {
    let logs = captured_logs();
    let server = secured_server().await;
    let first = enroll(&server, "log-watch").await;
    let second = enroll(&server, "log-watch").await;
    call(
        &server,
        Method::POST,
        "/api/v1/agents/log-watch/heartbeat",
        Some(&first),
    )
    .await;
    call(
        &server,
        Method::POST,
        "/api/v1/agents/log-watch/heartbeat",
        Some(&second),
    )
    .await;
    call(
        &server,
        Method::POST,
        "/api/v1/agents/log-watch/commands",
        Some(OPERATOR),
    )
    .await;
    call(&server, Method::GET, "/api/v1/agents", Some("wrong-token")).await;
    server.shutdown().await.unwrap();

    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(text.contains("log-watch"), "the capture works: {text}");
    for secret in [
        OPERATOR,
        ENROLLMENT,
        first.as_str(),
        second.as_str(),
        "wrong-token",
    ] {
        assert!(!text.contains(secret), "a token in the logs");
    }
}

#[tokio::test]
async fn token_files_add_tokens_one_a_line_skipping_comments_and_blank_lines() {
    let dir = std::env::temp_dir().join(format!("registry-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("operators");
    std::fs::write(&file, "# operators\r\n\r\n  from-file-token  \r\n").unwrap();
    let server = TestServer::start_with(|config: &mut Config| {
        config.auth.operator_tokens_file = file.display().to_string();
        config.auth.enrollment_tokens = vec![ENROLLMENT.into()];
    })
    .await;
    let list = call(
        &server,
        Method::GET,
        "/api/v1/agents",
        Some("from-file-token"),
    )
    .await;
    assert_eq!(list.status(), StatusCode::OK);
    let comment = call(&server, Method::GET, "/api/v1/agents", Some("# operators")).await;
    assert_eq!(comment.status(), StatusCode::UNAUTHORIZED);
    std::fs::remove_dir_all(&dir).unwrap();
}
