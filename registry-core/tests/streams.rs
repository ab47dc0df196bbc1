//! Tests of the stream rules of SPEC section 10 in the core, on the paused
//! clock: the opt-in replay of unacknowledged commands (creation order,
//! `Last-Event-ID`, never twice on one stream, never cut short by the queue,
//! the first `deliveredAt` kept, the same data), and why a stream was detached.

use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use registry_core::{
    Ack, CommandEvent, CommandId, CommandRequest, CommandStatus, CommandView, DetachReason,
    Payload, Registry, RegistryGuard, Replay, Settings, Subscription,
};
use serde_json::json;

mod common;
use common::{advance_ms, at, registration, start_with};

const EXPIRY_MS: u64 = 60_000;
const STREAM_QUEUE: usize = 4;
const AGENT: &str = "order-7f3a";

fn settings(replay: Replay) -> Settings {
    Settings {
        command_expiry: Duration::from_millis(EXPIRY_MS),
        stream_queue: STREAM_QUEUE,
        replay,
        ..Settings::default()
    }
}

/// A registry with replay on and one registered agent.
fn start() -> (RegistryGuard, Registry) {
    let (guard, registry) = start_with(settings(Replay::Unacknowledged));
    registry.register(registration(AGENT, "g")).unwrap();
    (guard, registry)
}

fn send(registry: &Registry, n: u64) -> CommandView {
    registry
        .send_to_agent(
            AGENT,
            CommandRequest {
                kind: "config-update".to_owned(),
                payload: Some(Payload::from_value(&json!({ "n": n }))),
            },
        )
        .unwrap()
}

fn id(command: &CommandView) -> String {
    command.command_id.to_string()
}

fn view(registry: &Registry, command: &CommandView) -> CommandView {
    registry.command(AGENT, &id(command)).unwrap()
}

/// Every event the subscription has ready now, without letting time move.
fn ready_now(subscription: &mut Subscription) -> Vec<CommandId> {
    let mut ids = Vec::new();
    while let Some(Some(event)) = subscription.next().now_or_never() {
        ids.push(event.command_id);
    }
    ids
}

fn ids(commands: &[&CommandView]) -> Vec<CommandId> {
    commands.iter().map(|command| command.command_id).collect()
}

/// Opens a stream, reads what it is sent at once, and drops it: those
/// commands are DELIVERED and written.
fn read_and_close(registry: &Registry) -> Vec<CommandId> {
    let mut stream = registry.open_stream(AGENT).unwrap();
    ready_now(&mut stream)
}

#[tokio::test(start_paused = true)]
async fn without_replay_a_new_stream_is_sent_nothing_it_missed() {
    let (_guard, registry) = start_with(settings(Replay::None));
    registry.register(registration(AGENT, "g")).unwrap();
    let pending = send(&registry, 1);
    let mut stream = registry.open_stream_after(AGENT, None).unwrap();
    assert_eq!(ready_now(&mut stream), []);
    assert_eq!(view(&registry, &pending).status, CommandStatus::Pending);
}

#[tokio::test(start_paused = true)]
async fn with_replay_a_new_stream_first_gets_the_pending_and_delivered_commands_in_creation_order()
{
    let (_guard, registry) = start();
    let acknowledged = send(&registry, 0);
    registry
        .ack(AGENT, &id(&acknowledged), Ack::default())
        .unwrap();
    let expired = send(&registry, 1);
    advance_ms(EXPIRY_MS).await;
    assert_eq!(view(&registry, &expired).status, CommandStatus::Expired);
    // The first stream is sent the PENDING one, which is DELIVERED from then on.
    let delivered = send(&registry, 2);
    assert_eq!(read_and_close(&registry), ids(&[&delivered]));
    advance_ms(1_000).await;
    let pending = send(&registry, 3);

    advance_ms(1_000).await;
    let mut stream = registry.open_stream(AGENT).unwrap();
    let fresh = send(&registry, 4);

    assert_eq!(
        ready_now(&mut stream),
        ids(&[&delivered, &pending, &fresh]),
        "old ones oldest first, then the new one; no ACKNOWLEDGED nor EXPIRED one"
    );
    let delivered = view(&registry, &delivered);
    assert_eq!(delivered.status, CommandStatus::Delivered);
    assert_eq!(
        delivered.delivered_at.map(|t| t.unix_millis()),
        Some(at(EXPIRY_MS)),
        "a command sent again keeps its first deliveredAt"
    );
    let pending = view(&registry, &pending);
    assert_eq!(pending.status, CommandStatus::Delivered);
    assert_eq!(
        pending.delivered_at.map(|t| t.unix_millis()),
        Some(at(EXPIRY_MS + 2_000))
    );
}

#[tokio::test(start_paused = true)]
async fn last_event_id_skips_the_delivered_commands_up_to_and_including_it_but_never_pending_ones()
{
    let (_guard, registry) = start();
    let first = send(&registry, 1);
    let second = send(&registry, 2);
    assert_eq!(read_and_close(&registry), ids(&[&first, &second]));
    let third = send(&registry, 3);
    assert_eq!(read_and_close(&registry), ids(&[&first, &second, &third]));
    // PENDING, then one the agent acknowledged without having received it.
    let pending = send(&registry, 4);
    let acknowledged = send(&registry, 5);
    registry
        .ack(AGENT, &id(&acknowledged), Ack::default())
        .unwrap();

    let mut stream = registry
        .open_stream_after(AGENT, Some(&id(&second)))
        .unwrap();
    assert_eq!(ready_now(&mut stream), ids(&[&third, &pending]));
    drop(stream);

    // Naming a command created after a PENDING one still sends the PENDING one.
    let later = send(&registry, 6);
    registry.ack(AGENT, &id(&later), Ack::default()).unwrap();
    let still_pending = send(&registry, 7);
    let mut stream = registry
        .open_stream_after(AGENT, Some(&id(&later)))
        .unwrap();
    assert_eq!(ready_now(&mut stream), ids(&[&still_pending]));
}

#[tokio::test(start_paused = true)]
async fn a_last_event_id_that_names_no_retained_command_of_the_agent_is_ignored() {
    let (_guard, registry) = start();
    registry.register(registration("other", "g")).unwrap();
    let theirs = registry
        .send_to_agent(
            "other",
            CommandRequest {
                kind: "replay".to_owned(),
                payload: None,
            },
        )
        .unwrap();
    let delivered = send(&registry, 1);
    assert_eq!(read_and_close(&registry), ids(&[&delivered]));
    let pending = send(&registry, 2);

    for last in [
        "not-a-command-id".to_owned(),
        "0190f0c2-0000-7000-8000-000000000000".to_owned(),
        id(&theirs),
        String::new(),
    ] {
        let mut stream = registry.open_stream_after(AGENT, Some(&last)).unwrap();
        assert_eq!(
            ready_now(&mut stream),
            ids(&[&delivered, &pending]),
            "Last-Event-ID {last:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_replay_is_never_cut_short_by_the_stream_queue() {
    let (_guard, registry) = start();
    let missed: Vec<CommandView> = (0..10 * STREAM_QUEUE as u64)
        .map(|n| send(&registry, n))
        .collect();
    let mut stream = registry.open_stream(AGENT).unwrap();
    // A whole queue of new commands still fits behind the replay.
    let fresh: Vec<CommandView> = (0..STREAM_QUEUE as u64)
        .map(|n| send(&registry, 100 + n))
        .collect();
    assert!(fresh.iter().all(|c| c.status == CommandStatus::Delivered));

    let expected: Vec<&CommandView> = missed.iter().chain(&fresh).collect();
    assert_eq!(ready_now(&mut stream), ids(&expected));
    let stats = registry.stats();
    assert_eq!(stats.slow_streams_closed, 0);
    assert_eq!(stats.open_streams, 1);
}

#[tokio::test(start_paused = true)]
async fn a_command_is_never_written_twice_to_one_stream() {
    let (_guard, registry) = start();
    let mut first = registry.open_stream(AGENT).unwrap();
    let queued = send(&registry, 1);
    // A newer stream replaces the first before it wrote the command: the new
    // one is sent it (DELIVERED, not acknowledged), and only once.
    let mut second = registry.open_stream(AGENT).unwrap();
    assert_eq!(first.next().await, None);
    drop(first);
    let fresh = send(&registry, 2);

    assert_eq!(ready_now(&mut second), ids(&[&queued, &fresh]));
    let again = send(&registry, 3);
    assert_eq!(ready_now(&mut second), ids(&[&again]));
    assert_eq!(view(&registry, &queued).status, CommandStatus::Delivered);
}

#[tokio::test(start_paused = true)]
async fn replayed_commands_not_written_when_the_stream_drops_keep_what_they_were() {
    let (_guard, registry) = start();
    let delivered = send(&registry, 1);
    assert_eq!(read_and_close(&registry), ids(&[&delivered]));
    let pending = send(&registry, 2);

    advance_ms(1_000).await;
    let stream = registry.open_stream(AGENT).unwrap();
    assert_eq!(view(&registry, &pending).status, CommandStatus::Delivered);
    drop(stream);

    let pending = view(&registry, &pending);
    assert_eq!(pending.status, CommandStatus::Pending, "never written");
    assert_eq!(pending.delivered_at, None);
    let delivered = view(&registry, &delivered);
    assert_eq!(delivered.status, CommandStatus::Delivered, "written before");
    assert_eq!(delivered.delivered_at.map(|t| t.unix_millis()), Some(at(0)));
    let stats = registry.stats();
    assert_eq!(stats.commands_in(CommandStatus::Pending), 1);
    assert_eq!(stats.commands_in(CommandStatus::Delivered), 1);
}

#[tokio::test(start_paused = true)]
async fn a_replayed_event_carries_the_same_data_as_when_it_was_first_sent() {
    let (_guard, registry) = start();
    let mut stream = registry.open_stream(AGENT).unwrap();
    send(&registry, 1);
    let first: CommandEvent = stream.next().await.unwrap();
    drop(stream);

    advance_ms(5_000).await;
    let mut stream = registry.open_stream(AGENT).unwrap();
    let again: CommandEvent = stream.next().await.unwrap();
    assert_eq!(again, first);
}

#[tokio::test(start_paused = true)]
async fn a_detached_stream_says_why_and_replacements_are_counted() {
    let (_guard, registry) = start_with(settings(Replay::None));
    registry.register(registration(AGENT, "g")).unwrap();
    let mut first = registry.open_stream(AGENT).unwrap();
    assert_eq!(first.detach_reason(), None);

    let mut second = registry.open_stream(AGENT).unwrap();
    assert_eq!(first.next().await, None);
    assert_eq!(first.detach_reason(), Some(DetachReason::Replaced));
    let stats = registry.stats();
    assert_eq!(stats.stream_replacements, 1);
    assert_eq!(stats.open_streams, 1);

    // Behind by a whole queue.
    for n in 0..=STREAM_QUEUE as u64 {
        send(&registry, n);
    }
    assert_eq!(second.next().await, None);
    assert_eq!(second.detach_reason(), Some(DetachReason::FellBehind));

    let mut third = registry.open_stream(AGENT).unwrap();
    registry.delete_agent(AGENT).unwrap();
    assert_eq!(third.next().await, None);
    assert_eq!(third.detach_reason(), Some(DetachReason::AgentDeleted));

    registry.register(registration(AGENT, "g")).unwrap();
    let mut fourth = registry.open_stream(AGENT).unwrap();
    registry.close_all_streams();
    assert_eq!(fourth.next().await, None);
    assert_eq!(fourth.detach_reason(), None, "shutdown is no detach");

    drop((first, second, third, fourth));
    let stats = registry.stats();
    assert_eq!(stats.stream_replacements, 1);
    assert_eq!(stats.slow_streams_closed, 1);
    assert_eq!(stats.open_streams, 0);
}
