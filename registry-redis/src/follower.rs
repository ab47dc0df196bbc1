//! What the engine's tasks ask of the registry they run beside: apply the log,
//! know which replicas are alive, check storage (and so load it again). A
//! trait, so that the tasks can be tested against Redis without a registry.

use std::future::Future;

use registry_core::replication::{LogEntry, ReplicaId};

/// The registry, as the keeper and the tail see it.
pub trait Follower: Clone + Send + Sync + 'static {
    /// Applies entries of the log, in order (each once, unless a load
    /// replaced the state meanwhile, after which the log is read again from
    /// the load's position). An entry of this replica's own has no changes:
    /// it only moves the position applied.
    fn apply(&self, entries: Vec<LogEntry>) -> impl Future<Output = ()> + Send;

    /// The replicas alive now (this one among them), every second.
    fn replicas_alive(&self, replicas: &[ReplicaId]);

    /// This replica's liveness had run out and is renewed: the others ended
    /// the streams open here, which are announced again.
    fn announce_streams(&self);

    /// Has the writer commit at once: when Redis can't be used, or the engine
    /// asked to load again, the commit fails and the registry loads the state
    /// from Redis again (retried every second until it can). Returns once it
    /// committed or tried to load.
    fn check_storage(&self) -> impl Future<Output = ()> + Send;
}

impl Follower for registry_core::Registry {
    async fn apply(&self, entries: Vec<LogEntry>) {
        // It takes the lock a page at a time, for as long as the entries
        // take: off the runtime's workers.
        let registry = self.clone();
        let applied = tokio::task::spawn_blocking(move || registry.apply_log(entries)).await;
        if let Err(err) = applied {
            std::panic::resume_unwind(err.into_panic());
        }
    }

    fn replicas_alive(&self, replicas: &[ReplicaId]) {
        registry_core::Registry::replicas_alive(self, replicas);
    }

    fn announce_streams(&self) {
        registry_core::Registry::announce_streams(self);
    }

    async fn check_storage(&self) {
        // The writer logs what it finds; the registry answers 503 meanwhile.
        let _ = registry_core::Registry::check_storage(self).await;
    }
}
