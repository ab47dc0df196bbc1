//! Tests of commands (SPEC section 4, with the stream rules of 3.1): creation
//! and targeting, delivery on an open stream, acknowledgement, expiry and
//! retention to the millisecond, and the life of each agent's stream.

use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use registry_core::{
    Ack, AckResult, AgentStatus, CommandRequest, CommandStatus, CommandView, NewRollout, Payload,
    Registry, RegistryError, RegistryGuard, Settings, Subscription,
};
use serde_json::json;

mod common;
use common::{advance_ms, at, registration, start_with, test_clock};

const STALE_MS: u64 = 90_000;
const DEAD_MS: u64 = 300_000;
const EXPIRY_MS: u64 = 60_000;
const RETENTION_MS: u64 = 600_000;
const STREAM_QUEUE: usize = 4;

fn settings() -> Settings {
    Settings {
        stale_after: Duration::from_millis(STALE_MS),
        dead_after: Duration::from_millis(DEAD_MS),
        command_expiry: Duration::from_millis(EXPIRY_MS),
        command_retention: Duration::from_millis(RETENTION_MS),
        stream_queue: STREAM_QUEUE,
        ..Settings::default()
    }
}

fn start() -> (RegistryGuard, Registry) {
    start_with(settings())
}

fn request(kind: &str) -> CommandRequest {
    CommandRequest {
        kind: kind.to_owned(),
        payload: None,
    }
}

fn config_update() -> CommandRequest {
    request("config-update")
}

fn ack(result: AckResult, message: &str) -> Ack {
    Ack {
        result: Some(result),
        message: Some(message.to_owned()),
    }
}

fn id(command: &CommandView) -> String {
    command.command_id.to_string()
}

fn status_of(registry: &Registry, agent_id: &str, command: &CommandView) -> CommandStatus {
    registry.command(agent_id, &id(command)).unwrap().status
}

fn targets(rollout: &NewRollout) -> Vec<&str> {
    rollout
        .commands
        .iter()
        .map(|c| c.agent_id.as_str())
        .collect()
}

/// The views of a rollout's commands, in the answer's order.
fn views(registry: &Registry, rollout: &NewRollout) -> Vec<CommandView> {
    rollout
        .commands
        .iter()
        .map(|c| {
            registry
                .command(c.agent_id.as_str(), &c.command_id.to_string())
                .unwrap()
        })
        .collect()
}

fn unknown_command(agent_id: &str, command_id: &str) -> RegistryError {
    RegistryError::UnknownCommand {
        agent_id: agent_id.to_owned(),
        command_id: command_id.to_owned(),
    }
}

/// The next event if one is ready now, `Some(None)` if the stream ended, `None`
/// if it waits; never lets the paused clock run.
fn poll_now(subscription: &mut Subscription) -> Option<Option<registry_core::CommandEvent>> {
    subscription.next().now_or_never()
}

#[tokio::test(start_paused = true)]
async fn command_is_created_for_one_agent_in_any_status() {
    let (_guard, registry) = start();
    registry.register(registration("dead-1", "g")).unwrap();
    advance_ms(STALE_MS + DEAD_MS).await;
    registry.register(registration("stale-1", "g")).unwrap();
    advance_ms(STALE_MS).await;
    registry.register(registration("live-1", "g")).unwrap();
    assert_eq!(registry.stats().agents, [1, 1, 1]);

    for agent_id in ["live-1", "stale-1", "dead-1"] {
        let command = registry.send_to_agent(agent_id, config_update()).unwrap();
        assert_eq!(command.agent_id.as_str(), agent_id);
        assert_eq!(command.status, CommandStatus::Pending);
        assert_eq!(&*command.kind, "config-update");
        assert_eq!(registry.command(agent_id, &id(&command)).unwrap(), command);
    }
    let stats = registry.stats();
    assert_eq!(stats.commands_created, 3);
    assert_eq!(stats.commands_in(CommandStatus::Pending), 3);
}

#[tokio::test(start_paused = true)]
async fn command_for_a_stale_or_dead_agent_with_an_open_stream_is_delivered() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();
    let mut subscription = registry.open_stream("order-7f3a").unwrap();
    advance_ms(STALE_MS + DEAD_MS).await;
    assert_eq!(
        registry.agent("order-7f3a").unwrap().status,
        AgentStatus::Dead
    );

    let command = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();

    assert_eq!(command.status, CommandStatus::Delivered);
    let event = subscription.next().await.unwrap();
    assert_eq!(event.command_id, command.command_id);
}

#[tokio::test(start_paused = true)]
async fn command_for_an_unknown_agent_is_unknown_agent() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();

    assert_eq!(
        registry.send_to_agent("nobody", config_update()),
        Err(RegistryError::UnknownAgent("nobody".to_owned()))
    );
    assert_eq!(
        registry.commands_of("nobody"),
        Err(RegistryError::UnknownAgent("nobody".to_owned()))
    );
    assert_eq!(registry.stats().commands_created, 0);
}

#[tokio::test(start_paused = true)]
async fn command_of_an_unknown_type_is_invalid_field_type_naming_the_allowed_types() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();

    let errors = [
        registry
            .send_to_agent("order-7f3a", request("reboot"))
            .unwrap_err(),
        registry.send_to_group("g", request("reboot")).unwrap_err(),
        registry.send_to_fleet(request("reboot")).unwrap_err(),
    ];

    for error in errors {
        let RegistryError::InvalidField(field) = error else {
            panic!("expected InvalidField, got {error:?}");
        };
        assert_eq!(field.field, "type");
        for allowed in ["config-update", "deep-trace", "replay"] {
            assert!(field.reason.contains(allowed), "{}", field.reason);
        }
        assert!(field.reason.contains("reboot"), "{}", field.reason);
    }
    // Type names are exact.
    assert!(matches!(
        registry.send_to_agent("order-7f3a", request("Config-Update")),
        Err(RegistryError::InvalidField(field)) if field.field == "type"
    ));
    assert_eq!(registry.stats().commands_created, 0);
    for kind in ["config-update", "deep-trace", "replay"] {
        assert!(registry.send_to_agent("order-7f3a", request(kind)).is_ok());
    }
}

#[tokio::test(start_paused = true)]
async fn command_payload_defaults_to_an_empty_object_and_is_kept_as_sent() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();

    let empty = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();
    let given = registry
        .send_to_agent(
            "order-7f3a",
            CommandRequest {
                kind: "deep-trace".to_owned(),
                payload: Some(Payload::from_value(
                    &json!({"routeId": "route-1", "depth": [1, 2]}),
                )),
            },
        )
        .unwrap();
    let scalar = registry
        .send_to_agent(
            "order-7f3a",
            CommandRequest {
                kind: "replay".to_owned(),
                payload: Some(Payload::from_value(&json!(42))),
            },
        )
        .unwrap();

    assert_eq!(empty.payload, Payload::from_value(&json!({})));
    assert_eq!(
        given.payload,
        Payload::from_value(&json!({"routeId": "route-1", "depth": [1, 2]}))
    );
    assert_eq!(scalar.payload, Payload::from_value(&json!(42)));
}

#[tokio::test(start_paused = true)]
async fn command_times_are_created_at_and_created_at_plus_expiry() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();
    advance_ms(1_500).await;

    let command = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();

    assert_eq!(command.created_at.unix_millis(), at(1_500));
    assert_eq!(command.expires_at.unix_millis(), at(1_500 + EXPIRY_MS));
    assert_eq!(command.delivered_at, None);
    assert_eq!(command.acknowledged_at, None);
    assert_eq!(command.result, None);
    assert_eq!(command.message, None);
}

#[tokio::test(start_paused = true)]
async fn command_ids_are_unique_time_ordered_uuid_v7() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();

    let commands: Vec<CommandView> = (0..50)
        .map(|_| {
            registry
                .send_to_agent("order-7f3a", config_update())
                .unwrap()
        })
        .collect();

    for pair in commands.windows(2) {
        assert!(pair[0].command_id < pair[1].command_id);
    }
    for command in &commands {
        let text = id(command);
        assert_eq!(text.len(), 36, "{text}");
        assert_eq!(&text[14..15], "7", "not a v7 UUID: {text}");
    }
}

#[tokio::test(start_paused = true)]
async fn command_for_an_agent_with_an_open_stream_is_delivered_at_once() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();
    let mut subscription = registry.open_stream("order-7f3a").unwrap();
    assert_eq!(subscription.agent_id().as_str(), "order-7f3a");
    advance_ms(2_000).await;

    let command = registry
        .send_to_agent(
            "order-7f3a",
            CommandRequest {
                kind: "deep-trace".to_owned(),
                payload: Some(Payload::from_value(&json!({"routeId": "route-1"}))),
            },
        )
        .unwrap();

    assert_eq!(command.status, CommandStatus::Delivered);
    assert_eq!(
        command.delivered_at.map(|t| t.unix_millis()),
        Some(at(2_000))
    );
    let event = poll_now(&mut subscription)
        .expect("the event is there at once")
        .expect("the stream is open");
    assert_eq!(event.command_id, command.command_id);
    assert_eq!(event.agent_id.as_str(), "order-7f3a");
    assert_eq!(&*event.kind, "deep-trace");
    assert_eq!(
        event.payload,
        Payload::from_value(&json!({"routeId": "route-1"}))
    );
    assert_eq!(event.created_at, command.created_at);
    assert_eq!(event.expires_at, command.expires_at);
    assert_eq!(
        status_of(&registry, "order-7f3a", &command),
        CommandStatus::Delivered
    );
    assert_eq!(registry.stats().commands_in(CommandStatus::Delivered), 1);
}

#[tokio::test(start_paused = true)]
async fn command_without_a_stream_stays_pending_until_it_expires() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();

    let command = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();
    assert_eq!(command.status, CommandStatus::Pending);

    advance_ms(EXPIRY_MS - 1).await;
    assert_eq!(
        status_of(&registry, "order-7f3a", &command),
        CommandStatus::Pending
    );
    advance_ms(1).await;
    assert_eq!(
        status_of(&registry, "order-7f3a", &command),
        CommandStatus::Expired
    );
}

#[tokio::test(start_paused = true)]
async fn pending_commands_are_not_pushed_when_a_stream_opens_later() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();
    let pending = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();

    let mut subscription = registry.open_stream("order-7f3a").unwrap();

    assert!(poll_now(&mut subscription).is_none(), "nothing was pushed");
    assert_eq!(
        status_of(&registry, "order-7f3a", &pending),
        CommandStatus::Pending
    );
    let fresh = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();
    let event = subscription.next().await.unwrap();
    assert_eq!(event.command_id, fresh.command_id, "only future commands");
    assert!(poll_now(&mut subscription).is_none());
}

#[tokio::test(start_paused = true)]
async fn group_command_goes_to_live_members_only() {
    let (_guard, registry) = start();
    registry.register(registration("dead-1", "g")).unwrap();
    advance_ms(STALE_MS + DEAD_MS).await;
    registry.register(registration("stale-1", "g")).unwrap();
    advance_ms(STALE_MS).await;
    registry.register(registration("live-2", "g")).unwrap();
    registry.register(registration("live-1", "g")).unwrap();
    registry.register(registration("other-1", "other")).unwrap();
    let mut stream = registry.open_stream("live-2").unwrap();

    let sent = registry
        .send_to_group(
            "g",
            CommandRequest {
                kind: "replay".to_owned(),
                payload: Some(Payload::from_value(&json!({"n": 1}))),
            },
        )
        .unwrap();

    assert_eq!(targets(&sent), ["live-1", "live-2"]);
    assert_eq!((sent.targeted, sent.skipped), (2, 0));
    assert_eq!(&*sent.kind, "replay");
    assert_eq!(sent.payload.get(), r#"{"n":1}"#);
    let commands = views(&registry, &sent);
    assert_eq!(commands[0].status, CommandStatus::Pending);
    assert_eq!(commands[1].status, CommandStatus::Delivered);
    assert_ne!(commands[0].command_id, commands[1].command_id);
    for command in &commands {
        assert_eq!(&*command.kind, "replay");
        assert!(
            command.payload.shares_with(&sent.payload),
            "one payload for all"
        );
        assert_eq!(command.rollout_id, Some(sent.rollout_id));
        assert_eq!(command.created_at, sent.created_at);
        assert_eq!(command.expires_at, sent.expires_at);
    }
    assert_eq!(
        stream.next().await.unwrap().command_id,
        commands[1].command_id
    );
    for agent_id in ["stale-1", "dead-1", "other-1"] {
        assert!(registry.commands_of(agent_id).unwrap().is_empty());
    }
    assert_eq!(registry.stats().commands_created, 2);
}

#[tokio::test(start_paused = true)]
async fn group_command_for_a_group_without_live_members_targets_nobody() {
    let (_guard, registry) = start();
    registry.register(registration("stale-1", "g")).unwrap();
    advance_ms(STALE_MS).await;

    let sent = registry.send_to_group("g", config_update()).unwrap();
    assert_eq!((sent.targeted, sent.commands.len()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn group_command_for_an_unknown_group_is_unknown_group() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();

    assert_eq!(
        registry.send_to_group("nope", config_update()),
        Err(RegistryError::UnknownGroup("nope".to_owned()))
    );
    registry.delete_agent("order-7f3a").unwrap();
    assert_eq!(
        registry.send_to_group("g", config_update()),
        Err(RegistryError::UnknownGroup("g".to_owned())),
        "a group whose last member was deleted is unknown"
    );
}

#[tokio::test(start_paused = true)]
async fn fleet_command_goes_to_every_live_agent_only() {
    let (_guard, registry) = start();
    registry.register(registration("dead-1", "g1")).unwrap();
    advance_ms(STALE_MS + DEAD_MS).await;
    registry.register(registration("stale-1", "g2")).unwrap();
    advance_ms(STALE_MS).await;
    registry.register(registration("live-c", "g2")).unwrap();
    registry.register(registration("live-a", "g1")).unwrap();
    registry.register(registration("live-b", "g3")).unwrap();

    let sent = registry.send_to_fleet(config_update()).unwrap();

    assert_eq!(targets(&sent), ["live-a", "live-b", "live-c"]);
    assert!(
        views(&registry, &sent)
            .iter()
            .all(|c| c.status == CommandStatus::Pending)
    );
    assert!(registry.commands_of("stale-1").unwrap().is_empty());
    assert!(registry.commands_of("dead-1").unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn fleet_command_with_no_live_agent_targets_nobody() {
    let (_guard, registry) = start();
    assert_eq!(registry.send_to_fleet(config_update()).unwrap().targeted, 0);
    registry.register(registration("stale-1", "g")).unwrap();
    advance_ms(STALE_MS).await;
    let sent = registry.send_to_fleet(config_update()).unwrap();
    assert_eq!((sent.targeted, sent.commands.len()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn ack_of_a_pending_command_acknowledges_it_with_success_by_default() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();
    let command = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();
    advance_ms(3_000).await;

    let acked = registry
        .ack("order-7f3a", &id(&command), Ack::default())
        .unwrap();

    assert_eq!(acked.status, CommandStatus::Acknowledged);
    assert_eq!(acked.result, Some(AckResult::Success));
    assert_eq!(acked.message, None);
    assert_eq!(
        acked.acknowledged_at.map(|t| t.unix_millis()),
        Some(at(3_000))
    );
    assert_eq!(acked.delivered_at, None);
    assert_eq!(
        registry.command("order-7f3a", &id(&command)).unwrap(),
        acked
    );
    let stats = registry.stats();
    assert_eq!(stats.commands_in(CommandStatus::Acknowledged), 1);
    assert_eq!(stats.commands_in(CommandStatus::Pending), 0);
}

#[tokio::test(start_paused = true)]
async fn ack_of_a_delivered_command_records_result_and_message() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();
    let mut subscription = registry.open_stream("order-7f3a").unwrap();
    let command = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();
    let event = subscription.next().await.unwrap();
    advance_ms(EXPIRY_MS - 1).await;

    let acked = registry
        .ack(
            "order-7f3a",
            &event.command_id.to_string(),
            ack(AckResult::Failure, "route-1 not found"),
        )
        .unwrap();

    assert_eq!(acked.status, CommandStatus::Acknowledged);
    assert_eq!(acked.result, Some(AckResult::Failure));
    assert_eq!(acked.message.as_deref(), Some("route-1 not found"));
    assert_eq!(acked.delivered_at.map(|t| t.unix_millis()), Some(at(0)));
    assert_eq!(
        acked.acknowledged_at.map(|t| t.unix_millis()),
        Some(at(EXPIRY_MS - 1))
    );
    // Acknowledged 1 ms before its expiry, it never expires.
    advance_ms(1).await;
    assert_eq!(
        status_of(&registry, "order-7f3a", &command),
        CommandStatus::Acknowledged
    );
}

#[tokio::test(start_paused = true)]
async fn second_ack_answers_the_command_and_keeps_the_first_result() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();
    let command = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();
    let first = registry
        .ack("order-7f3a", &id(&command), ack(AckResult::Success, "done"))
        .unwrap();
    advance_ms(1_000).await;

    let second = registry
        .ack(
            "order-7f3a",
            &id(&command),
            ack(AckResult::Failure, "changed my mind"),
        )
        .unwrap();

    assert_eq!(second, first);
    assert_eq!(second.result, Some(AckResult::Success));
    assert_eq!(second.message.as_deref(), Some("done"));
    assert_eq!(second.acknowledged_at.map(|t| t.unix_millis()), Some(at(0)));
    // Nor does the second ack move the retention deadline.
    advance_ms(RETENTION_MS - 1_000).await;
    assert_eq!(
        registry.command("order-7f3a", &id(&command)),
        Err(unknown_command("order-7f3a", &id(&command)))
    );
}

#[tokio::test(start_paused = true)]
async fn ack_after_expiry_is_command_expired() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();
    let command = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();
    advance_ms(EXPIRY_MS + 5_000).await;

    assert_eq!(
        registry.ack("order-7f3a", &id(&command), Ack::default()),
        Err(RegistryError::CommandExpired(command.command_id))
    );
    let view = registry.command("order-7f3a", &id(&command)).unwrap();
    assert_eq!(view.status, CommandStatus::Expired);
    assert_eq!(view.acknowledged_at, None);
    assert_eq!(view.result, None);
}

#[tokio::test(start_paused = true)]
async fn ack_exactly_at_created_at_plus_expiry_is_command_expired() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();
    let mut subscription = registry.open_stream("order-7f3a").unwrap();
    let command = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();
    assert!(subscription.next().await.is_some());

    advance_ms(EXPIRY_MS).await;

    assert_eq!(
        registry.ack("order-7f3a", &id(&command), Ack::default()),
        Err(RegistryError::CommandExpired(command.command_id))
    );
}

#[tokio::test(start_paused = true)]
async fn ack_by_another_agent_is_unknown_command() {
    let (_guard, registry) = start();
    registry.register(registration("owner", "g")).unwrap();
    registry.register(registration("intruder", "g")).unwrap();
    let command = registry.send_to_agent("owner", config_update()).unwrap();

    assert_eq!(
        registry.ack("intruder", &id(&command), Ack::default()),
        Err(unknown_command("intruder", &id(&command)))
    );
    assert_eq!(
        registry.command("intruder", &id(&command)),
        Err(unknown_command("intruder", &id(&command)))
    );
    assert_eq!(
        status_of(&registry, "owner", &command),
        CommandStatus::Pending
    );
    assert_eq!(
        registry.ack("nobody", &id(&command), Ack::default()),
        Err(RegistryError::UnknownAgent("nobody".to_owned()))
    );
}

#[tokio::test(start_paused = true)]
async fn ack_of_a_malformed_or_unknown_command_id_is_unknown_command() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();
    registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();

    for bad in [
        "not-a-uuid",
        "",
        "0190f0c2-",
        "../etc/passwd",
        "01234567-89ab-7def-8123-456789abcdef",
    ] {
        assert_eq!(
            registry.ack("order-7f3a", bad, Ack::default()),
            Err(unknown_command("order-7f3a", bad)),
            "{bad:?}"
        );
        assert_eq!(
            registry.command("order-7f3a", bad),
            Err(unknown_command("order-7f3a", bad)),
            "{bad:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn command_expires_exactly_at_created_at_plus_expiry() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();
    let mut subscription = registry.open_stream("order-7f3a").unwrap();
    advance_ms(700).await;
    let delivered = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();
    assert!(subscription.next().await.is_some());
    drop(subscription);
    let pending = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();
    assert_eq!(delivered.status, CommandStatus::Delivered);
    assert_eq!(pending.status, CommandStatus::Pending);

    advance_ms(EXPIRY_MS - 1).await;
    let stats = registry.stats();
    assert_eq!(stats.commands_in(CommandStatus::Expired), 0);

    advance_ms(1).await;
    for command in [&delivered, &pending] {
        let view = registry.command("order-7f3a", &id(command)).unwrap();
        assert_eq!(view.status, CommandStatus::Expired);
        assert_eq!(view.expires_at.unix_millis(), at(700 + EXPIRY_MS));
    }
    assert_eq!(registry.stats().commands_in(CommandStatus::Expired), 2);
}

#[tokio::test(start_paused = true)]
async fn expiry_handles_only_the_commands_that_are_due() {
    // No scheduler task: the test's ticks are the only ones.
    let settings = Settings {
        max_unfinished_per_agent: 2_000,
        ..settings()
    };
    let registry = Registry::new(settings, test_clock());
    registry.register(registration("order-7f3a", "g")).unwrap();
    for _ in 0..3 {
        registry
            .send_to_agent("order-7f3a", config_update())
            .unwrap();
    }
    advance_ms(10_000).await;
    for _ in 0..1_000 {
        registry
            .send_to_agent("order-7f3a", config_update())
            .unwrap();
    }
    advance_ms(EXPIRY_MS - 10_000).await;

    let tick = registry.tick();

    assert_eq!(tick.handled, 3);
    assert_eq!(
        tick.next_due,
        Some(registry.clock().now() + Duration::from_millis(10_000))
    );
    assert_eq!(registry.tick().handled, 0);
    let stats = registry.stats();
    assert_eq!(stats.commands_in(CommandStatus::Expired), 3);
    assert_eq!(stats.commands_in(CommandStatus::Pending), 1_000);
}

#[tokio::test(start_paused = true)]
async fn acknowledged_command_is_dropped_exactly_retention_after_its_ack() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();
    let kept = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();
    let command = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();
    advance_ms(10_000).await;
    registry
        .ack("order-7f3a", &id(&command), Ack::default())
        .unwrap();

    // Still readable through its original expiry and up to 1 ms before retention ends.
    advance_ms(RETENTION_MS - 1).await;
    let view = registry.command("order-7f3a", &id(&command)).unwrap();
    assert_eq!(view.status, CommandStatus::Acknowledged);
    assert_eq!(registry.commands_of("order-7f3a").unwrap().len(), 2);

    advance_ms(1).await;
    assert_eq!(
        registry.command("order-7f3a", &id(&command)),
        Err(unknown_command("order-7f3a", &id(&command)))
    );
    let listed: Vec<_> = registry
        .commands_of("order-7f3a")
        .unwrap()
        .into_iter()
        .map(|c| c.command_id)
        .collect();
    assert_eq!(
        listed,
        [kept.command_id],
        "the expired one is still retained"
    );
    assert_eq!(
        registry.ack("order-7f3a", &id(&command), Ack::default()),
        Err(unknown_command("order-7f3a", &id(&command)))
    );
    let stats = registry.stats();
    assert_eq!(stats.commands_in(CommandStatus::Acknowledged), 0);
    assert_eq!(stats.commands_in(CommandStatus::Expired), 1);
}

#[tokio::test(start_paused = true)]
async fn expired_command_is_dropped_exactly_retention_after_it_expired() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();
    let command = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();

    advance_ms(EXPIRY_MS + RETENTION_MS - 1).await;
    assert_eq!(
        status_of(&registry, "order-7f3a", &command),
        CommandStatus::Expired
    );
    assert_eq!(registry.commands_of("order-7f3a").unwrap().len(), 1);

    advance_ms(1).await;
    assert_eq!(
        registry.command("order-7f3a", &id(&command)),
        Err(unknown_command("order-7f3a", &id(&command)))
    );
    assert!(registry.commands_of("order-7f3a").unwrap().is_empty());
    let stats = registry.stats();
    assert_eq!(stats.commands, [0, 0, 0, 0]);
    assert_eq!(stats.commands_created, 1);
    assert_eq!(
        stats.scheduled_deadlines, 0,
        "nothing left: the agent is DEAD and its command dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn commands_of_lists_the_agents_retained_commands_newest_first() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();
    registry.register(registration("other", "g")).unwrap();
    let mut sent = Vec::new();
    for step in 0..4 {
        sent.push(
            registry
                .send_to_agent("order-7f3a", config_update())
                .unwrap(),
        );
        registry.send_to_agent("other", config_update()).unwrap();
        if step < 3 {
            advance_ms(1_000).await;
        }
    }
    registry
        .ack("order-7f3a", &id(&sent[1]), Ack::default())
        .unwrap();

    let listed = registry.commands_of("order-7f3a").unwrap();

    let listed_ids: Vec<_> = listed.iter().map(|c| c.command_id).collect();
    let expected: Vec<_> = sent.iter().rev().map(|c| c.command_id).collect();
    assert_eq!(listed_ids, expected);
    let created: Vec<u64> = listed.iter().map(|c| c.created_at.unix_millis()).collect();
    assert_eq!(created, [at(3_000), at(2_000), at(1_000), at(0)]);
    assert_eq!(listed[2].status, CommandStatus::Acknowledged);
    assert!(listed.iter().all(|c| c.agent_id.as_str() == "order-7f3a"));
}

#[tokio::test(start_paused = true)]
async fn a_second_stream_replaces_the_first() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();
    let mut first = registry.open_stream("order-7f3a").unwrap();

    let mut second = registry.open_stream("order-7f3a").unwrap();

    assert_eq!(first.next().await, None, "the older stream ended");
    assert_eq!(registry.stats().open_streams, 1);
    let command = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();
    assert_eq!(command.status, CommandStatus::Delivered);
    assert_eq!(second.next().await.unwrap().command_id, command.command_id);

    // The old one going away does not disconnect the new one.
    drop(first);
    assert!(registry.agent("order-7f3a").unwrap().connected);
    assert_eq!(registry.stats().open_streams, 1);
    let next = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();
    assert_eq!(next.status, CommandStatus::Delivered);
    assert_eq!(second.next().await.unwrap().command_id, next.command_id);
}

#[tokio::test(start_paused = true)]
async fn commands_queued_on_a_replaced_stream_go_back_to_pending_when_it_drops() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();
    let first = registry.open_stream("order-7f3a").unwrap();
    let queued = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();
    let _second = registry.open_stream("order-7f3a").unwrap();

    drop(first);

    let view = registry.command("order-7f3a", &id(&queued)).unwrap();
    assert_eq!(view.status, CommandStatus::Pending);
    assert_eq!(view.delivered_at, None);
    assert!(registry.agent("order-7f3a").unwrap().connected);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_subscription_disconnects_the_agent() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();
    let subscription = registry.open_stream("order-7f3a").unwrap();
    assert!(registry.agent("order-7f3a").unwrap().connected);
    assert_eq!(registry.stats().open_streams, 1);

    drop(subscription);

    assert!(!registry.agent("order-7f3a").unwrap().connected);
    assert_eq!(registry.stats().open_streams, 0);
    let command = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();
    assert_eq!(command.status, CommandStatus::Pending);
}

#[tokio::test(start_paused = true)]
async fn commands_queued_but_unread_when_a_subscription_drops_go_back_to_pending() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();
    let mut subscription = registry.open_stream("order-7f3a").unwrap();
    let read = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();
    let unread = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();
    assert_eq!(
        subscription.next().await.unwrap().command_id,
        read.command_id
    );
    assert_eq!(registry.stats().commands_in(CommandStatus::Delivered), 2);

    drop(subscription);

    let read = registry.command("order-7f3a", &id(&read)).unwrap();
    assert_eq!(read.status, CommandStatus::Delivered);
    assert_eq!(read.delivered_at.map(|t| t.unix_millis()), Some(at(0)));
    let unread = registry.command("order-7f3a", &id(&unread)).unwrap();
    assert_eq!(unread.status, CommandStatus::Pending);
    assert_eq!(unread.delivered_at, None);
    let stats = registry.stats();
    assert_eq!(stats.commands_in(CommandStatus::Delivered), 1);
    assert_eq!(stats.commands_in(CommandStatus::Pending), 1);
    // Back to PENDING, it can still be acknowledged.
    assert_eq!(
        registry
            .ack("order-7f3a", &id(&unread), Ack::default())
            .unwrap()
            .status,
        CommandStatus::Acknowledged
    );
}

#[tokio::test(start_paused = true)]
async fn a_reader_a_whole_queue_behind_loses_its_stream_and_the_command_stays_pending() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();
    let mut subscription = registry.open_stream("order-7f3a").unwrap();
    let queued: Vec<CommandView> = (0..STREAM_QUEUE)
        .map(|_| {
            registry
                .send_to_agent("order-7f3a", config_update())
                .unwrap()
        })
        .collect();
    assert!(queued.iter().all(|c| c.status == CommandStatus::Delivered));

    let overflow = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();

    assert_eq!(overflow.status, CommandStatus::Pending);
    assert_eq!(overflow.delivered_at, None);
    let stats = registry.stats();
    assert_eq!(stats.slow_streams_closed, 1);
    assert_eq!(stats.open_streams, 0);
    assert!(!registry.agent("order-7f3a").unwrap().connected);
    // The stream is closed: it ends without yielding what it had queued.
    assert_eq!(subscription.next().await, None);
    assert_eq!(subscription.next().await, None);

    // Once its reader lets go, what it had queued is PENDING again.
    drop(subscription);
    for command in queued.iter().chain([&overflow]) {
        assert_eq!(
            status_of(&registry, "order-7f3a", command),
            CommandStatus::Pending
        );
    }
    let stats = registry.stats();
    assert_eq!(stats.commands_in(CommandStatus::Pending), STREAM_QUEUE + 1);
    assert_eq!(stats.open_streams, 0);
    assert_eq!(stats.slow_streams_closed, 1);

    // The agent reconnects and receives new commands.
    let mut again = registry.open_stream("order-7f3a").unwrap();
    let fresh = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();
    assert_eq!(fresh.status, CommandStatus::Delivered);
    assert_eq!(again.next().await.unwrap().command_id, fresh.command_id);
}

#[tokio::test(start_paused = true)]
async fn a_reader_that_keeps_up_never_loses_its_stream() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();
    let mut subscription = registry.open_stream("order-7f3a").unwrap();

    for _ in 0..10 * STREAM_QUEUE {
        let command = registry
            .send_to_agent("order-7f3a", config_update())
            .unwrap();
        assert_eq!(command.status, CommandStatus::Delivered);
        assert_eq!(
            subscription.next().await.unwrap().command_id,
            command.command_id
        );
    }
    assert_eq!(registry.stats().slow_streams_closed, 0);
}

#[tokio::test(start_paused = true)]
async fn max_streams_refuses_one_more_stream_but_allows_replacing_an_agents_own() {
    let (_guard, registry) = start_with(Settings {
        max_streams: 2,
        ..settings()
    });
    for agent_id in ["a", "b", "c"] {
        registry.register(registration(agent_id, "g")).unwrap();
    }
    let _a = registry.open_stream("a").unwrap();
    let b = registry.open_stream("b").unwrap();

    assert!(matches!(
        registry.open_stream("c"),
        Err(RegistryError::TooManyStreams { limit: 2 })
    ));
    let mut a_again = registry
        .open_stream("a")
        .expect("replacing its own stream does not count");
    assert_eq!(registry.stats().open_streams, 2);
    assert!(!registry.agent("c").unwrap().connected);
    let command = registry.send_to_agent("a", config_update()).unwrap();
    assert_eq!(a_again.next().await.unwrap().command_id, command.command_id);

    drop(b);
    let _c = registry
        .open_stream("c")
        .expect("a slot freed when b went away");
    assert_eq!(registry.stats().open_streams, 2);
}

#[tokio::test(start_paused = true)]
async fn open_stream_for_an_unknown_agent_is_unknown_agent() {
    let (_guard, registry) = start();
    assert!(matches!(
        registry.open_stream("nobody"),
        Err(RegistryError::UnknownAgent(id)) if id == "nobody"
    ));
    assert_eq!(registry.stats().open_streams, 0);
}

#[tokio::test(start_paused = true)]
async fn close_all_streams_ends_every_stream_and_refuses_new_ones() {
    let (_guard, registry) = start();
    registry.register(registration("a", "g")).unwrap();
    registry.register(registration("b", "g")).unwrap();
    let mut a = registry.open_stream("a").unwrap();
    let mut b = registry.open_stream("b").unwrap();

    registry.close_all_streams();

    assert_eq!(a.next().await, None);
    assert_eq!(b.next().await, None);
    assert!(matches!(
        registry.open_stream("a"),
        Err(RegistryError::ShuttingDown)
    ));
    assert!(matches!(
        registry.open_stream("nobody"),
        Err(RegistryError::ShuttingDown)
    ));
    drop(a);
    drop(b);
    let stats = registry.stats();
    assert_eq!(stats.open_streams, 0);
    assert!(!registry.agent("a").unwrap().connected);
    assert!(!registry.agent("b").unwrap().connected);
}

#[tokio::test(start_paused = true)]
async fn expired_command_applied_late_is_still_dropped_retention_after_its_expiry() {
    // No scheduler task: the expiry is applied late, by a read at 100 s, yet the
    // retention counts from the moment it expired.
    let registry = Registry::new(settings(), test_clock());
    registry.register(registration("order-7f3a", "g")).unwrap();
    let command = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();

    advance_ms(100_000).await;
    assert_eq!(
        status_of(&registry, "order-7f3a", &command),
        CommandStatus::Expired
    );
    advance_ms(EXPIRY_MS + RETENTION_MS - 100_000 - 1).await;
    assert_eq!(
        status_of(&registry, "order-7f3a", &command),
        CommandStatus::Expired
    );
    advance_ms(1).await;
    assert_eq!(
        registry.command("order-7f3a", &id(&command)),
        Err(unknown_command("order-7f3a", &id(&command)))
    );
}

#[tokio::test(start_paused = true)]
async fn an_unread_command_that_expired_stays_expired_when_its_subscription_drops() {
    let (_guard, registry) = start();
    registry.register(registration("order-7f3a", "g")).unwrap();
    let subscription = registry.open_stream("order-7f3a").unwrap();
    let command = registry
        .send_to_agent("order-7f3a", config_update())
        .unwrap();
    assert_eq!(command.status, CommandStatus::Delivered);
    advance_ms(EXPIRY_MS).await;

    drop(subscription);

    assert_eq!(
        status_of(&registry, "order-7f3a", &command),
        CommandStatus::Expired
    );
    let stats = registry.stats();
    assert_eq!(stats.commands_in(CommandStatus::Expired), 1);
    assert_eq!(stats.commands_in(CommandStatus::Pending), 0);
}
