//! The operator side (SPEC 3.2, 11): a typed client for every operator route,
//! the rollouts and the fleet event stream. Each call answers the typed body,
//! or an [`Error`] carrying the server's problem.

use std::pin::Pin;

use futures_util::{Stream, StreamExt, future};
use reqwest::header::{ACCEPT, AUTHORIZATION};
use reqwest::{Method, RequestBuilder};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sse_stream::SseByteStream;

use crate::error::{Error, check};
use crate::http::{self, Base};
use crate::types::{
    AgentStatus, AgentView, CommandRequest, CommandView, FleetEvent, RolloutStarted, RolloutView,
};

/// The fleet's changes as they happen; ends when the server ends the stream
/// (a restart, or this reader fell behind: list again, then follow again).
pub type FleetEvents = Pin<Box<dyn Stream<Item = Result<FleetEvent, Error>> + Send>>;

/// Which agents [`Operator::agents`] lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentFilter {
    /// Only agents in this status.
    pub status: Option<AgentStatus>,
    /// Only agents of this group.
    pub group: Option<String>,
}

/// A client of the operator routes of one registry.
#[derive(Clone, Debug)]
pub struct Operator {
    base: Base,
    token: Option<String>,
    http: reqwest::Client,
}

impl Operator {
    /// A client of the registry at `base_url` (`http://127.0.0.1:8080`).
    pub fn new(base_url: &str) -> Result<Self, Error> {
        Ok(Self {
            base: Base::parse(base_url)?,
            token: None,
            http: http::client(),
        })
    }

    /// Sends `token` as `Authorization: Bearer` (an operator token, SPEC 7).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// `GET /api/v1/agents`: every agent, filtered.
    pub async fn agents(&self, filter: &AgentFilter) -> Result<Vec<AgentView>, Error> {
        let mut request = self.request(Method::GET, &["api", "v1", "agents"]);
        if let Some(status) = filter.status {
            request = request.query(&[("status", status.as_str())]);
        }
        if let Some(group) = &filter.group {
            request = request.query(&[("group", group)]);
        }
        json(request).await
    }

    /// `GET /api/v1/agents/{agentId}`.
    pub async fn agent(&self, agent_id: &str) -> Result<AgentView, Error> {
        json(self.request(Method::GET, &["api", "v1", "agents", agent_id])).await
    }

    /// `DELETE /api/v1/agents/{agentId}`: ends its stream and drops its commands.
    pub async fn delete_agent(&self, agent_id: &str) -> Result<(), Error> {
        let request = self.request(Method::DELETE, &["api", "v1", "agents", agent_id]);
        send(request.timeout(CALL_TIMEOUT)).await?;
        Ok(())
    }

    /// `DELETE /api/v1/agents?status=DEAD&confirm=true`: how many were deleted.
    pub async fn prune_dead(&self) -> Result<u64, Error> {
        #[derive(Deserialize)]
        struct Deleted {
            deleted: u64,
        }
        let request = self
            .request(Method::DELETE, &["api", "v1", "agents"])
            .query(&[("status", "DEAD"), ("confirm", "true")]);
        Ok(json::<Deleted>(request).await?.deleted)
    }

    /// `POST /api/v1/agents/{agentId}/commands`: the command created.
    pub async fn send_to_agent(
        &self,
        agent_id: &str,
        command: &CommandRequest,
    ) -> Result<CommandView, Error> {
        let path = ["api", "v1", "agents", agent_id, "commands"];
        json(self.request(Method::POST, &path).json(command)).await
    }

    /// `POST /api/v1/agents/groups/{group}/commands`: a rollout, one command
    /// per LIVE agent of the group.
    pub async fn send_to_group(
        &self,
        group: &str,
        command: &CommandRequest,
    ) -> Result<RolloutStarted, Error> {
        let path = ["api", "v1", "agents", "groups", group, "commands"];
        json(self.request(Method::POST, &path).json(command)).await
    }

    /// `POST /api/v1/agents/commands`: a rollout, one command per LIVE agent.
    pub async fn send_to_fleet(&self, command: &CommandRequest) -> Result<RolloutStarted, Error> {
        let path = ["api", "v1", "agents", "commands"];
        json(self.request(Method::POST, &path).json(command)).await
    }

    /// `GET /api/v1/agents/{agentId}/commands`: its retained commands, newest first.
    pub async fn commands_of(&self, agent_id: &str) -> Result<Vec<CommandView>, Error> {
        json(self.request(Method::GET, &["api", "v1", "agents", agent_id, "commands"])).await
    }

    /// `GET /api/v1/agents/{agentId}/commands/{commandId}`.
    pub async fn command(&self, agent_id: &str, command_id: &str) -> Result<CommandView, Error> {
        let path = ["api", "v1", "agents", agent_id, "commands", command_id];
        json(self.request(Method::GET, &path)).await
    }

    /// `GET /api/v1/rollouts`: the retained rollouts, newest first.
    pub async fn rollouts(&self) -> Result<Vec<RolloutView>, Error> {
        json(self.request(Method::GET, &["api", "v1", "rollouts"])).await
    }

    /// `GET /api/v1/rollouts/{rolloutId}`: its counts now.
    pub async fn rollout(&self, rollout_id: &str) -> Result<RolloutView, Error> {
        json(self.request(Method::GET, &["api", "v1", "rollouts", rollout_id])).await
    }

    /// `GET /api/v1/events`: follows the fleet. Nothing is replayed, so list
    /// first, then follow.
    pub async fn fleet_events(&self) -> Result<FleetEvents, Error> {
        let response = send(
            self.request(Method::GET, &["api", "v1", "events"])
                .header(ACCEPT, "text/event-stream"),
        )
        .await?;
        let events = SseByteStream::new(response.bytes_stream()).filter_map(|block| {
            future::ready(match block {
                Err(err) => Some(Err(Error::Decode(err.to_string()))),
                Ok(block) => match (block.event, block.data) {
                    (Some(event), Some(data)) => Some(
                        FleetEvent::parse(&event, &data)
                            .map_err(|err| Error::Decode(format!("{event} event: {err}"))),
                    ),
                    // `retry:` alone, or data without a name: nothing to report.
                    _ => None,
                },
            })
        });
        Ok(Box::pin(events))
    }

    fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        let request = self.http.request(method, self.base.url(segments));
        match &self.token {
            Some(token) => request.header(AUTHORIZATION, format!("Bearer {token}")),
            None => request,
        }
    }
}

/// Sends `request`; the answer if it is a success, else the server's problem.
async fn send(request: RequestBuilder) -> Result<reqwest::Response, Error> {
    check(request.send().await?).await
}

/// Sends `request` and reads its JSON answer.
async fn json<T: DeserializeOwned>(request: RequestBuilder) -> Result<T, Error> {
    let response = send(request.timeout(CALL_TIMEOUT)).await?;
    let bytes = response.bytes().await?;
    serde_json::from_slice(&bytes).map_err(|err| Error::Decode(err.to_string()))
}

/// How long an operator call may take: long enough for a fleet command to a
/// large fleet, short enough that a wedged connection is noticed.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
