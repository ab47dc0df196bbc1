//! The storage seam's rules on the paused clock: what a restart keeps, the
//! grace after it, commands that expired while the server was down and their
//! retention, heartbeats written behind, group commit, and a failed write
//! keeping nothing of the request. The engine is a map in memory that outlives
//! the registry, as a file outlives a process.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::*;
use registry_core::storage::{Change, Snapshot, WRITE_BEHIND};
use registry_core::{
    Ack, AckResult, AgentStatus, CommandRequest, CommandStatus, Credential, Payload, Registry,
    RegistryError, RegistryGuard, Settings, Storage, StorageError,
};

/// What the test engine holds, shared by every registry started on it.
#[derive(Default)]
struct Stored {
    agents: BTreeMap<String, registry_core::storage::AgentRecord>,
    heartbeats: BTreeMap<String, registry_core::Timestamp>,
    commands: BTreeMap<u128, registry_core::storage::CommandRecord>,
    rollouts: BTreeMap<u128, registry_core::storage::RolloutRecord>,
    payloads: BTreeMap<u128, registry_core::Payload>,
    /// How many times a payload was written.
    payload_writes: usize,
    meta: BTreeMap<String, Vec<u8>>,
    commits: usize,
    failing: bool,
}

/// A storage engine over a shared map; `failing` makes every commit fail.
/// It carries the clock too, whose wall time goes on across restarts as the
/// system's does.
#[derive(Clone)]
struct MapStorage(Arc<Mutex<Stored>>, registry_core::Clock);

impl Default for MapStorage {
    fn default() -> Self {
        Self(Arc::default(), test_clock())
    }
}

impl MapStorage {
    fn with<R>(&self, read: impl FnOnce(&mut Stored) -> R) -> R {
        read(&mut self.0.lock().unwrap())
    }
}

impl Storage for MapStorage {
    fn load(&mut self) -> Result<Snapshot, StorageError> {
        Ok(self.with(|stored| Snapshot {
            agents: stored.agents.values().cloned().collect(),
            heartbeats: stored
                .heartbeats
                .iter()
                .map(|(id, at)| (registry_core::AgentId::parse(id).unwrap(), *at))
                .collect(),
            commands: stored.commands.values().cloned().collect(),
            rollouts: stored.rollouts.values().cloned().collect(),
            payloads: stored
                .payloads
                .iter()
                .map(|(id, payload)| (registry_core::RolloutId::from_u128(*id), payload.clone()))
                .collect(),
            meta: stored.meta.clone(),
            ..Snapshot::default()
        }))
    }

    fn meta_or_insert(&mut self, key: &str, value: &[u8]) -> Result<Vec<u8>, StorageError> {
        Ok(self.with(|stored| {
            stored
                .meta
                .entry(key.to_owned())
                .or_insert_with(|| value.to_vec())
                .clone()
        }))
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), StorageError> {
        self.with(|stored| {
            if stored.failing {
                return Err(StorageError::new("the disk is full"));
            }
            stored.commits += 1;
            for change in changes {
                match change.clone() {
                    Change::Agent(record) => {
                        stored.heartbeats.remove(record.agent_id.as_str());
                        stored.agents.insert(record.agent_id.to_string(), record);
                    }
                    Change::AgentRemoved(id) => {
                        stored.agents.remove(id.as_str());
                        stored.heartbeats.remove(id.as_str());
                    }
                    Change::Heartbeat(id, at) => {
                        stored.heartbeats.insert(id.to_string(), at);
                    }
                    Change::Command(record) => {
                        stored.commands.insert(record.command_id.as_u128(), record);
                    }
                    Change::CommandRemoved(id) => {
                        stored.commands.remove(&id.as_u128());
                    }
                    Change::Delivered(id, at) => {
                        if let Some(record) = stored.commands.get_mut(&id.as_u128()) {
                            record.delivered(at);
                        }
                    }
                    Change::Rollout(record) => {
                        stored.rollouts.insert(record.rollout_id.as_u128(), record);
                    }
                    Change::RolloutPayload(id, payload) => {
                        stored.payload_writes += 1;
                        stored.payloads.insert(id.as_u128(), payload);
                    }
                    Change::RolloutRemoved(id) => {
                        stored.rollouts.remove(&id.as_u128());
                        stored.payloads.remove(&id.as_u128());
                    }
                    Change::Meta(key, Some(value)) => {
                        stored.meta.insert(key, value);
                    }
                    Change::Stream(..) => {}
                    Change::Meta(key, None) => {
                        stored.meta.remove(&key);
                    }
                }
            }
            Ok(())
        })
    }
}

fn settings() -> Settings {
    Settings::default()
}

fn start_on(storage: &MapStorage) -> (RegistryGuard, Registry) {
    let guard =
        Registry::start_with_storage(settings(), storage.1, Box::new(storage.clone())).unwrap();
    let registry = guard.registry();
    (guard, registry)
}

fn request(kind: &str) -> CommandRequest {
    CommandRequest {
        kind: kind.into(),
        payload: Some(Payload::from_value(
            &serde_json::json!({"routeId": "route-1"}),
        )),
    }
}

async fn register(registry: &Registry, agent_id: &str) {
    registry
        .durably(|registry| registry.register(registration(agent_id, "orders")))
        .await
        .unwrap();
}

/// A crash: the tasks stop, nothing not yet written is written.
async fn crash(guard: RegistryGuard) {
    drop(guard);
    yield_a_few_times().await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_keeps_agents_tokens_and_acknowledged_commands() {
    let storage = MapStorage::default();
    let (guard, registry) = start_on(&storage);
    let credential = Credential([7; 32]);
    registry
        .durably(|registry| {
            registry.register(registration("a-1", "orders").with_credential(credential))
        })
        .await
        .unwrap();
    let command = registry
        .durably(|registry| registry.send_to_agent("a-1", request("deep-trace")))
        .await
        .unwrap();
    let ack = Ack {
        result: Some(AckResult::Failure),
        message: Some("no such route".into()),
    };
    let id = command.command_id.to_string();
    registry
        .durably(|registry| registry.ack("a-1", &id, ack.clone()))
        .await
        .unwrap();
    let before = registry.agent("a-1").unwrap();
    crash(guard).await;

    let (_guard, registry) = start_on(&storage);
    assert_eq!(registry.agent("a-1").unwrap(), before);
    assert_eq!(
        registry.agent_with(&credential).map(|id| id.to_string()),
        Some("a-1".to_owned())
    );
    let kept = registry.command("a-1", &id).unwrap();
    assert_eq!(kept.status, CommandStatus::Acknowledged);
    assert_eq!(kept.result, Some(AckResult::Failure));
    assert_eq!(kept.message.as_deref(), Some("no such route"));
    assert_eq!(kept.created_at, command.created_at);
    assert_eq!(kept.payload.get(), r#"{"routeId":"route-1"}"#);
    assert!(!registry.agent("a-1").unwrap().connected);
}

#[tokio::test(start_paused = true)]
async fn no_agent_goes_stale_earlier_than_stale_after_from_the_restart() {
    let storage = MapStorage::default();
    let (guard, registry) = start_on(&storage);
    register(&registry, "a-1").await;
    advance_ms(80_000).await;
    crash(guard).await;
    // Down for a minute: the agent's own deadline (90 s) passed meanwhile.
    advance_ms(60_000).await;

    let (_guard, registry) = start_on(&storage);
    let restart = 140_000;
    advance_ms(89_999).await;
    yield_a_few_times().await;
    assert_eq!(registry.agent("a-1").unwrap().status, AgentStatus::Live);
    advance_ms(1).await;
    yield_a_few_times().await;
    let agent = registry.agent("a-1").unwrap();
    assert_eq!(agent.status, AgentStatus::Stale);
    assert_eq!(agent.status_changed_at.unix_millis(), at(restart + 90_000));
    assert_eq!(agent.last_heartbeat_at.unix_millis(), at(0));
}

#[tokio::test(start_paused = true)]
async fn a_stale_agent_dies_no_earlier_than_the_grace_either() {
    let storage = MapStorage::default();
    let (guard, registry) = start_on(&storage);
    register(&registry, "a-1").await;
    advance_ms(90_000).await;
    yield_a_few_times().await;
    assert_eq!(registry.agent("a-1").unwrap().status, AgentStatus::Stale);
    advance_ms(WRITE_BEHIND.as_millis() as u64).await;
    yield_a_few_times().await;
    registry.flush().await.unwrap();
    crash(guard).await;
    advance_ms(600_000).await;

    let (_guard, registry) = start_on(&storage);
    assert_eq!(registry.agent("a-1").unwrap().status, AgentStatus::Stale);
    advance_ms(90_000).await;
    yield_a_few_times().await;
    let agent = registry.agent("a-1").unwrap();
    assert_eq!(agent.status, AgentStatus::Dead);
    assert_eq!(agent.status_changed_at.unix_millis(), at(690_500 + 90_000));
}

#[tokio::test(start_paused = true)]
async fn a_command_that_expired_while_down_is_expired_at_its_expiry_and_retained_from_then() {
    let storage = MapStorage::default();
    let (guard, registry) = start_on(&storage);
    register(&registry, "a-1").await;
    let command = registry
        .durably(|registry| registry.send_to_agent("a-1", request("replay")))
        .await
        .unwrap();
    let id = command.command_id.to_string();
    crash(guard).await;
    advance_ms(120_000).await;

    let (_guard, registry) = start_on(&storage);
    assert_eq!(
        registry.command("a-1", &id).unwrap().status,
        CommandStatus::Expired
    );
    assert_eq!(
        registry
            .durably(|registry| registry.ack("a-1", &id, Ack::default()))
            .await,
        Err(RegistryError::CommandExpired(command.command_id))
    );
    // Expired at 60 s, retained 10 min from then: readable until 660 s.
    advance_ms(660_000 - 120_000 - 1).await;
    assert!(registry.command("a-1", &id).is_ok());
    advance_ms(1).await;
    assert!(registry.command("a-1", &id).is_err());
}

#[tokio::test(start_paused = true)]
async fn heartbeats_are_written_behind_within_a_second() {
    let storage = MapStorage::default();
    let (guard, registry) = start_on(&storage);
    register(&registry, "a-1").await;
    advance_ms(30_000).await;
    registry.heartbeat("a-1").unwrap();
    assert!(
        storage.with(|stored| stored.heartbeats.is_empty()),
        "a heartbeat is answered before it is written"
    );
    advance_ms(WRITE_BEHIND.as_millis() as u64).await;
    yield_a_few_times().await;
    registry.flush().await.unwrap();
    crash(guard).await;

    let (_guard, registry) = start_on(&storage);
    assert_eq!(
        registry
            .agent("a-1")
            .unwrap()
            .last_heartbeat_at
            .unix_millis(),
        at(30_000)
    );
}

#[tokio::test(start_paused = true)]
async fn a_fleet_command_is_one_write() {
    // More agents than a page of targets, and than a page of commands: the
    // rollout is built a page at a time, and written whole, once.
    const AGENTS: usize = 1_100;
    let storage = MapStorage::default();
    let (_guard, registry) = start_on(&storage);
    for n in 0..AGENTS {
        register(&registry, &format!("a-{n}")).await;
    }
    let before = storage.with(|stored| stored.commits);
    let commands = registry
        .durably(|registry| registry.send_to_fleet(request("config-update")))
        .await
        .unwrap();
    assert_eq!(commands.commands.len(), AGENTS);
    assert_eq!(storage.with(|stored| stored.commits), before + 1);
    assert_eq!(storage.with(|stored| stored.commands.len()), AGENTS);
    assert_eq!(storage.with(|stored| stored.rollouts.len()), 1);
}

#[tokio::test(start_paused = true)]
async fn a_fleet_command_to_open_streams_is_written_once_its_commands_delivered() {
    // Two pages of commands, each delivered as soon as it is made: the
    // deliveries join the rollout's batch rather than follow it.
    const AGENTS: usize = 300;
    let storage = MapStorage::default();
    let (_guard, registry) = start_on(&storage);
    let mut streams = Vec::new();
    for n in 0..AGENTS {
        let agent_id = format!("a-{n}");
        register(&registry, &agent_id).await;
        streams.push(registry.open_stream(&agent_id).unwrap());
    }
    registry.flush().await.unwrap();
    let before = storage.with(|stored| stored.commits);
    registry
        .durably(|registry| registry.send_to_fleet(request("config-update")))
        .await
        .unwrap();
    assert_eq!(storage.with(|stored| stored.commits), before + 1);
    let delivered = |stored: &mut Stored| {
        stored
            .commands
            .values()
            .filter(|record| record.status == CommandStatus::Delivered)
            .count()
    };
    assert_eq!(storage.with(delivered), AGENTS);
    // Nothing of it is left to write behind.
    advance_ms(2 * WRITE_BEHIND.as_millis() as u64).await;
    assert_eq!(storage.with(|stored| stored.commits), before + 1);
    drop(streams);
}

#[tokio::test(start_paused = true)]
async fn a_rollouts_payload_is_stored_once_and_its_commands_hold_none() {
    let storage = MapStorage::default();
    let (_guard, registry) = start_on(&storage);
    for n in 0..20 {
        register(&registry, &format!("a-{n}")).await;
    }
    let rollout = registry
        .durably(|registry| registry.send_to_fleet(request("config-update")))
        .await
        .unwrap();
    storage.with(|stored| {
        assert_eq!(stored.payload_writes, 1);
        assert_eq!(stored.payloads.len(), 1);
        assert!(
            stored
                .commands
                .values()
                .all(|command| command.payload.is_none()
                    && command.rollout_id == Some(rollout.rollout_id))
        );
    });
    // Counting acks writes the rollout's record again, never its payload.
    for command in &rollout.commands[..5] {
        let id = command.command_id.to_string();
        registry
            .durably(|registry| registry.ack(command.agent_id.as_str(), &id, Ack::default()))
            .await
            .unwrap();
    }
    storage.with(|stored| {
        assert_eq!(stored.payload_writes, 1);
        let record = &stored.rollouts[&rollout.rollout_id.as_u128()];
        assert_eq!(record.counts.succeeded, 5);
        assert_eq!(record.counts.pending, 15);
    });
}

#[tokio::test(start_paused = true)]
async fn a_restart_keeps_rollouts_their_counts_and_their_shared_payload() {
    let storage = MapStorage::default();
    let (guard, registry) = start_on(&storage);
    for n in 0..3 {
        register(&registry, &format!("a-{n}")).await;
    }
    let rollout = registry
        .durably(|registry| registry.send_to_fleet(request("config-update")))
        .await
        .unwrap();
    let first = &rollout.commands[0];
    let id = first.command_id.to_string();
    registry
        .durably(|registry| registry.ack(first.agent_id.as_str(), &id, Ack::default()))
        .await
        .unwrap();
    let before = registry.rollout(&rollout.rollout_id.to_string()).unwrap();
    assert_eq!((before.succeeded, before.pending), (1, 2));
    crash(guard).await;

    let (_guard, registry) = start_on(&storage);
    let rollout_id = rollout.rollout_id.to_string();
    assert_eq!(registry.rollout(&rollout_id).unwrap(), before);
    let commands: Vec<_> = rollout
        .commands
        .iter()
        .map(|command| {
            registry
                .command(command.agent_id.as_str(), &command.command_id.to_string())
                .unwrap()
        })
        .collect();
    assert!(
        commands
            .iter()
            .all(|command| command.payload == rollout.payload)
    );
    // Counting goes on where it stopped: the other two expire, and it is done.
    advance_ms(60_000).await;
    yield_a_few_times().await;
    let after = registry.rollout(&rollout_id).unwrap();
    assert_eq!((after.succeeded, after.expired, after.done), (1, 2, true));
}

#[tokio::test(start_paused = true)]
async fn a_write_that_fails_keeps_nothing_of_the_request() {
    let storage = MapStorage::default();
    let (_guard, registry) = start_on(&storage);
    register(&registry, "a-1").await;
    storage.with(|stored| stored.failing = true);

    let refused = registry
        .durably(|registry| registry.send_to_agent("a-1", request("replay")))
        .await;
    assert!(matches!(refused, Err(RegistryError::StorageUnavailable(_))));
    assert_eq!(registry.commands_of("a-1").unwrap(), []);
    let refused = registry
        .durably(|registry| registry.register(registration("a-2", "orders")))
        .await;
    assert!(matches!(refused, Err(RegistryError::StorageUnavailable(_))));
    assert!(registry.agent("a-2").is_err());
    assert_eq!(registry.stats().agents_in(AgentStatus::Live), 1);

    storage.with(|stored| stored.failing = false);
    register(&registry, "a-2").await;
    assert!(registry.agent("a-2").is_ok());
}

#[tokio::test(start_paused = true)]
async fn named_values_survive_a_restart() {
    let storage = MapStorage::default();
    let (guard, registry) = start_on(&storage);
    registry
        .durably(|registry| {
            registry.set_meta("signing-key", Some(b"secret".to_vec()));
            Ok(())
        })
        .await
        .unwrap();
    crash(guard).await;
    let (_guard, registry) = start_on(&storage);
    assert_eq!(registry.meta("signing-key"), Some(b"secret".to_vec()));
}

#[tokio::test(start_paused = true)]
async fn a_running_rollout_restarts_counting_the_commands_read_back() {
    let storage = MapStorage::default();
    let (guard, registry) = start_on(&storage);
    for n in 0..3 {
        register(&registry, &format!("a-{n}")).await;
    }
    let rollout = registry
        .durably(|registry| registry.send_to_fleet(request("config-update")))
        .await
        .unwrap();
    crash(guard).await;
    // One of its commands was never kept (its record and the rollout's were
    // written a moment apart, and the process died between).
    let lost = rollout.commands[2].command_id.as_u128();
    storage.with(|stored| stored.commands.remove(&lost));

    let (_guard, registry) = start_on(&storage);
    let rollout_id = rollout.rollout_id.to_string();
    let restored = registry.rollout(&rollout_id).unwrap();
    assert_eq!(
        (restored.targeted, restored.pending, restored.expired),
        (3, 2, 1)
    );
    assert!(!restored.done);
    advance_ms(60_000).await;
    yield_a_few_times().await;
    let after = registry.rollout(&rollout_id).unwrap();
    assert_eq!((after.expired, after.pending, after.done), (3, 0, true));
}

#[tokio::test(start_paused = true)]
async fn a_fleet_stream_ends_when_the_state_is_read_again_after_a_failed_write() {
    let storage = MapStorage::default();
    let (_guard, registry) = start_on(&storage);
    register(&registry, "a-1").await;
    let mut fleet = registry.fleet_events().unwrap();
    storage.with(|stored| stored.failing = true);
    // The registration is refused, and the state read again from storage:
    // the fleet stream told of an agent the registry no longer holds, so it
    // ends, and its reader lists again (SPEC 9, 11).
    let refused = registry
        .durably(|registry| registry.register(registration("a-2", "orders")))
        .await;
    assert!(matches!(refused, Err(RegistryError::StorageUnavailable(_))));
    assert!(registry.agent("a-2").is_err());
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while fleet.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the fleet stream ends");
    // A new one follows the registry as it is now.
    storage.with(|stored| stored.failing = false);
    let mut fleet = registry.fleet_events().unwrap();
    register(&registry, "a-2").await;
    assert!(fleet.next().await.is_some());
}

#[test]
fn a_commands_record_leaves_out_what_is_unset_and_reads_a_record_that_wrote_it_null() {
    let written_before = r#"{"commandId":"0190f0c2-5c1e-7d4a-9a53-2f0e8f6c1b7d","seq":1,"agentId":"a-1","type":"replay","rolloutId":"0190f0c2-5c1e-7d4a-9a53-2f0e8f6c1b7e","status":"PENDING","createdAt":"2026-03-11T18:10:15.000Z","expiresAt":"2026-03-11T18:11:15.000Z","deliveredAt":null,"acknowledgedAt":null,"ack":null}"#;
    let record: registry_core::storage::CommandRecord =
        serde_json::from_str(written_before).expect("a record with nulls reads");
    let written = serde_json::to_string(&record).expect("a record writes");
    assert!(!written.contains("null"), "{written}");
    assert_eq!(
        serde_json::from_str::<registry_core::storage::CommandRecord>(&written).unwrap(),
        record
    );
}
