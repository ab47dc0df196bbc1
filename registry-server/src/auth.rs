//! Bearer tokens in three roles (SPEC 7): operators, enrollment, and each
//! agent's own token issued at registration. Tokens are compared by their
//! SHA-256 digests in constant time; agent tokens are kept only as digests.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{RawPathParams, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use registry_core::{Credential, Registry};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::warn;

use crate::config::{AuthConfig, ConfigError};
use crate::error::ApiError;

/// Random bytes in an agent token: 256 bits.
const AGENT_TOKEN_BYTES: usize = 32;

/// The configured tokens, as digests.
#[derive(Debug, Default)]
pub struct Auth {
    operator: Vec<Credential>,
    enrollment: Vec<Credential>,
}

/// Who a presented token says the caller is.
#[derive(Debug, PartialEq, Eq)]
enum Role {
    Operator,
    Enrollment,
    Agent(registry_core::AgentId),
}

/// What a route requires.
#[derive(Debug, Clone, Copy)]
enum Required<'a> {
    Operator,
    Enrollment,
    Agent(&'a str),
}

impl Auth {
    /// Reads the tokens from the configuration and its token files.
    pub fn load(config: &AuthConfig) -> Result<Self, ConfigError> {
        let operator = tokens(
            &config.operator_tokens,
            "auth.operator_tokens_file",
            &config.operator_tokens_file,
        )?;
        let enrollment = tokens(
            &config.enrollment_tokens,
            "auth.enrollment_tokens_file",
            &config.enrollment_tokens_file,
        )?;
        Ok(Self {
            operator,
            enrollment,
        })
    }

    /// Whether any token is configured, which turns authentication on.
    pub fn enabled(&self) -> bool {
        !(self.operator.is_empty() && self.enrollment.is_empty())
    }

    /// Refuses to serve an open registry beyond loopback unless `allow_open`
    /// says so (then warns), and warns about roles that can't be used.
    pub fn check_exposure(&self, addr: SocketAddr, allow_open: bool) -> Result<(), ConfigError> {
        if self.enabled() {
            if self.operator.is_empty() {
                warn!(
                    "no operator token is configured: operator routes and /metrics can't be used"
                );
            }
            if self.enrollment.is_empty() {
                warn!("no enrollment token is configured: agents can't register");
            }
            return Ok(());
        }
        if addr.ip().is_loopback() {
            return Ok(());
        }
        if allow_open {
            warn!(%addr, "serving with no token on a non-loopback address (auth.allow_open = true): anyone who reaches it can push commands");
            return Ok(());
        }
        Err(ConfigError::new(format!(
            "auth: refusing to serve with no token on non-loopback {addr}; set auth.operator_tokens and auth.enrollment_tokens (or their _file), or auth.allow_open = true"
        )))
    }
}

/// What the token checks need, and nothing more: the configured tokens, and
/// the registry that knows which agent each agent token belongs to. The state
/// of the auth middlewares.
#[derive(Clone)]
pub struct Gate {
    auth: Arc<Auth>,
    registry: Registry,
}

impl Gate {
    /// The checks of `auth`'s tokens, and of the agent tokens `registry` issued.
    pub fn new(auth: Arc<Auth>, registry: Registry) -> Self {
        Self { auth, registry }
    }

    fn role(&self, digest: &Credential) -> Option<Role> {
        if contains(&self.auth.operator, digest) {
            Some(Role::Operator)
        } else if contains(&self.auth.enrollment, digest) {
            Some(Role::Enrollment)
        } else {
            self.registry.agent_with(digest).map(Role::Agent)
        }
    }

    /// Checks the request's token against what the route requires: 401 when
    /// missing or unknown, 403 when valid but of another role or agent.
    fn authorize(&self, headers: &HeaderMap, required: Required<'_>) -> Result<(), ApiError> {
        if !self.auth.enabled() {
            return Ok(());
        }
        let token = bearer(headers).ok_or(ApiError::Unauthorized)?;
        let role = self.role(&digest(token)).ok_or(ApiError::Unauthorized)?;
        let allowed = match (required, &role) {
            (Required::Operator, Role::Operator) | (Required::Enrollment, Role::Enrollment) => true,
            (Required::Agent(wanted), Role::Agent(agent_id)) => agent_id.as_str() == wanted,
            _ => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(ApiError::Forbidden(match required {
                Required::Operator => "this route needs an operator token".into(),
                Required::Enrollment => "registration needs an enrollment token".into(),
                Required::Agent(agent_id) => {
                    format!("this route needs agent '{agent_id}''s own token")
                }
            }))
        }
    }
}

/// A new agent token and its digest.
pub fn issue_agent_token() -> Result<(String, Credential), getrandom::Error> {
    let mut bytes = [0u8; AGENT_TOKEN_BYTES];
    getrandom::fill(&mut bytes)?;
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let credential = digest(&token);
    Ok((token, credential))
}

/// Middleware for operator routes.
pub async fn operator(
    State(gate): State<Gate>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    gate.authorize(request.headers(), Required::Operator)?;
    Ok(next.run(request).await)
}

/// Middleware for registration.
pub async fn enrollment(
    State(gate): State<Gate>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    gate.authorize(request.headers(), Required::Enrollment)?;
    Ok(next.run(request).await)
}

/// Middleware for an agent's own routes: the token must be that agent's.
pub async fn agent(
    State(gate): State<Gate>,
    params: Result<RawPathParams, RawPathParamsRejection>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    // A path that can't be decoded names no agent: the token is still checked
    // first, and the handler then answers 400 for the path.
    let params = params.ok();
    let agent_id = params
        .iter()
        .flat_map(RawPathParams::iter)
        .find(|(name, _)| *name == "agent_id")
        .map(|(_, value)| value)
        .unwrap_or_default();
    // With replicas, the token is checked against every registration answered
    // so far, by any replica: one issued or replaced through another replica a
    // moment ago counts here as it would on one server. (A no-op otherwise.)
    gate.registry.catch_up().await?;
    gate.authorize(request.headers(), Required::Agent(agent_id))?;
    Ok(next.run(request).await)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn digest(token: &str) -> Credential {
    Credential(Sha256::digest(token.as_bytes()).into())
}

/// Whether `candidate` is among `known`, looking at every entry whatever matches,
/// each in constant time, so the time taken says nothing of which one matched.
fn contains(known: &[Credential], candidate: &Credential) -> bool {
    known
        .iter()
        .fold(subtle::Choice::from(0), |found, known| {
            found | known.0.ct_eq(&candidate.0)
        })
        .into()
}

/// The tokens of one role: the listed ones and those of its file.
fn tokens(listed: &[String], file_key: &str, file: &str) -> Result<Vec<Credential>, ConfigError> {
    let mut all: Vec<String> = listed.iter().map(|token| token.trim().to_owned()).collect();
    if !file.is_empty() {
        let text = std::fs::read_to_string(Path::new(file))
            .map_err(|err| ConfigError::new(format!("{file_key}: cannot read {file}: {err}")))?;
        all.extend(token_lines(&text).map(str::to_owned));
    }
    all.retain(|token| !token.is_empty());
    Ok(all.iter().map(|token| digest(token)).collect())
}

/// The tokens of a token file: one a line, blank lines and `#` comments skipped,
/// white space (a CR too) trimmed.
fn token_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_skip_blank_lines_and_comments_and_trim_crlf() {
        let text = "# operators\r\n\r\n  alpha  \r\nbeta\n#gamma\n";
        assert_eq!(token_lines(text).collect::<Vec<_>>(), ["alpha", "beta"]);
    }

    #[test]
    fn a_named_token_file_that_cannot_be_read_names_its_key() {
        let config = AuthConfig {
            operator_tokens_file: "/nonexistent/tokens".into(),
            ..AuthConfig::default()
        };
        let err = Auth::load(&config).unwrap_err().to_string();
        assert!(err.contains("auth.operator_tokens_file"), "{err}");
    }

    #[test]
    fn agent_tokens_carry_256_random_bits() {
        let (first, digest_of_first) = issue_agent_token().unwrap();
        let (second, _) = issue_agent_token().unwrap();
        assert_ne!(first, second);
        assert_eq!(URL_SAFE_NO_PAD.decode(&first).unwrap().len(), 32);
        assert_eq!(digest(&first), digest_of_first);
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_needs_a_token() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn an_open_server_refuses_a_non_loopback_address_unless_allowed() {
        let open = Auth::default();
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let err = open.check_exposure(public, false).unwrap_err().to_string();
        assert!(err.contains("auth.allow_open"), "{err}");
        assert!(open.check_exposure(public, true).is_ok());
        assert!(
            open.check_exposure("127.0.0.1:8080".parse().unwrap(), false)
                .is_ok()
        );
        assert!(
            open.check_exposure("[::1]:8080".parse().unwrap(), false)
                .is_ok()
        );
    }
}
