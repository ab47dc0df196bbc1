//! Signed commands (SPEC 12) as the SDK meets them: through a proxy that
//! changes a command on its way, the agent registers again once to learn the
//! server's key, still finds the signature wrong, and refuses the command
//! (acknowledges it FAILURE) instead of handing it to the application.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use futures_util::StreamExt;
use registry_client::{Agent, Command, Outcome};
use registry_tests::{PROMPTLY, TestServer, eventually};
use serde_json::{Value, json};
use tokio::net::TcpListener;

mod common;
use common::{QUICK, server_sees_connected};

/// Forwards every request to `upstream`; in what comes back, replaces
/// `from` with `to`, as a meddling proxy on the way would.
#[derive(Clone)]
struct Meddler {
    client: reqwest::Client,
    upstream: String,
    from: &'static str,
    to: &'static str,
}

async fn forward(State(meddler): State<Meddler>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.expect("a body");
    let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
    let mut upstream = meddler
        .client
        .request(parts.method, format!("{}{path}", meddler.upstream))
        .body(body);
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            upstream = upstream.header(name, value);
        }
    }
    let answer = upstream.send().await.expect("the server answers");
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name != "content-length" && name != "transfer-encoding" {
            response = response.header(name, value);
        }
    }
    let (from, to) = (meddler.from, meddler.to);
    let body = answer.bytes_stream().map(move |chunk| {
        chunk.map(|bytes| {
            String::from_utf8_lossy(&bytes)
                .replace(from, to)
                .into_bytes()
        })
    });
    response.body(Body::from_stream(body)).expect("a response")
}

/// A server whose advertised URLs point at a meddling proxy in front of it;
/// answers the server and the proxy's base URL.
async fn behind_a_meddler(from: &'static str, to: &'static str) -> (TestServer, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}", listener.local_addr().unwrap());
    let public_url = proxy.clone();
    let server = TestServer::start_with(move |config| config.server.public_url = public_url).await;
    let meddler = Meddler {
        client: reqwest::Client::new(),
        upstream: server.base.clone(),
        from,
        to,
    };
    let app = Router::new().fallback(forward).with_state(meddler);
    tokio::spawn(async move { axum::serve(listener, app).await });
    (server, proxy)
}

async fn next(agent: &mut Agent) -> Command {
    tokio::time::timeout(PROMPTLY, agent.next_command())
        .await
        .expect("a command within PROMPTLY")
        .expect("a running agent")
}

#[tokio::test]
async fn a_command_changed_on_its_way_is_refused_after_registering_again_once() {
    let (server, proxy) = behind_a_meddler(r#""sampling":0.5"#, r#""sampling":0.9"#).await;
    let (_, registered) = server.register("probe", "other").await;
    assert!(registered["serverPublicKey"].is_string(), "{registered}");

    let mut agent = Agent::builder(&proxy, "a-1", "order-service", "orders")
        .backoff(QUICK)
        .start()
        .unwrap();
    server_sees_connected(&server, "a-1").await;
    let registrations = server.metric("registry_registrations_total").await;

    let (_, changed) = server
        .send("a-1", "config-update", json!({"sampling": 0.5}))
        .await;
    let path = format!(
        "/api/v1/agents/a-1/commands/{}",
        changed["commandId"].as_str().unwrap()
    );
    eventually(PROMPTLY, "the command is refused", || async {
        let command: Value = server.get(&path).await.json().await.unwrap();
        command["status"] == "ACKNOWLEDGED"
    })
    .await;
    let refused: Value = server.get(&path).await.json().await.unwrap();
    assert_eq!(refused["result"], "FAILURE");
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("signature does not verify"), "{message}");
    assert_eq!(
        server.metric("registry_registrations_total").await,
        registrations + 1.0,
        "registered again once, to learn the key"
    );

    // The stream goes on: a command that arrives as it was signed is handed over.
    let (_, intact) = server
        .send("a-1", "config-update", json!({"sampling": 0.25}))
        .await;
    let command = next(&mut agent).await;
    assert_eq!(command.command_id, intact["commandId"].as_str().unwrap());
    assert_eq!(command.payload, json!({"sampling": 0.25}));
    command.ack(Outcome::success("applied")).await.unwrap();
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_agent_that_requires_signatures_refuses_commands_from_a_registry_that_does_not_sign() {
    let server = TestServer::start_with(|config| config.signing.enabled = false).await;
    let mut agent = Agent::builder(&server.base, "strict", "order-service", "orders")
        .require_signatures()
        .start()
        .unwrap();
    let mut lenient = Agent::builder(&server.base, "lenient", "order-service", "orders")
        .start()
        .unwrap();
    for agent_id in ["strict", "lenient"] {
        eventually(PROMPTLY, "the agent is connected", || async {
            server
                .agent(agent_id)
                .await
                .is_some_and(|agent| agent["connected"] == true)
        })
        .await;
    }

    let (_, sent) = server.send("strict", "replay", json!({})).await;
    let path = format!(
        "/api/v1/agents/strict/commands/{}",
        sent["commandId"].as_str().unwrap()
    );
    eventually(PROMPTLY, "the command is refused", || async {
        let command: Value = server.get(&path).await.json().await.unwrap();
        command["result"] == "FAILURE"
    })
    .await;
    let refused: Value = server.get(&path).await.json().await.unwrap();
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("advertises no serverPublicKey"),
        "{refused}"
    );
    let nothing = tokio::time::timeout(Duration::from_millis(200), agent.next_command()).await;
    assert!(nothing.is_err(), "nothing handed over");

    // By default an agent takes the word of a registry that does not sign.
    let (_, sent) = server.send("lenient", "replay", json!({})).await;
    assert_eq!(
        next(&mut lenient).await.command_id,
        sent["commandId"].as_str().unwrap()
    );
}
