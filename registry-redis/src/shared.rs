//! What the engine and its tasks (the keeper, the tail, the log's head) share:
//! the names of the keys, this replica's id, the epoch of the registry it
//! loaded, and where its last load left the log.

use std::sync::{Mutex, PoisonError};

use registry_core::replication::{ReplicaId, Version};
use tokio::sync::watch;

/// The names of the keys under one prefix (`docs/replicas.md` has the table).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub(crate) prefix: String,
    pub(crate) format: String,
    pub(crate) marker: String,
    pub(crate) agents: String,
    pub(crate) heartbeats: String,
    pub(crate) commands: String,
    pub(crate) delivered: String,
    pub(crate) rollouts: String,
    pub(crate) payloads: String,
    pub(crate) meta: String,
    pub(crate) seq: String,
    pub(crate) versions: String,
    pub(crate) streams: String,
    pub(crate) log: String,
    pub(crate) replicas: String,
    pub(crate) keys: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        let key = |name: &str| format!("{prefix}{name}");
        Self {
            prefix: prefix.to_owned(),
            format: key("format"),
            marker: key("marker"),
            agents: key("agents"),
            heartbeats: key("heartbeats"),
            commands: key("commands"),
            delivered: key("delivered"),
            rollouts: key("rollouts"),
            payloads: key("payloads"),
            meta: key("meta"),
            seq: key("seq"),
            versions: key("versions"),
            streams: key("streams"),
            log: key("log"),
            replicas: key("replicas"),
            keys: key("keys"),
        }
    }
}

/// Where a load left this replica: the tail reads the log after `position`,
/// and starts again from there whenever `generation` moves (the state was
/// replaced by a load, so what was applied after `position` may be gone).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Loaded {
    pub(crate) generation: u64,
    pub(crate) position: Version,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) keys: Keys,
    /// The URL, without its password, for messages.
    pub(crate) url: String,
    /// This replica's id: a new UUID per process.
    pub(crate) replica: ReplicaId,
    /// The key that keeps this replica's last commit reply (`P reply:<id>`),
    /// for a commit sent again after its reply was lost.
    pub(crate) reply: String,
    /// The marker this replica loaded; none before the first load.
    epoch: Mutex<Option<String>>,
    /// Set when the tail finds it can't follow the log (it fell behind the
    /// trimmed log, or read an entry it can't decode): the next commit fails,
    /// so that the registry loads everything again.
    reload: Mutex<Option<String>>,
    loaded: watch::Sender<Loaded>,
    /// The public key this replica signs with, published beside its liveness.
    public_key: Mutex<Option<String>>,
}

impl Shared {
    pub(crate) fn new(keys: Keys, url: String, replica: ReplicaId) -> Self {
        Self {
            reply: format!("{}reply:{replica}", keys.prefix),
            keys,
            url,
            replica,
            epoch: Mutex::new(None),
            reload: Mutex::new(None),
            loaded: watch::Sender::new(Loaded::default()),
            public_key: Mutex::new(None),
        }
    }

    pub(crate) fn public_key(&self) -> Option<String> {
        self.public_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_public_key(&self, key: Option<&str>) {
        *self
            .public_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = key.map(str::to_owned);
    }

    pub(crate) fn epoch(&self) -> Option<String> {
        self.epoch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records the marker read; returns the one loaded before, if any.
    pub(crate) fn set_epoch(&self, marker: String) -> Option<String> {
        self.epoch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(marker)
    }

    /// Asks for a load, saying why.
    pub(crate) fn ask_reload(&self, why: String) {
        *self.reload.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
    }

    /// Why a load was asked for, if one was and has not happened since.
    pub(crate) fn reload_asked(&self) -> Option<String> {
        self.reload
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A load read everything up to `position`: the tail starts again there.
    pub(crate) fn loaded(&self, position: Version) {
        *self.reload.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.loaded.send_modify(|loaded| {
            loaded.generation += 1;
            loaded.position = position;
        });
    }

    pub(crate) fn watch_loads(&self) -> watch::Receiver<Loaded> {
        self.loaded.subscribe()
    }
}
