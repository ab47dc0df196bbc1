//! The agent side (SPEC 3.1, 7, 10, 12, 14): a builder, then a running agent
//! that registers, heartbeats, holds its stream and hands each command to the
//! application, which acknowledges it.
//!
//! ```no_run
//! # async fn run() -> Result<(), registry_client::Error> {
//! use registry_client::{Agent, Outcome};
//!
//! let mut agent = Agent::builder("http://127.0.0.1:8080", "order-7f3a", "order-service", "orders")
//!     .version("1.4.2")
//!     .capabilities(["deep-trace"])
//!     .start()?;
//! while let Some(command) = agent.next_command().await {
//!     println!("{} {}", command.kind, command.payload);
//!     command.ack(Outcome::success("applied")).await?;
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `session`: the current registration, registering again, acknowledgements.
//! - `heartbeat`: the heartbeat loop.
//! - `stream`: the stream loop, reconnects, and handing commands over.
//! - [`Backoff`]: full-jitter exponential backoff.
//! - `seen`: the commands handed over already.

mod backoff;
mod heartbeat;
mod seen;
mod session;
mod stream;

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info};

pub use backoff::Backoff;

use crate::error::Error;
use crate::http::{self, Base};
use crate::types::{AckResult, CommandView, Timestamp};
use session::{Identity, Shared};
use stream::CommandEvent;

/// Where a running agent stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Registering (at start, or again after a 404 or 401).
    Registering,
    /// Registered, its stream open.
    Connected,
    /// Registered, its stream closed: waiting to reconnect.
    Disconnected,
    /// Stopped: shut down, dropped, or refused by the server for good.
    Stopped,
}

/// The type of a command. The server's `commands.types` decides which exist;
/// the three of its defaults are named.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CommandType {
    /// `config-update`
    ConfigUpdate,
    /// `deep-trace`
    DeepTrace,
    /// `replay`
    Replay,
    /// Any other type the server is configured with.
    Other(String),
}

impl CommandType {
    /// The type as the server names it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::ConfigUpdate => "config-update",
            Self::DeepTrace => "deep-trace",
            Self::Replay => "replay",
            Self::Other(name) => name,
        }
    }
}

impl From<&str> for CommandType {
    fn from(name: &str) -> Self {
        match name {
            "config-update" => Self::ConfigUpdate,
            "deep-trace" => Self::DeepTrace,
            "replay" => Self::Replay,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for CommandType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the application says of a command: the acknowledgement's body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// SUCCESS or FAILURE.
    pub result: AckResult,
    /// What to tell the operator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Outcome {
    /// It worked.
    pub fn success(message: impl Into<String>) -> Self {
        Self {
            result: AckResult::Success,
            message: Some(message.into()),
        }
    }

    /// It did not.
    pub fn failure(message: impl Into<String>) -> Self {
        Self {
            result: AckResult::Failure,
            message: Some(message.into()),
        }
    }
}

/// One command, handed to the application once. Acknowledge it with
/// [`ack`](Self::ack); one dropped unacknowledged expires on the server.
pub struct Command {
    /// Its id (a UUID).
    pub command_id: String,
    /// Its type.
    pub kind: CommandType,
    /// What the operator sent.
    pub payload: Value,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it expires unless acknowledged.
    pub expires_at: Timestamp,
    shared: Arc<Shared>,
}

impl Command {
    fn new(event: CommandEvent, shared: Arc<Shared>) -> Self {
        Self {
            command_id: event.command_id,
            kind: CommandType::from(event.kind.as_str()),
            payload: event.payload,
            created_at: event.created_at,
            expires_at: event.expires_at,
            shared,
        }
    }

    /// The payload read as `T`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.payload)
    }

    /// Acknowledges the command with `outcome`; answers the command as the
    /// server then holds it. Transient failures are retried until the command
    /// expires; a command that expired first is an error (409).
    pub async fn ack(self, outcome: Outcome) -> Result<CommandView, Error> {
        self.shared
            .ack(&self.command_id, &outcome, self.expires_at.0)
            .await
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Command")
            .field("command_id", &self.command_id)
            .field("kind", &self.kind)
            .field("payload", &self.payload)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What an agent is and how it behaves, before it starts.
#[derive(Debug)]
#[must_use = "an agent does nothing until started"]
pub struct AgentBuilder {
    base_url: String,
    identity: Identity,
    enrollment_token: Option<String>,
    backoff: Backoff,
    queue: usize,
    require_signatures: bool,
}

impl AgentBuilder {
    /// The version to declare.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.identity.version = Some(version.into());
        self
    }

    /// The routes to declare.
    pub fn route_ids<S: Into<String>>(mut self, route_ids: impl IntoIterator<Item = S>) -> Self {
        self.identity.route_ids = route_ids.into_iter().map(Into::into).collect();
        self
    }

    /// The capabilities to declare.
    pub fn capabilities<S: Into<String>>(
        mut self,
        capabilities: impl IntoIterator<Item = S>,
    ) -> Self {
        self.identity.capabilities = capabilities.into_iter().map(Into::into).collect();
        self
    }

    /// The enrollment token to register with, when the server uses tokens (SPEC 7).
    pub fn enrollment_token(mut self, token: impl Into<String>) -> Self {
        self.enrollment_token = Some(token.into());
        self
    }

    /// How reconnects and retries back off (default: 500 ms growing to 30 s,
    /// above the server's `retry:` and `Retry-After`).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Refuses every command (acknowledges it FAILURE) when the registry
    /// advertises no `serverPublicKey`, instead of taking commands unchecked
    /// from a registry that does not sign: so that nothing between the agent
    /// and its registry can turn signing off by removing the key.
    pub fn require_signatures(mut self) -> Self {
        self.require_signatures = true;
        self
    }

    /// How many commands may wait for the application before the agent stops
    /// reading its stream (default 16).
    pub fn queue(mut self, queue: usize) -> Self {
        self.queue = queue.max(1);
        self
    }

    /// Starts the agent on the current Tokio runtime. It registers in the
    /// background, and keeps trying while the registry can't be reached.
    /// Fails only on a base URL that can't be used.
    pub fn start(self) -> Result<Agent, Error> {
        let base = Base::parse(&self.base_url)?;
        let shared = Arc::new(Shared::new(
            http::client(),
            base,
            self.identity,
            self.enrollment_token,
            self.backoff,
            self.require_signatures,
        ));
        let (sender, commands) = mpsc::channel(self.queue);
        let state = shared.state.subscribe();
        let task = tokio::spawn(run(shared.clone(), sender));
        Ok(Agent {
            commands,
            shared,
            state,
            task: Some(task),
        })
    }
}

/// A running agent. Dropping it stops it; [`shutdown`](Self::shutdown) stops
/// it and waits until it has.
pub struct Agent {
    commands: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    state: watch::Receiver<State>,
    task: Option<JoinHandle<()>>,
}

impl Agent {
    /// An agent of the registry at `base_url`, with its id, name and group.
    pub fn builder(
        base_url: impl Into<String>,
        agent_id: impl Into<String>,
        name: impl Into<String>,
        group: impl Into<String>,
    ) -> AgentBuilder {
        AgentBuilder {
            base_url: base_url.into(),
            identity: Identity {
                agent_id: agent_id.into(),
                name: name.into(),
                group: group.into(),
                version: None,
                route_ids: Vec::new(),
                capabilities: Vec::new(),
            },
            enrollment_token: None,
            backoff: Backoff::default(),
            queue: 16,
            require_signatures: false,
        }
    }

    /// The agent's id.
    pub fn agent_id(&self) -> &str {
        &self.shared.identity.agent_id
    }

    /// The next command, each one once; `None` once the agent has stopped.
    pub async fn next_command(&mut self) -> Option<Command> {
        self.commands.recv().await
    }

    /// Where the agent stands now.
    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// Follows the agent's state as it changes.
    pub fn states(&self) -> watch::Receiver<State> {
        self.state.clone()
    }

    /// Stops heartbeating, closes the stream, and waits until the agent has
    /// stopped. The registry keeps the agent, which turns STALE, then DEAD.
    /// An error says why the agent had stopped by itself, if it had (the
    /// server refused its registration).
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.shared.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let fatal = self
            .shared
            .fatal
            .lock()
            .ok()
            .and_then(|mut fatal| fatal.take());
        fatal.map_or(Ok(()), Err)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("agent_id", &self.agent_id())
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// The agent's task: the heartbeat and stream loops side by side, until the
/// agent is stopped or one of them meets an error it can't get past.
async fn run(shared: Arc<Shared>, commands: mpsc::Sender<Command>) {
    let loops = async {
        tokio::try_join!(
            heartbeat::run(&shared),
            stream::run(shared.clone(), commands)
        )
    };
    let result = tokio::select! {
        () = shared.stop.cancelled() => Ok(()),
        result = loops => result.map(drop),
    };
    match result {
        Ok(()) | Err(Error::Stopped) => {
            info!(agent_id = %shared.identity.agent_id, "agent stopped");
        }
        Err(err) => {
            error!(agent_id = %shared.identity.agent_id, %err, "agent stopped: the registry refused it");
            if let Ok(mut fatal) = shared.fatal.lock() {
                *fatal = Some(err);
            }
            shared.stop.cancel();
        }
    }
    shared.set_state(State::Stopped);
}
