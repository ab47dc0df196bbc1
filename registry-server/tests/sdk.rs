//! The agent SDK (`registry-client`) across a restart of the built server on
//! its embedded file: the agent reconnects by itself, keeps its identity and
//! token, and gets the commands pushed after the restart; and when the server
//! came back with another signing key, the agent learns it by registering
//! again instead of refusing the commands signed with it.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use registry_client::{
    Agent, AgentStatus, Backoff, CommandRequest, CommandStatus, Operator, Outcome, State,
};
use serde_json::json;
use tokio::sync::watch;

/// Streams ask for a reconnect 100-200 ms after they end.
const ENV: [(&str, &str); 1] = [("REGISTRY_SSE__RETRY", "100ms")];

async fn reach(states: &mut watch::Receiver<State>, wanted: State) {
    tokio::time::timeout(PROMPTLY, states.wait_for(|state| *state == wanted))
        .await
        .unwrap_or_else(|_| panic!("{wanted:?} within {PROMPTLY:?}"))
        .expect("a running agent");
}

/// Agent `a-1`, retrying quickly, once its stream is open; and its states.
async fn connected_agent(base: &str) -> (Agent, watch::Receiver<State>) {
    let agent = Agent::builder(base, "a-1", "order-service", "orders")
        .backoff(Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
        })
        .start()
        .expect("an agent");
    let mut states = agent.states();
    reach(&mut states, State::Connected).await;
    (agent, states)
}

/// Starts the binary in `dir` on `addr`, as an operator would restart it.
fn restart(dir: WorkDir, addr: SocketAddr) -> Process {
    restart_with(dir, addr, &ENV)
}

fn restart_with(dir: WorkDir, addr: SocketAddr, env: &[(&str, &str)]) -> Process {
    let mut process = Process::spawn(dir, &["--bind", &addr.to_string()], env);
    process.wait_for_line("listening on http://");
    process
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_comes_back_by_itself_when_the_server_restarts_on_its_file() {
    let (process, addr) = Process::serve(WorkDir::new(), &[], &ENV);
    let base = format!("http://{addr}");
    let operator = Operator::new(&base).unwrap();
    let (mut agent, mut states) = connected_agent(&base).await;
    let before = operator.agent("a-1").await.unwrap();

    let sent = operator
        .send_to_agent("a-1", &CommandRequest::new("deep-trace", json!({"n": 1})))
        .await
        .unwrap();
    let command = tokio::time::timeout(PROMPTLY, agent.next_command())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(command.command_id, sent.command_id);
    command.ack(Outcome::success("traced")).await.unwrap();

    // SIGTERM ends the stream; the agent waits, retries, and finds the server back.
    let dir = process.stop();
    reach(&mut states, State::Disconnected).await;
    let process = restart(dir, addr);
    reach(&mut states, State::Connected).await;

    let after = operator.agent("a-1").await.unwrap();
    assert!(after.connected);
    assert_eq!(after.status, AgentStatus::Live);
    assert_eq!(
        after.registered_at, before.registered_at,
        "the same identity"
    );
    let kept = operator.command("a-1", &sent.command_id).await.unwrap();
    assert_eq!(kept.status, CommandStatus::Acknowledged);
    assert_eq!(kept.message.as_deref(), Some("traced"));

    let sent = operator
        .send_to_agent("a-1", &CommandRequest::new("replay", json!({})))
        .await
        .unwrap();
    let command = tokio::time::timeout(PROMPTLY, agent.next_command())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(command.command_id, sent.command_id);
    command.ack(Outcome::success("replayed")).await.unwrap();
    agent.shutdown().await.unwrap();
    process.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_learns_the_servers_new_key_by_registering_again() {
    let dir = WorkDir::new();
    let pem = |name: &str| {
        let key = registry_signing::ServerKey::generate().unwrap();
        dir.write(name, &key.to_pkcs8_pem())
            .to_string_lossy()
            .into_owned()
    };
    let (first, second) = (pem("keys/first.pem"), pem("keys/second.pem"));
    fn env(key: &str) -> [(&str, &str); 2] {
        [ENV[0], ("REGISTRY_SIGNING__KEY_FILE", key)]
    }
    let (process, addr) = Process::serve(dir.alias(), &[], &env(&first));
    let base = format!("http://{addr}");
    let operator = Operator::new(&base).unwrap();
    let (mut agent, mut states) = connected_agent(&base).await;

    // The agent reconnects to the same registry, which now signs with another key.
    let dir = process.stop();
    reach(&mut states, State::Disconnected).await;
    let process = restart_with(dir, addr, &env(&second));
    reach(&mut states, State::Connected).await;
    let sent = operator
        .send_to_agent(
            "a-1",
            &CommandRequest::new("config-update", json!({"sampling": 0.5})),
        )
        .await
        .unwrap();
    let command = tokio::time::timeout(PROMPTLY, agent.next_command())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(command.command_id, sent.command_id);
    command.ack(Outcome::success("applied")).await.unwrap();
    let acked = operator.command("a-1", &sent.command_id).await.unwrap();
    assert_eq!(acked.message.as_deref(), Some("applied"));
    agent.shutdown().await.unwrap();
    process.terminate();
}
