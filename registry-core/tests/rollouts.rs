//! Rollouts on the paused clock (SPEC 11): counts that follow every command's
//! status, `done` the moment the last one is final, a deleted agent's
//! unfinished commands counted as EXPIRED, retention (kept while a command is,
//! and at least `commands.retention` after done), newest first, and the
//! `rollout` events of the fleet stream: at most one per rollout per 500 ms,
//! the one saying it is done at once and once.

mod common;

use std::time::Duration;

use common::*;
use registry_core::{
    Ack, AckResult, CommandRequest, FleetEvent, FleetSubscription, GroupName, NewRollout, Registry,
    RegistryError, RolloutView, Settings, Target,
};
use tokio::time::Instant;

const EXPIRY_MS: u64 = 60_000;
const RETENTION_MS: u64 = 600_000;

fn settings() -> Settings {
    Settings {
        // Long enough that no agent changes status during a test.
        stale_after: Duration::from_secs(7_200),
        ..Settings::default()
    }
}

fn replay() -> CommandRequest {
    CommandRequest {
        kind: "replay".to_owned(),
        payload: None,
    }
}

fn group_of(registry: &Registry, group: &str, ids: &[&str]) {
    for id in ids {
        registry.register(registration(id, group)).unwrap();
    }
}

fn ack(registry: &Registry, rollout: &NewRollout, agent_id: &str, result: AckResult) {
    let command = rollout
        .commands
        .iter()
        .find(|command| command.agent_id.as_str() == agent_id)
        .expect("a command for the agent");
    registry
        .ack(
            agent_id,
            &command.command_id.to_string(),
            Ack {
                result: Some(result),
                message: None,
            },
        )
        .unwrap();
}

fn view(registry: &Registry, rollout: &NewRollout) -> RolloutView {
    registry.rollout(&rollout.rollout_id.to_string()).unwrap()
}

/// `(pending, delivered, acknowledged, succeeded, failed, expired, done)`.
fn counts(view: &RolloutView) -> (usize, usize, usize, usize, usize, usize, bool) {
    (
        view.pending,
        view.delivered,
        view.acknowledged,
        view.succeeded,
        view.failed,
        view.expired,
        view.done,
    )
}

#[tokio::test(start_paused = true)]
async fn counts_follow_every_command_and_done_comes_with_the_last() {
    let (_guard, registry) = start_with(settings());
    group_of(&registry, "g", &["a-1", "a-2", "a-3", "a-4"]);
    let _stream = registry.open_stream("a-2").unwrap();
    let rollout = registry.send_to_group("g", replay()).unwrap();

    let first = view(&registry, &rollout);
    assert_eq!(first.target, Target::Group(GroupName::parse("g").unwrap()));
    assert_eq!(
        serde_json::to_value(&first).unwrap()["target"],
        "group:g",
        "the wire form"
    );
    assert_eq!((first.targeted, first.skipped), (4, 0));
    assert_eq!(first.created_at, rollout.created_at);
    assert_eq!(first.expires_at, rollout.expires_at);
    assert_eq!(counts(&first), (3, 1, 0, 0, 0, 0, false));

    ack(&registry, &rollout, "a-1", AckResult::Success);
    ack(&registry, &rollout, "a-2", AckResult::Failure);
    assert_eq!(
        counts(&view(&registry, &rollout)),
        (2, 0, 2, 1, 1, 0, false)
    );
    // A second ack keeps the first result and counts nothing.
    ack(&registry, &rollout, "a-1", AckResult::Failure);
    assert_eq!(
        counts(&view(&registry, &rollout)),
        (2, 0, 2, 1, 1, 0, false)
    );

    advance_ms(EXPIRY_MS - 1).await;
    ack(&registry, &rollout, "a-3", AckResult::Success);
    assert!(!view(&registry, &rollout).done);
    advance_ms(1).await;
    yield_a_few_times().await;
    assert_eq!(counts(&view(&registry, &rollout)), (0, 0, 3, 2, 1, 1, true));
}

#[tokio::test(start_paused = true)]
async fn a_rollout_that_targeted_nobody_is_done_at_once() {
    let (_guard, registry) = start_with(settings());
    let rollout = registry.send_to_fleet(replay()).unwrap();
    let view = view(&registry, &rollout);
    assert_eq!(view.target, Target::Fleet);
    assert_eq!(counts(&view), (0, 0, 0, 0, 0, 0, true));
}

#[tokio::test(start_paused = true)]
async fn a_deleted_agents_unfinished_command_counts_as_expired_a_final_one_as_it_was() {
    let (_guard, registry) = start_with(settings());
    group_of(&registry, "g", &["a-1", "a-2", "a-3"]);
    let rollout = registry.send_to_group("g", replay()).unwrap();
    ack(&registry, &rollout, "a-1", AckResult::Success);

    registry.delete_agent("a-1").unwrap();
    registry.delete_agent("a-2").unwrap();
    assert_eq!(
        counts(&view(&registry, &rollout)),
        (1, 0, 1, 1, 0, 1, false)
    );
    registry.delete_agent("a-3").unwrap();
    assert_eq!(counts(&view(&registry, &rollout)), (0, 0, 1, 1, 0, 2, true));
}

#[tokio::test(start_paused = true)]
async fn a_rollout_is_kept_at_least_retention_after_done_even_when_its_commands_are_gone() {
    let (_guard, registry) = start_with(settings());
    group_of(&registry, "g", &["a-1", "a-2"]);
    let rollout = registry.send_to_group("g", replay()).unwrap();
    advance_ms(5_000).await;
    registry.delete_agent("a-1").unwrap();
    registry.delete_agent("a-2").unwrap();
    assert!(view(&registry, &rollout).done);

    advance_ms(RETENTION_MS - 1).await;
    assert!(view(&registry, &rollout).done, "kept for the retention");
    advance_ms(1).await;
    assert_eq!(
        registry.rollout(&rollout.rollout_id.to_string()),
        Err(RegistryError::UnknownRollout(
            rollout.rollout_id.to_string()
        ))
    );
    assert_eq!(
        registry.stats().payload_bytes,
        0,
        "its payload went with it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rollout_is_kept_while_any_of_its_commands_is() {
    let (_guard, registry) = start_with(settings());
    group_of(&registry, "g", &["a-1", "a-2"]);
    let rollout = registry.send_to_group("g", replay()).unwrap();
    ack(&registry, &rollout, "a-1", AckResult::Success);
    // a-2's command expires at 60 s: done then, dropped with it at 60 s + retention.
    advance_ms(EXPIRY_MS + RETENTION_MS - 1).await;
    let kept = view(&registry, &rollout);
    assert_eq!(counts(&kept), (0, 0, 1, 1, 0, 1, true));
    assert_eq!(
        registry.commands_of("a-1").unwrap().len(),
        0,
        "a-1's went at 600 s"
    );
    assert_eq!(registry.commands_of("a-2").unwrap().len(), 1);
    advance_ms(1).await;
    assert!(registry.rollout(&rollout.rollout_id.to_string()).is_err());
    assert!(registry.commands_of("a-2").unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn rollouts_are_listed_newest_first_and_a_non_uuid_is_unknown() {
    let (_guard, registry) = start_with(settings());
    group_of(&registry, "g", &["a-1"]);
    let first = registry.send_to_group("g", replay()).unwrap();
    let second = registry.send_to_fleet(replay()).unwrap();
    advance_ms(1).await;
    let third = registry.send_to_group("g", replay()).unwrap();
    let listed: Vec<_> = registry
        .rollouts()
        .iter()
        .map(|view| view.rollout_id)
        .collect();
    assert_eq!(
        listed,
        [third.rollout_id, second.rollout_id, first.rollout_id]
    );
    assert!(matches!(
        registry.rollout("not-a-uuid"),
        Err(RegistryError::UnknownRollout(_))
    ));
}

/// The next rollout event (agent events skipped) and the milliseconds since
/// `start` at which it came, letting the paused clock run to the next timer.
async fn next_rollout(events: &mut FleetSubscription, start: Instant) -> (u64, RolloutView) {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(3_600), events.next())
            .await
            .expect("a fleet event within an hour")
            .expect("the subscription is open");
        if let FleetEvent::Rollout(view) = event {
            return (start.elapsed().as_millis() as u64, view);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn rollout_events_come_at_most_every_500_ms_and_done_at_once_and_once() {
    let (_guard, registry) = start_with(settings());
    let mut events = registry.fleet_events().unwrap();
    group_of(&registry, "g", &["a-1", "a-2", "a-3"]);
    let start = Instant::now();
    let rollout = registry.send_to_group("g", replay()).unwrap();
    let (at, created) = next_rollout(&mut events, start).await;
    assert_eq!((at, counts(&created)), (0, (3, 0, 0, 0, 0, 0, false)));

    advance_ms(100).await;
    ack(&registry, &rollout, "a-1", AckResult::Success);
    advance_ms(100).await;
    ack(&registry, &rollout, "a-2", AckResult::Failure);
    // Both acks in one event, 500 ms after the last one.
    let (at, coalesced) = next_rollout(&mut events, start).await;
    assert_eq!((at, counts(&coalesced)), (500, (1, 0, 2, 1, 1, 0, false)));

    advance_ms(100).await;
    ack(&registry, &rollout, "a-3", AckResult::Success);
    // Done goes out at once, 100 ms after the last event.
    let (at, done) = next_rollout(&mut events, start).await;
    assert_eq!((at, counts(&done)), (600, (0, 0, 3, 2, 1, 0, true)));
    assert_eq!(done, view(&registry, &rollout));

    // And once: nothing more comes, through its retention and beyond.
    ack(&registry, &rollout, "a-3", AckResult::Success);
    let more = tokio::time::timeout(Duration::from_secs(3_600), events.next()).await;
    assert!(more.is_err(), "no event after done: {more:?}");
}

#[tokio::test(start_paused = true)]
async fn changes_after_a_quiet_interval_go_out_at_once() {
    let (_guard, registry) = start_with(settings());
    let mut events = registry.fleet_events().unwrap();
    group_of(&registry, "g", &["a-1", "a-2"]);
    let start = Instant::now();
    let rollout = registry.send_to_group("g", replay()).unwrap();
    next_rollout(&mut events, start).await;
    advance_ms(2_000).await;
    ack(&registry, &rollout, "a-1", AckResult::Success);
    let (at, view) = next_rollout(&mut events, start).await;
    assert_eq!((at, view.succeeded), (2_000, 1));
}
