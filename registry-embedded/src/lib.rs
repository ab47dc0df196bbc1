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
//! | `commands` | commandId as a 128-bit number | the command's record, JSON |
//! | `values` | a name | named values (the signing key, the brake) |
//!
//! Records are JSON: self-describing, so a later version can add fields with
//! defaults, and readable with any redb tool when something goes wrong.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition, TableHandle,
    WriteTransaction,
};
use registry_core::storage::{
    AgentRecord, Change, CommandRecord, FORMAT_VERSION, Snapshot, Storage, StorageError,
};
use registry_core::{AgentId, Timestamp};
use tracing::{info, warn};

const FORMAT: TableDefinition<&str, u64> = TableDefinition::new("format");
const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");
const HEARTBEATS: TableDefinition<&str, u64> = TableDefinition::new("heartbeats");
const COMMANDS: TableDefinition<u128, &[u8]> = TableDefinition::new("commands");
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

    /// A new file gets the format version; a file that has one must have ours.
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
        match version {
            Some(FORMAT_VERSION) => Ok(()),
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
}

/// A new file: the format version, and every table, empty.
fn create_tables(write: &WriteTransaction) -> Result<(), redb::Error> {
    write
        .open_table(FORMAT)?
        .insert(VERSION_KEY, FORMAT_VERSION)?;
    write.open_table(AGENTS)?;
    write.open_table(HEARTBEATS)?;
    write.open_table(COMMANDS)?;
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
            Change::Meta(key, Some(value)) => {
                values.insert(key.as_str(), value.as_slice())?;
            }
            Change::Meta(key, None) => {
                values.remove(key.as_str())?;
            }
        }
    }
    Ok(())
}

fn to_redb(err: serde_json::Error) -> redb::Error {
    redb::Error::Corrupted(format!("a record could not be written: {err}"))
}
