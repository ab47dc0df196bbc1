//! The caps of SPEC 13 on the paused clock: an agent's unfinished commands
//! (refused with the time its oldest expires, skipped by rollouts), the
//! commands and payload bytes retained (a rollout all or nothing, its payload
//! counted once), and the agents held, DEAD ones included.

mod common;

use std::time::Duration;

use common::*;
use registry_core::{
    Ack, CommandRequest, CommandStatus, Payload, Registry, RegistryError, RegistryGuard, Settings,
};
use serde_json::json;

const EXPIRY_MS: u64 = 60_000;
const RETENTION_MS: u64 = 600_000;

fn start(settings: Settings) -> (RegistryGuard, Registry) {
    start_with(settings)
}

fn replay() -> CommandRequest {
    CommandRequest {
        kind: "replay".to_owned(),
        payload: None,
    }
}

/// A request whose payload is `bytes` long once compacted.
fn sized(bytes: usize) -> CommandRequest {
    let text = "x".repeat(bytes - r#"{"b":""}"#.len());
    let payload = Payload::from_value(&json!({ "b": text }));
    assert_eq!(payload.len(), bytes);
    CommandRequest {
        kind: "replay".to_owned(),
        payload: Some(payload),
    }
}

fn register(registry: &Registry, agent_id: &str, group: &str) {
    registry.register(registration(agent_id, group)).unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_agent_at_its_cap_is_refused_until_its_oldest_command_expires() {
    let (_guard, registry) = start(Settings {
        max_unfinished_per_agent: 3,
        ..Settings::default()
    });
    register(&registry, "a-1", "g");
    let first = registry.send_to_agent("a-1", replay()).unwrap();
    advance_ms(10_000).await;
    registry.send_to_agent("a-1", replay()).unwrap();
    registry.send_to_agent("a-1", replay()).unwrap();

    let refused = registry.send_to_agent("a-1", replay()).unwrap_err();
    assert_eq!(
        refused,
        RegistryError::TooManyUnfinished {
            agent_id: "a-1".to_owned(),
            limit: 3,
            retry_after: Duration::from_millis(EXPIRY_MS - 10_000),
        }
    );
    assert_eq!(
        registry.commands_of("a-1").unwrap().len(),
        3,
        "nothing stored"
    );

    // Acknowledging one makes room; the acknowledged command stays retained.
    let id = first.command_id.to_string();
    registry.ack("a-1", &id, Ack::default()).unwrap();
    registry.send_to_agent("a-1", replay()).unwrap();
    assert!(registry.send_to_agent("a-1", replay()).is_err());

    // So does expiry: the three open ones, created at 10 s, expire at 70 s.
    advance_ms(EXPIRY_MS).await;
    yield_a_few_times().await;
    for _ in 0..3 {
        registry.send_to_agent("a-1", replay()).unwrap();
    }
    assert!(registry.send_to_agent("a-1", replay()).is_err());
}

#[tokio::test(start_paused = true)]
async fn a_rollout_skips_the_agents_at_their_cap_and_counts_them() {
    let (_guard, registry) = start(Settings {
        max_unfinished_per_agent: 2,
        ..Settings::default()
    });
    for id in ["a-1", "a-2", "a-3"] {
        register(&registry, id, "g");
    }
    registry.send_to_agent("a-2", replay()).unwrap();
    registry.send_to_agent("a-2", replay()).unwrap();

    let rollout = registry.send_to_group("g", replay()).unwrap();
    assert_eq!((rollout.targeted, rollout.skipped), (2, 1));
    let targets: Vec<&str> = rollout
        .commands
        .iter()
        .map(|command| command.agent_id.as_str())
        .collect();
    assert_eq!(targets, ["a-1", "a-3"]);
    let view = registry.rollout(&rollout.rollout_id.to_string()).unwrap();
    assert_eq!((view.targeted, view.skipped, view.pending), (2, 1, 2));

    // The fleet too: a-1 and a-3 now hold one each, a-2 still two.
    let rollout = registry.send_to_fleet(replay()).unwrap();
    assert_eq!((rollout.targeted, rollout.skipped), (2, 1));
    let rollout = registry.send_to_fleet(replay()).unwrap();
    assert_eq!((rollout.targeted, rollout.skipped), (0, 3));
    assert!(
        registry
            .rollout(&rollout.rollout_id.to_string())
            .unwrap()
            .done
    );
}

#[tokio::test(start_paused = true)]
async fn a_rollout_past_max_retained_stores_nothing_and_fits_again_once_commands_go() {
    let (_guard, registry) = start(Settings {
        max_retained: 5,
        ..Settings::default()
    });
    for id in ["a-1", "a-2", "a-3"] {
        register(&registry, id, "g");
    }
    registry.send_to_fleet(replay()).unwrap();
    let before = registry.stats();

    let refused = registry.send_to_fleet(replay()).unwrap_err();
    assert!(
        matches!(&refused, RegistryError::CommandsFull(why) if why.contains("commands.max_retained")),
        "{refused:?}"
    );
    assert_eq!(registry.stats(), before, "nothing of it stored");
    assert_eq!(registry.rollouts().len(), 1);
    // Two more single commands fit, a third does not.
    registry.send_to_agent("a-1", replay()).unwrap();
    registry.send_to_agent("a-2", replay()).unwrap();
    assert!(matches!(
        registry.send_to_agent("a-3", replay()),
        Err(RegistryError::CommandsFull(_))
    ));

    // Expired and then dropped after their retention, they make room.
    advance_ms(EXPIRY_MS + RETENTION_MS).await;
    yield_a_few_times().await;
    for id in ["a-1", "a-2", "a-3"] {
        registry.heartbeat(id).unwrap();
    }
    assert_eq!(registry.send_to_fleet(replay()).unwrap().targeted, 3);
}

#[tokio::test(start_paused = true)]
async fn payload_bytes_count_a_rollouts_payload_once_and_each_single_commands() {
    let (_guard, registry) = start(Settings {
        max_retained_bytes: 1_000,
        ..Settings::default()
    });
    for n in 0..10 {
        register(&registry, &format!("a-{n}"), "g");
    }
    // 600 bytes to 10 agents: 600 counted, not 6,000.
    registry.send_to_fleet(sized(600)).unwrap();
    assert_eq!(registry.stats().payload_bytes, 600);
    let refused = registry.send_to_fleet(sized(600)).unwrap_err();
    assert!(
        matches!(&refused, RegistryError::CommandsFull(why) if why.contains("commands.max_retained_bytes")),
        "{refused:?}"
    );
    // Single commands count each: two of 200 fit, a third does not.
    registry.send_to_agent("a-1", sized(200)).unwrap();
    registry.send_to_agent("a-2", sized(200)).unwrap();
    assert_eq!(registry.stats().payload_bytes, 1_000);
    assert!(registry.send_to_agent("a-3", sized(200)).is_err());

    // Once the rollout and its commands are dropped, its bytes are free again.
    advance_ms(EXPIRY_MS + RETENTION_MS).await;
    yield_a_few_times().await;
    assert_eq!(registry.stats().payload_bytes, 0);
    assert!(registry.rollouts().is_empty());
    registry.send_to_agent("a-1", sized(600)).unwrap();
}

#[tokio::test(start_paused = true)]
async fn past_max_agents_a_new_agent_is_refused_a_known_one_and_dead_ones_count() {
    let (_guard, registry) = start(Settings {
        max_agents: 2,
        ..Settings::default()
    });
    register(&registry, "a-1", "g");
    register(&registry, "a-2", "g");
    assert_eq!(
        registry.register(registration("a-3", "g")).unwrap_err(),
        RegistryError::TooManyAgents { limit: 2 }
    );
    assert!(registry.agent("a-3").is_err());
    // A known agent registers again as often as it likes.
    register(&registry, "a-1", "other");

    // DEAD agents are held until deleted, and count.
    let settings = Settings::default();
    advance_ms((settings.stale_after + settings.dead_after).as_millis() as u64).await;
    yield_a_few_times().await;
    assert!(registry.register(registration("a-3", "g")).is_err());
    assert_eq!(registry.delete_dead_agents(), 2);
    register(&registry, "a-3", "g");
}

#[tokio::test(start_paused = true)]
async fn a_deleted_agents_unfinished_commands_free_their_room() {
    let (_guard, registry) = start(Settings {
        max_retained: 2,
        ..Settings::default()
    });
    register(&registry, "a-1", "g");
    register(&registry, "a-2", "g");
    registry.send_to_fleet(replay()).unwrap();
    assert!(registry.send_to_agent("a-2", replay()).is_err());
    registry.delete_agent("a-1").unwrap();
    let command = registry.send_to_agent("a-2", replay()).unwrap();
    assert_eq!(command.status, CommandStatus::Pending);
}
