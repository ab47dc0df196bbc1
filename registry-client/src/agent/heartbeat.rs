//! The heartbeat loop: one heartbeat every `heartbeatIntervalMs`, counted from
//! the registration (which is one); a 404 or 401 registers again at once; a
//! failed heartbeat is tried again sooner, with backoff, and at once when the
//! stream opens again.

use std::time::Duration;

use reqwest::StatusCode;
use tracing::{debug, warn};

use super::session::{CALL_TIMEOUT, Shared};
use crate::error::{Error, check};

/// Heartbeats until the agent stops; returns only on an error that stops it.
pub(crate) async fn run(shared: &Shared) -> Result<(), Error> {
    let url = shared.agent_url(&["heartbeat"]);
    let mut session = shared.session(None).await?;
    let mut failures: u32 = 0;
    let mut floor = Duration::ZERO;
    loop {
        if failures == 0 {
            tokio::time::sleep(session.heartbeat_interval).await;
        } else {
            let wait = shared
                .backoff
                .delay(failures - 1, floor)
                .min(session.heartbeat_interval);
            // Backing off while the registry was away; when the stream is
            // back, so is the registry: heartbeat at once.
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shared.reachable.notified() => {}
            }
        }
        // The stream loop or an acknowledgement may have registered again.
        if let Some(current) = shared.current() {
            session = current;
        }
        let request = shared.http.post(url.clone()).timeout(CALL_TIMEOUT);
        let result = match session.authorize(request).send().await {
            Ok(response) => check(response).await.map(drop),
            Err(err) => Err(Error::from(err)),
        };
        match result {
            Ok(()) => {
                debug!(agent_id = %shared.identity.agent_id, "heartbeat");
                failures = 0;
            }
            Err(err)
                if matches!(
                    err.status(),
                    Some(StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED)
                ) =>
            {
                warn!(agent_id = %shared.identity.agent_id, %err, "heartbeat refused; registering again");
                // A registration is a heartbeat: the next one is an interval away.
                session = shared.session(Some(session.generation)).await?;
                failures = 0;
            }
            Err(err) => {
                warn!(agent_id = %shared.identity.agent_id, %err, "heartbeat failed");
                floor = err.retry_after().unwrap_or_default();
                failures = failures.saturating_add(1);
            }
        }
    }
}
