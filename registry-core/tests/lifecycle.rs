//! Tests of the agent lifecycle (SPEC section 2): registration and resumption,
//! heartbeats, LIVE -> STALE -> DEAD to the millisecond, revival, deletion,
//! listing, counting and broadcasting of transitions, and the deadline scheduler.

use std::time::{Duration, UNIX_EPOCH};

use futures_util::StreamExt;
use registry_core::{
    AgentFilter, AgentId, AgentMetadata, AgentStatus, AgentView, Clock, CommandRequest,
    CommandStatus, GroupName, Registration, RegistrationRequest, Registry, RegistryError,
    RegistryGuard, Settings, StatusChange, StatusChanges,
};
use tokio::sync::broadcast::error::TryRecvError;

mod common;
use common::{advance_ms, at, start_with, test_clock, yield_a_few_times};

const STALE_MS: u64 = 90_000;
const DEAD_MS: u64 = 300_000;

fn settings() -> Settings {
    Settings {
        stale_after: Duration::from_millis(STALE_MS),
        dead_after: Duration::from_millis(DEAD_MS),
        stream_queue: 4,
        ..Settings::default()
    }
}

/// A registry with its scheduler task; keep the guard alive for the whole test.
fn start() -> (RegistryGuard, Registry) {
    start_with(settings())
}

fn metadata(group: &str, version: Option<&str>, routes: &[&str], caps: &[&str]) -> AgentMetadata {
    AgentMetadata {
        name: "order-service".to_owned(),
        group: GroupName::parse(group).unwrap(),
        version: version.map(str::to_owned),
        route_ids: routes.iter().map(|r| (*r).to_owned()).collect(),
        capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
    }
}

/// A registration as an agent sends it, validated by the crate's own rules.
fn registration_with(
    agent_id: &str,
    group: &str,
    version: Option<&str>,
    routes: &[&str],
    caps: &[&str],
) -> Registration {
    RegistrationRequest {
        agent_id: agent_id.to_owned(),
        name: "order-service".to_owned(),
        group: group.to_owned(),
        version: version.map(str::to_owned),
        route_ids: Some(routes.iter().map(|r| (*r).to_owned()).collect()),
        capabilities: Some(caps.iter().map(|c| (*c).to_owned()).collect()),
    }
    .validate()
    .unwrap()
}

fn registration(agent_id: &str, group: &str) -> Registration {
    registration_with(agent_id, group, Some("1.0.0"), &["route-1"], &["replay"])
}

fn command() -> CommandRequest {
    CommandRequest {
        kind: "config-update".to_owned(),
        payload: None,
    }
}

fn status_of(registry: &Registry, agent_id: &str) -> AgentStatus {
    registry.agent(agent_id).unwrap().status
}

fn ids(views: &[AgentView]) -> Vec<&str> {
    views.iter().map(|view| view.agent_id.as_str()).collect()
}

fn list(registry: &Registry, status: Option<AgentStatus>, group: Option<&str>) -> Vec<String> {
    let filter = AgentFilter {
        status,
        group: group.map(str::to_owned),
    };
    ids(&registry.agents(&filter))
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// The next status change, letting the paused clock run to the next timer; a
/// missing scheduler fails the test after an hour of paused time instead of hanging it.
async fn next_change(changes: &mut StatusChanges) -> StatusChange {
    tokio::time::timeout(Duration::from_secs(3_600), changes.recv())
        .await
        .expect("no status change within an hour")
        .expect("the status change channel is open")
}

fn change(agent_id: &str, from: AgentStatus, to: AgentStatus, at_ms: u64) -> StatusChange {
    StatusChange {
        agent_id: AgentId::parse(agent_id).unwrap(),
        from,
        to,
        at: test_clock_timestamp(at_ms),
    }
}

/// Lets `wait_ms` pass on the paused clock with only the scheduler at work:
/// nothing changes until its last millisecond, and then exactly `agent_id`
/// going `from` -> `to`, stamped `at_ms`.
async fn expect_only_at_the_end(
    changes: &mut StatusChanges,
    wait_ms: u64,
    (agent_id, from, to, at_ms): (&str, AgentStatus, AgentStatus, u64),
) {
    advance_ms(wait_ms - 1).await;
    yield_a_few_times().await;
    assert_eq!(changes.try_recv(), Err(TryRecvError::Empty));
    advance_ms(1).await;
    yield_a_few_times().await;
    assert_eq!(changes.try_recv(), Ok(change(agent_id, from, to, at_ms)));
}

/// The `Timestamp` of `ms` after the test clock's start, built through a clock
/// so the test does not depend on how `Timestamp` is constructed.
fn test_clock_timestamp(ms: u64) -> registry_core::Timestamp {
    let clock = Clock::starting_at(UNIX_EPOCH + Duration::from_millis(at(ms)));
    clock.timestamp(clock.now())
}

#[tokio::test(start_paused = true)]
async fn registration_of_a_new_agent_answers_new_and_is_live() {
    let (_guard, registry) = start();

    let (view, resumed) = registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();

    assert!(!resumed);
    assert_eq!(view.agent_id.as_str(), "order-7f3a");
    assert_eq!(view.status, AgentStatus::Live);
    assert_eq!(view.registered_at.unix_millis(), at(0));
    assert_eq!(view.last_heartbeat_at.unix_millis(), at(0));
    assert_eq!(view.status_changed_at.unix_millis(), at(0));
    assert!(!view.connected);
    assert_eq!(
        *view.metadata,
        metadata("order-prod", Some("1.0.0"), &["route-1"], &["replay"])
    );
    assert_eq!(registry.agent("order-7f3a").unwrap(), view);
    let stats = registry.stats();
    assert_eq!(stats.registrations, 1);
    assert_eq!(stats.agents_in(AgentStatus::Live), 1);
}

#[tokio::test(start_paused = true)]
async fn re_registration_answers_resumed_keeps_registered_at_and_replaces_metadata() {
    let (_guard, registry) = start();
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();
    advance_ms(10_000).await;

    let new_metadata = metadata("order-prod", None, &["route-2", "route-3"], &[]);
    let (view, resumed) = registry
        .register(registration_with(
            "order-7f3a",
            "order-prod",
            None,
            &["route-2", "route-3"],
            &[],
        ))
        .unwrap();

    assert!(resumed);
    assert_eq!(*view.metadata, new_metadata, "metadata is replaced whole");
    assert_eq!(view.status, AgentStatus::Live);
    assert_eq!(
        view.registered_at.unix_millis(),
        at(0),
        "registeredAt is kept"
    );
    assert_eq!(view.last_heartbeat_at.unix_millis(), at(10_000));
    assert_eq!(
        view.status_changed_at.unix_millis(),
        at(0),
        "a LIVE agent that registers again did not change status"
    );
    assert_eq!(registry.agents(&AgentFilter::default()).len(), 1);
    let stats = registry.stats();
    assert_eq!(stats.registrations, 2);
    assert_eq!(stats.agents_in(AgentStatus::Live), 1);

    // Re-registration is a heartbeat: the stale deadline moved to 10 s + stale_after.
    advance_ms(STALE_MS - 1).await;
    assert_eq!(status_of(&registry, "order-7f3a"), AgentStatus::Live);
    advance_ms(1).await;
    assert_eq!(status_of(&registry, "order-7f3a"), AgentStatus::Stale);
}

#[tokio::test(start_paused = true)]
async fn re_registration_into_another_group_moves_the_agent_between_groups() {
    let (_guard, registry) = start();
    registry
        .register(registration("mover", "old-group"))
        .unwrap();
    registry
        .register(registration("stayer", "new-group"))
        .unwrap();
    assert_eq!(list(&registry, None, Some("old-group")), ["mover"]);

    let (view, resumed) = registry
        .register(registration("mover", "new-group"))
        .unwrap();

    assert!(resumed);
    assert_eq!(view.metadata.group.as_str(), "new-group");
    assert_eq!(
        list(&registry, None, Some("new-group")),
        ["mover", "stayer"]
    );
    assert!(list(&registry, None, Some("old-group")).is_empty());

    // Group commands follow the move.
    let sent = registry.send_to_group("new-group", command()).unwrap();
    let targets: Vec<&str> = sent.commands.iter().map(|c| c.agent_id.as_str()).collect();
    assert_eq!(targets, ["mover", "stayer"]);

    // The old group has no member left in any status: it is unknown.
    assert_eq!(
        registry.send_to_group("old-group", command()).unwrap_err(),
        RegistryError::UnknownGroup("old-group".to_owned())
    );
}

#[tokio::test(start_paused = true)]
async fn re_registration_keeps_an_open_stream_open() {
    let (_guard, registry) = start();
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();
    let mut subscription = registry.open_stream("order-7f3a").unwrap();

    let (view, resumed) = registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();

    assert!(resumed);
    assert!(view.connected);
    let sent = registry.send_to_agent("order-7f3a", command()).unwrap();
    assert_eq!(sent.status, CommandStatus::Delivered);
    let event = subscription.next().await.unwrap();
    assert_eq!(event.command_id, sent.command_id);
}

#[tokio::test(start_paused = true)]
async fn live_agent_becomes_stale_exactly_at_stale_after() {
    let (_guard, registry) = start();
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();

    advance_ms(STALE_MS - 1).await;
    let view = registry.agent("order-7f3a").unwrap();
    assert_eq!(view.status, AgentStatus::Live, "1 ms before the deadline");
    assert_eq!(view.status_changed_at.unix_millis(), at(0));

    advance_ms(1).await;
    let view = registry.agent("order-7f3a").unwrap();
    assert_eq!(view.status, AgentStatus::Stale, "at the deadline");
    assert_eq!(view.status_changed_at.unix_millis(), at(STALE_MS));
    assert_eq!(view.last_heartbeat_at.unix_millis(), at(0));
}

#[tokio::test(start_paused = true)]
async fn stale_agent_becomes_dead_exactly_at_dead_after_from_status_changed_at() {
    let (_guard, registry) = start();
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();
    advance_ms(STALE_MS).await;
    assert_eq!(status_of(&registry, "order-7f3a"), AgentStatus::Stale);

    advance_ms(DEAD_MS - 1).await;
    assert_eq!(
        status_of(&registry, "order-7f3a"),
        AgentStatus::Stale,
        "1 ms before statusChangedAt + dead_after"
    );

    advance_ms(1).await;
    let view = registry.agent("order-7f3a").unwrap();
    assert_eq!(view.status, AgentStatus::Dead);
    assert_eq!(view.status_changed_at.unix_millis(), at(STALE_MS + DEAD_MS));
    assert_eq!(view.last_heartbeat_at.unix_millis(), at(0));
    assert_eq!(view.registered_at.unix_millis(), at(0));
}

#[tokio::test(start_paused = true)]
async fn stale_agent_applied_late_still_dies_at_its_status_changed_at_plus_dead_after() {
    // No read and no scheduler: the LIVE -> STALE deadline is applied late, by
    // the read at 100 s, but statusChangedAt is the deadline and DEAD follows from it.
    let registry = Registry::new(settings(), test_clock());
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();

    advance_ms(100_000).await;
    let view = registry.agent("order-7f3a").unwrap();
    assert_eq!(view.status, AgentStatus::Stale);
    assert_eq!(view.status_changed_at.unix_millis(), at(STALE_MS));

    advance_ms(STALE_MS + DEAD_MS - 100_000 - 1).await;
    assert_eq!(status_of(&registry, "order-7f3a"), AgentStatus::Stale);
    advance_ms(1).await;
    assert_eq!(status_of(&registry, "order-7f3a"), AgentStatus::Dead);
}

#[tokio::test(start_paused = true)]
async fn heartbeat_exactly_at_the_stale_deadline_finds_it_stale_and_revives_it() {
    let (_guard, registry) = start();
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();
    let mut changes = registry.status_changes();

    advance_ms(STALE_MS).await;
    registry.heartbeat("order-7f3a").unwrap();

    // At the deadline `now - lastHeartbeatAt >= stale_after` holds: the agent
    // was STALE at that instant, and the heartbeat revived it at the same instant.
    assert_eq!(
        changes.try_recv().unwrap(),
        change(
            "order-7f3a",
            AgentStatus::Live,
            AgentStatus::Stale,
            STALE_MS
        )
    );
    assert_eq!(
        changes.try_recv().unwrap(),
        change(
            "order-7f3a",
            AgentStatus::Stale,
            AgentStatus::Live,
            STALE_MS
        )
    );
    let view = registry.agent("order-7f3a").unwrap();
    assert_eq!(view.status, AgentStatus::Live);
    assert_eq!(view.status_changed_at.unix_millis(), at(STALE_MS));
    assert_eq!(view.last_heartbeat_at.unix_millis(), at(STALE_MS));
    let stats = registry.stats();
    assert_eq!(
        stats.transitions_between(AgentStatus::Live, AgentStatus::Stale),
        1
    );
    assert_eq!(
        stats.transitions_between(AgentStatus::Stale, AgentStatus::Live),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn heartbeat_one_ms_before_the_stale_deadline_keeps_it_live_and_moves_the_deadline() {
    let (_guard, registry) = start();
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();

    advance_ms(STALE_MS - 1).await;
    registry.heartbeat("order-7f3a").unwrap();
    let view = registry.agent("order-7f3a").unwrap();
    assert_eq!(view.status, AgentStatus::Live);
    assert_eq!(view.status_changed_at.unix_millis(), at(0), "no transition");
    assert_eq!(view.last_heartbeat_at.unix_millis(), at(STALE_MS - 1));

    // The old deadline passes without effect.
    advance_ms(1).await;
    yield_a_few_times().await;
    assert_eq!(status_of(&registry, "order-7f3a"), AgentStatus::Live);

    // The new one is the heartbeat + stale_after.
    advance_ms(STALE_MS - 2).await;
    assert_eq!(status_of(&registry, "order-7f3a"), AgentStatus::Live);
    advance_ms(1).await;
    let view = registry.agent("order-7f3a").unwrap();
    assert_eq!(view.status, AgentStatus::Stale);
    assert_eq!(view.status_changed_at.unix_millis(), at(2 * STALE_MS - 1));
    let stats = registry.stats();
    assert_eq!(stats.heartbeats, 1);
    assert_eq!(
        stats.transitions_between(AgentStatus::Live, AgentStatus::Stale),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn many_heartbeats_then_silence_turn_stale_exactly_stale_after_the_last_one() {
    let (_guard, registry) = start();
    let mut changes = registry.status_changes();
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();

    // A heartbeat every 10 s for 5 minutes, then silence; nothing else reads
    // the registry, so only the scheduler applies the deadlines.
    let mut last = 0;
    while last < 300_000 {
        advance_ms(10_000).await;
        last += 10_000;
        registry.heartbeat("order-7f3a").unwrap();
        yield_a_few_times().await;
    }
    assert_eq!(registry.stats().scheduled_deadlines, 1);
    let stale_at = last + STALE_MS;
    let stale = (
        "order-7f3a",
        AgentStatus::Live,
        AgentStatus::Stale,
        stale_at,
    );
    expect_only_at_the_end(&mut changes, STALE_MS, stale).await;
    let dead = (
        "order-7f3a",
        AgentStatus::Stale,
        AgentStatus::Dead,
        stale_at + DEAD_MS,
    );
    expect_only_at_the_end(&mut changes, DEAD_MS, dead).await;
    assert_eq!(registry.stats().scheduled_deadlines, 0);
}

#[tokio::test(start_paused = true)]
async fn re_registration_after_heartbeats_moves_the_stale_deadline_to_stale_after_it() {
    let (_guard, registry) = start();
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();
    advance_ms(30_000).await;
    registry.heartbeat("order-7f3a").unwrap();
    advance_ms(30_000).await;
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();

    advance_ms(STALE_MS - 1).await;
    assert_eq!(status_of(&registry, "order-7f3a"), AgentStatus::Live);
    advance_ms(1).await;
    let view = registry.agent("order-7f3a").unwrap();
    assert_eq!(view.status, AgentStatus::Stale);
    assert_eq!(view.status_changed_at.unix_millis(), at(60_000 + STALE_MS));
}

#[tokio::test(start_paused = true)]
async fn heartbeat_revives_a_stale_agent_at_the_moment_of_the_heartbeat() {
    let (_guard, registry) = start();
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();
    advance_ms(STALE_MS + 5_000).await;
    assert_eq!(status_of(&registry, "order-7f3a"), AgentStatus::Stale);

    registry.heartbeat("order-7f3a").unwrap();

    let view = registry.agent("order-7f3a").unwrap();
    assert_eq!(view.status, AgentStatus::Live);
    assert_eq!(view.status_changed_at.unix_millis(), at(STALE_MS + 5_000));
    assert_eq!(view.last_heartbeat_at.unix_millis(), at(STALE_MS + 5_000));
    assert_eq!(
        registry
            .stats()
            .transitions_between(AgentStatus::Stale, AgentStatus::Live),
        1
    );

    // The revived agent has a fresh stale deadline and no pending DEAD one.
    advance_ms(STALE_MS - 1).await;
    assert_eq!(status_of(&registry, "order-7f3a"), AgentStatus::Live);
    advance_ms(1).await;
    assert_eq!(status_of(&registry, "order-7f3a"), AgentStatus::Stale);
}

#[tokio::test(start_paused = true)]
async fn heartbeat_revives_a_dead_agent_at_the_moment_of_the_heartbeat() {
    let (_guard, registry) = start();
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();
    advance_ms(STALE_MS + DEAD_MS + 7_000).await;
    assert_eq!(status_of(&registry, "order-7f3a"), AgentStatus::Dead);

    registry.heartbeat("order-7f3a").unwrap();

    let now = STALE_MS + DEAD_MS + 7_000;
    let view = registry.agent("order-7f3a").unwrap();
    assert_eq!(view.status, AgentStatus::Live);
    assert_eq!(view.status_changed_at.unix_millis(), at(now));
    assert_eq!(view.last_heartbeat_at.unix_millis(), at(now));
    assert_eq!(view.registered_at.unix_millis(), at(0));
    assert_eq!(
        registry
            .stats()
            .transitions_between(AgentStatus::Dead, AgentStatus::Live),
        1
    );
    advance_ms(STALE_MS).await;
    assert_eq!(status_of(&registry, "order-7f3a"), AgentStatus::Stale);
}

#[tokio::test(start_paused = true)]
async fn heartbeat_of_an_unknown_agent_is_unknown_agent() {
    let (_guard, registry) = start();
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();

    assert_eq!(
        registry.heartbeat("nobody"),
        Err(RegistryError::UnknownAgent("nobody".to_owned()))
    );
    assert_eq!(registry.stats().heartbeats, 0);
    assert!(matches!(
        registry.agent("nobody"),
        Err(RegistryError::UnknownAgent(id)) if id == "nobody"
    ));
}

#[tokio::test(start_paused = true)]
async fn registration_of_a_dead_agent_revives_it_and_keeps_registered_at() {
    let (_guard, registry) = start();
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();
    advance_ms(STALE_MS + DEAD_MS).await;
    assert_eq!(status_of(&registry, "order-7f3a"), AgentStatus::Dead);
    advance_ms(1_234).await;

    let (view, resumed) = registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();

    let now = STALE_MS + DEAD_MS + 1_234;
    assert!(resumed);
    assert_eq!(view.status, AgentStatus::Live);
    assert_eq!(view.registered_at.unix_millis(), at(0));
    assert_eq!(view.status_changed_at.unix_millis(), at(now));
    assert_eq!(view.last_heartbeat_at.unix_millis(), at(now));
    let stats = registry.stats();
    assert_eq!(
        stats.transitions_between(AgentStatus::Dead, AgentStatus::Live),
        1
    );
    assert_eq!(stats.agents, [1, 0, 0]);
}

#[tokio::test(start_paused = true)]
async fn registration_of_a_stale_agent_revives_it() {
    let (_guard, registry) = start();
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();
    advance_ms(STALE_MS + 1).await;

    let (view, resumed) = registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();

    assert!(resumed);
    assert_eq!(view.status, AgentStatus::Live);
    assert_eq!(view.status_changed_at.unix_millis(), at(STALE_MS + 1));
}

#[tokio::test(start_paused = true)]
async fn dead_agents_are_kept_until_an_operator_deletes_them() {
    let (_guard, registry) = start();
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();
    advance_ms(STALE_MS + DEAD_MS).await;
    assert_eq!(status_of(&registry, "order-7f3a"), AgentStatus::Dead);
    assert_eq!(
        registry.stats().scheduled_deadlines,
        0,
        "a DEAD agent has no further deadline"
    );

    // A day later it is still there, still DEAD, with the same statusChangedAt.
    advance_ms(24 * 3_600_000).await;
    yield_a_few_times().await;
    let view = registry.agent("order-7f3a").unwrap();
    assert_eq!(view.status, AgentStatus::Dead);
    assert_eq!(view.status_changed_at.unix_millis(), at(STALE_MS + DEAD_MS));
    assert_eq!(list(&registry, None, None), ["order-7f3a"]);
    assert_eq!(
        list(&registry, Some(AgentStatus::Dead), None),
        ["order-7f3a"]
    );
}

#[tokio::test(start_paused = true)]
async fn delete_removes_the_agent_and_unknown_is_unknown_agent() {
    let (_guard, registry) = start();
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();
    registry
        .register(registration("order-9b1c", "order-prod"))
        .unwrap();
    advance_ms(5_000).await;

    registry.delete_agent("order-7f3a").unwrap();

    assert_eq!(
        registry.agent("order-7f3a"),
        Err(RegistryError::UnknownAgent("order-7f3a".to_owned()))
    );
    assert_eq!(
        registry.heartbeat("order-7f3a"),
        Err(RegistryError::UnknownAgent("order-7f3a".to_owned()))
    );
    assert_eq!(list(&registry, None, None), ["order-9b1c"]);
    assert_eq!(
        registry.delete_agent("order-7f3a"),
        Err(RegistryError::UnknownAgent("order-7f3a".to_owned()))
    );
    let stats = registry.stats();
    assert_eq!(stats.agents, [1, 0, 0]);
    assert_eq!(stats.scheduled_deadlines, 1, "its deadline went with it");

    // Registering again is a new identity.
    let (view, resumed) = registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();
    assert!(!resumed);
    assert_eq!(view.registered_at.unix_millis(), at(5_000));
}

#[tokio::test(start_paused = true)]
async fn delete_ends_the_stream_and_drops_the_commands() {
    let (_guard, registry) = start();
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();
    let mut subscription = registry.open_stream("order-7f3a").unwrap();
    let delivered = registry.send_to_agent("order-7f3a", command()).unwrap();
    assert_eq!(delivered.status, CommandStatus::Delivered);
    assert_eq!(registry.stats().open_streams, 1);

    registry.delete_agent("order-7f3a").unwrap();

    assert_eq!(subscription.next().await, None, "the stream ended");
    let stats = registry.stats();
    assert_eq!(stats.open_streams, 0);
    assert_eq!(stats.commands, [0, 0, 0, 0], "its commands were dropped");
    assert_eq!(stats.scheduled_deadlines, 0);
    assert_eq!(
        registry.command("order-7f3a", &delivered.command_id.to_string()),
        Err(RegistryError::UnknownAgent("order-7f3a".to_owned()))
    );

    drop(subscription);
    assert_eq!(registry.stats().open_streams, 0);

    // The same id registered again starts with no commands.
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();
    assert!(registry.commands_of("order-7f3a").unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn bulk_delete_removes_dead_agents_only() {
    let (_guard, registry) = start();
    registry.register(registration("dead-1", "g")).unwrap();
    registry.register(registration("dead-2", "g")).unwrap();
    registry.send_to_agent("dead-1", command()).unwrap();
    advance_ms(STALE_MS + DEAD_MS).await;
    registry.register(registration("stale-1", "g")).unwrap();
    advance_ms(STALE_MS).await;
    registry.register(registration("live-1", "g")).unwrap();
    let stale_before = registry.agent("stale-1").unwrap();
    let live_before = registry.agent("live-1").unwrap();
    assert_eq!(stale_before.status, AgentStatus::Stale);
    assert_eq!(
        list(&registry, Some(AgentStatus::Dead), None),
        ["dead-1", "dead-2"]
    );

    assert_eq!(registry.delete_dead_agents(), 2);

    assert_eq!(list(&registry, None, None), ["live-1", "stale-1"]);
    assert_eq!(registry.agent("stale-1").unwrap(), stale_before);
    assert_eq!(registry.agent("live-1").unwrap(), live_before);
    let stats = registry.stats();
    assert_eq!(stats.agents, [1, 1, 0]);
    assert_eq!(stats.commands, [0, 0, 0, 0]);
    assert_eq!(
        stats.scheduled_deadlines, 2,
        "the STALE and LIVE agents' deadlines only"
    );
    assert_eq!(registry.delete_dead_agents(), 0);
}

#[tokio::test(start_paused = true)]
async fn list_filters_by_status_by_group_and_both_and_sorts_by_id() {
    let (_guard, registry) = start();
    registry.register(registration("agent-d", "g2")).unwrap();
    advance_ms(STALE_MS + DEAD_MS).await;
    registry.register(registration("agent-a", "g1")).unwrap();
    advance_ms(STALE_MS).await;
    registry.register(registration("agent-e", "g1")).unwrap();
    registry.register(registration("agent-c", "g1")).unwrap();
    registry.register(registration("agent-b", "g2")).unwrap();

    use AgentStatus::{Dead, Live, Stale};
    assert_eq!(
        list(&registry, None, None),
        ["agent-a", "agent-b", "agent-c", "agent-d", "agent-e"]
    );
    assert_eq!(
        list(&registry, Some(Live), None),
        ["agent-b", "agent-c", "agent-e"]
    );
    assert_eq!(list(&registry, Some(Stale), None), ["agent-a"]);
    assert_eq!(list(&registry, Some(Dead), None), ["agent-d"]);
    assert_eq!(
        list(&registry, None, Some("g1")),
        ["agent-a", "agent-c", "agent-e"]
    );
    assert_eq!(list(&registry, None, Some("g2")), ["agent-b", "agent-d"]);
    assert_eq!(
        list(&registry, Some(Live), Some("g1")),
        ["agent-c", "agent-e"]
    );
    assert_eq!(list(&registry, Some(Dead), Some("g2")), ["agent-d"]);
    assert!(list(&registry, Some(Dead), Some("g1")).is_empty());
    assert!(list(&registry, None, Some("no-such-group")).is_empty());

    // Each listed view carries its group and status.
    for view in registry.agents(&AgentFilter::default()) {
        let expected = match view.agent_id.as_str() {
            "agent-a" => ("g1", Stale),
            "agent-b" => ("g2", Live),
            "agent-c" | "agent-e" => ("g1", Live),
            _ => ("g2", Dead),
        };
        assert_eq!((view.metadata.group.as_str(), view.status), expected);
    }
}

#[tokio::test(start_paused = true)]
async fn transitions_are_counted_in_stats_and_broadcast_on_status_changes() {
    let (_guard, registry) = start();
    let mut changes = registry.status_changes();
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();
    registry
        .register(registration("order-9b1c", "order-prod"))
        .unwrap();

    advance_ms(STALE_MS).await;
    registry.heartbeat("order-9b1c").unwrap();
    advance_ms(DEAD_MS).await;
    registry.heartbeat("order-7f3a").unwrap();

    use AgentStatus::{Dead, Live, Stale};
    let mut seen = Vec::new();
    while let Ok(change) = changes.try_recv() {
        seen.push(change);
    }
    assert_eq!(
        seen,
        [
            change("order-7f3a", Live, Stale, STALE_MS),
            change("order-9b1c", Live, Stale, STALE_MS),
            change("order-9b1c", Stale, Live, STALE_MS),
            change("order-9b1c", Live, Stale, 2 * STALE_MS),
            change("order-7f3a", Stale, Dead, STALE_MS + DEAD_MS),
            change("order-7f3a", Dead, Live, STALE_MS + DEAD_MS),
        ]
    );
    let stats = registry.stats();
    assert_eq!(stats.transitions_between(Live, Stale), 3);
    assert_eq!(stats.transitions_between(Stale, Live), 1);
    assert_eq!(stats.transitions_between(Stale, Dead), 1);
    assert_eq!(stats.transitions_between(Dead, Live), 1);
    assert_eq!(stats.transitions_between(Live, Dead), 0);
    assert_eq!(stats.transitions_between(Live, Live), 0);
    assert_eq!(stats.agents, [1, 1, 0]);
    assert_eq!(stats.heartbeats, 2);
}

#[tokio::test(start_paused = true)]
async fn an_open_stream_is_not_a_heartbeat() {
    let (_guard, registry) = start();
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();
    let _subscription = registry.open_stream("order-7f3a").unwrap();

    advance_ms(STALE_MS).await;

    let view = registry.agent("order-7f3a").unwrap();
    assert!(view.connected);
    assert_eq!(view.status, AgentStatus::Stale);
    assert_eq!(view.status_changed_at.unix_millis(), at(STALE_MS));
    advance_ms(DEAD_MS).await;
    let view = registry.agent("order-7f3a").unwrap();
    assert!(view.connected);
    assert_eq!(view.status, AgentStatus::Dead);
}

#[tokio::test(start_paused = true)]
async fn the_scheduler_applies_transitions_on_its_own_at_the_deadline() {
    let (_guard, registry) = start();
    let mut changes = registry.status_changes();
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();

    // Only the scheduler task can apply deadlines here: nothing reads the registry.
    let stale = (
        "order-7f3a",
        AgentStatus::Live,
        AgentStatus::Stale,
        STALE_MS,
    );
    expect_only_at_the_end(&mut changes, STALE_MS, stale).await;
    let dead = (
        "order-7f3a",
        AgentStatus::Stale,
        AgentStatus::Dead,
        STALE_MS + DEAD_MS,
    );
    expect_only_at_the_end(&mut changes, DEAD_MS, dead).await;
}

#[tokio::test(start_paused = true)]
async fn the_scheduler_wakes_for_each_deadline_while_time_runs() {
    let (_guard, registry) = start();
    let start = registry.clock().now();
    let mut changes = registry.status_changes();
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();

    // Awaiting lets the paused runtime jump to the next timer: the scheduler's.
    let first = next_change(&mut changes).await;
    assert_eq!(
        first,
        change(
            "order-7f3a",
            AgentStatus::Live,
            AgentStatus::Stale,
            STALE_MS
        )
    );
    assert_eq!(
        registry.clock().now() - start,
        Duration::from_millis(STALE_MS)
    );

    // The scheduler now sleeps until the DEAD deadline at 390 s; a registration
    // and a heartbeat add earlier deadlines, and it wakes for them.
    registry
        .register(registration("order-9b1c", "order-prod"))
        .unwrap();
    advance_ms(1_000).await;
    registry.heartbeat("order-9b1c").unwrap();
    let second = next_change(&mut changes).await;
    assert_eq!(
        second,
        change(
            "order-9b1c",
            AgentStatus::Live,
            AgentStatus::Stale,
            2 * STALE_MS + 1_000
        )
    );
    assert_eq!(
        registry.clock().now() - start,
        Duration::from_millis(2 * STALE_MS + 1_000),
        "the scheduler woke for the earlier deadline, not at the one it slept until"
    );
    let third = next_change(&mut changes).await;
    assert_eq!(
        third,
        change(
            "order-7f3a",
            AgentStatus::Stale,
            AgentStatus::Dead,
            STALE_MS + DEAD_MS
        )
    );
    assert_eq!(
        registry.clock().now() - start,
        Duration::from_millis(STALE_MS + DEAD_MS)
    );
}

#[tokio::test(start_paused = true)]
async fn reads_apply_due_deadlines_even_without_the_scheduler() {
    let registry = Registry::new(settings(), test_clock());
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();

    advance_ms(STALE_MS).await;

    assert_eq!(registry.stats().agents, [0, 1, 0]);
    assert_eq!(status_of(&registry, "order-7f3a"), AgentStatus::Stale);
    let tick = registry.tick();
    assert_eq!(tick.handled, 0, "the read already applied it");
    assert_eq!(
        tick.next_due,
        Some(registry.clock().now() + Duration::from_millis(DEAD_MS))
    );
}

#[tokio::test(start_paused = true)]
async fn idle_tick_handles_nothing_with_100k_agents_registered() {
    const AGENTS: usize = 100_000;
    let (_guard, registry) = start();
    let registered_at = registry.clock().now();
    for n in 0..AGENTS {
        registry
            .register(registration(&format!("agent-{n:06}"), "fleet"))
            .unwrap();
    }
    advance_ms(STALE_MS - 1).await;

    let tick = registry.tick();
    assert_eq!(tick.handled, 0);
    assert_eq!(
        tick.next_due,
        Some(registered_at + Duration::from_millis(STALE_MS))
    );
    assert_eq!(registry.stats().scheduled_deadlines, AGENTS);

    let started = std::time::Instant::now();
    let mut handled = 0;
    for _ in 0..1_000 {
        handled += registry.tick().handled;
    }
    let elapsed = started.elapsed();
    assert_eq!(handled, 0);
    println!(
        "1000 idle ticks with {AGENTS} agents registered took {elapsed:?} ({:?} per tick)",
        elapsed / 1_000
    );

    // At the deadline, the work is what is due: every agent goes STALE at once,
    // in batches the scheduler task works off; the tick applies what it has not yet.
    advance_ms(1).await;
    registry.tick();
    let stats = registry.stats();
    assert_eq!(stats.agents_in(AgentStatus::Stale), AGENTS);
    assert!(stats.brake_engaged, "the whole fleet went STALE at once");
    assert_eq!(
        stats.scheduled_deadlines,
        AGENTS + 1,
        "one DEAD deadline each, and the brake's brake_max"
    );
    assert_eq!(
        ids(&registry.agents(&AgentFilter::default()))[0],
        "agent-000000"
    );
}

#[tokio::test(start_paused = true)]
async fn heartbeat_exactly_at_the_dead_deadline_finds_it_dead_and_revives_it() {
    let (_guard, registry) = start();
    let mut changes = registry.status_changes();
    registry
        .register(registration("order-7f3a", "order-prod"))
        .unwrap();
    advance_ms(STALE_MS).await;
    assert_eq!(status_of(&registry, "order-7f3a"), AgentStatus::Stale);

    advance_ms(DEAD_MS).await;
    registry.heartbeat("order-7f3a").unwrap();

    use AgentStatus::{Dead, Live, Stale};
    let now = STALE_MS + DEAD_MS;
    assert_eq!(
        changes.try_recv().unwrap(),
        change("order-7f3a", Live, Stale, STALE_MS)
    );
    assert_eq!(
        changes.try_recv().unwrap(),
        change("order-7f3a", Stale, Dead, now)
    );
    assert_eq!(
        changes.try_recv().unwrap(),
        change("order-7f3a", Dead, Live, now)
    );
    let view = registry.agent("order-7f3a").unwrap();
    assert_eq!(view.status, Live);
    assert_eq!(view.status_changed_at.unix_millis(), at(now));
}
