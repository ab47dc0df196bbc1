//! The keeper: every second it renews this replica's liveness in
//! `P replicas` (and the public key it signs with in `P keys`), forgets
//! replicas whose liveness ran out, tells the registry which are alive, and
//! announces its streams again when it finds its liveness had run out (the
//! others ended them meanwhile), and watches Redis: when Redis can't be reached or lost the registry (the
//! marker is gone), it has the registry check its storage, which refuses
//! writes (503) and reads the state again until Redis serves it.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use redis::{Client, Value};
use registry_core::replication::ReplicaId;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::engine::{LIVENESS, TIMEOUT};
use crate::follower::Follower;
use crate::scripts;
use crate::shared::Shared;

/// How often liveness is renewed, and Redis checked.
const RENEW: Duration = Duration::from_secs(1);

/// See the module's documentation.
pub struct Keeper {
    client: Client,
    shared: Arc<Shared>,
}

impl Keeper {
    pub(crate) fn new(client: Client, shared: Arc<Shared>) -> Self {
        Self { client, shared }
    }

    /// Runs until `stop`.
    pub async fn run(self, follower: impl Follower, stop: CancellationToken) {
        let script = scripts::keep();
        let config = ConnectionManagerConfig::new()
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
                    .trouble(&follower, healthy, "Redis can't be reached")
                    .await;
                continue;
            };
            let answer: redis::RedisResult<Vec<Value>> = script
                .key(&self.shared.keys.replicas)
                .key(&self.shared.keys.keys)
                .key(&self.shared.keys.marker)
                .arg(self.shared.replica.as_ref())
                .arg(LIVENESS.as_millis() as u64)
                .arg(self.shared.public_key().unwrap_or_default())
                .arg(self.shared.epoch().unwrap_or_default())
                .invoke_async(connection)
                .await;
            healthy = match answer.as_deref() {
                Ok([Value::Int(1), Value::Int(lapsed), live @ ..]) => {
                    if !healthy {
                        info!("Redis serves the registry again");
                    }
                    let live: Vec<ReplicaId> = live
                        .iter()
                        .filter_map(|id| redis::from_redis_value_ref::<String>(id).ok())
                        .map(ReplicaId::from)
                        .collect();
                    follower.replicas_alive(&live);
                    if *lapsed == 1 {
                        // Forgotten meanwhile: the other replicas ended the
                        // streams open here, which are still open.
                        warn!(
                            prefix = %self.shared.keys.prefix,
                            "this replica's liveness had run out: its streams are announced again"
                        );
                        follower.announce_streams();
                    }
                    true
                }
                Ok(_) => {
                    self.trouble(&follower, healthy, "the registry's marker is gone")
                        .await
                }
                Err(_) => {
                    self.trouble(&follower, healthy, "Redis can't be reached")
                        .await
                }
            };
        }
    }

    /// Says what is wrong (once) and has the registry check its storage.
    async fn trouble(&self, follower: &impl Follower, healthy: bool, what: &str) -> bool {
        if healthy {
            warn!(
                prefix = %self.shared.keys.prefix,
                url = %self.shared.url,
                "{what}: the registry checks its storage"
            );
        }
        // The writer logs what it finds and refuses writes until Redis serves.
        follower.check_storage().await;
        false
    }
}
