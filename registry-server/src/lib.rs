//! The agent registry's HTTP server: the API and SSE streams of SPEC.md over
//! the `registry-core` domain. The binary parses its configuration and calls
//! [`serve`]; tests call it too, on a listener bound to port 0.
//!
//! # Layout
//!
//! - [`auth`]: bearer tokens by role, and the refusal to serve open beyond loopback.
//! - `bulk`: bulk work (a listing of the fleet) and its answer's serializing,
//!   run off the runtime's worker threads.
//! - [`config`]: settings from defaults, file, environment and flags, checked.
//! - [`cross_site`]: cross-site requests refused, CORS for the allowed origins.
//! - [`routes`]: the route table and the handlers, one module per side.
//! - [`front`]: the checks in front of every route (head size, Host, body
//!   size, cross-site) and the timing of the API's, in one service around the router.
//! - [`extract`]: JSON, path and query extractors that reject with [`ApiError`].
//! - [`error`]: [`ApiError`], written as problem+json.
//! - [`host`]: the `Host` header, checked to be `host[:port]`.
//! - `connections`: the accept loop, the connection cap, head and idle timeouts,
//!   socket options, graceful shutdown.
//! - [`state`]: [`AppState`], what every handler shares.
//! - [`metrics`]: `/metrics` in Prometheus text format, and the API's latencies by route.
//! - [`openapi`]: the OpenAPI 3.1 document, built from the handlers' annotations
//!   and served at `/api/v1/openapi.json`.
//! - [`limits`]: the open-file limit, raised at start, and the size of request heads.
//! - [`signing`]: the key commands are signed with, and each event's signed data (SPEC 12).
//! - `sse`: events, comments and keep-alives as the streams write them.

pub mod auth;
mod bulk;
pub mod config;
mod connections;
pub mod cross_site;
pub mod error;
pub mod extract;
pub mod front;
pub mod host;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod signing;
mod sse;
pub mod state;

use std::future::Future;
use std::io;

use registry_core::{Clock, Registry, RegistryGuard, Replay, Settings, Storage, StorageError};
use registry_embedded::Embedded;
use registry_signing::ServerKey;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use auth::Auth;
pub use config::{Cli, Config, ConfigError, StorageEngine};
pub use error::ApiError;
pub use state::AppState;

/// Why the server could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration can't be served as it is.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The storage can't be used: in use by another process, unreadable, or
    /// not available. The message names the setting and the file.
    #[error("{0}")]
    Storage(String),
    /// The listener failed.
    #[error("serving failed: {0}")]
    Io(#[from] io::Error),
}

/// The storage engine `[storage]` asks for, opened.
pub struct OpenedStorage(Opened);

enum Opened {
    Memory,
    Embedded(Embedded),
    /// A replica of the registry in Redis, with the tasks that run beside it.
    Redis(Box<registry_redis::Replica>),
}

impl OpenedStorage {
    /// The engine, for what is read before the registry starts (the signing key).
    fn engine(&mut self) -> Option<&mut dyn Storage> {
        match &mut self.0 {
            Opened::Memory => None,
            Opened::Embedded(engine) => Some(engine),
            Opened::Redis(replica) => Some(&mut replica.engine),
        }
    }
}

/// The engine `[storage]` asks for, opened: none for `memory`. Refuses,
/// naming `storage.path` and the file, a file another process has open or
/// one it can't read, and leaves such a file as it is; refuses, naming
/// `storage.redis_url` or `storage.redis_prefix`, a Redis it can't reach or
/// a registry it can't read.
pub fn open_storage(config: &Config) -> Result<OpenedStorage, ServeError> {
    match config.storage.engine {
        StorageEngine::Memory => Ok(OpenedStorage(Opened::Memory)),
        StorageEngine::Redis => {
            let storage = &config.storage;
            let replica =
                registry_redis::open(&storage.redis_url, &storage.redis_prefix).map_err(|err| {
                    let key = match err {
                        registry_redis::OpenError::Unreachable { .. } => "storage.redis_url",
                        registry_redis::OpenError::Unreadable { .. } => "storage.redis_prefix",
                    };
                    ServeError::Storage(format!("{key}: {err}"))
                })?;
            info!(
                at = %replica.engine.describe(),
                replica = %replica.engine.replica_id(),
                "state kept in Redis, shared by the registry's replicas"
            );
            Ok(OpenedStorage(Opened::Redis(Box::new(replica))))
        }
        StorageEngine::Embedded => {
            let engine = Embedded::open(&config.storage.path)
                .map_err(|err| ServeError::Storage(format!("storage.path: {err}")))?;
            info!(path = %engine.path().display(), "state kept in the embedded file");
            Ok(OpenedStorage(Opened::Embedded(engine)))
        }
    }
}

/// Starts the registry over `storage`, loading what it holds. A replica on
/// Redis first joins the registry's live replicas, publishing the public key
/// it signs with (`key`): one signing with another key than a live replica's
/// is refused, naming `signing.key_file` (SPEC 12). Returns the guard, and
/// the Redis replica's tasks, to run beside the registry.
fn start_registry(
    settings: Settings,
    storage: OpenedStorage,
    config: &Config,
    key: Option<&ServerKey>,
) -> Result<(RegistryGuard, Option<registry_redis::Tasks>), ServeError> {
    let not_loaded = |err: StorageError| {
        ServeError::Storage(match config.storage.engine {
            StorageEngine::Redis => format!(
                "storage.redis_prefix: the registry can't be loaded, it was left untouched: {err}"
            ),
            _ => format!(
                "storage.path: {} can't be loaded, it was left untouched: {err}",
                config.storage.path.display()
            ),
        })
    };
    match storage.0 {
        Opened::Memory => Ok((Registry::start(settings), None)),
        Opened::Embedded(engine) => {
            let guard = Registry::start_with_storage(settings, Clock::new(), Box::new(engine))
                .map_err(not_loaded)?;
            Ok((guard, None))
        }
        Opened::Redis(replica) => {
            let registry_redis::Replica {
                mut engine,
                log,
                tasks,
            } = *replica;
            let public_key = key.map(|key| key.public_key().to_base64());
            engine
                .join(public_key.as_deref())
                .map_err(|err| match err {
                    registry_redis::JoinError::Storage(err) => {
                        ServeError::Storage(format!("storage.redis_url: {err}"))
                    }
                    other => ServeError::Config(other_key(config, &other)),
                })?;
            let replica_id = engine.replica_id();
            let guard =
                Registry::start_shared(settings, Clock::new(), Box::new(engine), replica_id, log)
                    .map_err(not_loaded)?;
            Ok((guard, Some(tasks)))
        }
    }
}

/// Why a replica that signs with another key than a live replica's can't start.
fn other_key(config: &Config, other: &registry_redis::JoinError) -> ConfigError {
    let whose = if config.signing.key_file.is_empty() {
        "the key kept in Redis (signing.key_file is empty)".to_owned()
    } else {
        format!("the key of {}", config.signing.key_file)
    };
    ConfigError::new(format!(
        "signing.key_file: this replica would sign with {whose}, but {other}; every replica of \
         a registry signs with the same key: give this one the same signing.key_file"
    ))
}

/// Serves the registry on `listener` until `shutdown` completes, then shuts
/// down gracefully: `/readyz` turns 503, every stream ends, requests in flight
/// finish, for at most `server.shutdown_grace`, and what is not written yet is.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let storage = open_storage(&config)?;
    serve_with_storage(listener, config, storage, shutdown).await
}

/// Like [`serve`], over a storage engine already opened with [`open_storage`].
pub async fn serve_with_storage(
    listener: TcpListener,
    config: Config,
    storage: OpenedStorage,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let mut storage = storage;
    let local_addr = listener.local_addr()?;
    let auth = Auth::load(&config.auth)?;
    auth.check_exposure(local_addr, config.auth.allow_open)?;
    let open_file_limit = limits::raise_open_file_limit();
    let limits = config.connection_limits(open_file_limit)?;
    info!(
        max_connections = limits.connections,
        max_streams = limits.streams,
        "connection limits"
    );
    let settings = config.core_settings(limits);
    let grace = config.server.shutdown_grace;
    let key = signing::server_key(&config.signing, storage.engine())?;
    let (guard, tasks) = start_registry(settings, storage, &config, key.as_ref())?;
    let keeping = CancellationToken::new();
    if let Some(tasks) = tasks {
        tokio::spawn(tasks.run(guard.registry(), keeping.clone()));
    }
    // The Redis replica's tasks end with this function, however it returns.
    let _keeping = keeping.drop_guard();
    let state = AppState::new(guard.registry(), config, auth, key);
    let stocking = CancellationToken::new();
    // With replay a command may be sent again, and must then carry the very
    // same data: its signature is RFC 8032's deterministic one, no stock is
    // kept. Without, each command is signed once.
    if let Some(signer) = state.signer()
        && state.config().sse.replay == Replay::None
    {
        signing::keep_stocked(signer.clone(), guard.registry(), stocking.clone())?;
    }
    // The nonce maker stops with this function, however it returns.
    let _stocking = stocking.drop_guard();
    let app = routes::router(state.clone());

    let stopping = CancellationToken::new();
    let begin_shutdown = {
        let stopping = stopping.clone();
        let state = state.clone();
        async move {
            shutdown.await;
            info!("shutting down: ending streams, finishing requests in flight");
            state.set_ready(false);
            // Open streams would otherwise hold the connections, and shutdown, forever.
            state.registry().close_all_streams();
            stopping.cancel();
        }
    };
    let shutdown_task = tokio::spawn(begin_shutdown);
    state.set_ready(true);
    info!("listening on http://{local_addr}");
    let server = &state.config().server;
    let settings = connections::ConnectionSettings {
        max_connections: limits.connections,
        timeouts: connections::Timeouts {
            head: server.head_timeout,
            idle: server.idle_timeout,
        },
        grace,
    };
    let metrics = state.metrics().connections().clone();
    connections::serve_connections(listener, app, settings, stopping, metrics).await;
    let _ = shutdown_task.await;
    guard.close().await;
    info!("stopped");
    Ok(())
}
