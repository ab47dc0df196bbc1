//! The state every handler shares: the registry handle, the configuration,
//! readiness, and the metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::HeaderMap;
use registry_core::{AgentId, Registry, RegistryError};
use registry_signing::{AheadSigner, ServerKey};

use crate::auth::{Auth, Gate};
use crate::config::Config;
use crate::host;
use crate::metrics::Metrics;

/// A cheap handle to everything the handlers need.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    config: Config,
    auth: Arc<Auth>,
    ready: AtomicBool,
    metrics: Arc<Metrics>,
    /// What commands are signed with, and its stock of nonces; none when
    /// `signing.enabled` is false.
    signer: Option<Arc<AheadSigner>>,
    /// Its public key as the registration answer gives it.
    public_key: Option<String>,
}

impl AppState {
    /// State for a server over `registry` that signs commands with
    /// `signing_key`; not ready until [`set_ready`](Self::set_ready).
    pub fn new(
        registry: Registry,
        config: Config,
        auth: Auth,
        signing_key: Option<ServerKey>,
    ) -> Self {
        let metrics = Arc::new(Metrics::new(registry.clone()));
        let public_key = signing_key.as_ref().map(|key| key.public_key().to_base64());
        let signer = signing_key.map(|key| Arc::new(AheadSigner::new(key)));
        Self {
            inner: Arc::new(Inner {
                registry,
                config,
                auth: Arc::new(auth),
                ready: AtomicBool::new(false),
                metrics,
                signer,
                public_key,
            }),
        }
    }

    /// What commands are signed with, if they are.
    pub fn signer(&self) -> Option<&Arc<AheadSigner>> {
        self.inner.signer.as_ref()
    }

    /// `serverPublicKey`: the standard base64 of the signing key's public key.
    pub fn server_public_key(&self) -> Option<&str> {
        self.inner.public_key.as_deref()
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The registry, once it holds every write any replica answered before
    /// this call (SPEC 9: a request may follow its write to another replica);
    /// at once with a store that no other replica writes.
    pub async fn caught_up(&self) -> Result<&Registry, RegistryError> {
        self.inner.registry.catch_up().await?;
        Ok(&self.inner.registry)
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The configured tokens.
    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    /// The token checks, for the auth middlewares.
    pub fn gate(&self) -> Gate {
        Gate::new(Arc::clone(&self.inner.auth), self.inner.registry.clone())
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Whether the registry accepts work (`/readyz`): serving, and its
    /// storage taking writes.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire) && self.inner.registry.storage_available()
    }

    /// Turns readiness on once serving, off when shutting down.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Release);
    }

    /// The absolute URL of an agent's stream: `server.public_url` when set, else
    /// `http://` and the request's Host (or the bind address, if it sent none:
    /// an HTTP/1.0 request). A Host that is not `host[:port]` never gets here
    /// ([`crate::host`]), and is never echoed.
    pub fn sse_endpoint(&self, headers: &HeaderMap, agent_id: &AgentId) -> String {
        let public_url = self.config().server.public_url.trim_end_matches('/');
        let base = if public_url.is_empty() {
            match host::request_host(headers) {
                Some(host) => format!("http://{host}"),
                None => format!("http://{}", self.config().server.bind),
            }
        } else {
            public_url.to_owned()
        };
        format!("{base}/api/v1/agents/{agent_id}/events")
    }
}
