//! SPEC 13, the brake, as an operator sees it over HTTP: most of the fleet going
//! STALE at once engages it (`registry_brake_engaged` 1) and no agent turns DEAD
//! while it holds; it releases when the agents come back or after `brake_max`,
//! the held agents then turning DEAD; one agent of twenty dying never engages it.

use std::time::Duration;

use registry_tests::{TestServer, eventually, unix_millis};
use tokio::task::JoinHandle;

// Long enough against HEARTBEAT_EVERY that a live agent never goes STALE on
// a loaded CI machine, short enough to keep the tests quick.
const STALE_AFTER: Duration = Duration::from_millis(1_500);
const DEAD_AFTER: Duration = Duration::from_millis(300);
const HEARTBEAT_EVERY: Duration = Duration::from_millis(150);
/// SPEC 2: a transition happens within 1 second of its deadline.
const SLACK: Duration = Duration::from_secs(1);

/// A server with short timings and the default brake (0.5 of at least 10 agents).
async fn server(brake_max: Duration) -> TestServer {
    TestServer::start_with(|c| {
        c.lifecycle.stale_after = STALE_AFTER;
        c.lifecycle.dead_after = DEAD_AFTER;
        c.lifecycle.brake_max = brake_max;
    })
    .await
}

/// Agents that keep heartbeating until dropped.
struct Heartbeating(JoinHandle<()>);

impl Heartbeating {
    fn start(server: &TestServer, agent_ids: Vec<String>) -> Self {
        let client = server.client.clone();
        let urls: Vec<String> = agent_ids
            .iter()
            .map(|id| server.url(&format!("/api/v1/agents/{id}/heartbeat")))
            .collect();
        Self(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(HEARTBEAT_EVERY);
            loop {
                ticks.tick().await;
                // At once, not one after another: under load, twenty
                // heartbeats in a row can take longer than STALE_AFTER.
                futures_util::future::join_all(urls.iter().map(|url| client.post(url).send()))
                    .await;
            }
        }))
    }
}

impl Drop for Heartbeating {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Registers `live` agents that keep heartbeating and `silent` ones that stop.
async fn fleet(server: &TestServer, live: usize, silent: usize) -> (Heartbeating, Vec<String>) {
    let live: Vec<String> = (0..live).map(|n| format!("live-{n}")).collect();
    let silent: Vec<String> = (0..silent).map(|n| format!("silent-{n}")).collect();
    for id in live.iter().chain(&silent) {
        server.register(id, "fleet").await;
    }
    (Heartbeating::start(server, live), silent)
}

async fn engaged(server: &TestServer) -> bool {
    server.metric("registry_brake_engaged").await == 1.0
}

async fn statuses(server: &TestServer, agent_ids: &[String]) -> Vec<String> {
    let mut statuses = Vec::new();
    for id in agent_ids {
        statuses.push(server.status_of(id).await);
    }
    statuses
}

async fn wait_until_engaged(server: &TestServer) {
    eventually(STALE_AFTER + SLACK, "the brake engages", || engaged(server)).await;
}

#[tokio::test]
async fn most_of_the_fleet_going_stale_engages_the_brake_which_holds_dead_until_they_come_back() {
    let server = server(Duration::from_secs(60)).await;
    let (_live, mut silent) = fleet(&server, 9, 11).await;
    let mut fleet_events = server.open_fleet_stream().await;
    assert!(!engaged(&server).await);

    wait_until_engaged(&server).await;
    let brake = loop {
        let event = fleet_events
            .next_event()
            .await
            .expect("the fleet stream is open");
        if event.event == "brake" {
            break serde_json::from_str::<serde_json::Value>(&event.data).expect("JSON data");
        }
    };
    assert_eq!(brake["engaged"], true, "{brake}");
    assert!(unix_millis(&brake["at"]) > 0, "{brake}");
    assert_eq!(statuses(&server, &silent).await, vec!["STALE"; 11]);

    // Well past dead_after, nobody is DEAD: the brake holds them.
    tokio::time::sleep(DEAD_AFTER * 3).await;
    assert!(engaged(&server).await);
    assert_eq!(statuses(&server, &silent).await, vec!["STALE"; 11]);
    assert_eq!(server.metric("registry_agents{status=\"DEAD\"}").await, 0.0);
    assert_eq!(server.metric("registry_brake_held_agents").await, 11.0);

    // One comes back: 10 STALE of 20 is no more than half, the brake releases
    // and those it held turn DEAD at once.
    let back = silent.remove(0);
    server.heartbeat(&back).await;
    assert!(!engaged(&server).await);
    assert_eq!(server.status_of(&back).await, "LIVE");
    assert_eq!(statuses(&server, &silent).await, vec!["DEAD"; 10]);
    assert_eq!(
        server.metric("registry_agents{status=\"DEAD\"}").await,
        10.0
    );
}

#[tokio::test]
async fn the_brake_releases_by_itself_after_brake_max() {
    let brake_max = Duration::from_millis(1_500);
    let server = server(brake_max).await;
    let (_live, silent) = fleet(&server, 9, 11).await;
    wait_until_engaged(&server).await;
    // The last of the eleven to go STALE is the one that engaged the brake.
    let last = silent.last().expect("silent agents");
    let engaged_at = server.agent(last).await.expect("registered")["statusChangedAt"].clone();

    eventually(brake_max + SLACK, "the brake releases", || async {
        !engaged(&server).await
    })
    .await;

    assert_eq!(statuses(&server, &silent).await, vec!["DEAD"; 11]);
    let died = server.agent(&silent[0]).await.expect("registered")["statusChangedAt"].clone();
    assert_eq!(
        unix_millis(&died) - unix_millis(&engaged_at),
        i64::try_from(brake_max.as_millis()).unwrap(),
        "statusChangedAt of a held agent is the release, brake_max after the brake engaged"
    );
}

#[tokio::test]
async fn one_agent_of_twenty_dying_does_not_engage_the_brake() {
    let server = server(Duration::from_secs(60)).await;
    let (_live, silent) = fleet(&server, 19, 1).await;

    eventually(
        STALE_AFTER + DEAD_AFTER + SLACK,
        "the silent agent dies",
        || async { server.status_of(&silent[0]).await == "DEAD" },
    )
    .await;

    assert!(!engaged(&server).await);
    assert_eq!(
        server.metric("registry_agents{status=\"LIVE\"}").await,
        19.0
    );
}
