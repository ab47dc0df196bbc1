//! Registers a fleet: `POST /api/v1/agents/register` for every agent, over a
//! bounded number of keep-alive connections, which are closed afterwards;
//! with several servers (a cluster's replicas), agent `i` through server
//! `i mod len`, as a round-robin balancer would send it.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::fleet;
use super::http::{HttpConnection, Server};

/// How a registration went.
#[derive(Debug, Default)]
pub(crate) struct Registered {
    /// Agents answered 201 or 200.
    pub(crate) ok: usize,
    /// Agents answered otherwise, or not answered.
    pub(crate) failed: usize,
    /// The first unexpected answer.
    pub(crate) first_error: Option<String>,
    /// How long it took, in seconds.
    pub(crate) seconds: f64,
}

impl Registered {
    /// Registrations answered per second.
    pub(crate) fn per_second(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }

    /// Prints how it went, as every run reports it.
    pub(crate) fn report(&self) {
        let first_failure = self
            .first_error
            .as_deref()
            .map(|err| format!(" (first failure: {err})"))
            .unwrap_or_default();
        eprintln!(
            "  {} registered, {} failed, {:.0}/s{first_failure}",
            self.ok,
            self.failed,
            self.per_second()
        );
    }
}

/// Registers agents `0..count` (ids `{prefix}{index:06}`, spread over `groups`
/// groups) with `concurrency` requests in flight, agent `i` through
/// `servers[i mod len]`.
pub(crate) async fn register_fleet(
    servers: &[Server],
    prefix: &str,
    count: usize,
    groups: usize,
    concurrency: usize,
) -> io::Result<Registered> {
    if servers.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no server to register with",
        ));
    }
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.clamp(1, count.max(1)) {
        let next = next.clone();
        let mut connections: Vec<HttpConnection> =
            servers.iter().cloned().map(HttpConnection::new).collect();
        let prefix = prefix.to_owned();
        workers.push(tokio::spawn(async move {
            let mut outcome = Registered::default();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    break;
                }
                let body = fleet::registration_body(&prefix, index, groups);
                let servers = connections.len();
                let connection = &mut connections[index % servers];
                match connection
                    .send("POST", "/api/v1/agents/register", Some(&body))
                    .await
                {
                    Ok(response) if response.status == 201 || response.status == 200 => {
                        outcome.ok += 1;
                    }
                    Ok(response) => {
                        outcome.failed += 1;
                        outcome.first_error.get_or_insert_with(|| {
                            format!(
                                "answered {}: {}",
                                response.status,
                                String::from_utf8_lossy(&response.body)
                            )
                        });
                    }
                    Err(err) => {
                        outcome.failed += 1;
                        outcome.first_error.get_or_insert_with(|| err.to_string());
                    }
                }
            }
            for connection in &mut connections {
                connection.close();
            }
            outcome
        }));
    }
    let mut total = Registered::default();
    for worker in workers {
        let outcome = worker.await.map_err(io::Error::other)?;
        total.ok += outcome.ok;
        total.failed += outcome.failed;
        if total.first_error.is_none() {
            total.first_error = outcome.first_error;
        }
    }
    total.seconds = started.elapsed().as_secs_f64();
    Ok(total)
}
