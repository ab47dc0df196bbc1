//! Tests of the fleet's events (SPEC 11): an agent event for a registration, a
//! transition, a revival by re-registration, a change of metadata or of
//! connection, a deletion; a reader that falls behind loses its subscription;
//! shutdown ends every subscription.

use std::time::Duration;

use registry_core::{
    AgentEvent, AgentStatus, FleetEvent, FleetSubscription, Registry, RegistryError, Settings,
};

mod common;
use common::{advance_ms, at, registration, start_with};

const STALE_MS: u64 = 1_000;
const DEAD_MS: u64 = 2_000;

fn settings() -> Settings {
    Settings {
        stale_after: Duration::from_millis(STALE_MS),
        dead_after: Duration::from_millis(DEAD_MS),
        fleet_queue: 8,
        ..Settings::default()
    }
}

/// The next agent event, letting the paused clock run to the next timer.
async fn next_agent_event(events: &mut FleetSubscription) -> AgentEvent {
    let event = tokio::time::timeout(Duration::from_secs(3_600), events.next())
        .await
        .expect("a fleet event within an hour")
        .expect("the subscription is open");
    let FleetEvent::Agent(event) = event else {
        panic!("an agent event, got {event:?}");
    };
    event
}

/// `(agentId, group, from, to, at ms after the test clock's start, connected)`.
type Seen = (
    String,
    String,
    Option<AgentStatus>,
    Option<AgentStatus>,
    u64,
    bool,
);

fn seen(event: &AgentEvent) -> Seen {
    (
        event.agent_id.to_string(),
        event.group.to_string(),
        event.from,
        event.to,
        event.at.unix_millis() - at(0),
        event.connected,
    )
}

fn subscribe(registry: &Registry) -> FleetSubscription {
    registry.fleet_events().expect("a fleet subscription")
}

#[tokio::test(start_paused = true)]
async fn registration_transitions_and_deletion_are_agent_events() {
    use AgentStatus::{Dead, Live, Stale};
    let (_guard, registry) = start_with(settings());
    let mut events = subscribe(&registry);

    registry.register(registration("a-1", "prod")).unwrap();
    let registered = next_agent_event(&mut events).await;
    assert_eq!(
        seen(&registered),
        ("a-1".into(), "prod".into(), None, Some(Live), 0, false)
    );
    assert_eq!(
        serde_json::to_value(&registered).unwrap(),
        serde_json::json!({"agentId": "a-1", "group": "prod", "from": null, "to": "LIVE",
            "at": "2026-03-11T18:10:15.000Z", "connected": false})
    );

    let stale = next_agent_event(&mut events).await;
    assert_eq!(
        seen(&stale),
        (
            "a-1".into(),
            "prod".into(),
            Some(Live),
            Some(Stale),
            STALE_MS,
            false
        )
    );
    let dead = next_agent_event(&mut events).await;
    assert_eq!(
        seen(&dead),
        (
            "a-1".into(),
            "prod".into(),
            Some(Stale),
            Some(Dead),
            STALE_MS + DEAD_MS,
            false
        )
    );

    // A re-registration that changes the status is from the old status to LIVE,
    // and carries the group it moved to.
    advance_ms(500).await;
    registry.register(registration("a-1", "canary")).unwrap();
    let revived = next_agent_event(&mut events).await;
    let now = STALE_MS + DEAD_MS + 500;
    assert_eq!(
        seen(&revived),
        (
            "a-1".into(),
            "canary".into(),
            Some(Dead),
            Some(Live),
            now,
            false
        )
    );

    advance_ms(100).await;
    registry.delete_agent("a-1").unwrap();
    let deleted = next_agent_event(&mut events).await;
    assert_eq!(
        seen(&deleted),
        (
            "a-1".into(),
            "canary".into(),
            Some(Live),
            None,
            now + 100,
            false
        )
    );
}

#[tokio::test(start_paused = true)]
async fn connection_and_metadata_changes_keep_from_and_to_at_the_status() {
    use AgentStatus::Live;
    let (_guard, registry) = start_with(settings());
    registry.register(registration("a-1", "prod")).unwrap();
    let mut events = subscribe(&registry);

    advance_ms(10).await;
    let stream = registry.open_stream("a-1").unwrap();
    let connected = next_agent_event(&mut events).await;
    assert_eq!(
        seen(&connected),
        ("a-1".into(), "prod".into(), Some(Live), Some(Live), 0, true)
    );

    // A stream that replaces the open one changes nothing a reader sees.
    let replacing = registry.open_stream("a-1").unwrap();
    drop(stream);
    // The same registration again changes nothing either.
    registry.register(registration("a-1", "prod")).unwrap();
    registry.register(registration("a-1", "canary")).unwrap();
    let moved = next_agent_event(&mut events).await;
    assert_eq!(
        seen(&moved),
        (
            "a-1".into(),
            "canary".into(),
            Some(Live),
            Some(Live),
            0,
            true
        )
    );

    drop(replacing);
    let disconnected = next_agent_event(&mut events).await;
    assert_eq!(
        seen(&disconnected),
        (
            "a-1".into(),
            "canary".into(),
            Some(Live),
            Some(Live),
            0,
            false
        )
    );
}

#[tokio::test(start_paused = true)]
async fn a_reader_that_falls_behind_loses_its_subscription_and_others_go_on() {
    let (_guard, registry) = start_with(settings());
    let mut behind = subscribe(&registry);
    let mut keeping_up = subscribe(&registry);

    for n in 0..20 {
        registry
            .register(registration(&format!("a-{n}"), "prod"))
            .unwrap();
        let event = next_agent_event(&mut keeping_up).await;
        assert_eq!(event.agent_id.as_str(), format!("a-{n}"));
    }
    // Registering went on at full speed while one reader read nothing.
    assert_eq!(registry.stats().agents_in(AgentStatus::Live), 20);
    assert_eq!(behind.next().await, None, "a reader 12 events behind ends");
    assert_eq!(behind.next().await, None, "and stays ended");

    registry.register(registration("a-20", "prod")).unwrap();
    let event = next_agent_event(&mut keeping_up).await;
    assert_eq!(event.agent_id.as_str(), "a-20");
}

#[tokio::test(start_paused = true)]
async fn shutting_down_ends_every_subscription_and_refuses_new_ones() {
    let (_guard, registry) = start_with(settings());
    let mut events = subscribe(&registry);
    registry.close_all_streams();
    assert_eq!(events.next().await, None);
    assert!(matches!(
        registry.fleet_events(),
        Err(RegistryError::ShuttingDown)
    ));
}

#[tokio::test(start_paused = true)]
async fn bulk_deletion_sends_one_event_per_dead_agent() {
    let (_guard, registry) = start_with(settings());
    registry.register(registration("a-1", "prod")).unwrap();
    registry.register(registration("a-2", "prod")).unwrap();
    advance_ms(STALE_MS + DEAD_MS).await;
    let mut events = subscribe(&registry);
    assert_eq!(registry.delete_dead_agents(), 2);
    let mut deleted = [
        next_agent_event(&mut events).await,
        next_agent_event(&mut events).await,
    ];
    deleted.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    for (event, id) in deleted.iter().zip(["a-1", "a-2"]) {
        assert_eq!(
            seen(event),
            (
                id.into(),
                "prod".into(),
                Some(AgentStatus::Dead),
                None,
                STALE_MS + DEAD_MS,
                false
            )
        );
    }
}
