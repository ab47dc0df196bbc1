//! The [`Storage`] the registry's writer calls: loads, versioned commits and
//! fetches, over a plain (blocking) connection, as the trait is called off the
//! async workers; the connection is opened again after any failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::{Client, Connection};
use registry_core::replication::{Commit, Entity, ReplicaId, Version};
use registry_core::storage::{
    AgentRecord, Change, CommandRecord, FORMAT_VERSION, RolloutRecord, Snapshot, Storage,
    StorageError,
};
use registry_core::{AgentId, CommandId, Payload, RolloutId};
use tracing::{error, info, warn};

use crate::scripts::{self, Scripts};
use crate::shared::Shared;
use crate::wire;

/// Connecting, and each reply: an unreachable Redis fails a write within it.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(2);
/// How long a replica counts as live unless it renews its liveness (every
/// second): a replica killed reads as gone within this.
pub(crate) const LIVENESS: Duration = Duration::from_secs(3);
/// The log's length, about: `XADD ... MAXLEN ~`. A replica further behind
/// than this loads everything again instead of reading the log.
pub(crate) const LOG_LENGTH: u64 = 100_000;

/// The commits this process sent: each one's token is the next number.
static COMMITS: AtomicU64 = AtomicU64::new(1);

/// Why a call failed: Redis, or what it holds.
pub(crate) enum Failure {
    Redis(redis::RedisError),
    Format(String),
}

impl From<redis::RedisError> for Failure {
    fn from(err: redis::RedisError) -> Self {
        Self::Redis(err)
    }
}

/// The registry's records in Redis (see the crate's documentation).
pub struct RedisEngine {
    client: Client,
    connection: Option<Connection>,
    shared: Arc<Shared>,
    scripts: Arc<Scripts>,
}

/// Why a replica can't join its registry's live replicas.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// A live replica signs with another key: the replicas of one registry
    /// sign with one key (SPEC 12).
    #[error("replica {replica} of this registry signs with the public key {public_key}")]
    OtherKey {
        /// The other replica's id.
        replica: String,
        /// The public key it publishes.
        public_key: String,
    },
    /// Redis can't be used.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl RedisEngine {
    pub(crate) fn new(client: Client, shared: Arc<Shared>) -> Self {
        Self {
            client,
            connection: None,
            shared,
            scripts: Arc::new(Scripts::new()),
        }
    }

    /// The URL (without its password) and prefix, for the start's log line.
    pub fn describe(&self) -> String {
        format!(
            "prefix {:?} on {}",
            self.shared.keys.prefix, self.shared.url
        )
    }

    /// This replica's id, which names it in the log and in `P replicas`.
    pub fn replica_id(&self) -> ReplicaId {
        self.shared.replica.clone()
    }

    /// Counts this replica as live from now, publishing the public key it
    /// signs with (standard base64), if it signs; the keeper renews both
    /// every second. Refused, and nothing set, when a live replica publishes
    /// another key.
    pub fn join(&mut self, public_key: Option<&str>) -> Result<(), JoinError> {
        let answer: Vec<redis::Value> = self
            .with_connection(|connection, shared, scripts| {
                Ok(scripts
                    .join
                    .key(&shared.keys.replicas)
                    .key(&shared.keys.keys)
                    .arg(shared.replica.as_ref())
                    .arg(LIVENESS.as_millis() as u64)
                    .arg(public_key.unwrap_or_default())
                    .invoke(connection)?)
            })
            .map_err(|failure| self.fail(failure))?;
        if let [redis::Value::Int(0), replica, key] = answer.as_slice() {
            return Err(JoinError::OtherKey {
                replica: text(replica),
                public_key: text(key),
            });
        }
        self.shared.set_public_key(public_key);
        Ok(())
    }

    /// The connection, opened again if the last call failed.
    fn connection(&mut self) -> redis::RedisResult<&mut Connection> {
        let connection = match self.connection.take() {
            Some(connection) => connection,
            None => {
                let mut connection = self.client.get_connection_with_timeout(TIMEOUT)?;
                connection.set_read_timeout(Some(TIMEOUT))?;
                connection.set_write_timeout(Some(TIMEOUT))?;
                // So that `CLIENT LIST` says which connection is whose.
                redis::cmd("CLIENT")
                    .arg("SETNAME")
                    .arg(format!("registry-writer-{}", self.shared.replica))
                    .exec(&mut connection)?;
                connection
            }
        };
        Ok(self.connection.insert(connection))
    }

    /// Runs `call` on the connection; a failure drops the connection, so the
    /// next call starts on a fresh one. A connection kept from an earlier
    /// call that turns out closed (Redis restarted, `CLIENT KILL`, an idle
    /// timeout) is no outage: `call` runs again once, on a fresh one. Were
    /// the first reply lost after a commit ran, running it again is
    /// harmless: what it wrote is then found unchanged.
    fn with_connection<T>(
        &mut self,
        call: impl Fn(&mut Connection, &Shared, &Scripts) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let shared = Arc::clone(&self.shared);
        let scripts = Arc::clone(&self.scripts);
        let reused = self.connection.is_some();
        let mut result = match self.connection() {
            Ok(connection) => call(connection, &shared, &scripts),
            Err(err) => Err(Failure::Redis(err)),
        };
        if let Err(Failure::Redis(err)) = &result {
            self.connection = None;
            if reused && err.is_connection_dropped() && !err.is_timeout() {
                result = match self.connection() {
                    Ok(connection) => call(connection, &shared, &scripts),
                    Err(err) => Err(Failure::Redis(err)),
                };
                if matches!(result, Err(Failure::Redis(_))) {
                    self.connection = None;
                }
            }
        }
        result
    }

    /// Gives a new registry its format and marker; checks the format of one
    /// that has them; notices a marker other than the one loaded before.
    pub(crate) fn ensure_registry(&mut self) -> Result<(), Failure> {
        let fresh = uuid::Uuid::now_v7().to_string();
        let (format, marker): (String, String) =
            self.with_connection(|connection, shared, scripts| {
                Ok(scripts
                    .ensure
                    .key(&shared.keys.format)
                    .key(&shared.keys.marker)
                    .arg(FORMAT_VERSION)
                    .arg(&fresh)
                    .invoke(connection)?)
            })?;
        if format.parse::<u64>().ok() != Some(FORMAT_VERSION) {
            return Err(Failure::Format(format!(
                "its format is {format:?}; this server reads version {FORMAT_VERSION}"
            )));
        }
        let new = marker == fresh;
        match self.shared.set_epoch(marker.clone()) {
            Some(loaded) if loaded != marker => error!(
                prefix = %self.shared.keys.prefix,
                "Redis lost the registry's data (its marker changed): serving an empty registry; \
                 agents register again"
            ),
            None if new => info!(
                prefix = %self.shared.keys.prefix,
                url = %self.shared.url,
                "a new registry created in Redis"
            ),
            _ => {}
        }
        Ok(())
    }

    fn read_all(&mut self) -> Result<Snapshot, Failure> {
        self.ensure_registry()?;
        let own = self.shared.replica.clone();
        let snapshot = self.with_connection(|connection, shared, scripts| {
            let keys = &shared.keys;
            let bad = |what: String| Failure::Format(what);
            let mut snapshot = Snapshot::default();
            // The position first: the hashes read after it hold at least
            // everything up to it, and the log is applied from there.
            let position: Option<Version> = redis::cmd("GET").arg(&keys.seq).query(connection)?;
            snapshot.position = position.unwrap_or(0);
            let live: Vec<String> = scripts.live.key(&keys.replicas).invoke(connection)?;
            // Versions before the records: a record read later is at least
            // as new as the version it is held with, so a commit built on it
            // conflicts rather than overwrites a newer one, and the log
            // after the position brings the rest. Read the other way, a
            // record rewritten between the two reads would be held with
            // the newer version, and the tail would skip the newer write.
            for (key, value) in scan(connection, &keys.versions)? {
                let entity = entity(&key).ok_or_else(|| bad(format!("version of {key:?}")))?;
                let version = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|text| text.parse::<Version>().ok())
                    .ok_or_else(|| bad(format!("version of {key:?}: not a number")))?;
                snapshot.versions.push((entity, version));
            }
            for (id, value) in scan(connection, &keys.agents)? {
                let record: AgentRecord = serde_json::from_slice(&value)
                    .map_err(|err| bad(format!("agent {id:?}: {err}")))?;
                snapshot.agents.push(record);
            }
            for (id, value) in scan(connection, &keys.heartbeats)? {
                let agent_id = AgentId::parse(&id)
                    .map_err(|err| bad(format!("heartbeat of {id:?}: {err}")))?;
                let at = wire::millis(&value)
                    .ok_or_else(|| bad(format!("heartbeat of {id:?}: not a number")))?;
                snapshot.heartbeats.push((agent_id, at));
            }
            for (id, value) in scan(connection, &keys.commands)? {
                let record: CommandRecord = serde_json::from_slice(&value)
                    .map_err(|err| bad(format!("command {id}: {err}")))?;
                snapshot.commands.push(record);
            }
            for (id, value) in scan(connection, &keys.delivered)? {
                let command_id: CommandId = id
                    .parse()
                    .map_err(|err| bad(format!("delivery of {id:?}: {err}")))?;
                let at = wire::millis(&value)
                    .ok_or_else(|| bad(format!("delivery of {id}: not a number")))?;
                snapshot.deliveries.push((command_id, at));
            }
            for (id, value) in scan(connection, &keys.rollouts)? {
                let record: RolloutRecord = serde_json::from_slice(&value)
                    .map_err(|err| bad(format!("rollout {id}: {err}")))?;
                snapshot.rollouts.push(record);
            }
            for (id, value) in scan(connection, &keys.payloads)? {
                let rollout_id: RolloutId = id
                    .parse()
                    .map_err(|err| bad(format!("payload of rollout {id:?}: {err}")))?;
                let payload = std::str::from_utf8(&value)
                    .map_err(|err| err.to_string())
                    .and_then(|text| Payload::from_stored(text).map_err(|err| err.to_string()))
                    .map_err(|err| bad(format!("payload of rollout {id}: {err}")))?;
                snapshot.payloads.push((rollout_id, payload));
            }
            for (key, value) in scan(connection, &keys.meta)? {
                snapshot.meta.insert(key, value);
            }
            for (id, replica) in scan(connection, &keys.streams)? {
                let replica = String::from_utf8_lossy(&replica);
                // A stream on a replica that is gone is no stream; this
                // replica's own streams it knows itself.
                if replica != *own
                    && live.iter().any(|live| *live == replica)
                    && let Ok(agent_id) = AgentId::parse(&id)
                {
                    snapshot.streams.push((agent_id, replica.into()));
                }
            }
            snapshot
                .commands
                .sort_unstable_by_key(|command| command.seq);
            Ok(snapshot)
        })?;
        self.shared.loaded(snapshot.position);
        Ok(snapshot)
    }

    /// One run of the commit script over `changes`, each checked against its
    /// base (`None`: written whatever its version).
    fn run_commit(
        &mut self,
        changes: &[Change],
        bases: Option<&[Version]>,
    ) -> Result<Commit, StorageError> {
        if let Some(why) = self.shared.reload_asked() {
            return Err(StorageError::new(format!(
                "this replica reads the registry again from Redis: {why}"
            )));
        }
        let Some(epoch) = self.shared.epoch() else {
            return Err(StorageError::new(
                "the registry was never loaded from Redis",
            ));
        };
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(4 + changes.len() * 4);
        args.push(epoch.into_bytes());
        args.push(self.shared.replica.as_bytes().to_vec());
        args.push(LOG_LENGTH.to_string().into_bytes());
        // Sent again as it is when the reply is lost: the script then
        // answers what it answered the first time.
        let token = COMMITS.fetch_add(1, Ordering::Relaxed);
        args.push(token.to_string().into_bytes());
        for (index, change) in changes.iter().enumerate() {
            let (op, id, value) = wire::encode(change);
            args.push(vec![op]);
            args.push(id.into_bytes());
            args.push(value);
            args.push(match bases {
                Some(bases) => bases
                    .get(index)
                    .copied()
                    .unwrap_or(0)
                    .to_string()
                    .into_bytes(),
                None => Vec::new(),
            });
        }
        let answer: Vec<u64> = self
            .with_connection(|connection, shared, scripts| {
                let keys = &shared.keys;
                let mut invocation = scripts.commit.key(&keys.marker);
                invocation
                    .key(&keys.agents)
                    .key(&keys.heartbeats)
                    .key(&keys.commands)
                    .key(&keys.rollouts)
                    .key(&keys.payloads)
                    .key(&keys.meta)
                    .key(&keys.seq)
                    .key(&keys.versions)
                    .key(&keys.streams)
                    .key(&keys.log)
                    .key(&shared.reply)
                    .key(&keys.delivered);
                for arg in &args {
                    invocation.arg(arg.as_slice());
                }
                Ok(invocation.invoke(connection)?)
            })
            .map_err(|failure| self.fail(failure))?;
        match answer.split_first() {
            Some((&scripts::WRITTEN, [version, unchanged @ ..])) => Ok(Commit::Written {
                version: *version,
                unchanged: unchanged
                    .chunks_exact(2)
                    .map(|pair| (pair[0] as usize, pair[1]))
                    .collect(),
            }),
            Some((&scripts::CONFLICT, indexes)) => Ok(Commit::Conflict(
                indexes
                    .iter()
                    .filter_map(|&index| changes.get(index as usize))
                    .map(Change::entity)
                    .collect(),
            )),
            Some((&scripts::EMPTIED, _)) => {
                error!(
                    prefix = %self.shared.keys.prefix,
                    url = %self.shared.url,
                    "Redis lost the registry's data (its marker is gone or changed); the write is \
                     refused and the registry is read again"
                );
                Err(StorageError::new("Redis lost the registry's data"))
            }
            _ => Err(StorageError::new(format!(
                "Redis at {} answered the commit with {answer:?}",
                self.shared.url
            ))),
        }
    }

    fn read_entities(&mut self, entities: &[Entity]) -> Result<Vec<(Version, Change)>, Failure> {
        self.with_connection(|connection, shared, _| {
            let keys = &shared.keys;
            // One MULTI/EXEC: the records and versions of one moment.
            let mut pipe = redis::pipe();
            pipe.atomic();
            for entity in entities {
                match entity {
                    Entity::Agent(id) => {
                        let id = id.to_string();
                        pipe.hget(&keys.agents, &id)
                            .hget(&keys.heartbeats, &id)
                            .hget(&keys.versions, format!("a:{id}"));
                    }
                    Entity::Command(id) => {
                        let id = id.to_string();
                        pipe.hget(&keys.commands, &id)
                            .hget(&keys.delivered, &id)
                            .hget(&keys.versions, format!("c:{id}"));
                    }
                    Entity::Rollout(id) => {
                        let id = id.to_string();
                        pipe.hget(&keys.rollouts, &id).hget(&keys.payloads, &id);
                    }
                    Entity::Meta(key) => {
                        pipe.hget(&keys.meta, key);
                    }
                }
            }
            let values: Vec<Option<Vec<u8>>> = pipe.query(connection)?;
            let mut values = values.into_iter();
            let mut next = || values.next().flatten();
            let bad = |what: &Entity, err: String| Failure::Format(format!("{what:?}: {err}"));
            let mut changes = Vec::new();
            for entity in entities {
                match entity {
                    Entity::Agent(id) => {
                        let (record, heartbeat, version) = (next(), next(), next());
                        let version = number(version);
                        match record {
                            None => changes.push((0, Change::AgentRemoved(id.clone()))),
                            Some(record) => {
                                let record = wire::decode(b'a', id.to_string().as_bytes(), &record)
                                    .map_err(|err| bad(entity, err))?;
                                changes.push((version, record));
                                if let Some(at) = heartbeat.as_deref().and_then(wire::millis) {
                                    changes.push((version, Change::Heartbeat(id.clone(), at)));
                                }
                            }
                        }
                    }
                    Entity::Command(id) => {
                        let (record, delivered, version) = (next(), next(), next());
                        let version = number(version);
                        match record {
                            None => changes.push((0, Change::CommandRemoved(*id))),
                            Some(record) => {
                                let record = wire::decode(b'c', id.to_string().as_bytes(), &record)
                                    .map_err(|err| bad(entity, err))?;
                                changes.push((version, record));
                                if let Some(at) = delivered.as_deref().and_then(wire::millis) {
                                    changes.push((version, Change::Delivered(*id, at)));
                                }
                            }
                        }
                    }
                    Entity::Rollout(id) => {
                        let (record, payload) = (next(), next());
                        let text = id.to_string();
                        match (record, payload) {
                            (Some(record), Some(payload)) => {
                                for (op, value) in [(b'r', record), (b'p', payload)] {
                                    let change = wire::decode(op, text.as_bytes(), &value)
                                        .map_err(|err| bad(entity, err))?;
                                    changes.push((0, change));
                                }
                            }
                            _ => changes.push((0, Change::RolloutRemoved(*id))),
                        }
                    }
                    Entity::Meta(key) => changes.push((0, Change::Meta(key.clone(), next()))),
                }
            }
            Ok(changes)
        })
    }

    pub(crate) fn fail(&self, failure: Failure) -> StorageError {
        match failure {
            Failure::Redis(err) => {
                StorageError::new(format!("Redis at {} can't be used: {err}", self.shared.url))
            }
            Failure::Format(reason) => StorageError::new(format!(
                "the registry at prefix {:?} on {} can't be used: {reason}",
                self.shared.keys.prefix, self.shared.url
            )),
        }
    }
}

/// The entity a key of `P versions` names: `a:<agentId>` or `c:<commandId>`.
fn entity(key: &str) -> Option<Entity> {
    match key.split_once(':')? {
        ("a", id) => AgentId::parse(id).ok().map(Entity::Agent),
        ("c", id) => id.parse().ok().map(Entity::Command),
        _ => None,
    }
}

/// A stored version; none is 0.
fn number(value: Option<Vec<u8>>) -> Version {
    value
        .and_then(|value| String::from_utf8(value).ok())
        .and_then(|text| text.parse().ok())
        .unwrap_or(0)
}

/// A reply element as text, for messages.
fn text(value: &redis::Value) -> String {
    redis::from_redis_value_ref::<String>(value).unwrap_or_default()
}

/// Every field of the hash `key`, read in pages (`HSCAN`), never in one reply.
fn scan(connection: &mut Connection, key: &str) -> redis::RedisResult<Vec<(String, Vec<u8>)>> {
    use redis::Commands;
    // HSCAN may return a field more than once (the hash resized while it
    // was read): each field once, as last read, or the state would hold an
    // agent or a command twice in its counts.
    let mut fields: std::collections::HashMap<String, Vec<u8>> = std::collections::HashMap::new();
    for field in connection.hscan::<_, (String, Vec<u8>)>(key)? {
        let (name, value) = field?;
        fields.insert(name, value);
    }
    Ok(fields.into_iter().collect())
}

impl Storage for RedisEngine {
    fn load(&mut self) -> Result<Snapshot, StorageError> {
        self.read_all().map_err(|failure| self.fail(failure))
    }

    /// Writes `changes` whatever their versions (last writer wins); the
    /// registry calls [`commit_versioned`](Storage::commit_versioned).
    fn commit(&mut self, changes: &[Change]) -> Result<(), StorageError> {
        match self.run_commit(changes, None)? {
            Commit::Written { .. } => Ok(()),
            Commit::Conflict(entities) => Err(StorageError::new(format!(
                "heartbeats of agents that are gone: {entities:?}"
            ))),
        }
    }

    fn meta_or_insert(&mut self, key: &str, value: &[u8]) -> Result<Vec<u8>, StorageError> {
        self.with_connection(|connection, shared, scripts| {
            Ok(scripts
                .meta_or_insert
                .key(&shared.keys.meta)
                .arg(key)
                .arg(value)
                .invoke(connection)?)
        })
        .map_err(|failure| self.fail(failure))
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn commit_versioned(
        &mut self,
        changes: &[Change],
        bases: &[Version],
    ) -> Result<Commit, StorageError> {
        self.run_commit(changes, Some(bases))
    }

    fn fetch(&mut self, entities: &[Entity]) -> Result<Vec<(Version, Change)>, StorageError> {
        self.read_entities(entities)
            .map_err(|failure| self.fail(failure))
    }
}

/// On a clean stop the replica leaves `P replicas` at once, so that its
/// agents read `connected: false` without waiting for its liveness to end.
impl Drop for RedisEngine {
    fn drop(&mut self) {
        let left: Result<i64, Failure> = self.with_connection(|connection, shared, scripts| {
            Ok(scripts
                .leave
                .key(&shared.keys.replicas)
                .key(&shared.keys.keys)
                .arg(shared.replica.as_ref())
                .invoke(connection)?)
        });
        if left.is_err() {
            warn!("this replica could not say it leaves; its liveness runs out by itself");
        }
    }
}
