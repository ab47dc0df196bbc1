//! What the SDK's and the CLI's tests share: an agent that retries quickly,
//! and waiting until its stream is open, as the agent and as the server see it.
// Each test binary compiles this module and uses a part of it.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use registry_client::{Agent, Backoff, State};
use registry_tests::{PROMPTLY, TestServer, eventually};

/// Quick retries, so that a test waits on the server's `retry:`, not on ours.
pub const QUICK: Backoff = Backoff {
    initial: Duration::from_millis(50),
    max: Duration::from_millis(500),
};

/// Waits until the agent's stream is open.
pub async fn connected(agent: &Agent) {
    let mut states = agent.states();
    tokio::time::timeout(
        PROMPTLY,
        states.wait_for(|state| *state == State::Connected),
    )
    .await
    .expect("connected within PROMPTLY")
    .expect("a running agent");
}

/// The server's view of the agent says it has a stream open.
pub async fn server_sees_connected(server: &TestServer, agent_id: &str) {
    eventually(PROMPTLY, "the agent is connected", || async {
        server
            .agent(agent_id)
            .await
            .is_some_and(|agent| agent["connected"] == true)
    })
    .await;
}
