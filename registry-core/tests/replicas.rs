//! Replicas sharing one store (`docs/replicas.md`), in one process on the
//! paused clock: two or three registries over an in-memory model of the
//! Redis engine's commit script, as the design states it: a version per
//! agent and command, a change the store already holds reported
//! "unchanged", conflicts refusing the whole commit, heartbeats checked
//! against their agent's version and moving it, streams kept per agent, and a log
//! of every commit that each registry's tail hands to `apply_log` (the test
//! can hold a tail back, to order a race).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use futures_util::{FutureExt, StreamExt};
use registry_core::replication::{Commit, Entity, Log, LogEntry, ReplicaId, Version};
use registry_core::storage::{AgentRecord, Change, CommandRecord, RolloutRecord, Snapshot};
use registry_core::{
    Ack, AgentId, AgentStatus, CommandRequest, CommandStatus, Credential, DetachReason, Payload,
    Registry, RegistryError, RegistryGuard, RolloutId, Settings, Storage, StorageError, Timestamp,
};
use tokio::sync::watch;

/// What the store holds: the records as the bytes written, and what the
/// script keeps beside them.
#[derive(Default)]
struct Held {
    agents: BTreeMap<AgentId, String>,
    heartbeats: BTreeMap<AgentId, Timestamp>,
    commands: BTreeMap<u128, String>,
    /// Delivery marks beside command records, as the script keeps them.
    delivered: BTreeMap<registry_core::CommandId, Timestamp>,
    rollouts: BTreeMap<RolloutId, String>,
    payloads: BTreeMap<RolloutId, Payload>,
    meta: BTreeMap<String, Vec<u8>>,
    versions: HashMap<Entity, Version>,
    streams: BTreeMap<AgentId, ReplicaId>,
    seq: Version,
    log: Vec<LogEntry>,
    /// How many changes each commit the engines were asked for held.
    commit_sizes: Vec<usize>,
    /// Every commit fails while set (the store unreachable); loads do not.
    failing: bool,
}

fn json<T: serde::Serialize>(record: &T) -> String {
    serde_json::to_string(record).unwrap()
}

impl Held {
    /// Whether the store holds exactly what `change` writes (a removal:
    /// nothing): another replica made the same change.
    fn holds(&self, change: &Change) -> bool {
        match change {
            Change::Agent(record) => self.agents.get(&record.agent_id) == Some(&json(record)),
            Change::AgentRemoved(id) => !self.agents.contains_key(id),
            Change::Command(record) => {
                self.commands.get(&record.command_id.as_u128()) == Some(&json(record))
            }
            Change::CommandRemoved(id) => !self.commands.contains_key(&id.as_u128()),
            _ => false,
        }
    }

    fn write(&mut self, change: &Change, version: Version, origin: &ReplicaId) {
        let entity = change.entity();
        match change {
            Change::Agent(record) => {
                self.heartbeats.remove(&record.agent_id);
                self.agents.insert(record.agent_id.clone(), json(record));
                self.versions.insert(entity, version);
            }
            Change::AgentRemoved(id) => {
                self.agents.remove(id);
                self.heartbeats.remove(id);
                self.streams.remove(id);
                self.versions.remove(&entity);
            }
            Change::Heartbeat(id, at) => {
                self.heartbeats.insert(id.clone(), *at);
                self.versions.insert(entity, version);
            }
            Change::Command(record) => {
                self.commands
                    .insert(record.command_id.as_u128(), json(record));
                self.delivered.remove(&record.command_id);
                self.versions.insert(entity, version);
            }
            Change::Delivered(id, at) => {
                self.delivered.insert(*id, *at);
                self.versions.insert(entity, version);
            }
            Change::CommandRemoved(id) => {
                self.commands.remove(&id.as_u128());
                self.delivered.remove(id);
                self.versions.remove(&entity);
            }
            Change::Rollout(record) => {
                self.rollouts.insert(record.rollout_id, json(record));
            }
            Change::RolloutPayload(id, payload) => {
                self.payloads.insert(*id, payload.clone());
            }
            Change::RolloutRemoved(id) => {
                self.rollouts.remove(id);
                self.payloads.remove(id);
            }
            Change::Meta(key, Some(value)) => {
                self.meta.insert(key.clone(), value.clone());
            }
            Change::Meta(key, None) => {
                self.meta.remove(key);
            }
            Change::Stream(id, true) => {
                self.streams.insert(id.clone(), origin.clone());
            }
            Change::Stream(id, false) => {
                if self.streams.get(id) == Some(origin) {
                    self.streams.remove(id);
                }
            }
        }
    }
}

/// The store every replica shares, and the head of its log.
#[derive(Clone)]
struct Store {
    held: Arc<Mutex<Held>>,
    head: watch::Sender<Version>,
}

impl Store {
    fn new() -> Self {
        Self {
            held: Arc::default(),
            head: watch::Sender::new(0),
        }
    }

    fn with<R>(&self, read: impl FnOnce(&mut Held) -> R) -> R {
        read(&mut self.held.lock().unwrap())
    }

    /// The log entries that wrote `agent_id`'s record with `status`.
    fn writes_of(&self, agent_id: &str, status: AgentStatus) -> usize {
        self.with(|held| {
            held.log
                .iter()
                .flat_map(|entry| &entry.changes)
                .filter(|change| {
                    matches!(change, Change::Agent(record)
                        if record.agent_id.as_str() == agent_id && record.status == status)
                })
                .count()
        })
    }
}

impl Store {
    /// The log entries that wrote command `command_id`'s record with `status`.
    fn writes_of_command(&self, command_id: &str, status: CommandStatus) -> usize {
        self.with(|held| {
            held.log
                .iter()
                .flat_map(|entry| &entry.changes)
                .filter(|change| match change {
                    Change::Command(record) => {
                        record.command_id.to_string() == command_id && record.status == status
                    }
                    // A delivery mark writes the command DELIVERED.
                    Change::Delivered(id, _) => {
                        id.to_string() == command_id && status == CommandStatus::Delivered
                    }
                    _ => false,
                })
                .count()
        })
    }
}

impl Log for Store {
    fn head(&self) -> Pin<Box<dyn Future<Output = Result<Version, StorageError>> + Send + '_>> {
        let head = self.with(|held| held.seq);
        Box::pin(async move { Ok(head) })
    }
}

/// Runs once, right after the next commit an engine writes.
type Hook = Arc<Mutex<Option<Box<dyn FnOnce() + Send>>>>;

/// Runs before every commit an engine is asked for, while set: another
/// replica's commit that comes first.
type Race = Arc<Mutex<Option<Box<dyn FnMut() + Send>>>>;

/// One replica's engine over the shared store: the commit script's rules.
struct Engine {
    store: Store,
    replica: ReplicaId,
    after_commit: Hook,
    race: Race,
}

impl Storage for Engine {
    fn load(&mut self) -> Result<Snapshot, StorageError> {
        Ok(self.store.with(|held| Snapshot {
            agents: held
                .agents
                .values()
                .map(|text| serde_json::from_str(text).unwrap())
                .collect(),
            heartbeats: held.heartbeats.clone().into_iter().collect(),
            commands: held
                .commands
                .values()
                .map(|text| serde_json::from_str(text).unwrap())
                .collect(),
            deliveries: held.delivered.clone().into_iter().collect(),
            rollouts: held
                .rollouts
                .values()
                .map(|text| serde_json::from_str(text).unwrap())
                .collect(),
            payloads: held.payloads.clone().into_iter().collect(),
            meta: held.meta.clone(),
            versions: held.versions.clone().into_iter().collect(),
            position: held.seq,
            streams: held.streams.clone().into_iter().collect(),
        }))
    }

    fn commit(&mut self, _: &[Change]) -> Result<(), StorageError> {
        Err(StorageError::new("a shared store commits against versions"))
    }

    fn meta_or_insert(&mut self, key: &str, value: &[u8]) -> Result<Vec<u8>, StorageError> {
        Ok(self.store.with(|held| {
            held.meta
                .entry(key.to_owned())
                .or_insert_with(|| value.to_vec())
                .clone()
        }))
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn commit_versioned(
        &mut self,
        changes: &[Change],
        bases: &[Version],
    ) -> Result<Commit, StorageError> {
        assert_eq!(changes.len(), bases.len(), "one base per change");
        if let Some(race) = self.race.lock().unwrap().as_mut() {
            race();
        }
        if self.store.with(|held| held.failing) {
            return Err(StorageError::new("the store can't be reached"));
        }
        let origin = self.replica.clone();
        let written = self.store.with(|held| {
            held.commit_sizes.push(changes.len());
            let mut conflicts = Vec::new();
            let mut unchanged = Vec::new();
            let mut writes = Vec::new();
            for (index, (change, base)) in changes.iter().zip(bases).enumerate() {
                let entity = change.entity();
                match change {
                    Change::Stream(..) => writes.push(index),
                    Change::Heartbeat(id, _) => {
                        let stored = held.versions.get(&entity).copied().unwrap_or(0);
                        if held.agents.contains_key(id) && stored == *base {
                            writes.push(index);
                        } else {
                            conflicts.push(entity);
                        }
                    }
                    Change::Delivered(id, _) => {
                        let stored = held.versions.get(&entity).copied().unwrap_or(0);
                        if held.commands.contains_key(&id.as_u128()) && stored == *base {
                            writes.push(index);
                        } else {
                            conflicts.push(entity);
                        }
                    }
                    _ if entity.is_versioned() => {
                        let stored = held.versions.get(&entity).copied().unwrap_or(0);
                        if stored == *base {
                            writes.push(index);
                        } else if held.holds(change) {
                            unchanged.push((index, stored));
                        } else {
                            conflicts.push(entity);
                        }
                    }
                    _ => writes.push(index),
                }
            }
            if !conflicts.is_empty() {
                conflicts.sort();
                conflicts.dedup();
                return Commit::Conflict(conflicts);
            }
            held.seq += 1;
            let version = held.seq;
            for index in &writes {
                held.write(&changes[*index], version, &origin);
            }
            held.log.push(LogEntry {
                version,
                origin: origin.clone(),
                changes: writes.iter().map(|index| changes[*index].clone()).collect(),
            });
            Commit::Written { version, unchanged }
        });
        if let Commit::Written { version, .. } = &written {
            self.store.head.send_replace(*version);
            if let Some(hook) = self.after_commit.lock().unwrap().take() {
                hook();
            }
        }
        Ok(written)
    }

    fn fetch(&mut self, entities: &[Entity]) -> Result<Vec<(Version, Change)>, StorageError> {
        Ok(self.store.with(|held| {
            let mut truth = Vec::new();
            for entity in entities {
                let version = held.versions.get(entity).copied().unwrap_or(0);
                match entity {
                    Entity::Agent(id) => match held.agents.get(id) {
                        Some(text) => {
                            let record: AgentRecord = serde_json::from_str(text).unwrap();
                            truth.push((version, Change::Agent(record)));
                            if let Some(at) = held.heartbeats.get(id) {
                                truth.push((version, Change::Heartbeat(id.clone(), *at)));
                            }
                        }
                        None => truth.push((0, Change::AgentRemoved(id.clone()))),
                    },
                    Entity::Command(id) => match held.commands.get(&id.as_u128()) {
                        Some(text) => {
                            let record: CommandRecord = serde_json::from_str(text).unwrap();
                            truth.push((version, Change::Command(record)));
                            if let Some(at) = held.delivered.get(id) {
                                truth.push((version, Change::Delivered(*id, *at)));
                            }
                        }
                        None => truth.push((0, Change::CommandRemoved(*id))),
                    },
                    Entity::Rollout(id) => match held.rollouts.get(id) {
                        Some(text) => {
                            let record: RolloutRecord = serde_json::from_str(text).unwrap();
                            if let Some(payload) = held.payloads.get(id) {
                                truth.push((0, Change::RolloutPayload(*id, payload.clone())));
                            }
                            truth.push((0, Change::Rollout(record)));
                        }
                        None => truth.push((0, Change::RolloutRemoved(*id))),
                    },
                    Entity::Meta(_) => {}
                }
            }
            truth
        }))
    }
}

/// One replica: its registry, and its tail of the store's log.
struct Node {
    id: ReplicaId,
    registry: Registry,
    _guard: RegistryGuard,
    /// How many log entries were handed to the registry.
    read: Arc<Mutex<usize>>,
    /// Whether the tail hands entries over as they come.
    live: Arc<AtomicBool>,
    /// Wakes the tail when it may go on.
    wake: watch::Sender<()>,
    store: Store,
    after_commit: Hook,
    race: Race,
}

impl Node {
    fn start(store: &Store, settings: Settings, name: &str) -> Self {
        let id: ReplicaId = Arc::from(name);
        let after_commit = Hook::default();
        let race = Race::default();
        let engine = Engine {
            store: store.clone(),
            replica: id.clone(),
            after_commit: after_commit.clone(),
            race: race.clone(),
        };
        let guard = Registry::start_shared(
            settings,
            test_clock(),
            Box::new(engine),
            id.clone(),
            Arc::new(store.clone()),
        )
        .unwrap();
        let registry = guard.registry();
        let read = Arc::new(Mutex::new(store.with(|held| held.log.len())));
        let node = Self {
            id,
            registry,
            _guard: guard,
            read,
            live: Arc::new(AtomicBool::new(true)),
            wake: watch::Sender::new(()),
            store: store.clone(),
            after_commit,
            race,
        };
        node.spawn_tail();
        node
    }

    /// The engine's tail: every new entry handed to `apply_log`, unless held back.
    fn spawn_tail(&self) {
        let (store, registry) = (self.store.clone(), self.registry.clone());
        let (read, live) = (self.read.clone(), self.live.clone());
        let mut head = store.head.subscribe();
        let mut wake = self.wake.subscribe();
        tokio::spawn(async move {
            loop {
                if live.load(Ordering::SeqCst) {
                    hand_over(&store, &registry, &read);
                }
                let woken = tokio::select! {
                    changed = head.changed() => changed,
                    changed = wake.changed() => changed,
                };
                if woken.is_err() {
                    return;
                }
            }
        });
    }

    /// Runs `operation` on this replica as a request does
    /// ([`Registry::durably`]), expecting it to succeed.
    async fn durably<T>(&self, operation: impl Fn(&Registry) -> Result<T, RegistryError>) -> T {
        self.registry.durably(operation).await.unwrap()
    }

    /// Holds the tail back: entries wait until [`sync`](Self::sync).
    fn hold(&self) {
        self.live.store(false, Ordering::SeqCst);
    }

    /// Lets the tail go on, from when it next runs.
    fn resume(&self) {
        self.live.store(true, Ordering::SeqCst);
        self.wake.send_replace(());
    }

    /// Hands every entry not read yet to the registry, and lets the tail go on.
    fn sync(&self) {
        self.live.store(true, Ordering::SeqCst);
        hand_over(&self.store, &self.registry, &self.read);
    }
}

fn hand_over(store: &Store, registry: &Registry, read: &Mutex<usize>) {
    let mut read = read.lock().unwrap();
    let entries: Vec<LogEntry> = store.with(|held| held.log[*read..].to_vec());
    *read += entries.len();
    registry.apply_log(entries);
}

fn cluster(replicas: usize) -> (Store, Vec<Node>) {
    cluster_with(replicas, Settings::default())
}

fn cluster_with(replicas: usize, settings: Settings) -> (Store, Vec<Node>) {
    let store = Store::new();
    let nodes = (0..replicas)
        .map(|index| Node::start(&store, settings.clone(), &format!("replica-{index}")))
        .collect();
    (store, nodes)
}

/// Lets every replica write what it holds back and apply what the others wrote.
async fn settle(nodes: &[Node]) {
    for _ in 0..3 {
        for node in nodes {
            node.registry.flush().await.unwrap();
        }
        yield_a_few_times().await;
    }
}

async fn register(node: &Node, agent_id: &str) -> bool {
    let (_, resumed) = node
        .durably(|registry| registry.register(registration(agent_id, "orders")))
        .await;
    resumed
}

fn request(kind: &str) -> CommandRequest {
    CommandRequest {
        kind: kind.into(),
        payload: Some(Payload::from_value(&serde_json::json!({"routeId": "r-1"}))),
    }
}

fn transitions(nodes: &[Node], from: AgentStatus, to: AgentStatus) -> u64 {
    nodes
        .iter()
        .map(|node| node.registry.stats().transitions_between(from, to))
        .sum()
}

fn status_on(node: &Node, agent_id: &str, command_id: &str) -> CommandStatus {
    node.registry.command(agent_id, command_id).unwrap().status
}

/// Every replica reads the agent in `status`.
fn assert_agent_everywhere(nodes: &[Node], agent_id: &str, status: AgentStatus) {
    for (replica, node) in nodes.iter().enumerate() {
        let read = node.registry.agent(agent_id).unwrap().status;
        assert_eq!(read, status, "{agent_id} on replica {replica}");
    }
}

/// Every replica reads the command in `status`.
fn assert_command_everywhere(
    nodes: &[Node],
    agent_id: &str,
    command_id: &str,
    status: CommandStatus,
) {
    for (replica, node) in nodes.iter().enumerate() {
        let read = status_on(node, agent_id, command_id);
        assert_eq!(read, status, "{command_id} on replica {replica}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_registration_on_one_replica_is_read_on_another_once_it_applied_the_log() {
    let (_store, nodes) = cluster(2);
    let (a, b) = (&nodes[0], &nodes[1]);
    b.hold();
    assert!(!register(a, "a-1").await);
    assert!(matches!(
        b.registry.agent("a-1"),
        Err(RegistryError::UnknownAgent(_))
    ));

    b.sync();
    let seen = b.registry.agent("a-1").unwrap();
    assert_eq!(seen, a.registry.agent("a-1").unwrap());
    assert_eq!(seen.status, AgentStatus::Live);
    assert_eq!(b.registry.stats().agents_in(AgentStatus::Live), 1);
    // Its group is indexed on b: a group command there targets it, and a reads it.
    let rollout = b
        .durably(|registry| registry.send_to_group("orders", request("deep-trace")))
        .await;
    assert_eq!(rollout.targeted, 1);
    settle(&nodes).await;
    let commands = a.registry.commands_of("a-1").unwrap();
    assert_eq!(commands.len(), 1);
    assert_eq!(commands[0].rollout_id, Some(rollout.rollout_id));
    let progress = a.registry.rollout(&rollout.rollout_id.to_string()).unwrap();
    assert_eq!((progress.targeted, progress.pending), (1, 1));
    // Nothing applied is written back: only b's commit of its rollout.
    assert_eq!(b.registry.position(), a.registry.position());
}

#[tokio::test(start_paused = true)]
async fn a_command_created_on_one_replica_reaches_the_stream_open_on_another() {
    let (_store, nodes) = cluster(2);
    let (a, b) = (&nodes[0], &nodes[1]);
    register(a, "a-1").await;
    settle(&nodes).await;
    let mut stream = b.registry.open_stream("a-1").unwrap();
    settle(&nodes).await;
    assert!(
        a.registry.agent("a-1").unwrap().connected,
        "a reads b's stream"
    );

    let command = a
        .durably(|registry| registry.send_to_agent("a-1", request("replay")))
        .await;
    assert_eq!(command.status, CommandStatus::Pending, "no stream on a");
    yield_a_few_times().await;
    let event = stream.next().await.unwrap();
    assert_eq!(event.command_id, command.command_id);

    // b's delivery is b's change, written behind, and read on a.
    settle(&nodes).await;
    let id = command.command_id.to_string();
    assert_eq!(status_on(a, "a-1", &id), CommandStatus::Delivered);
    assert_eq!(status_on(b, "a-1", &id), CommandStatus::Delivered);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_due_on_every_replica_is_written_once_and_announced_once() {
    let (store, nodes) = cluster(3);
    register(&nodes[0], "a-1").await;
    let command = nodes[1]
        .durably(|registry| registry.send_to_agent("a-1", request("replay")))
        .await;
    settle(&nodes).await;
    let mut changes: Vec<_> = nodes.iter().map(|n| n.registry.status_changes()).collect();

    advance_ms(Settings::default().command_expiry.as_millis() as u64).await;
    settle(&nodes).await;
    let id = command.command_id.to_string();
    assert_command_everywhere(&nodes, "a-1", &id, CommandStatus::Expired);
    let expired: u64 = nodes
        .iter()
        .map(|node| node.registry.stats().commands_expired)
        .sum();
    assert_eq!(expired, 1, "one replica announces the expiry");

    advance_ms(Settings::default().stale_after.as_millis() as u64).await;
    settle(&nodes).await;
    assert_agent_everywhere(&nodes, "a-1", AgentStatus::Stale);
    assert_eq!(store.writes_of("a-1", AgentStatus::Stale), 1);
    assert_eq!(
        transitions(&nodes, AgentStatus::Live, AgentStatus::Stale),
        1
    );
    // Every replica's fleet stream carries the transition once: the replicas
    // whose commit found it unchanged too.
    for (replica, changes) in changes.iter_mut().enumerate() {
        let change = changes.try_recv().unwrap();
        assert_eq!(
            (change.from, change.to),
            (AgentStatus::Live, AgentStatus::Stale)
        );
        assert!(changes.try_recv().is_err(), "once, on replica {replica}");
    }
}

/// Registers `a-1` through a, then 1 s before its STALE deadline takes its
/// heartbeat on a while b's tail is held, so that b's own deadline comes
/// due before b reads the heartbeat. Answers `stale_after` in milliseconds.
async fn heartbeat_on_a_just_before_b_marks_stale(nodes: &[Node]) -> u64 {
    let (a, b) = (&nodes[0], &nodes[1]);
    register(a, "a-1").await;
    settle(nodes).await;
    let stale_after = Settings::default().stale_after.as_millis() as u64;
    advance_ms(stale_after - 1_000).await;
    b.hold();
    a.durably(|registry| registry.heartbeat("a-1")).await;
    stale_after
}

#[tokio::test(start_paused = true)]
async fn a_transition_that_loses_to_another_replicas_write_never_shows_on_its_fleet_stream() {
    let (_store, nodes) = cluster(2);
    let b = &nodes[1];
    // b's STALE loses to a's heartbeat.
    heartbeat_on_a_just_before_b_marks_stale(&nodes).await;
    let mut changes = b.registry.status_changes();
    advance_ms(1_000).await;
    settle(&nodes).await;
    b.sync();
    settle(&nodes).await;

    assert_agent_everywhere(&nodes, "a-1", AgentStatus::Live);
    assert!(
        changes.try_recv().is_err(),
        "no flap on b's fleet stream: the agent stayed LIVE"
    );
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_on_one_replica_keeps_another_from_marking_the_agent_stale() {
    let (store, nodes) = cluster(2);
    let b = &nodes[1];
    let stale_after = heartbeat_on_a_just_before_b_marks_stale(&nodes).await;
    advance_ms(1_000).await;
    settle(&nodes).await;

    assert_agent_everywhere(&nodes, "a-1", AgentStatus::Live);
    assert_eq!(store.writes_of("a-1", AgentStatus::Stale), 0);
    assert_eq!(
        transitions(&nodes, AgentStatus::Live, AgentStatus::Stale),
        0
    );
    // b's deadline moved with the heartbeat it fetched: stale_after after it.
    b.sync();
    advance_ms(stale_after - 2_000).await;
    settle(&nodes).await;
    assert_eq!(b.registry.agent("a-1").unwrap().status, AgentStatus::Live);
    advance_ms(1_000).await;
    settle(&nodes).await;
    assert_eq!(b.registry.agent("a-1").unwrap().status, AgentStatus::Stale);
    assert_eq!(store.writes_of("a-1", AgentStatus::Stale), 1);
}

/// Sets up a command for `a-1` created on a, delivered on b's stream (its
/// delivery not committed yet), with a's tail held back.
async fn delivered_on_b(nodes: &[Node]) -> (String, registry_core::Subscription) {
    let (a, b) = (&nodes[0], &nodes[1]);
    register(a, "a-1").await;
    settle(nodes).await;
    let mut stream = b.registry.open_stream("a-1").unwrap();
    settle(nodes).await;
    a.hold();
    let command = a
        .durably(|registry| registry.send_to_agent("a-1", request("replay")))
        .await;
    yield_a_few_times().await;
    assert_eq!(stream.next().await.unwrap().command_id, command.command_id);
    (command.command_id.to_string(), stream)
}

#[tokio::test(start_paused = true)]
async fn a_delivery_is_written_as_a_mark_beside_the_record_and_read_delivered_everywhere() {
    let (store, nodes) = cluster(2);
    let (id, _stream) = delivered_on_b(&nodes).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    a.resume();
    settle(&nodes).await;
    let on_b = b.registry.command("a-1", &id).unwrap();
    assert_eq!(on_b.status, CommandStatus::Delivered);
    let delivered_at = on_b.delivered_at.expect("its delivery time");

    // b wrote the delivery alone: a mark, not the record again.
    let command_id = on_b.command_id;
    let (record, mark, logged) = store.with(|held| {
        let record: CommandRecord =
            serde_json::from_str(&held.commands[&command_id.as_u128()]).unwrap();
        let logged: Vec<Change> = held
            .log
            .iter()
            .flat_map(|entry| &entry.changes)
            .filter(|change| change.entity() == Entity::Command(command_id))
            .cloned()
            .collect();
        (record, held.delivered.get(&command_id).copied(), logged)
    });
    assert_eq!(record.status, CommandStatus::Pending);
    assert_eq!(mark, Some(delivered_at));
    assert!(
        matches!(&logged[..], [Change::Command(created), Change::Delivered(marked, at)]
            if created.status == CommandStatus::Pending && *marked == command_id && *at == delivered_at),
        "{logged:?}"
    );
    assert_eq!(store.writes_of_command(&id, CommandStatus::Delivered), 1);

    // a applied it, and a replica started now loads it, with its time.
    let c = Node::start(&store, Settings::default(), "replica-c");
    for node in [a, b, &c] {
        let read = node.registry.command("a-1", &id).unwrap();
        assert_eq!(read.status, CommandStatus::Delivered, "on {}", node.id);
        assert_eq!(read.delivered_at, Some(delivered_at), "on {}", node.id);
        assert_eq!(
            node.registry.stats().commands_in(CommandStatus::Delivered),
            1
        );
    }

    // An ack writes the whole record again, which drops the mark.
    c.durably(|registry| registry.ack("a-1", &id, Ack::default()))
        .await;
    settle(&nodes).await;
    assert_eq!(store.with(|held| held.delivered.len()), 0);
    let acked = a.registry.command("a-1", &id).unwrap();
    assert_eq!(acked.status, CommandStatus::Acknowledged);
    assert_eq!(acked.delivered_at, Some(delivered_at));
    let d = Node::start(&store, Settings::default(), "replica-d");
    assert_eq!(
        d.registry.command("a-1", &id).unwrap().delivered_at,
        Some(delivered_at)
    );
}

#[tokio::test(start_paused = true)]
async fn an_ack_on_one_replica_written_before_the_delivery_on_another_ends_acknowledged_on_both() {
    let (_store, nodes) = cluster(2);
    let (id, _stream) = delivered_on_b(&nodes).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let acked = a
        .durably(|registry| registry.ack("a-1", &id, Ack::default()))
        .await;
    assert_eq!(acked.status, CommandStatus::Acknowledged);
    // b's delivery, written behind now, conflicts, and b takes the ack.
    settle(&nodes).await;
    a.sync();
    assert_command_everywhere(&nodes, "a-1", &id, CommandStatus::Acknowledged);
    assert_eq!(b.registry.stats().commands_in(CommandStatus::Delivered), 0);
}

#[tokio::test(start_paused = true)]
async fn an_ack_on_one_replica_written_after_the_delivery_on_another_runs_again_and_ends_acknowledged()
 {
    let (_store, nodes) = cluster(2);
    let (id, _stream) = delivered_on_b(&nodes).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    b.registry.flush().await.unwrap();
    // a has not read the delivery: its ack conflicts, catches up, and runs again.
    a.resume();
    let acked = a
        .durably(|registry| registry.ack("a-1", &id, Ack::default()))
        .await;
    assert_eq!(acked.status, CommandStatus::Acknowledged);
    assert!(acked.delivered_at.is_some(), "b's delivery is kept");
    settle(&nodes).await;
    assert_command_everywhere(&nodes, "a-1", &id, CommandStatus::Acknowledged);
    assert_eq!(
        b.registry.stats().commands_in(CommandStatus::Acknowledged),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn two_registrations_of_one_agent_id_at_once_leave_one_agent_and_one_valid_token() {
    let (_store, nodes) = cluster(2);
    let (a, b) = (&nodes[0], &nodes[1]);
    let tokens = [Credential([1; 32]), Credential([2; 32])];
    let on = |node: &Node, credential: Credential| {
        let registry = node.registry.clone();
        async move {
            registry
                .durably(|registry| {
                    registry.register(registration("a-1", "orders").with_credential(credential))
                })
                .await
                .unwrap()
                .1
        }
    };
    let (resumed_a, resumed_b) = tokio::join!(on(a, tokens[0]), on(b, tokens[1]));
    assert_ne!(resumed_a, resumed_b, "one created it, the other resumed it");
    settle(&nodes).await;

    for node in &nodes {
        assert_eq!(node.registry.agents(&Default::default()).len(), 1);
        assert_eq!(node.registry.stats().agents_in(AgentStatus::Live), 1);
    }
    // The registration that resumed came last: its token is the one.
    let valid = if resumed_a { tokens[0] } else { tokens[1] };
    let replaced = if resumed_a { tokens[1] } else { tokens[0] };
    for node in &nodes {
        assert_eq!(
            node.registry.agent_with(&valid).map(|id| id.to_string()),
            Some("a-1".to_owned())
        );
        assert_eq!(node.registry.agent_with(&replaced), None);
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_opened_on_one_replica_ends_the_agents_stream_on_another() {
    let (_store, nodes) = cluster(2);
    let (a, b) = (&nodes[0], &nodes[1]);
    register(a, "a-1").await;
    settle(&nodes).await;
    let mut first = a.registry.open_stream("a-1").unwrap();
    settle(&nodes).await;
    let _second = b.registry.open_stream("a-1").unwrap();
    settle(&nodes).await;

    assert!(first.next().await.is_none(), "a's stream ended");
    assert_eq!(first.detach_reason(), Some(DetachReason::Replaced));
    assert_eq!(a.registry.stats().open_streams, 0);
    assert_eq!(b.registry.stats().open_streams, 1);
    assert!(
        a.registry.agent("a-1").unwrap().connected,
        "connected through b"
    );
    // a's stream ending does not take b's away.
    drop(first);
    settle(&nodes).await;
    for node in &nodes {
        assert!(node.registry.agent("a-1").unwrap().connected);
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_whose_opening_was_answered_reads_connected_on_every_replica_that_caught_up() {
    let (_store, nodes) = cluster(3);
    register(&nodes[0], "a-1").await;
    settle(&nodes).await;
    // Opened as the server opens it: the 200 waits for the opening's commit.
    let _stream = nodes[1]
        .durably(|registry| registry.open_stream("a-1"))
        .await;
    for node in &nodes {
        node.registry.catch_up().await.unwrap();
        assert!(node.registry.agent("a-1").unwrap().connected, "{}", node.id);
    }
}

#[tokio::test(start_paused = true)]
async fn a_command_pushed_while_a_stream_opens_on_another_replica_is_delivered_by_one_stream() {
    let (store, nodes) = cluster(3);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    register(a, "a-1").await;
    settle(&nodes).await;
    let mut first = a.registry.open_stream("a-1").unwrap();
    settle(&nodes).await;
    let sent = c
        .durably(|registry| registry.send_to_agent("a-1", request("replay")))
        .await;
    settle(&nodes).await;
    assert_eq!(first.next().await.unwrap().command_id, sent.command_id);
    // A command pushed through c is written just before b's opening of the
    // agent's new stream: in the log, a's stream was still open then.
    let pushed = "01900000-0000-7000-8000-000000000001";
    let racer = store.clone();
    let model = sent.command_id.as_u128();
    let mut once = Some(());
    *b.race.lock().unwrap() = Some(Box::new(move || {
        if once.take().is_none() {
            return;
        }
        let text = racer.with(|held| held.commands[&model].clone());
        let mut record: CommandRecord = serde_json::from_str(&text).unwrap();
        record.command_id = pushed.parse().unwrap();
        record.seq += 1;
        record.status = CommandStatus::Pending;
        record.delivered_at = None;
        commit_elsewhere(&racer, Change::Command(record));
    }));
    let mut second = b.registry.open_stream("a-1").unwrap();
    settle(&nodes).await;

    // a delivered it before it read b's opening (then its stream ended);
    // b leaves it to a.
    assert_command_everywhere(&nodes, "a-1", pushed, CommandStatus::Delivered);
    assert_eq!(
        store.writes_of_command(pushed, CommandStatus::Delivered),
        1,
        "delivered once"
    );
    assert!(first.next().await.is_none(), "a's stream ended");
    assert!(
        second.next().now_or_never().is_none(),
        "b's stream sent nothing: the agent gets the command once"
    );
    // A command pushed after the opening goes to b's stream alone.
    let later = c
        .durably(|registry| registry.send_to_agent("a-1", request("replay")))
        .await;
    settle(&nodes).await;
    assert_eq!(second.next().await.unwrap().command_id, later.command_id);
}

#[tokio::test(start_paused = true)]
async fn connected_reads_the_same_on_every_replica() {
    let (_store, nodes) = cluster(3);
    register(&nodes[0], "a-1").await;
    settle(&nodes).await;
    for node in &nodes {
        assert!(!node.registry.agent("a-1").unwrap().connected);
    }
    let stream = nodes[1].registry.open_stream("a-1").unwrap();
    settle(&nodes).await;
    for node in &nodes {
        assert!(node.registry.agent("a-1").unwrap().connected, "{}", node.id);
    }
    drop(stream);
    settle(&nodes).await;
    for node in &nodes {
        assert!(
            !node.registry.agent("a-1").unwrap().connected,
            "{}",
            node.id
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_replica_no_longer_alive_takes_its_streams_with_it() {
    let (_store, nodes) = cluster(3);
    register(&nodes[0], "a-1").await;
    register(&nodes[0], "a-2").await;
    settle(&nodes).await;
    let _on_b = nodes[1].registry.open_stream("a-1").unwrap();
    let _on_c = nodes[2].registry.open_stream("a-2").unwrap();
    settle(&nodes).await;
    let a = &nodes[0].registry;
    assert!(a.agent("a-1").unwrap().connected && a.agent("a-2").unwrap().connected);

    a.replicas_alive(&[nodes[0].id.clone(), nodes[2].id.clone()]);
    assert!(!a.agent("a-1").unwrap().connected, "b is gone");
    assert!(a.agent("a-2").unwrap().connected, "c is alive");
}

#[tokio::test(start_paused = true)]
async fn a_read_catches_up_with_the_log_or_is_refused_after_two_seconds() {
    let (_store, nodes) = cluster(2);
    let (a, b) = (&nodes[0], &nodes[1]);
    b.hold();
    register(a, "a-1").await;
    let err = b.registry.catch_up().await.unwrap_err();
    assert!(matches!(err, RegistryError::StorageUnavailable(_)), "{err}");

    let reader = b.registry.clone();
    let read = tokio::spawn(async move {
        reader.catch_up().await?;
        reader.agent("a-1")
    });
    yield_a_few_times().await;
    b.sync();
    assert_eq!(read.await.unwrap().unwrap().status, AgentStatus::Live);
}

#[tokio::test(start_paused = true)]
async fn a_replica_started_late_loads_the_store_and_applies_the_log_after_it() {
    let store = Store::new();
    let a = Node::start(&store, Settings::default(), "replica-a");
    register(&a, "a-1").await;
    let mut stream = a.registry.open_stream("a-1").unwrap();
    a.registry.flush().await.unwrap();

    let b = Node::start(&store, Settings::default(), "replica-b");
    let seen = b.registry.agent("a-1").unwrap();
    assert!(seen.connected, "the store says a holds its stream");
    assert_eq!(b.registry.position(), a.registry.position());
    let command = b
        .durably(|registry| registry.send_to_agent("a-1", request("replay")))
        .await;
    yield_a_few_times().await;
    assert_eq!(stream.next().await.unwrap().command_id, command.command_id);
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_of_an_agent_deleted_on_another_replica_is_refused_as_unknown() {
    let (_store, nodes) = cluster(2);
    let (a, b) = (&nodes[0], &nodes[1]);
    register(a, "a-1").await;
    settle(&nodes).await;
    b.hold();
    a.durably(|registry| registry.delete_agent("a-1")).await;
    b.resume();
    let err = b
        .registry
        .durably(|registry| registry.heartbeat("a-1"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::UnknownAgent(_)), "{err}");
    assert_eq!(b.registry.agents(&Default::default()).len(), 0);
}

/// Another replica's commit of `change`, written to the store as the next
/// version; returns its log entry.
fn commit_elsewhere(store: &Store, change: Change) -> LogEntry {
    let origin: ReplicaId = Arc::from("replica-elsewhere");
    let entry = store.with(|held| {
        held.seq += 1;
        let version = held.seq;
        held.write(&change, version, &origin);
        let entry = LogEntry {
            version,
            origin,
            changes: vec![change],
        };
        held.log.push(entry.clone());
        entry
    });
    store.head.send_replace(entry.version);
    entry
}

#[tokio::test(start_paused = true)]
async fn a_change_read_while_this_replicas_commit_of_it_is_in_flight_is_applied_after_it() {
    let settings = Settings {
        replay: registry_core::Replay::Unacknowledged,
        ..Settings::default()
    };
    let (store, nodes) = cluster_with(1, settings);
    let a = &nodes[0];
    register(a, "a-1").await;
    let command = a
        .durably(|registry| registry.send_to_agent("a-1", request("replay")))
        .await;
    // Replayed to a new stream: a delivery written behind.
    let mut stream = a.registry.open_stream("a-1").unwrap();
    stream.next().await.unwrap();
    let id = command.command_id;
    // Right after a writes the delivery, another replica acknowledges the
    // command, and a reads that while its commit is still in flight.
    let (hook_store, registry) = (store.clone(), a.registry.clone());
    *a.after_commit.lock().unwrap() = Some(Box::new(move || {
        let (text, delivered) = hook_store.with(|held| {
            let text = held.commands[&id.as_u128()].clone();
            (text, held.delivered.get(&id).copied())
        });
        let mut record: CommandRecord = serde_json::from_str(&text).unwrap();
        // The delivery is written as a mark beside the PENDING record.
        assert_eq!(record.status, CommandStatus::Pending);
        record.delivered(delivered.expect("the delivery's mark"));
        assert_eq!(record.status, CommandStatus::Delivered);
        record.status = CommandStatus::Acknowledged;
        record.acknowledged_at = record.delivered_at;
        record.ack = Some(Ack::default());
        let entry = commit_elsewhere(&hook_store, Change::Command(record));
        registry.apply_log(vec![entry]);
    }));
    a.registry.flush().await.unwrap();
    assert!(a.after_commit.lock().unwrap().is_none(), "the hook ran");

    let id = id.to_string();
    assert_eq!(status_on(a, "a-1", &id), CommandStatus::Acknowledged);
    let stats = a.registry.stats();
    assert_eq!(stats.commands_in(CommandStatus::Delivered), 0);
    assert_eq!(stats.commands_in(CommandStatus::Acknowledged), 1);
}

#[tokio::test(start_paused = true)]
async fn a_conflict_refuses_the_operation_it_touches_and_keeps_the_rest_of_the_group() {
    let (_store, nodes) = cluster(2);
    let (id, _stream) = delivered_on_b(&nodes).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    b.registry.flush().await.unwrap();
    a.resume();
    let registrations = a.registry.stats().registrations;
    let (acked, registered) = tokio::join!(
        a.registry
            .durably(|registry| registry.ack("a-1", &id, Ack::default())),
        a.registry
            .durably(|registry| registry.register(registration("a-2", "orders"))),
    );
    assert_eq!(acked.unwrap().status, CommandStatus::Acknowledged);
    assert!(!registered.unwrap().1);
    assert_eq!(
        a.registry.stats().registrations,
        registrations + 1,
        "the registration was not run again"
    );
    settle(&nodes).await;
    assert_eq!(b.registry.agent("a-2").unwrap().status, AgentStatus::Live);
}

#[tokio::test(start_paused = true)]
async fn a_refused_deletion_is_undone_whole_and_run_again() {
    let (store, nodes) = cluster(2);
    let (a, b) = (&nodes[0], &nodes[1]);
    register(a, "a-1").await;
    a.durably(|registry| registry.send_to_agent("a-1", request("replay")))
        .await;
    settle(&nodes).await;
    // b takes a heartbeat a has not read when it deletes the agent: the
    // deletion conflicts, its commands are fetched back with the agent, and
    // it runs again.
    a.hold();
    b.durably(|registry| registry.heartbeat("a-1")).await;
    a.resume();
    a.durably(|registry| registry.delete_agent("a-1")).await;
    settle(&nodes).await;

    for node in &nodes {
        assert!(node.registry.agents(&Default::default()).is_empty());
        let stats = node.registry.stats();
        assert_eq!(stats.commands.iter().sum::<usize>(), 0, "{}", node.id);
        assert_eq!(stats.payload_bytes, 0, "{}", node.id);
    }
    store.with(|held| {
        assert!(held.agents.is_empty());
        assert!(held.commands.is_empty(), "no command outlives its agent");
    });
}

#[tokio::test(start_paused = true)]
async fn a_rollouts_progress_reads_the_same_on_every_replica() {
    let (_store, nodes) = cluster(3);
    for agent_id in ["a-1", "a-2"] {
        register(&nodes[0], agent_id).await;
    }
    settle(&nodes).await;
    let _stream = nodes[2].registry.open_stream("a-2").unwrap();
    settle(&nodes).await;
    let rollout = nodes[1]
        .durably(|registry| registry.send_to_fleet(request("config-update")))
        .await;
    settle(&nodes).await;
    let first = rollout.commands[0].command_id.to_string();
    nodes[0]
        .durably(|registry| registry.ack("a-1", &first, Ack::default()))
        .await;
    settle(&nodes).await;

    let id = rollout.rollout_id.to_string();
    for node in &nodes {
        let progress = node.registry.rollout(&id).unwrap();
        assert_eq!(
            (
                progress.targeted,
                progress.pending,
                progress.delivered,
                progress.succeeded
            ),
            (2, 0, 1, 1),
            "{}",
            node.id
        );
        assert!(!progress.done);
    }
}

#[tokio::test(start_paused = true)]
async fn commands_sent_to_one_agent_on_two_replicas_at_once_are_both_kept() {
    let (_store, nodes) = cluster(2);
    let (a, b) = (&nodes[0], &nodes[1]);
    register(a, "a-1").await;
    settle(&nodes).await;
    // Each replica numbers the agent's next command alike.
    let (first, second) = tokio::join!(
        a.registry
            .durably(|registry| registry.send_to_agent("a-1", request("replay"))),
        b.registry
            .durably(|registry| registry.send_to_agent("a-1", request("deep-trace"))),
    );
    let ids = [first.unwrap().command_id, second.unwrap().command_id];
    settle(&nodes).await;
    for node in &nodes {
        let listed: Vec<_> = node
            .registry
            .commands_of("a-1")
            .unwrap()
            .into_iter()
            .map(|command| command.command_id)
            .collect();
        assert_eq!(listed.len(), 2, "{}", node.id);
        assert!(ids.iter().all(|id| listed.contains(id)), "{}", node.id);
        assert_eq!(node.registry.stats().commands_in(CommandStatus::Pending), 2);
    }
}

#[tokio::test(start_paused = true)]
async fn an_operation_another_replica_wins_twice_is_refused_to_be_tried_again_in_a_second() {
    let (store, nodes) = cluster(1);
    let a = &nodes[0];
    register(a, "a-1").await;
    let command = a
        .durably(|registry| registry.send_to_agent("a-1", request("replay")))
        .await;
    let id = command.command_id;
    // Before each of a's commits, another replica delivers the command anew.
    let racer = store.clone();
    *a.race.lock().unwrap() = Some(Box::new(move || {
        let text = racer.with(|held| held.commands[&id.as_u128()].clone());
        let mut record: CommandRecord = serde_json::from_str(&text).unwrap();
        let at = record.delivered_at.map_or(1, |at| at.unix_millis() + 1);
        record.status = CommandStatus::Delivered;
        record.delivered_at = Some(Timestamp::from_unix_millis(at));
        commit_elsewhere(&racer, Change::Command(record));
    }));
    let err = a
        .registry
        .durably(|registry| registry.ack("a-1", &id.to_string(), Ack::default()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RegistryError::StorageUnavailable(message)
            if message == registry_core::error::CONCURRENT_CHANGE),
        "{err}"
    );
    assert_eq!(err.retry_after(), Some(std::time::Duration::from_secs(1)));
    // Nothing of the ack is kept: the other replica's delivery is what a reads.
    *a.race.lock().unwrap() = None;
    assert_eq!(
        status_on(a, "a-1", &id.to_string()),
        CommandStatus::Delivered
    );
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_answered_just_after_another_replicas_stale_leaves_the_agent_live_everywhere() {
    let (store, nodes) = cluster(2);
    let (a, b) = (&nodes[0], &nodes[1]);
    register(a, "a-1").await;
    settle(&nodes).await;
    let stale_after = Settings::default().stale_after.as_millis() as u64;
    advance_ms(stale_after - 1_000).await;
    // Another replica's STALE (stamped with the deadline, a second from now)
    // is written just before b's heartbeat, which was built on the LIVE
    // record: the heartbeat conflicts, and runs again on the STALE record.
    let racer = store.clone();
    let mut once = Some(());
    *b.race.lock().unwrap() = Some(Box::new(move || {
        if once.take().is_none() {
            return;
        }
        let id = AgentId::parse("a-1").unwrap();
        let text = racer.with(|held| held.agents[&id].clone());
        let mut record: AgentRecord = serde_json::from_str(&text).unwrap();
        record.status = AgentStatus::Stale;
        record.status_changed_at =
            Timestamp::from_unix_millis(record.last_heartbeat_at.unix_millis() + stale_after);
        commit_elsewhere(&racer, Change::Agent(record));
    }));
    b.durably(|registry| registry.heartbeat("a-1")).await;
    settle(&nodes).await;

    // A heartbeat answered 204 keeps the agent LIVE, as on one server.
    assert_agent_everywhere(&nodes, "a-1", AgentStatus::Live);
    let (on_a, on_b) = (
        a.registry.agent("a-1").unwrap(),
        b.registry.agent("a-1").unwrap(),
    );
    assert_eq!(on_a, on_b);
    assert_eq!(
        on_b.last_heartbeat_at.unix_millis(),
        at(stale_after - 1_000)
    );
    assert_eq!(store.writes_of("a-1", AgentStatus::Live), 2);
    assert_eq!(
        transitions(&nodes, AgentStatus::Stale, AgentStatus::Live),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_read_after_catching_up_shows_an_ack_answered_on_another_replica_during_a_local_delivery()
{
    let (_store, nodes) = cluster(2);
    let (id, _stream) = delivered_on_b(&nodes).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    // a answers the ack; b's delivery of that command is not written yet.
    let acked = a
        .durably(|registry| registry.ack("a-1", &id, Ack::default()))
        .await;
    assert_eq!(acked.status, CommandStatus::Acknowledged);
    // A client that reads through b next, as the server does, catches up
    // first: it reads the ack answered.
    b.registry.catch_up().await.unwrap();
    assert_eq!(status_on(b, "a-1", &id), CommandStatus::Acknowledged);
}

#[tokio::test(start_paused = true)]
async fn a_transition_found_unchanged_does_not_skip_a_heartbeat_written_after_it() {
    let (store, nodes) = cluster(2);
    let (b, c) = (&nodes[0], &nodes[1]);
    register(b, "a-1").await;
    settle(&nodes).await;
    let stale_after = Settings::default().stale_after.as_millis() as u64;
    advance_ms(stale_after - 1).await;
    // Another replica writes the agent STALE at its deadline just before
    // c's heartbeat, taken a millisecond earlier, reaches the store beside it.
    let racer = store.clone();
    *c.race.lock().unwrap() = Some(Box::new(move || {
        let text = racer.with(|held| held.agents[&AgentId::parse("a-1").unwrap()].clone());
        let mut record: AgentRecord = serde_json::from_str(&text).unwrap();
        if record.status == AgentStatus::Live {
            let due = record.last_heartbeat_at.unix_millis() + stale_after;
            record.status = AgentStatus::Stale;
            record.status_changed_at = Timestamp::from_unix_millis(due);
            commit_elsewhere(&racer, Change::Agent(record));
        }
    }));
    b.hold();
    c.durably(|registry| registry.heartbeat("a-1")).await;
    *c.race.lock().unwrap() = None;
    // b's own deadline writes the same STALE record: unchanged.
    advance_ms(1).await;
    b.registry.flush().await.unwrap();
    b.sync();
    settle(&nodes).await;

    let heartbeat = |node: &Node| node.registry.agent("a-1").unwrap().last_heartbeat_at;
    assert_eq!(heartbeat(b), heartbeat(c), "b read c's heartbeat");
}

#[tokio::test(start_paused = true)]
async fn a_command_left_in_the_store_by_a_deletion_racing_its_creation_is_removed_by_the_next_load()
{
    let (store, nodes) = cluster(2);
    let (a, b) = (&nodes[0], &nodes[1]);
    register(a, "a-1").await;
    settle(&nodes).await;
    // b creates a command for the agent while a, which has not read it,
    // deletes the agent: a's deletion takes only the commands a knows.
    a.hold();
    b.durably(|registry| registry.send_to_agent("a-1", request("replay")))
        .await;
    a.durably(|registry| registry.delete_agent("a-1")).await;
    a.resume();
    settle(&nodes).await;
    assert!(b.registry.agents(&Default::default()).is_empty());
    // The command outlives its agent in the store; a replica that loads it
    // finishes the deletion's job.
    let c = Node::start(&store, Settings::default(), "replica-c");
    c.registry.flush().await.unwrap();
    store.with(|held| {
        assert!(held.agents.is_empty());
        assert!(held.commands.is_empty(), "no command outlives its agent");
    });
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_read_the_store_again_announces_its_streams_again() {
    let (store, nodes) = cluster(2);
    let (a, b) = (&nodes[0], &nodes[1]);
    register(a, "a-1").await;
    settle(&nodes).await;
    let _stream = b.registry.open_stream("a-1").unwrap();
    settle(&nodes).await;
    assert!(a.registry.agent("a-1").unwrap().connected);
    // The store is away for longer than b's liveness lasts: a ends b's
    // streams, and b, whose write fails, reads the store again.
    a.registry.replicas_alive(std::slice::from_ref(&a.id));
    assert!(!a.registry.agent("a-1").unwrap().connected);
    store.with(|held| held.failing = true);
    assert!(b.registry.check_storage().await.is_err());
    store.with(|held| held.failing = false);
    settle(&nodes).await;

    assert!(
        a.registry.agent("a-1").unwrap().connected,
        "b's stream, still open, reads connected on a again"
    );
}

#[tokio::test(start_paused = true)]
async fn entries_read_before_a_load_of_an_emptied_store_are_not_applied_after_it() {
    let (store, nodes) = cluster(1);
    let a = &nodes[0];
    register(a, "a-1").await;
    settle(&nodes).await;
    // Another replica registers b-1; a's tail reads the entry, and is about
    // to hand it over...
    a.hold();
    let text = store.with(|held| held.agents[&AgentId::parse("a-1").unwrap()].clone());
    let mut record: AgentRecord = serde_json::from_str(&text).unwrap();
    record.agent_id = AgentId::parse("b-1").unwrap();
    let read = commit_elsewhere(&store, Change::Agent(record));
    // ...when the store is emptied, a's next write fails, and a reads it
    // again: an empty registry, whose log starts again at 0.
    store.with(|held| {
        *held = Held::default();
        held.failing = true;
    });
    assert!(a.registry.check_storage().await.is_err());
    store.with(|held| held.failing = false);
    assert!(a.registry.agents(&Default::default()).is_empty());
    assert_eq!(a.registry.position(), 0);
    // The entry read before the load reaches the registry after it.
    a.registry.apply_log(vec![read]);
    assert!(
        a.registry.agents(&Default::default()).is_empty(),
        "nothing of the emptied registry comes back"
    );
}

/// The most changes one commit holds (`docs/replicas.md`, "A commit").
const COMMIT_BOUND: usize = 2_048;

#[tokio::test(start_paused = true)]
async fn a_fleet_command_larger_than_one_commit_is_written_in_slices_each_applied_whole() {
    let agents = 2 * COMMIT_BOUND + 100;
    let settings = Settings {
        fleet_queue: 2 * agents,
        ..Settings::default()
    };
    let (store, nodes) = cluster_with(2, settings);
    let (a, b) = (&nodes[0], &nodes[1]);
    for n in 0..agents {
        a.registry
            .register(registration(&format!("agent-{n:05}"), "orders"))
            .unwrap();
    }
    settle(&nodes).await;
    b.hold();
    let (from, calls_before) = store.with(|held| (held.log.len(), held.commit_sizes.len()));

    let rollout = a
        .durably(|registry| registry.send_to_fleet(request("config-update")))
        .await;
    assert_eq!(rollout.targeted, agents);

    let (entries, calls) = store.with(|held| {
        (
            held.log[from..].to_vec(),
            held.commit_sizes[calls_before..].to_vec(),
        )
    });
    assert!(calls.len() >= 3, "one commit of each slice: {calls:?}");
    assert!(
        calls.iter().all(|size| *size <= COMMIT_BOUND),
        "no commit larger than the bound: {calls:?}"
    );
    let first = &entries[0].changes;
    assert!(matches!(first[0], Change::RolloutPayload(id, _) if id == rollout.rollout_id));
    assert!(
        matches!(&first[1], Change::Rollout(record) if record.rollout_id == rollout.rollout_id)
    );
    let written: usize = entries
        .iter()
        .map(|entry| {
            entry
                .changes
                .iter()
                .filter(|change| matches!(change, Change::Command(_)))
                .count()
        })
        .sum();
    assert_eq!(written, agents);

    // Another replica applying the entries one by one holds, after each,
    // every command written so far with its rollout, which is not done.
    let id = rollout.rollout_id.to_string();
    let mut seen = 0;
    for entry in entries {
        seen += entry
            .changes
            .iter()
            .filter(|change| matches!(change, Change::Command(_)))
            .count();
        b.registry.apply_log(vec![entry]);
        let progress = b.registry.rollout(&id).unwrap();
        assert_eq!(progress.targeted, agents);
        assert_eq!(progress.pending, seen);
        assert!(!progress.done);
    }
    b.sync();
    settle(&nodes).await;
    let last = format!("agent-{:05}", agents - 1);
    let commands = b.registry.commands_of(&last).unwrap();
    assert_eq!(commands.len(), 1);
    assert_eq!(commands[0].rollout_id, Some(rollout.rollout_id));
    for node in &nodes {
        let progress = node.registry.rollout(&id).unwrap();
        assert_eq!(
            (progress.targeted, progress.pending, progress.expired),
            (agents, agents, 0),
            "{}",
            node.id
        );
    }
    // Nothing was dropped from the store as a command without its rollout.
    assert_eq!(store.with(|held| held.commands.len()), agents);
}

#[tokio::test(start_paused = true)]
async fn a_fleet_command_whose_store_fails_between_slices_is_refused_and_kept_in_part() {
    let agents = COMMIT_BOUND + 100;
    let settings = Settings {
        fleet_queue: 2 * agents,
        ..Settings::default()
    };
    let (store, nodes) = cluster_with(2, settings);
    let a = &nodes[0];
    for n in 0..agents {
        a.registry
            .register(registration(&format!("agent-{n:05}"), "orders"))
            .unwrap();
    }
    settle(&nodes).await;
    let hook = store.clone();
    *a.after_commit.lock().unwrap() = Some(Box::new(move || {
        hook.with(|held| held.failing = true);
    }));

    let refused = a
        .registry
        .durably(|registry| registry.send_to_fleet(request("config-update")))
        .await;
    assert!(
        matches!(refused, Err(RegistryError::StorageUnavailable(_))),
        "{refused:?}"
    );
    store.with(|held| held.failing = false);
    settle(&nodes).await;

    // The first slice is kept: the rollout and the commands it held; the
    // targets whose commands were not written count as expired.
    let kept = store.with(|held| held.commands.len());
    assert!(kept > 0 && kept < agents, "{kept}");
    let rollouts = a.registry.rollouts();
    assert_eq!(rollouts.len(), 1);
    for node in &nodes {
        let progress = node
            .registry
            .rollout(&rollouts[0].rollout_id.to_string())
            .unwrap();
        assert_eq!(
            (progress.targeted, progress.pending, progress.expired),
            (agents, kept, agents - kept),
            "{}",
            node.id
        );
    }
}

/// The `agent` events a fleet subscription holds now, for `agent_id`, as
/// `(from, to)`.
fn agent_events_of(
    events: &mut registry_core::FleetSubscription,
    agent_id: &str,
) -> Vec<(Option<AgentStatus>, Option<AgentStatus>)> {
    let mut read = Vec::new();
    while let Some(Some(event)) = events.next().now_or_never() {
        if let registry_core::FleetEvent::Agent(event) = event
            && event.agent_id.as_str() == agent_id
        {
            read.push((event.from, event.to));
        }
    }
    read
}

#[tokio::test(start_paused = true)]
async fn a_refused_deletion_shows_once_on_its_fleet_stream() {
    let (_store, nodes) = cluster(2);
    let (a, b) = (&nodes[0], &nodes[1]);
    register(a, "a-1").await;
    settle(&nodes).await;
    // b takes a heartbeat a has not read when it deletes the agent: the
    // deletion conflicts, the agent is fetched back, and it runs again.
    a.hold();
    b.durably(|registry| registry.heartbeat("a-1")).await;
    a.resume();
    let mut events = a.registry.fleet_events().unwrap();
    a.durably(|registry| registry.delete_agent("a-1")).await;
    settle(&nodes).await;

    assert_eq!(
        agent_events_of(&mut events, "a-1"),
        vec![(Some(AgentStatus::Live), None)],
        "deleted once, never deleted and back"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deletion_just_after_a_transition_shows_after_it_on_the_fleet_stream() {
    let (_store, nodes) = cluster(2);
    let a = &nodes[0];
    register(a, "a-1").await;
    settle(&nodes).await;
    let mut events = a.registry.fleet_events().unwrap();
    // The deadline comes due: its STALE is written behind, and the agent is
    // deleted before that write.
    advance_ms(Settings::default().stale_after.as_millis() as u64).await;
    a.durably(|registry| registry.delete_agent("a-1")).await;
    settle(&nodes).await;

    assert_eq!(
        agent_events_of(&mut events, "a-1"),
        vec![
            (Some(AgentStatus::Live), Some(AgentStatus::Stale)),
            (Some(AgentStatus::Stale), None)
        ],
        "the deletion comes after the transition it follows"
    );
}
