//! The Redis storage engine: the registry's facts in Redis, behind
//! `registry-core`'s [`Storage`] trait (`docs/replicas.md` has the design).
//!
//! This version serves one replica at a time: a lease ([`Keeper`]) keeps a
//! second process off the same `storage.redis_prefix` until replicas tail
//! each other's writes.
//!
//! # Layout in Redis
//!
//! Every key starts with the prefix `P` (`storage.redis_prefix`).
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P format` | string | [`FORMAT_VERSION`] |
//! | `P marker` | string | the registry's epoch, a UUID: gone or changed means Redis lost the registry |
//! | `P agents` | hash | agentId -> the agent's record, JSON |
//! | `P heartbeats` | hash | agentId -> its heartbeat time, Unix ms, written behind |
//! | `P commands` | hash | commandId -> the command's record, JSON |
//! | `P rollouts` | hash | rolloutId -> the rollout's record, JSON |
//! | `P payloads` | hash | rolloutId -> the rollout's payload, canonical JSON, written once |
//! | `P meta` | hash | named values (the signing key, the brake) |
//! | `P lease` | string with a TTL | the id of the process that serves this registry |
//!
//! The records are the embedded engine's, written by `serde_json`; the Lua
//! scripts only move strings, so a payload keeps its canonical (signed) form.
//! A commit is one script: atomic, and refused when the marker is not the one
//! this process loaded (Redis was emptied) or another process holds the lease.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::{Client, Connection, Script};
use registry_core::storage::{
    AgentRecord, Change, CommandRecord, FORMAT_VERSION, RolloutRecord, Snapshot, Storage,
    StorageError,
};
use registry_core::{AgentId, Payload, Registry, RolloutId, Timestamp};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How long a lease lasts unless renewed: a process that died without
/// releasing it holds its registry this long.
const LEASE: Duration = Duration::from_secs(3);
/// How often the lease is renewed, and Redis checked.
const RENEW: Duration = Duration::from_secs(1);
/// Connecting, and each reply: an unreachable Redis fails a write within it.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Why Redis can't be used. The server adds the setting's name.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Redis can't be reached, or refused a command.
    #[error("Redis at {url} can't be used: {reason}")]
    Unreachable {
        /// The URL, without its password.
        url: String,
        /// What failed.
        reason: String,
    },
    /// Another process serves the registry at this prefix.
    #[error(
        "another registry-server (id {holder}) serves the registry at prefix {prefix:?} on {url}; \
         replicas sharing one prefix come in a later version"
    )]
    Held {
        /// The prefix.
        prefix: String,
        /// The URL, without its password.
        url: String,
        /// The other process's id.
        holder: String,
    },
    /// The keys hold a format this version can't read; they were left as they are.
    #[error(
        "the registry at prefix {prefix:?} on {url} can't be read ({reason}); it was left untouched"
    )]
    Unreadable {
        /// The prefix.
        prefix: String,
        /// The URL, without its password.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

/// The names of the keys under one prefix.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
    format: String,
    marker: String,
    agents: String,
    heartbeats: String,
    commands: String,
    rollouts: String,
    payloads: String,
    meta: String,
    lease: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        let key = |name: &str| format!("{prefix}{name}");
        Self {
            prefix: prefix.to_owned(),
            format: key("format"),
            marker: key("marker"),
            agents: key("agents"),
            heartbeats: key("heartbeats"),
            commands: key("commands"),
            rollouts: key("rollouts"),
            payloads: key("payloads"),
            meta: key("meta"),
            lease: key("lease"),
        }
    }
}

/// What the engine and its [`Keeper`] share: who this process is, and the
/// epoch of the registry it loaded.
#[derive(Debug)]
struct Shared {
    keys: Keys,
    /// The URL, without its password, for messages.
    url: String,
    /// This process's id, the lease's value.
    replica: String,
    /// The marker this process loaded; none before the first load.
    epoch: Mutex<Option<String>>,
}

impl Shared {
    fn epoch(&self) -> Option<String> {
        self.epoch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Takes the lease when it is free (or already this process's): `1`, else the holder.
const TAKE_LEASE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return holder end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// Renews the lease and checks the marker: `OK`, `HELD` or `EMPTIED`.
const RENEW_LEASE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 'HELD' end
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return 'EMPTIED' end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 'OK'
";

/// Releases the lease if it is this process's.
const RELEASE_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
";

/// A new registry gets its format and a marker; answers both as stored.
const ENSURE: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
redis.call('SET', KEYS[2], ARGV[2], 'NX')
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}
";

/// One commit: checks the lease and the marker, then applies `(op, id, value)`
/// triples in order. Answers `OK`, `HELD` or `EMPTIED` (nothing written).
const COMMIT: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 'HELD' end
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return 'EMPTIED' end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
local agents, heartbeats, commands, rollouts, payloads, meta =
  KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
for i = 4, #ARGV, 3 do
  local op, id, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if op == 'a' then
    redis.call('HSET', agents, id, value)
    redis.call('HDEL', heartbeats, id)
  elseif op == 'A' then
    redis.call('HDEL', agents, id)
    redis.call('HDEL', heartbeats, id)
  elseif op == 'h' then
    redis.call('HSET', heartbeats, id, value)
  elseif op == 'c' then
    redis.call('HSET', commands, id, value)
  elseif op == 'C' then
    redis.call('HDEL', commands, id)
  elseif op == 'r' then
    redis.call('HSET', rollouts, id, value)
  elseif op == 'p' then
    redis.call('HSET', payloads, id, value)
  elseif op == 'R' then
    redis.call('HDEL', rollouts, id)
    redis.call('HDEL', payloads, id)
  elseif op == 'm' then
    redis.call('HSET', meta, id, value)
  elseif op == 'M' then
    redis.call('HDEL', meta, id)
  end
end
return 'OK'
";

/// The stored value, storing `ARGV[1]` first if there is none.
const META_OR_INSERT: &str = r"
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HGET', KEYS[1], ARGV[1])
";

/// The registry's facts in Redis, written over a plain (blocking) connection,
/// as the [`Storage`] trait is called off the async workers; reconnected after
/// any failure.
pub struct RedisEngine {
    client: Client,
    connection: Option<Connection>,
    shared: Arc<Shared>,
    scripts: Arc<Scripts>,
}

/// Opens the registry at `prefix` on the Redis at `url`: takes its lease,
/// waiting one lease time for a process that died to lose it, and refuses
/// when another process keeps it. Returns the engine and the keeper that
/// renews the lease while the server runs.
pub fn open(url: &str, prefix: &str) -> Result<(RedisEngine, Keeper), OpenError> {
    let shown = without_password(url);
    let unreachable = |err: &dyn std::fmt::Display| OpenError::Unreachable {
        url: shown.clone(),
        reason: err.to_string(),
    };
    let client = Client::open(url).map_err(|err| unreachable(&err))?;
    let shared = Arc::new(Shared {
        keys: Keys::new(prefix),
        url: shown.clone(),
        replica: uuid::Uuid::now_v7().to_string(),
        epoch: Mutex::new(None),
    });
    let mut engine = RedisEngine {
        client: client.clone(),
        connection: None,
        shared: Arc::clone(&shared),
        scripts: Arc::new(Scripts {
            commit: Script::new(COMMIT),
            ensure: Script::new(ENSURE),
            take_lease: Script::new(TAKE_LEASE),
            meta_or_insert: Script::new(META_OR_INSERT),
            release_lease: Script::new(RELEASE_LEASE),
        }),
    };
    let waiting_until = Instant::now() + LEASE + Duration::from_millis(250);
    loop {
        match engine.take_lease().map_err(|err| unreachable(&err))? {
            None => break,
            Some(holder) if Instant::now() >= waiting_until => {
                return Err(OpenError::Held {
                    prefix: prefix.to_owned(),
                    url: shown,
                    holder,
                });
            }
            Some(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    engine.ensure_registry().map_err(|reason| match reason {
        Failure::Redis(err) => unreachable(&err),
        Failure::Format(reason) => OpenError::Unreadable {
            prefix: prefix.to_owned(),
            url: shown.clone(),
            reason,
        },
    })?;
    let keeper = Keeper { client, shared };
    Ok((engine, keeper))
}

/// Why a call failed: Redis, or what it holds.
enum Failure {
    Redis(redis::RedisError),
    Format(String),
}

impl From<redis::RedisError> for Failure {
    fn from(err: redis::RedisError) -> Self {
        Self::Redis(err)
    }
}

impl RedisEngine {
    /// The URL (without its password) and prefix, for the start's log line.
    pub fn describe(&self) -> String {
        format!(
            "prefix {:?} on {}",
            self.shared.keys.prefix, self.shared.url
        )
    }

    /// The connection, opened again if the last call failed.
    fn connection(&mut self) -> redis::RedisResult<&mut Connection> {
        let connection = match self.connection.take() {
            Some(connection) => connection,
            None => {
                let connection = self.client.get_connection_with_timeout(TIMEOUT)?;
                connection.set_read_timeout(Some(TIMEOUT))?;
                connection.set_write_timeout(Some(TIMEOUT))?;
                connection
            }
        };
        Ok(self.connection.insert(connection))
    }

    /// Runs `call` on the connection; a failure drops the connection, so the
    /// next call starts on a fresh one.
    fn with_connection<T>(
        &mut self,
        call: impl FnOnce(&mut Connection, &Shared, &Scripts) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let shared = Arc::clone(&self.shared);
        let scripts = Arc::clone(&self.scripts);
        let result = match self.connection() {
            Ok(connection) => call(connection, &shared, &scripts),
            Err(err) => Err(Failure::Redis(err)),
        };
        if matches!(result, Err(Failure::Redis(_))) {
            self.connection = None;
        }
        result
    }

    /// Takes the lease: `None` when this process holds it, else the holder.
    fn take_lease(&mut self) -> Result<Option<String>, redis::RedisError> {
        let taken = self.with_connection(|connection, shared, scripts| {
            let answer: redis::Value = scripts
                .take_lease
                .key(&shared.keys.lease)
                .arg(&shared.replica)
                .arg(LEASE.as_millis() as u64)
                .invoke(connection)?;
            Ok(match answer {
                redis::Value::Int(1) => None,
                other => Some(redis::from_redis_value::<String>(other).unwrap_or_default()),
            })
        });
        match taken {
            Ok(holder) => Ok(holder),
            Err(Failure::Redis(err)) => Err(err),
            Err(Failure::Format(_)) => Ok(None),
        }
    }

    /// Gives a new registry its format and marker; checks the format of one
    /// that has them; notices a marker other than the one loaded before.
    fn ensure_registry(&mut self) -> Result<(), Failure> {
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
        let mut epoch = self
            .shared
            .epoch
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match epoch.as_deref() {
            Some(loaded) if loaded != marker => error!(
                prefix = %self.shared.keys.prefix,
                "Redis lost the registry's data (its marker changed): serving an empty registry; \
                 agents register again"
            ),
            None if marker == fresh => info!(
                prefix = %self.shared.keys.prefix,
                url = %self.shared.url,
                "a new registry created in Redis"
            ),
            _ => {}
        }
        *epoch = Some(marker);
        Ok(())
    }

    fn read_all(&mut self) -> Result<Snapshot, Failure> {
        if let Some(holder) = self.take_lease()? {
            return Err(Failure::Format(format!(
                "another registry-server (id {holder}) holds the lease"
            )));
        }
        self.ensure_registry()?;
        self.with_connection(|connection, shared, _| {
            let keys = &shared.keys;
            let bad = |what: String| Failure::Format(what);
            let mut snapshot = Snapshot::default();
            for (id, value) in scan(connection, &keys.agents)? {
                let record: AgentRecord = serde_json::from_slice(&value)
                    .map_err(|err| bad(format!("agent {id:?}: {err}")))?;
                snapshot.agents.push(record);
            }
            for (id, value) in scan(connection, &keys.heartbeats)? {
                let agent_id = AgentId::parse(&id)
                    .map_err(|err| bad(format!("heartbeat of {id:?}: {err}")))?;
                let millis = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|text| text.parse::<u64>().ok())
                    .ok_or_else(|| bad(format!("heartbeat of {id:?}: not a number")))?;
                snapshot
                    .heartbeats
                    .push((agent_id, Timestamp::from_unix_millis(millis)));
            }
            for (id, value) in scan(connection, &keys.commands)? {
                let record: CommandRecord = serde_json::from_slice(&value)
                    .map_err(|err| bad(format!("command {id}: {err}")))?;
                snapshot.commands.push(record);
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
            snapshot
                .commands
                .sort_unstable_by_key(|command| command.seq);
            Ok(snapshot)
        })
    }

    fn fail(&self, failure: Failure) -> StorageError {
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

/// The engine's scripts, each sent once and then run by its digest (`EVALSHA`).
struct Scripts {
    commit: Script,
    ensure: Script,
    take_lease: Script,
    meta_or_insert: Script,
    release_lease: Script,
}

/// Every field of the hash `key`, read in pages (`HSCAN`), never in one reply.
fn scan(connection: &mut Connection, key: &str) -> redis::RedisResult<Vec<(String, Vec<u8>)>> {
    use redis::Commands;
    connection
        .hscan::<_, (String, Vec<u8>)>(key)?
        .collect::<redis::RedisResult<Vec<_>>>()
}

impl Storage for RedisEngine {
    fn load(&mut self) -> Result<Snapshot, StorageError> {
        self.read_all().map_err(|failure| self.fail(failure))
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), StorageError> {
        let Some(epoch) = self.shared.epoch() else {
            return Err(StorageError::new(
                "the registry was never loaded from Redis",
            ));
        };
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(3 + changes.len() * 3);
        args.push(self.shared.replica.clone().into_bytes());
        args.push((LEASE.as_millis() as u64).to_string().into_bytes());
        args.push(epoch.into_bytes());
        for change in changes {
            let (op, id, value): (&str, String, Vec<u8>) = match change {
                // Kept once replicas tail the log (docs/replicas.md, step 2).
                Change::Stream(..) => continue,
                Change::Agent(record) => ("a", record.agent_id.to_string(), to_json(record)),
                Change::AgentRemoved(id) => ("A", id.to_string(), Vec::new()),
                Change::Heartbeat(id, at) => (
                    "h",
                    id.to_string(),
                    at.unix_millis().to_string().into_bytes(),
                ),
                Change::Command(record) => ("c", record.command_id.to_string(), to_json(record)),
                Change::CommandRemoved(id) => ("C", id.to_string(), Vec::new()),
                Change::Rollout(record) => ("r", record.rollout_id.to_string(), to_json(record)),
                Change::RolloutPayload(id, payload) => {
                    ("p", id.to_string(), payload.get().as_bytes().to_vec())
                }
                Change::RolloutRemoved(id) => ("R", id.to_string(), Vec::new()),
                Change::Meta(key, Some(value)) => ("m", key.clone(), value.clone()),
                Change::Meta(key, None) => ("M", key.clone(), Vec::new()),
            };
            args.push(op.as_bytes().to_vec());
            args.push(id.into_bytes());
            args.push(value);
        }
        let answer: String = self
            .with_connection(|connection, shared, scripts| {
                let keys = &shared.keys;
                let mut invocation = scripts.commit.key(&keys.lease);
                invocation
                    .key(&keys.marker)
                    .key(&keys.agents)
                    .key(&keys.heartbeats)
                    .key(&keys.commands)
                    .key(&keys.rollouts)
                    .key(&keys.payloads)
                    .key(&keys.meta);
                for arg in &args {
                    invocation.arg(arg.as_slice());
                }
                Ok(invocation.invoke(connection)?)
            })
            .map_err(|failure| self.fail(failure))?;
        match answer.as_str() {
            "OK" => Ok(()),
            "EMPTIED" => {
                error!(
                    prefix = %self.shared.keys.prefix,
                    url = %self.shared.url,
                    "Redis lost the registry's data (its marker is gone or changed); the write is \
                     refused and the registry is read again"
                );
                Err(StorageError::new("Redis lost the registry's data"))
            }
            _ => Err(StorageError::new(format!(
                "another registry-server holds the registry at prefix {:?} on {}",
                self.shared.keys.prefix, self.shared.url
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
}

/// On a clean stop the lease is given back, so a restart need not wait for it.
impl Drop for RedisEngine {
    fn drop(&mut self) {
        let released: Result<i64, Failure> = self.with_connection(|connection, shared, scripts| {
            Ok(scripts
                .release_lease
                .key(&shared.keys.lease)
                .arg(&shared.replica)
                .invoke(connection)?)
        });
        if released.is_err() {
            warn!("the Redis lease could not be given back; it expires by itself");
        }
    }
}

/// A record as the embedded engine writes it.
fn to_json(record: &impl serde::Serialize) -> Vec<u8> {
    // The records are plain data: serializing them can't fail.
    serde_json::to_vec(record).unwrap_or_default()
}

/// Renews the lease every second while the server runs and watches Redis:
/// when Redis can't be reached, another process took the lease, or the
/// marker is gone (Redis was emptied), it has the registry check its storage,
/// which refuses writes (503) and reads the state again until Redis serves it.
pub struct Keeper {
    client: Client,
    shared: Arc<Shared>,
}

impl Keeper {
    /// Runs until `stop`.
    pub async fn run(self, registry: Registry, stop: CancellationToken) {
        let script = Script::new(RENEW_LEASE);
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(RENEW))
            .set_number_of_retries(1)
            .set_max_delay(RENEW);
        let mut manager = None;
        let mut healthy = true;
        loop {
            tokio::select! {
                () = tokio::time::sleep(RENEW) => {}
                () = stop.cancelled() => return,
            }
            if manager.is_none() {
                manager = self
                    .client
                    .get_connection_manager_with_config(config.clone())
                    .await
                    .ok();
            }
            let Some(connection) = manager.as_mut() else {
                healthy = self
                    .trouble(&registry, healthy, "Redis can't be reached")
                    .await;
                continue;
            };
            let epoch = self.shared.epoch().unwrap_or_default();
            let answer: redis::RedisResult<String> = script
                .key(&self.shared.keys.lease)
                .key(&self.shared.keys.marker)
                .arg(&self.shared.replica)
                .arg(LEASE.as_millis() as u64)
                .arg(epoch)
                .invoke_async(connection)
                .await;
            healthy = match answer.as_deref() {
                Ok("OK") => {
                    if !healthy {
                        info!("Redis serves the registry again");
                    }
                    true
                }
                Ok("HELD") => {
                    self.trouble(&registry, healthy, "another registry-server took the lease")
                        .await
                }
                Ok(_) => {
                    self.trouble(&registry, healthy, "the registry's marker is gone")
                        .await
                }
                Err(_) => {
                    self.trouble(&registry, healthy, "Redis can't be reached")
                        .await
                }
            };
        }
    }

    /// Says what is wrong (once) and has the registry check its storage.
    async fn trouble(&self, registry: &Registry, healthy: bool, what: &str) -> bool {
        if healthy {
            warn!(
                prefix = %self.shared.keys.prefix,
                url = %self.shared.url,
                "{what}: the registry checks its storage"
            );
        }
        // The writer logs what it finds and refuses writes until Redis serves.
        let _ = registry.check_storage().await;
        false
    }
}

/// `url` with any password replaced, for messages and logs.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "the configured URL".into();
    };
    match rest.split_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_never_shown() {
        assert_eq!(
            without_password("redis://user:secret@db:6379/0"),
            "redis://***@db:6379/0"
        );
        assert_eq!(
            without_password("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(without_password("secret"), "the configured URL");
    }
}
