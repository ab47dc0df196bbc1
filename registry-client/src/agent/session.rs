//! What the agent's loops share: who the agent is, its current registration
//! (token, stream URL, heartbeat interval, the server's key), registering
//! again when the server no longer knows it (404) or its token (401), and
//! acknowledgements. One registration at a time, whoever asks for it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use registry_signing::PublicKey;
use reqwest::header::AUTHORIZATION;
use reqwest::{RequestBuilder, StatusCode};
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use url::Url;

use super::backoff::Backoff;
use super::{Outcome, State};
use crate::error::{Error, check};
use crate::http::Base;
use crate::types::{CommandView, Registered};

/// How long a registration, heartbeat or acknowledgement may take.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The keepalive the contract promises when the server does not say (15 s).
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);

/// What the agent declares at registration (SPEC 3.1).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Identity {
    pub(crate) agent_id: String,
    pub(crate) name: String,
    pub(crate) group: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) version: Option<String>,
    pub(crate) route_ids: Vec<String>,
    pub(crate) capabilities: Vec<String>,
}

/// One registration's answer, as the loops use it.
#[derive(Debug)]
pub(crate) struct Session {
    /// Counts registrations: a loop that found this one stale asks for a newer.
    pub(crate) generation: u64,
    /// The agent token, when the server uses tokens.
    pub(crate) token: Option<String>,
    /// The stream's URL, as the server advertised it.
    pub(crate) sse_endpoint: Url,
    /// How often to heartbeat.
    pub(crate) heartbeat_interval: Duration,
    /// The longest silence the server allows itself on the stream.
    pub(crate) keepalive: Duration,
    /// How this registration's commands are checked.
    pub(crate) signatures: Signatures,
}

/// What the registration said of signatures (SPEC 12).
#[derive(Debug)]
pub(crate) enum Signatures {
    /// No `serverPublicKey`: the server does not sign; nothing to check.
    Unsigned,
    /// Every command must carry this key's signature.
    Key(PublicKey),
    /// A `serverPublicKey` that is not a key: no command can be trusted.
    Unusable(String),
}

impl Signatures {
    fn from_advertised(key: Option<&str>, required: bool) -> Self {
        match key.filter(|key| !key.is_empty()) {
            None if required => Self::Unusable(
                "the registry advertises no serverPublicKey, and this agent requires signatures"
                    .into(),
            ),
            None => Self::Unsigned,
            Some(key) => match PublicKey::from_base64(key) {
                Ok(key) => Self::Key(key),
                Err(err) => Self::Unusable(format!("serverPublicKey is not a key: {err}")),
            },
        }
    }

    /// Checks a command event's data, as it arrived.
    pub(crate) fn check(&self, data: &str) -> Result<(), String> {
        match self {
            Self::Unsigned => Ok(()),
            Self::Key(key) => key.verify_data(data).map_err(|err| err.to_string()),
            Self::Unusable(why) => Err(why.clone()),
        }
    }
}

impl Session {
    /// `request` with the agent's token, when it has one.
    pub(crate) fn authorize(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.token {
            Some(token) => request.header(AUTHORIZATION, format!("Bearer {token}")),
            None => request,
        }
    }
}

/// What the agent's task, its loops and its commands share.
pub(crate) struct Shared {
    pub(crate) http: reqwest::Client,
    pub(crate) base: Base,
    pub(crate) identity: Identity,
    pub(crate) enrollment_token: Option<String>,
    pub(crate) backoff: Backoff,
    /// Refuse every command when the registry advertises no key.
    pub(crate) require_signatures: bool,
    /// Cancelled by shutdown, by the handle's drop, or by a fatal error.
    pub(crate) stop: CancellationToken,
    pub(crate) state: watch::Sender<State>,
    /// Told when a stream opens: the registry is reachable again, so a
    /// heartbeat backing off after failures is sent at once.
    pub(crate) reachable: Notify,
    session: watch::Sender<Option<Arc<Session>>>,
    /// Held while registering, so that two loops needing it register once.
    registering: tokio::sync::Mutex<()>,
    /// Why the agent stopped by itself, for [`Agent::shutdown`](super::Agent::shutdown).
    pub(crate) fatal: Mutex<Option<Error>>,
}

impl Shared {
    pub(crate) fn new(
        http: reqwest::Client,
        base: Base,
        identity: Identity,
        enrollment_token: Option<String>,
        backoff: Backoff,
        require_signatures: bool,
    ) -> Self {
        Self {
            http,
            base,
            identity,
            enrollment_token,
            backoff,
            require_signatures,
            stop: CancellationToken::new(),
            state: watch::Sender::new(State::Registering),
            reachable: Notify::new(),
            session: watch::Sender::new(None),
            registering: tokio::sync::Mutex::new(()),
            fatal: Mutex::new(None),
        }
    }

    /// The current registration, registering first if there is none yet or
    /// if it is `stale` (the generation a loop found refused). Retries with
    /// backoff until it succeeds, the agent stops, or the server refuses the
    /// registration itself (a 4xx other than 429: the agent can't fix that).
    pub(crate) async fn session(&self, stale: Option<u64>) -> Result<Arc<Session>, Error> {
        if let Some(current) = self.fresh(stale) {
            return Ok(current);
        }
        let _registering = self.registering.lock().await;
        // Another loop may have registered while this one waited.
        if let Some(current) = self.fresh(stale) {
            return Ok(current);
        }
        let generation = self.session.borrow().as_ref().map_or(0, |s| s.generation) + 1;
        let mut attempt = 0;
        loop {
            if self.stop.is_cancelled() {
                return Err(Error::Stopped);
            }
            // A registration under an open stream (a new token, a new key)
            // leaves the agent connected.
            if *self.state.borrow() != State::Connected {
                self.set_state(State::Registering);
            }
            match self.register(generation).await {
                Ok(session) => {
                    let session = Arc::new(session);
                    self.session.send_replace(Some(session.clone()));
                    return Ok(session);
                }
                Err(err) if err.is_transient() => {
                    let delay = self
                        .backoff
                        .delay(attempt, err.retry_after().unwrap_or_default());
                    warn!(agent_id = %self.identity.agent_id, %err, ?delay, "registration failed; trying again");
                    attempt = attempt.saturating_add(1);
                    tokio::select! {
                        () = self.stop.cancelled() => return Err(Error::Stopped),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// The current registration unless it is the `stale` one.
    fn fresh(&self, stale: Option<u64>) -> Option<Arc<Session>> {
        let current = self.session.borrow();
        current
            .as_ref()
            .filter(|session| Some(session.generation) != stale)
            .cloned()
    }

    /// The current registration, if any.
    pub(crate) fn current(&self) -> Option<Arc<Session>> {
        self.session.borrow().clone()
    }

    async fn register(&self, generation: u64) -> Result<Session, Error> {
        let mut request = self
            .http
            .post(self.base.url(&["api", "v1", "agents", "register"]))
            .timeout(CALL_TIMEOUT)
            .json(&self.identity);
        if let Some(token) = &self.enrollment_token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = check(request.send().await?).await?;
        let registered: Registered = response.json().await?;
        let sse_endpoint = Url::parse(&registered.sse_endpoint)
            .map_err(|err| Error::Decode(format!("sseEndpoint: {err}")))?;
        let signatures = Signatures::from_advertised(
            registered.server_public_key.as_deref(),
            self.require_signatures,
        );
        if let Signatures::Unusable(why) = &signatures {
            warn!(agent_id = %self.identity.agent_id, why, "every command will be refused");
        }
        info!(
            agent_id = %self.identity.agent_id,
            resumed = registered.resumed,
            signed = !matches!(signatures, Signatures::Unsigned),
            "registered"
        );
        Ok(Session {
            generation,
            token: registered.agent_token,
            sse_endpoint,
            // A zero interval would make the heartbeat loop spin.
            heartbeat_interval: Duration::from_millis(registered.heartbeat_interval_ms.max(100)),
            keepalive: registered
                .keepalive_ms
                .map_or(DEFAULT_KEEPALIVE, Duration::from_millis),
            signatures,
        })
    }

    /// The URL of one of the agent's own routes (`heartbeat`, `commands/ID/ack`).
    pub(crate) fn agent_url(&self, rest: &[&str]) -> Url {
        let mut segments = vec!["api", "v1", "agents", self.identity.agent_id.as_str()];
        segments.extend_from_slice(rest);
        self.base.url(&segments)
    }

    /// Acknowledges `command_id` with `outcome`. Registers again on 401 (the
    /// token was replaced) and retries what is transient, until the command's
    /// `expires_at`; a 404 (unknown command) or 409 (expired) is final.
    pub(crate) async fn ack(
        &self,
        command_id: &str,
        outcome: &Outcome,
        expires_at: SystemTime,
    ) -> Result<CommandView, Error> {
        let url = self.agent_url(&["commands", command_id, "ack"]);
        let mut session = self.session(None).await?;
        let mut attempt = 0;
        loop {
            let request = self
                .http
                .post(url.clone())
                .timeout(CALL_TIMEOUT)
                .json(outcome);
            let result = match session.authorize(request).send().await {
                Ok(response) => match check(response).await {
                    Ok(response) => return Ok(response.json().await?),
                    Err(err) => err,
                },
                Err(err) => Error::from(err),
            };
            if result.status() == Some(StatusCode::UNAUTHORIZED) && attempt == 0 {
                session = self.session(Some(session.generation)).await?;
            } else if !result.is_transient() || SystemTime::now() >= expires_at {
                return Err(result);
            } else {
                let delay = self
                    .backoff
                    .delay(attempt, result.retry_after().unwrap_or_default());
                tokio::time::sleep(delay).await;
            }
            attempt = attempt.saturating_add(1);
        }
    }

    pub(crate) fn set_state(&self, state: State) {
        self.state.send_if_modified(|current| {
            let changed = *current != state && *current != State::Stopped;
            if changed {
                *current = state;
            }
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use registry_signing::ServerKey;
    use serde_json::json;

    use super::*;

    #[test]
    fn commands_are_checked_against_the_advertised_key() {
        let key = ServerKey::generate().unwrap();
        let data = json!({"commandId": "c-1", "agentId": "a-1", "payload": {"sampling": 0.5}});
        let signed = key.sign_object(&registry_signing::canonical::to_string(&data).unwrap());
        let advertised = key.public_key().to_base64();

        let signatures = Signatures::from_advertised(Some(&advertised), false);
        assert_eq!(signatures.check(&signed), Ok(()));
        let tampered = signed.replace("0.5", "0.9");
        assert!(signatures.check(&tampered).is_err());
        let unsigned = data.to_string();
        assert!(signatures.check(&unsigned).is_err());

        let other = ServerKey::generate().unwrap().public_key().to_base64();
        assert!(
            Signatures::from_advertised(Some(&other), false)
                .check(&signed)
                .is_err()
        );
        assert_eq!(
            Signatures::from_advertised(None, false).check(&tampered),
            Ok(())
        );
        assert!(
            Signatures::from_advertised(None, true)
                .check(&signed)
                .is_err()
        );
        assert_eq!(
            Signatures::from_advertised(Some(&advertised), true).check(&signed),
            Ok(())
        );
        assert_eq!(
            Signatures::from_advertised(Some(""), false).check(&tampered),
            Ok(())
        );
        assert!(
            Signatures::from_advertised(Some("not a key"), false)
                .check(&signed)
                .is_err()
        );
    }
}
