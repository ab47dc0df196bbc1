//! The log, followed: the tail task reads `P log` (`XREAD BLOCK` from the
//! last entry applied, on a connection of its own) and hands each entry to the
//! registry; [`RedisLog`] answers the log's head, for reads that must see
//! every write answered by any replica.
//!
//! Entries are numbered by the commit script: entry `v-0` is commit `v`, and
//! `P seq` is the last one. So the tail knows exactly what follows what it
//! applied: a gap means the log was trimmed past it (or Redis went back in
//! time), and the registry loads everything again instead. A Redis that went
//! back in time and was written again since can hold a log as long as what
//! was applied, with other commits under the same numbers: each time it
//! connects, the tail checks that the entry it applied last is still the
//! one in the log (its fingerprint), and has the registry load if not.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Value};
use registry_core::replication::{Log, LogEntry, ReplicaId, Version};
use registry_core::storage::StorageError;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::engine::TIMEOUT;
use crate::follower::Follower;
use crate::shared::Shared;
use crate::wire;

/// How long one `XREAD` blocks waiting for an entry: a connection that died
/// without a word is found within about this.
const BLOCK: Duration = Duration::from_secs(2);
/// Entries read per `XREAD`.
const READ_COUNT: usize = 64;
/// How long the tail waits before connecting again after a failure.
const RETRY: Duration = Duration::from_millis(500);
/// Entries this large are decoded on the blocking pool, off the async workers:
/// a fleet command's commands, each a record to parse.
const LARGE_ENTRY: usize = 64 * 1024;
/// How long asking for the head may take.
const HEAD_TIMEOUT: Duration = Duration::from_secs(1);

/// The head of the log: `P seq`, one `GET`, on a connection manager of its own
/// (opened at the first call; it reconnects by itself).
pub struct RedisLog {
    client: Client,
    shared: Arc<Shared>,
    connection: OnceCell<ConnectionManager>,
}

impl RedisLog {
    pub(crate) fn new(client: Client, shared: Arc<Shared>) -> Self {
        Self {
            client,
            shared,
            connection: OnceCell::new(),
        }
    }

    async fn read_head(&self) -> redis::RedisResult<Version> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(HEAD_TIMEOUT))
            .set_response_timeout(Some(HEAD_TIMEOUT))
            .set_number_of_retries(1);
        let mut connection = self
            .connection
            .get_or_try_init(|| self.client.get_connection_manager_with_config(config))
            .await?
            .clone();
        let get = redis::cmd("GET").arg(&self.shared.keys.seq).clone();
        let head: Option<Version> = match get.query_async(&mut connection).await {
            // The manager answers the first call after an outage with the
            // error of its last attempt to reconnect, and reconnects then.
            Err(err) if err.is_connection_dropped() || err.is_connection_refusal() => {
                get.query_async(&mut connection).await?
            }
            head => head?,
        };
        Ok(head.unwrap_or(0))
    }
}

impl Log for RedisLog {
    fn head(&self) -> Pin<Box<dyn Future<Output = Result<Version, StorageError>> + Send + '_>> {
        Box::pin(async move {
            self.read_head().await.map_err(|err| {
                StorageError::new(format!("Redis at {} can't be used: {err}", self.shared.url))
            })
        })
    }
}

/// The task that follows the log; see the module's documentation.
pub struct Tail {
    client: Client,
    shared: Arc<Shared>,
}

/// What one read found.
enum Read {
    Entries(Vec<Raw>),
    /// A load replaced the state: read again from its position.
    Loaded,
    Stopped,
}

/// An entry as read, not decoded yet.
struct Raw {
    version: Version,
    origin: ReplicaId,
    frames: Vec<u8>,
}

/// The last entry applied, to tell it from another commit that took its
/// number after Redis went back in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Applied {
    version: Version,
    fingerprint: u64,
}

impl Raw {
    fn applied(&self) -> Applied {
        use std::hash::{BuildHasher, Hash, Hasher};
        // Compared only within this process. foldhash, not SipHash: every
        // replica hashes every entry it reads, a megabyte per slice of a
        // fleet command (SipHash took 1 % of a replica's CPU).
        let mut hasher = foldhash::fast::FixedState::default().build_hasher();
        self.origin.hash(&mut hasher);
        self.frames.hash(&mut hasher);
        Applied {
            version: self.version,
            fingerprint: hasher.finish(),
        }
    }
}

impl Tail {
    pub(crate) fn new(client: Client, shared: Arc<Shared>) -> Self {
        Self { client, shared }
    }

    /// Follows the log until `stop`, from the position of the registry's last
    /// load; after a failure, connects again and goes on from the last entry
    /// applied, so nothing is missed.
    pub async fn run(self, follower: impl Follower, stop: CancellationToken) {
        let mut loads = self.shared.watch_loads();
        let mut position = loads.borrow_and_update().position;
        let mut last: Option<Applied> = None;
        let mut connection = None;
        let mut failing = false;
        let mut just_connected = false;
        loop {
            let live = match connection.as_mut() {
                Some(live) => live,
                None => match self.connect(position, &mut last).await {
                    Ok((live, trouble)) => {
                        if failing {
                            info!("this replica follows the log again");
                            failing = false;
                        }
                        if let Some(why) = trouble {
                            self.ask_reload(&follower, why).await;
                        }
                        just_connected = true;
                        connection.insert(live)
                    }
                    Err(err) => {
                        if !failing {
                            error!(
                                prefix = %self.shared.keys.prefix,
                                url = %self.shared.url,
                                %err,
                                "the log can't be read: other replicas' changes wait until it can"
                            );
                            failing = true;
                        }
                        if pause(&stop).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            let read = tokio::select! {
                biased;
                () = stop.cancelled() => Ok(Read::Stopped),
                changed = loads.changed() => match changed {
                    Ok(()) => Ok(Read::Loaded),
                    Err(_) => Ok(Read::Stopped),
                },
                read = self.read(live, position) => read,
            };
            let raws = match read {
                Ok(Read::Entries(raws)) => {
                    just_connected = false;
                    raws
                }
                Ok(Read::Loaded) => {
                    position = loads.borrow_and_update().position;
                    // The entry at the load's position becomes the one applied.
                    last = None;
                    // A read still blocked on it would hold the next one back.
                    connection = None;
                    continue;
                }
                Ok(Read::Stopped) => return,
                Err(err) => {
                    // Connected again at once (the log keeps what was missed),
                    // unless the connection failed as soon as it was made.
                    warn!(%err, "the log's connection was lost; connecting again");
                    connection = None;
                    if just_connected && pause(&stop).await {
                        return;
                    }
                    continue;
                }
            };
            let (entries, applied, trouble) = self.decode(raws, position).await;
            if let Some(entry) = entries.last() {
                position = entry.version;
                last = applied;
                // Unless a load replaced the state meanwhile: read again from it.
                if !loads.has_changed().unwrap_or(true) {
                    follower.apply(entries).await;
                }
            }
            if let Some(why) = trouble {
                self.ask_reload(&follower, why).await;
            }
        }
    }

    /// A connection of the tail's own (a blocked `XREAD` holds its
    /// connection), named in `CLIENT LIST`; and why the log can't be
    /// followed from `position` if it can't: it ends before `position`, or
    /// its entry `position` is not `last`, the one applied (Redis went back
    /// in time). Without `last` (nothing read since a load), the entry at
    /// `position` becomes it.
    async fn connect(
        &self,
        position: Version,
        last: &mut Option<Applied>,
    ) -> redis::RedisResult<(MultiplexedConnection, Option<String>)> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(BLOCK + TIMEOUT));
        let mut connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(format!("registry-tail-{}", self.shared.replica))
            .exec_async(&mut connection)
            .await?;
        let head: Option<Version> = redis::cmd("GET")
            .arg(&self.shared.keys.seq)
            .query_async(&mut connection)
            .await?;
        let head = head.unwrap_or(0);
        if head < position {
            let why =
                format!("the log ends at {head}, before {position}, which this replica applied");
            return Ok((connection, Some(why)));
        }
        if position == 0 {
            return Ok((connection, None));
        }
        let id = format!("{position}-0");
        let reply: Value = redis::cmd("XRANGE")
            .arg(&self.shared.keys.log)
            .arg(&id)
            .arg(&id)
            .query_async(&mut connection)
            .await?;
        // An `XRANGE` reply: `[[id, [field, value...]]]`, empty without it.
        let found = match reply {
            Value::Array(items) => items.into_iter().next().map(|item| match raw(item) {
                Some(raw) => raw.applied(),
                // Not in the form the commit script writes: not what was applied.
                None => Applied {
                    version: 0,
                    fingerprint: 0,
                },
            }),
            _ => None,
        };
        let trouble = match (*last, found) {
            (Some(applied), Some(found)) if applied.version == position && applied != found => {
                Some(format!(
                    "the log's entry {position} is not the one this replica applied: Redis went                      back in time and was written again since"
                ))
            }
            (_, None) => Some(format!(
                "the log no longer holds entry {position}, which this replica applied last"
            )),
            (_, found) => {
                *last = found;
                None
            }
        };
        Ok((connection, trouble))
    }

    /// The entries after `position`, waiting up to [`BLOCK`] for one.
    async fn read(
        &self,
        connection: &mut MultiplexedConnection,
        position: Version,
    ) -> redis::RedisResult<Read> {
        let reply: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.shared.keys.log)
            .arg(format!("{position}-0"))
            .query_async(connection)
            .await?;
        Ok(Read::Entries(entries(reply)))
    }

    /// The entries that follow `position` in `raws`, decoded (on the blocking
    /// pool when they are large), up to the first that does not follow or
    /// can't be decoded, which is the trouble. This replica's own entries
    /// are not decoded (it holds what they say): they only move the position.
    async fn decode(
        &self,
        raws: Vec<Raw>,
        position: Version,
    ) -> (Vec<LogEntry>, Option<Applied>, Option<String>) {
        let own = self.shared.replica.clone();
        let size: usize = raws.iter().map(|raw| raw.frames.len()).sum();
        let decode = move || {
            let mut entries = Vec::with_capacity(raws.len());
            let mut applied = None;
            for (expected, raw) in (position + 1..).zip(raws) {
                let print = raw.applied();
                let Raw {
                    version,
                    origin,
                    frames,
                } = raw;
                if version != expected {
                    let why = format!(
                        "the log goes on at entry {version}, not {expected}: it was trimmed \
                         past what this replica applied"
                    );
                    return (entries, applied, Some(why));
                }
                let changes = if origin == own {
                    Vec::new()
                } else {
                    match wire::decode_frames(&frames) {
                        Ok(changes) => changes,
                        Err(why) => {
                            let why = format!("log entry {version}: {why}");
                            return (entries, applied, Some(why));
                        }
                    }
                };
                entries.push(LogEntry {
                    version,
                    origin,
                    changes,
                });
                applied = Some(print);
            }
            (entries, applied, None)
        };
        if size < LARGE_ENTRY {
            decode()
        } else {
            tokio::task::spawn_blocking(decode)
                .await
                .unwrap_or_else(|err| (Vec::new(), None, Some(err.to_string())))
        }
    }

    /// The log can't be followed from here: has the registry load everything
    /// again, after which the tail reads on from the load's position.
    async fn ask_reload(&self, follower: &impl Follower, why: String) {
        warn!(
            prefix = %self.shared.keys.prefix,
            "{why}: this replica reads the registry again from Redis"
        );
        self.shared.ask_reload(why);
        follower.check_storage().await;
        if self.shared.reload_asked().is_some() {
            // Not loaded yet (Redis can't be read): the writer retries; so
            // will this task, after a pause.
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// Waits [`RETRY`]; true if `stop` came first.
async fn pause(stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(RETRY) => false,
        () = stop.cancelled() => true,
    }
}

/// The entries of an `XREAD` reply (RESP2: `[[key, [[id, [field, value...]]...]]]`;
/// nil when it timed out). An entry not in the form the commit script writes
/// reads as version 0, which the tail takes for a gap.
fn entries(reply: Value) -> Vec<Raw> {
    let Value::Array(streams) = reply else {
        return Vec::new();
    };
    let mut raws = Vec::new();
    for stream in streams {
        let Value::Array(mut stream) = stream else {
            continue;
        };
        let Some(Value::Array(items)) = stream.pop() else {
            continue;
        };
        for item in items {
            raws.push(raw(item).unwrap_or(Raw {
                version: 0,
                origin: "".into(),
                frames: Vec::new(),
            }));
        }
    }
    raws
}

fn raw(item: Value) -> Option<Raw> {
    let Value::Array(mut item) = item else {
        return None;
    };
    let Some(Value::Array(fields)) = item.pop() else {
        return None;
    };
    let Some(Value::BulkString(id)) = item.pop() else {
        return None;
    };
    let version = std::str::from_utf8(&id)
        .ok()?
        .strip_suffix("-0")?
        .parse()
        .ok()?;
    let mut origin = None;
    let mut frames = None;
    let mut fields = fields.into_iter();
    while let (Some(Value::BulkString(name)), Some(Value::BulkString(value))) =
        (fields.next(), fields.next())
    {
        match name.as_slice() {
            b"o" => origin = Some(String::from_utf8(value).ok()?.into()),
            b"c" => frames = Some(value),
            _ => {}
        }
    }
    Some(Raw {
        version,
        origin: origin?,
        frames: frames?,
    })
}
