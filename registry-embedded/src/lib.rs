//! The embedded storage engine: the registry's facts in one redb file
//! (`storage.path`), behind `registry-core`'s [`Storage`] trait.
//!
//! redb is pure Rust, ACID (a commit is on disk when it returns: copy-on-write
//! B-trees and a checksummed header, fsynced), recovers a file left by a crash
//! on open, reuses the pages freed by deletes, and holds an exclusive lock on
//! the file so a second process can't open it.
//!
//! # Layout of the file
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `format` | `"version"` | [`FORMAT_VERSION`] |
//! | `agents` | agentId | the agent's record, JSON |
//! | `heartbeats` | agentId | its heartbeat time, Unix milliseconds, written behind |
//! | `commands` | commandId as a 128-bit number | the command's record, JSON (a rollout's command holds no payload) |
//! | `rollouts` | rolloutId as a 128-bit number | the rollout's record (its counts), JSON |
//! | `payloads` | rolloutId as a 128-bit number | the rollout's payload, JSON text, written once |
//! | `values` | a name | named values (the signing key, the brake) |
//!
//! Records are JSON: self-describing, so a later version can add fields with
//! defaults, and readable with any redb tool when something goes wrong. A
//! rollout's payload is a table of its own: its record is written again as
//! its counts change, the payload (up to `server.max_body_bytes`) only once.
//!
//! A file of format version 1 (before rollouts) is read as it is and marked
//! version 2 when opened: its records are version 2 records.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition, TableHandle,
    WriteTransaction,
};
use registry_core::storage::{
    AgentRecord, Change, CommandRecord, FORMAT_VERSION, OLDEST_FORMAT_READ, RolloutRecord,
    Snapshot, Storage, StorageError,
};
use registry_core::{AgentId, Payload, RolloutId, Timestamp};
use tracing::{info, warn};

const FORMAT: TableDefinition<&str, u64> = TableDefinition::new("format");
const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");
const HEARTBEATS: TableDefinition<&str, u64> = TableDefinition::new("heartbeats");
const COMMANDS: TableDefinition<u128, &[u8]> = TableDefinition::new("commands");
const ROLLOUTS: TableDefinition<u128, &[u8]> = TableDefinition::new("rollouts");
const PAYLOADS: TableDefinition<u128, &[u8]> = TableDefinition::new("payloads");
const VALUES: TableDefinition<&str, &[u8]> = TableDefinition::new("values");

/// The key of the format version in the `format` table.
const VERSION_KEY: &str = "version";
/// The page cache. Reads happen once, at start; writes need their pages cached.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Why the file can't be used. Each message names the file; the server adds
/// the setting (`storage.path`).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process has the file open.
    #[error("{0} is open in another process (another registry-server on the same file?)")]
    InUse(PathBuf),
    /// The file (or its folder) can't be read or written.
    #[error("{path} can't be opened: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file is not a registry file this version can read; it was left as it is.
    #[error("{path} can't be read as a registry file ({reason}); it was left untouched")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The registry's facts in one redb file.
pub struct Embedded {
    db: Database,
    path: PathBuf,
}

impl Embedded {
    /// Opens the file at `path`, creating it (and its folder) if it does not
    /// exist, recovering it if a crash left it half-written. Refuses a file in
    /// use by another process, a file of another format or version, and a
    /// damaged one, without writing to it.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        if let Some(folder) = path
            .parent()
            .filter(|folder| !folder.as_os_str().is_empty())
        {
            std::fs::create_dir_all(folder).map_err(|source| OpenError::Io {
                path: path.to_owned(),
                source,
            })?;
        }
        let unreadable = |reason: String| OpenError::Unreadable {
            path: path.to_owned(),
            reason,
        };
        // redb documents that opening a file altered behind its back may panic
        // unless integrity is checked; both are reported as a file it can't read.
        let opened = catch_unwind(AssertUnwindSafe(|| {
            Database::builder().set_cache_size(CACHE_BYTES).create(path)
        }))
        .map_err(|_| unreadable("redb could not make sense of it".into()))?;
        let db = opened.map_err(|err| match err {
            DatabaseError::DatabaseAlreadyOpen => OpenError::InUse(path.to_owned()),
            DatabaseError::Storage(redb::StorageError::Io(source)) => OpenError::Io {
                path: path.to_owned(),
                source,
            },
            other => unreadable(other.to_string()),
        })?;
        let engine = Self {
            db,
            path: path.to_owned(),
        };
        engine.check_format().map_err(unreadable)?;
        Ok(engine)
    }

    /// The file this engine writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new file gets the format version; a file that has one must have ours,
    /// or an older one this version reads, which is then marked ours.
    fn check_format(&self) -> Result<(), String> {
        let read = self.db.begin_read().map_err(|err| err.to_string())?;
        let tables: Vec<String> = read
            .list_tables()
            .map_err(|err| err.to_string())?
            .map(|table| table.name().to_owned())
            .collect();
        if tables.is_empty() {
            drop(read);
            let write = self.db.begin_write().map_err(|err| err.to_string())?;
            create_tables(&write).map_err(|err| err.to_string())?;
            write.commit().map_err(|err| err.to_string())?;
            info!(path = %self.path.display(), format = FORMAT_VERSION, "storage file created");
            return Ok(());
        }
        let version = read
            .open_table(FORMAT)
            .map_err(|_| {
                "it has no registry format version: it is another program's redb file".to_owned()
            })?
            .get(VERSION_KEY)
            .map_err(|err| err.to_string())?
            .map(|version| version.value());
        drop(read);
        match version {
            Some(FORMAT_VERSION) => Ok(()),
            Some(old) if (OLDEST_FORMAT_READ..FORMAT_VERSION).contains(&old) => {
                let write = self.db.begin_write().map_err(|err| err.to_string())?;
                create_tables(&write).map_err(|err| err.to_string())?;
                write.commit().map_err(|err| err.to_string())?;
                info!(path = %self.path.display(), from = old, to = FORMAT_VERSION, "storage file format upgraded");
                Ok(())
            }
            Some(other) => Err(format!(
                "its format is version {other}; this server reads version {FORMAT_VERSION}"
            )),
            None => Err("it has no registry format version".into()),
        }
    }

    fn read_all(&self) -> Result<Snapshot, String> {
        let read = self.db.begin_read().map_err(|err| err.to_string())?;
        let mut snapshot = Snapshot::default();
        let agents = read.open_table(AGENTS).map_err(|err| err.to_string())?;
        for entry in agents.iter().map_err(|err| err.to_string())? {
            let (key, value) = entry.map_err(|err| err.to_string())?;
            let record: AgentRecord = serde_json::from_slice(value.value())
                .map_err(|err| format!("agent {:?}: {err}", key.value()))?;
            snapshot.agents.push(record);
        }
        let heartbeats = read.open_table(HEARTBEATS).map_err(|err| err.to_string())?;
        for entry in heartbeats.iter().map_err(|err| err.to_string())? {
            let (key, value) = entry.map_err(|err| err.to_string())?;
            let agent_id = AgentId::parse(key.value())
                .map_err(|err| format!("heartbeat of {:?}: {err}", key.value()))?;
            snapshot
                .heartbeats
                .push((agent_id, Timestamp::from_unix_millis(value.value())));
        }
        let commands = read.open_table(COMMANDS).map_err(|err| err.to_string())?;
        for entry in commands.iter().map_err(|err| err.to_string())? {
            let (key, value) = entry.map_err(|err| err.to_string())?;
            let record: CommandRecord = serde_json::from_slice(value.value())
                .map_err(|err| format!("command {:x}: {err}", key.value()))?;
            snapshot.commands.push(record);
        }
        let rollouts = read.open_table(ROLLOUTS).map_err(|err| err.to_string())?;
        for entry in rollouts.iter().map_err(|err| err.to_string())? {
            let (key, value) = entry.map_err(|err| err.to_string())?;
            let record: RolloutRecord = serde_json::from_slice(value.value())
                .map_err(|err| format!("rollout {:x}: {err}", key.value()))?;
            snapshot.rollouts.push(record);
        }
        let payloads = read.open_table(PAYLOADS).map_err(|err| err.to_string())?;
        for entry in payloads.iter().map_err(|err| err.to_string())? {
            let (key, value) = entry.map_err(|err| err.to_string())?;
            let payload = std::str::from_utf8(value.value())
                .map_err(|err| err.to_string())
                .and_then(|text| Payload::from_stored(text).map_err(|err| err.to_string()))
                .map_err(|err| format!("payload of rollout {:x}: {err}", key.value()))?;
            snapshot
                .payloads
                .push((RolloutId::from_u128(key.value()), payload));
        }
        let values = read.open_table(VALUES).map_err(|err| err.to_string())?;
        for entry in values.iter().map_err(|err| err.to_string())? {
            let (key, value) = entry.map_err(|err| err.to_string())?;
            snapshot
                .meta
                .insert(key.value().to_owned(), value.value().to_vec());
        }
        snapshot
            .commands
            .sort_unstable_by_key(|command| command.seq);
        Ok(snapshot)
    }
}

impl Storage for Embedded {
    fn load(&mut self) -> Result<Snapshot, StorageError> {
        self.read_all().map_err(|reason| {
            StorageError::new(format!("{} can't be read: {reason}", self.path.display()))
        })
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), StorageError> {
        let fail = |err: &dyn std::fmt::Display| {
            StorageError::new(format!("writing {} failed: {err}", self.path.display()))
        };
        let write = self.db.begin_write().map_err(|err| fail(&err))?;
        write_changes(&write, changes).map_err(|err| fail(&err))?;
        write.commit().map_err(|err| fail(&err))
    }

    fn meta_or_insert(&mut self, key: &str, value: &[u8]) -> Result<Vec<u8>, StorageError> {
        let fail = |err: &dyn std::fmt::Display| {
            StorageError::new(format!("writing {} failed: {err}", self.path.display()))
        };
        // One write transaction: redb runs one at a time, so no other writer
        // comes between the read and the insert.
        let write = self.db.begin_write().map_err(|err| fail(&err))?;
        let kept = {
            let mut values = write.open_table(VALUES).map_err(|err| fail(&err))?;
            let stored = values
                .get(key)
                .map_err(|err| fail(&err))?
                .map(|stored| stored.value().to_vec());
            match stored {
                Some(stored) => stored,
                None => {
                    values.insert(key, value).map_err(|err| fail(&err))?;
                    value.to_vec()
                }
            }
        };
        write.commit().map_err(|err| fail(&err))?;
        Ok(kept)
    }
}

/// A new file: the format version, and every table, empty.
fn create_tables(write: &WriteTransaction) -> Result<(), redb::Error> {
    write
        .open_table(FORMAT)?
        .insert(VERSION_KEY, FORMAT_VERSION)?;
    write.open_table(AGENTS)?;
    write.open_table(HEARTBEATS)?;
    write.open_table(COMMANDS)?;
    write.open_table(ROLLOUTS)?;
    write.open_table(PAYLOADS)?;
    write.open_table(VALUES)?;
    Ok(())
}

/// On a clean stop the file is compacted: the pages freed by dropped
/// commands and deleted agents, reused while running, are given back, so the
/// file a backup copies is as small as what it holds. (After a crash the freed
/// pages are reused by later writes instead.)
impl Drop for Embedded {
    fn drop(&mut self) {
        match self.db.compact() {
            Ok(_) => info!(path = %self.path.display(), "storage file compacted"),
            Err(err) => warn!(path = %self.path.display(), %err, "storage file not compacted"),
        }
    }
}

fn write_changes(write: &WriteTransaction, changes: &[Change]) -> Result<(), redb::Error> {
    let mut agents = write.open_table(AGENTS)?;
    let mut heartbeats = write.open_table(HEARTBEATS)?;
    let mut commands = write.open_table(COMMANDS)?;
    let mut rollouts = write.open_table(ROLLOUTS)?;
    let mut payloads = write.open_table(PAYLOADS)?;
    let mut values = write.open_table(VALUES)?;
    let mut buffer = Vec::new();
    for change in changes {
        match change {
            Change::Agent(record) => {
                buffer.clear();
                serde_json::to_writer(&mut buffer, record).map_err(to_redb)?;
                agents.insert(record.agent_id.as_str(), buffer.as_slice())?;
                // The record's own heartbeat time is the newer one now.
                heartbeats.remove(record.agent_id.as_str())?;
            }
            Change::AgentRemoved(id) => {
                agents.remove(id.as_str())?;
                heartbeats.remove(id.as_str())?;
            }
            Change::Heartbeat(id, at) => {
                heartbeats.insert(id.as_str(), at.unix_millis())?;
            }
            Change::Command(record) => {
                buffer.clear();
                serde_json::to_writer(&mut buffer, record).map_err(to_redb)?;
                commands.insert(record.command_id.as_u128(), buffer.as_slice())?;
            }
            Change::CommandRemoved(id) => {
                commands.remove(id.as_u128())?;
            }
            // Only a shared engine is sent a delivery alone; written here as
            // the whole record it makes of the one stored.
            Change::Delivered(id, at) => {
                let stored = commands
                    .get(id.as_u128())?
                    .map(|value| value.value().to_vec());
                if let Some(stored) = stored {
                    let mut record: CommandRecord =
                        serde_json::from_slice(&stored).map_err(to_redb)?;
                    record.delivered(*at);
                    buffer.clear();
                    serde_json::to_writer(&mut buffer, &record).map_err(to_redb)?;
                    commands.insert(id.as_u128(), buffer.as_slice())?;
                }
            }
            Change::Rollout(record) => {
                buffer.clear();
                serde_json::to_writer(&mut buffer, record).map_err(to_redb)?;
                rollouts.insert(record.rollout_id.as_u128(), buffer.as_slice())?;
            }
            Change::RolloutPayload(id, payload) => {
                payloads.insert(id.as_u128(), payload.get().as_bytes())?;
            }
            Change::RolloutRemoved(id) => {
                rollouts.remove(id.as_u128())?;
                payloads.remove(id.as_u128())?;
            }
            Change::Meta(key, Some(value)) => {
                values.insert(key.as_str(), value.as_slice())?;
            }
            Change::Meta(key, None) => {
                values.remove(key.as_str())?;
            }
            // Streams end with the process: only a shared engine keeps them.
            Change::Stream(..) => {}
        }
    }
    Ok(())
}

fn to_redb(err: serde_json::Error) -> redb::Error {
    redb::Error::Corrupted(format!("a record could not be written: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file path of its own under the system's temporary folder, removed after.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "registry-embedded-{}-{name}.redb",
                std::process::id()
            ));
            let _ = std::fs::remove_file(&path);
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    const V1_AGENT: &str = r#"{"agentId":"a-1","metadata":{"name":"n","group":"g","version":null,"routeIds":[],"capabilities":[]},"status":"LIVE","registeredAt":"2026-03-11T18:10:15.000Z","lastHeartbeatAt":"2026-03-11T18:10:15.000Z","statusChangedAt":"2026-03-11T18:10:15.000Z","credential":null}"#;
    const V1_COMMAND: &str = r#"{"commandId":"0190f0c2-5c1e-7d4a-9a53-2f0e8f6c1b7d","seq":1,"agentId":"a-1","type":"replay","payload":{"routeId":"route-1"},"status":"PENDING","createdAt":"2026-03-11T18:10:15.000Z","expiresAt":"2026-03-11T18:11:15.000Z","deliveredAt":null,"acknowledgedAt":null,"ack":null}"#;

    /// A file as version 1 wrote it: no rollouts, a payload in each command.
    fn write_version_1(path: &Path) {
        let db = Database::create(path).unwrap();
        let write = db.begin_write().unwrap();
        write
            .open_table(FORMAT)
            .unwrap()
            .insert(VERSION_KEY, 1)
            .unwrap();
        write
            .open_table(AGENTS)
            .unwrap()
            .insert("a-1", V1_AGENT.as_bytes())
            .unwrap();
        write.open_table(HEARTBEATS).unwrap();
        let id: registry_core::CommandId = "0190f0c2-5c1e-7d4a-9a53-2f0e8f6c1b7d".parse().unwrap();
        write
            .open_table(COMMANDS)
            .unwrap()
            .insert(id.as_u128(), V1_COMMAND.as_bytes())
            .unwrap();
        write.open_table(VALUES).unwrap();
        write.commit().unwrap();
    }

    #[test]
    fn a_version_1_file_is_read_and_marked_version_2() {
        let file = TempFile::new("v1");
        write_version_1(&file.0);
        let mut engine = Embedded::open(&file.0).unwrap();
        let snapshot = engine.load().unwrap();
        assert_eq!(snapshot.agents.len(), 1);
        assert_eq!(snapshot.commands.len(), 1);
        let command = &snapshot.commands[0];
        assert_eq!(command.rollout_id, None);
        assert_eq!(
            command.payload.as_ref().map(Payload::get),
            Some(r#"{"routeId":"route-1"}"#)
        );
        assert!(snapshot.rollouts.is_empty());
        drop(engine);

        let db = Database::open(&file.0).unwrap();
        let read = db.begin_read().unwrap();
        let version = read.open_table(FORMAT).unwrap().get(VERSION_KEY).unwrap();
        assert_eq!(version.map(|v| v.value()), Some(FORMAT_VERSION));
    }

    #[test]
    fn a_rollouts_payload_is_one_row_its_commands_none() {
        let file = TempFile::new("rollout");
        let mut engine = Embedded::open(&file.0).unwrap();
        let id = RolloutId::from_u128(7);
        let payload = Payload::parse(r#"{"blob": "x"}"#).unwrap();
        let record: RolloutRecord = serde_json::from_str(
            r#"{"rolloutId":"00000000-0000-0000-0000-000000000007","type":"replay","target":"fleet","createdAt":"2026-03-11T18:10:15.000Z","expiresAt":"2026-03-11T18:11:15.000Z","targeted":2,"skipped":0,"counts":{"pending":2,"delivered":0,"succeeded":0,"failed":0,"expired":0},"doneAt":null}"#,
        )
        .unwrap();
        engine
            .commit(&[
                Change::RolloutPayload(id, payload.clone()),
                Change::Rollout(record.clone()),
            ])
            .unwrap();
        let snapshot = engine.load().unwrap();
        assert_eq!(snapshot.rollouts, [record]);
        assert_eq!(snapshot.payloads, [(id, payload)]);
        engine.commit(&[Change::RolloutRemoved(id)]).unwrap();
        let snapshot = engine.load().unwrap();
        assert!(snapshot.rollouts.is_empty() && snapshot.payloads.is_empty());
    }

    #[test]
    fn a_named_value_is_stored_once_and_survives_reopening() {
        let file = TempFile::new("meta");
        let mut engine = Embedded::open(&file.0).unwrap();
        assert_eq!(engine.meta_or_insert("k", b"first").unwrap(), b"first");
        assert_eq!(engine.meta_or_insert("k", b"second").unwrap(), b"first");
        drop(engine);
        let mut engine = Embedded::open(&file.0).unwrap();
        assert_eq!(engine.load().unwrap().meta["k"], b"first");
        assert_eq!(engine.meta_or_insert("k", b"third").unwrap(), b"first");
    }
}
