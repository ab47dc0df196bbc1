//! The agent SDK against the real server on a free port: commands handed over
//! and acknowledged, a forgotten agent registering again, a replaced stream
//! backing off, a replayed command not handed over twice, a clean stop.

use std::time::{Duration, Instant};

use registry_client::{AckResult, Agent, Command, CommandType, Outcome, State};
use registry_server::config::Replay;
use registry_tests::{PROMPTLY, TestServer, eventually};
use reqwest::StatusCode;
use serde_json::json;

mod common;
use common::{QUICK, connected, server_sees_connected};

fn agent(server: &TestServer, agent_id: &str) -> Agent {
    Agent::builder(&server.base, agent_id, "order-service", "orders")
        .version("1.4.2")
        .capabilities(["deep-trace"])
        .backoff(QUICK)
        .start()
        .expect("an agent")
}

async fn next(agent: &mut Agent) -> Command {
    tokio::time::timeout(PROMPTLY, agent.next_command())
        .await
        .expect("a command within PROMPTLY")
        .expect("a running agent")
}

#[tokio::test]
async fn commands_are_handed_over_typed_and_acknowledged_with_the_applications_answer() {
    let server = TestServer::start().await;
    let mut agent = agent(&server, "a-1");
    connected(&agent).await;
    let view = server.agent("a-1").await.expect("registered");
    assert_eq!(view["version"], "1.4.2");
    assert_eq!(view["capabilities"], json!(["deep-trace"]));

    let (status, sent) = server
        .send("a-1", "deep-trace", json!({"routeId": "route-1"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let command = next(&mut agent).await;
    assert_eq!(command.command_id, sent["commandId"].as_str().unwrap());
    assert_eq!(command.kind, CommandType::DeepTrace);
    assert_eq!(command.payload, json!({"routeId": "route-1"}));
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Trace {
        route_id: String,
    }
    assert_eq!(command.payload_as::<Trace>().unwrap().route_id, "route-1");
    let acked = command
        .ack(Outcome::success("tracing route-1"))
        .await
        .expect("acknowledged");
    assert_eq!(acked.result, Some(AckResult::Success));

    let (_, sent) = server
        .send("a-1", "config-update", json!({"sampling": 2}))
        .await;
    let command = next(&mut agent).await;
    assert_eq!(command.kind, CommandType::ConfigUpdate);
    command
        .ack(Outcome::failure("sampling must be at most 1"))
        .await
        .expect("acknowledged");
    let id = sent["commandId"].as_str().unwrap();
    let stored: serde_json::Value = server
        .get(&format!("/api/v1/agents/a-1/commands/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stored["status"], "ACKNOWLEDGED");
    assert_eq!(stored["result"], "FAILURE");
    assert_eq!(stored["message"], "sampling must be at most 1");
    agent.shutdown().await.expect("a clean stop");
}

#[tokio::test]
async fn an_agent_the_server_forgot_registers_again_and_gets_its_commands() {
    let server = TestServer::start_with(|config| {
        config.sse.retry = Duration::from_millis(50);
        config.lifecycle.heartbeat_interval = Duration::from_millis(200);
    })
    .await;
    let mut agent = agent(&server, "a-1");
    connected(&agent).await;
    let first = server.agent("a-1").await.unwrap()["registeredAt"].clone();

    // Deleting ends its stream; the reconnect, or the next heartbeat, meets 404.
    assert_eq!(
        server.delete("/api/v1/agents/a-1").await.status(),
        StatusCode::NO_CONTENT
    );
    eventually(PROMPTLY, "registered again, stream open", || async {
        server
            .agent("a-1")
            .await
            .is_some_and(|agent| agent["connected"] == true && agent["registeredAt"] != first)
    })
    .await;
    server.send("a-1", "replay", json!({})).await;
    assert_eq!(next(&mut agent).await.kind, CommandType::Replay);
}

#[tokio::test]
async fn a_replaced_stream_waits_the_servers_replaced_retry_before_taking_it_back() {
    let replaced_retry = Duration::from_secs(2);
    let server = TestServer::start_with(|config| {
        config.sse.retry = Duration::from_millis(50);
        config.sse.replaced_retry = replaced_retry;
    })
    .await;
    let agent = agent(&server, "twin");
    connected(&agent).await;

    // Another process with the same id takes the stream.
    let replaced_at = Instant::now();
    let mut other = server.open_stream("twin").await;
    let mut states = agent.states();
    tokio::time::timeout(
        PROMPTLY,
        states.wait_for(|state| *state == State::Disconnected),
    )
    .await
    .expect("the agent's stream ends")
    .unwrap();
    // The agent takes it back once, after the back-off the server asked for.
    other.expect_nothing_for(replaced_retry * 3 / 4).await;
    other.expect_end().await;
    assert!(
        replaced_at.elapsed() >= replaced_retry,
        "{:?}",
        replaced_at.elapsed()
    );
    server_sees_connected(&server, "twin").await;
    assert_eq!(
        server.metric("registry_stream_replacements_total").await,
        2.0
    );
}

#[tokio::test]
async fn a_command_the_server_sends_again_is_not_handed_over_twice() {
    let server = TestServer::start_with(|config| {
        config.sse.replay = Replay::Unacknowledged;
        config.sse.retry = Duration::from_millis(50);
        config.sse.replaced_retry = Duration::from_millis(200);
        config.commands.retention = Duration::from_millis(100);
    })
    .await;
    let mut agent = agent(&server, "a-1");
    connected(&agent).await;

    // `held` stays DELIVERED, unacknowledged; `done` is acknowledged, then dropped.
    let (_, held) = server.send("a-1", "deep-trace", json!({"n": 1})).await;
    let held_id = held["commandId"].as_str().unwrap().to_owned();
    let first = next(&mut agent).await;
    assert_eq!(first.command_id, held_id);
    let (_, done) = server.send("a-1", "deep-trace", json!({"n": 2})).await;
    let done_id = done["commandId"].as_str().unwrap().to_owned();
    next(&mut agent)
        .await
        .ack(Outcome::success("ok"))
        .await
        .unwrap();
    eventually(PROMPTLY, "the acknowledged command is dropped", || async {
        let path = format!("/api/v1/agents/a-1/commands/{done_id}");
        server.get(&path).await.status() == StatusCode::NOT_FOUND
    })
    .await;

    // A stream opened elsewhere is replayed `held`; the agent's reconnect
    // names `done` as its last event, which the server no longer knows, so it
    // is replayed `held` too.
    let mut other = server.open_stream("a-1").await;
    let replayed = other.next_event().await.expect("the replay");
    assert_eq!(replayed.id, held_id);
    drop(other);
    server_sees_connected(&server, "a-1").await;
    let (_, after) = server.send("a-1", "replay", json!({})).await;
    let command = next(&mut agent).await;
    assert_eq!(command.command_id, after["commandId"].as_str().unwrap());
    drop(first);
}

#[tokio::test]
async fn an_agent_stops_cleanly_on_shutdown_and_on_drop() {
    let server = TestServer::start().await;
    let stopped = agent(&server, "a-1");
    connected(&stopped).await;
    let states = stopped.states();
    stopped.shutdown().await.expect("a clean stop");
    assert_eq!(*states.borrow(), State::Stopped);
    eventually(PROMPTLY, "its stream is closed", || async {
        server.agent("a-1").await.unwrap()["connected"] == false
    })
    .await;

    let dropped = agent(&server, "a-2");
    connected(&dropped).await;
    drop(dropped);
    eventually(PROMPTLY, "its stream is closed", || async {
        server.agent("a-2").await.unwrap()["connected"] == false
    })
    .await;
}

#[tokio::test]
async fn a_registration_the_server_refuses_stops_the_agent_with_the_servers_detail() {
    let server = TestServer::start().await;
    let agent = Agent::builder(&server.base, "register", "svc", "orders")
        .backoff(QUICK)
        .start()
        .unwrap();
    let mut states = agent.states();
    tokio::time::timeout(PROMPTLY, states.wait_for(|state| *state == State::Stopped))
        .await
        .expect("stopped")
        .unwrap();
    let err = agent.shutdown().await.expect_err("refused");
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
    assert!(err.to_string().contains("agentId"), "{err}");
}
