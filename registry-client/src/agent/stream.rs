//! The stream loop: holds the agent's SSE stream, hands each new command to
//! the application, and reconnects when the stream ends: after the server's
//! `retry:` (which grows to `sse.replaced_retry` when a newer stream replaced
//! this one) or `Retry-After`, plus full-jitter backoff while attempts fail.
//! A 404 or 401 registers again first. `Last-Event-ID` names the last
//! command seen, so a server that replays skips what this agent already has.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};
use reqwest::StatusCode;
use reqwest::header::ACCEPT;
use serde::Deserialize;
use serde_json::Value;
use sse_stream::SseByteStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::seen::Seen;
use super::session::{Session, Shared};
use super::{Command, Outcome, State};
use crate::error::{Error, check};
use crate::types::Timestamp;

/// The name of the header that tells the server the last event seen.
const LAST_EVENT_ID: &str = "Last-Event-ID";

/// The data of one command event (SPEC 3.1).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CommandEvent {
    pub(crate) command_id: String,
    pub(crate) agent_id: String,
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) payload: Value,
    pub(crate) created_at: Timestamp,
    pub(crate) expires_at: Timestamp,
}

/// Why the bytes of an open stream stopped coming.
#[derive(Debug, thiserror::Error)]
enum Broken {
    #[error("nothing received for {0:?}")]
    Idle(Duration),
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}

/// Why a stream that was open ended, for the log.
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("closed by the server")]
    Closed,
    #[error("{0}")]
    Broken(String),
}

/// The stream loop's own state across streams.
struct Streamer {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    seen: Seen,
    /// The last `retry:` the server sent: the least wait before reconnecting.
    retry: Duration,
    /// The id of the last command event, sent as `Last-Event-ID`.
    last_event_id: Option<String>,
}

/// Holds the stream until the agent stops; returns only on an error that stops it.
pub(crate) async fn run(shared: Arc<Shared>, commands: mpsc::Sender<Command>) -> Result<(), Error> {
    let mut streamer = Streamer {
        shared,
        commands,
        seen: Seen::default(),
        retry: Duration::ZERO,
        last_event_id: None,
    };
    streamer.run().await
}

impl Streamer {
    async fn run(&mut self) -> Result<(), Error> {
        let mut failures: u32 = 0;
        let mut stale = None;
        loop {
            let session = self.shared.session(stale.take()).await?;
            let floor = match self.open(&session).await {
                Ok(response) => {
                    failures = 0;
                    self.shared.set_state(State::Connected);
                    self.shared.reachable.notify_waiters();
                    info!(agent_id = %self.shared.identity.agent_id, "stream open");
                    let ended = self.hold(response, &session).await?;
                    self.shared.set_state(State::Disconnected);
                    info!(agent_id = %self.shared.identity.agent_id, %ended, retry = ?self.retry, "stream ended");
                    self.retry
                }
                Err(err)
                    if matches!(
                        err.status(),
                        Some(StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED)
                    ) =>
                {
                    warn!(agent_id = %self.shared.identity.agent_id, %err, "stream refused; registering again");
                    stale = Some(session.generation);
                    failures = failures.saturating_add(1);
                    // The first time, the new registration is all it takes.
                    if failures == 1 {
                        continue;
                    }
                    self.retry
                }
                Err(err) => {
                    self.shared.set_state(State::Disconnected);
                    warn!(agent_id = %self.shared.identity.agent_id, %err, "stream failed");
                    failures = failures.saturating_add(1);
                    self.retry.max(err.retry_after().unwrap_or_default())
                }
            };
            let delay = self.shared.backoff.delay(failures.saturating_sub(1), floor);
            debug!(agent_id = %self.shared.identity.agent_id, ?delay, "reconnecting");
            tokio::time::sleep(delay).await;
        }
    }

    async fn open(&self, session: &Session) -> Result<reqwest::Response, Error> {
        let mut request = self
            .shared
            .http
            .get(session.sse_endpoint.clone())
            .header(ACCEPT, "text/event-stream");
        if let Some(id) = &self.last_event_id {
            request = request.header(LAST_EVENT_ID, id);
        }
        check(session.authorize(request).send().await?).await
    }

    /// Reads the open stream until it ends; hands over each new command.
    async fn hold(
        &mut self,
        response: reqwest::Response,
        session: &Session,
    ) -> Result<Ended, Error> {
        // The server writes at least every keepalive; three missed mean the
        // connection is gone without having been closed.
        let idle = session.keepalive.saturating_mul(3);
        let mut blocks = std::pin::pin!(SseByteStream::new(idle_timeout(
            response.bytes_stream(),
            idle
        )));
        while let Some(block) = blocks.next().await {
            let block = match block {
                Ok(block) => block,
                Err(err) => return Ok(Ended::Broken(err.to_string())),
            };
            if let Some(millis) = block.retry {
                self.retry = Duration::from_millis(millis);
            }
            let Some(data) = block.data else { continue };
            if let Some(id) = block.id {
                self.last_event_id = Some(id);
            }
            self.hand_over(&data).await?;
        }
        Ok(Ended::Closed)
    }

    /// Hands the command of one event to the application, unless it was
    /// handed over already, or its signature does not verify (SPEC 12): then
    /// the agent registers again once, to learn a key that may have changed,
    /// and refuses the command (acknowledges it FAILURE) if it still fails.
    async fn hand_over(&mut self, data: &str) -> Result<(), Error> {
        let agent_id = &self.shared.identity.agent_id;
        let event: CommandEvent = match serde_json::from_str(data) {
            Ok(event) => event,
            Err(err) => {
                warn!(%agent_id, %err, "an event that is not a command; ignored");
                return Ok(());
            }
        };
        if &event.agent_id != agent_id {
            warn!(%agent_id, command_id = %event.command_id, other = %event.agent_id, "a command for another agent; ignored");
            return Ok(());
        }
        if self.seen.contains(&event.command_id) {
            debug!(%agent_id, command_id = %event.command_id, "sent again; handed over already");
            return Ok(());
        }
        let now = SystemTime::now();
        self.seen.insert(&event.command_id, event.expires_at.0, now);
        if let Err(why) = self.verify(data).await? {
            warn!(%agent_id, command_id = %event.command_id, why, "signature does not verify; command refused");
            let shared = self.shared.clone();
            let outcome =
                Outcome::failure(format!("refused: the signature does not verify ({why})"));
            // The stream goes on while the refusal is delivered.
            tokio::spawn(async move {
                if let Err(err) = shared
                    .ack(&event.command_id, &outcome, event.expires_at.0)
                    .await
                {
                    warn!(command_id = %event.command_id, %err, "the refusal was not acknowledged");
                }
            });
            return Ok(());
        }
        let command = Command::new(event, self.shared.clone());
        self.commands
            .send(command)
            .await
            .map_err(|_| Error::Stopped)
    }

    /// Checks `data` against the server's key; on a failure registers again
    /// once, in case the key changed, and checks again.
    async fn verify(&self, data: &str) -> Result<Result<(), String>, Error> {
        let Some(session) = self.shared.current() else {
            return Ok(Err("not registered".into()));
        };
        if session.signatures.check(data).is_ok() {
            return Ok(Ok(()));
        }
        let fresh = self.shared.session(Some(session.generation)).await?;
        Ok(fresh.signatures.check(data))
    }
}

/// `body`, ending with [`Broken::Idle`] when nothing arrives for `idle`.
fn idle_timeout(
    body: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    idle: Duration,
) -> impl Stream<Item = Result<Bytes, Broken>> + Send {
    let body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>> = Box::pin(body);
    stream::unfold(Some(body), move |body| async move {
        let mut body = body?;
        match tokio::time::timeout(idle, body.next()).await {
            Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(body))),
            Ok(Some(Err(err))) => Some((Err(Broken::Http(err)), None)),
            Ok(None) => None,
            Err(_) => Some((Err(Broken::Idle(idle)), None)),
        }
    })
}
