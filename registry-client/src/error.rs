//! One error type for the SDK and the operator client: what the server
//! answered (its problem's detail), or why it could not be asked.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Response, StatusCode};

use crate::types::Problem;

/// Why a call to the registry did not give what was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error: its problem+json, with the detail
    /// that says what was wrong.
    #[error("{}", .problem.detail)]
    Api {
        /// The problem the server sent (or one made from its status, when the
        /// answer was not a problem, as a proxy's might not be).
        problem: Problem,
        /// The `Retry-After` of the answer, in seconds, when it had one.
        retry_after: Option<Duration>,
    },
    /// The server could not be reached, or the exchange broke off.
    #[error("cannot reach the registry: {0}")]
    Transport(#[source] reqwest::Error),
    /// The server answered something this client cannot read.
    #[error("unexpected answer from the registry: {0}")]
    Decode(String),
    /// A base URL that can't be used.
    #[error("invalid registry URL '{url}': {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The agent was shut down, or its task ended.
    #[error("the agent has stopped")]
    Stopped,
}

impl Error {
    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Api { problem, .. } => StatusCode::from_u16(problem.status).ok(),
            Self::Transport(err) => err.status(),
            _ => None,
        }
    }

    /// The problem the server answered, if it did.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Self::Api { problem, .. } => Some(problem),
            _ => None,
        }
    }

    /// `Retry-After` of an error answer.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the same call may work later: the server was unreachable,
    /// busy (429, 503) or failing (5xx), not refusing the request itself.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Api { problem, .. } => problem.status == 429 || problem.status >= 500,
            _ => false,
        }
    }
}

impl From<reqwest::Error> for Error {
    fn from(err: reqwest::Error) -> Self {
        if err.is_decode() {
            Self::Decode(err.to_string())
        } else {
            Self::Transport(err)
        }
    }
}

/// `response` if it is a success, else its problem as an [`Error::Api`].
pub(crate) async fn check(response: Response) -> Result<Response, Error> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.contains("json"));
    let body = response.text().await.unwrap_or_default();
    let parsed = is_json
        .then(|| serde_json::from_str::<Problem>(&body).ok())
        .flatten()
        .filter(|problem| !problem.detail.is_empty());
    let problem = parsed.unwrap_or_else(|| Problem {
        kind: "about:blank".into(),
        title: status.canonical_reason().unwrap_or_default().into(),
        status: status.as_u16(),
        detail: describe(status, &body),
    });
    Err(Error::Api {
        problem,
        retry_after,
    })
}

/// A detail for an answer that was not a problem: its status, and the start
/// of its body when it is short text.
fn describe(status: StatusCode, body: &str) -> String {
    let body = body.trim();
    if body.is_empty() || body.len() > 200 || body.starts_with('<') {
        format!("the registry answered {status}")
    } else {
        format!("the registry answered {status}: {body}")
    }
}
