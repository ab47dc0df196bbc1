//! The server's configuration: built-in defaults, then `config/registry.toml`
//! (or `--config PATH`), then `REGISTRY_<SECTION>__<KEY>` environment variables,
//! then command-line flags, later wins; checked whole before the server starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
pub use registry_core::Replay;
use serde::Deserialize;

use crate::cross_site::Origin;

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "config/registry.toml";
/// The largest `sse.fleet_queue`: about 100 MB of events held for the slowest reader.
const MAX_FLEET_QUEUE: usize = 1 << 20;
/// Descriptors kept back from connections for files and Redis when
/// `max_connections` is 0.
const FILE_DESCRIPTOR_RESERVE: u64 = 64;
/// The longest duration any setting accepts: one year as humantime counts it
/// (365.25 days, so `1y` itself is accepted). Past it an expiry could overflow
/// a clock or a timestamp (RFC 3339 stops at year 9999).
pub const MAX_DURATION: Duration = Duration::from_secs(31_557_600);
/// The shortest duration accepted where zero makes no sense: below a
/// millisecond a timer would only spin.
const MIN_DURATION: Duration = Duration::from_millis(1);
/// The largest `server.max_body_bytes`: a body is held in memory whole.
const MAX_BODY_BYTES: usize = 1 << 30;
/// The longest `sse.queue`: commands held per stream for a slow reader.
const MAX_STREAM_QUEUE: usize = 65_536;
/// Keys whose values may hold a secret, never quoted in an error, with what
/// each must be.
const SECRET_KEYS: [(&str, &str); 3] = [
    ("auth.operator_tokens", "a list of strings"),
    ("auth.enrollment_tokens", "a list of strings"),
    ("storage.redis_url", "a redis:// URL"),
];
/// What every environment variable of the configuration starts with.
const ENV_PREFIX: &str = "REGISTRY_";
/// Names EventSource gives its own events: a command of such a type would fire
/// the client's `onmessage`, `onerror` or `onopen` (SPEC 10).
const RESERVED_EVENT_NAMES: [&str; 3] = ["message", "error", "open"];
/// Keys whose environment variables hold comma-separated lists.
const LIST_KEYS: [&str; 4] = [
    "server.cors_origins",
    "commands.types",
    "auth.operator_tokens",
    "auth.enrollment_tokens",
];

/// Command-line flags; they override every other source.
#[derive(Debug, Default, Parser)]
#[command(
    name = "registry-server",
    version,
    about = "The agent registry: lifecycle tracking and SSE command push"
)]
pub struct Cli {
    /// The configuration file (default: config/registry.toml, when it exists).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The address to listen on, overriding `server.bind`.
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,
}

/// Every setting, by section, as in `config/registry.toml`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[lifecycle]`
    pub lifecycle: LifecycleConfig,
    /// `[commands]`
    pub commands: CommandsConfig,
    /// `[sse]`
    pub sse: SseConfig,
    /// `[auth]`
    pub auth: AuthConfig,
    /// `[storage]`
    pub storage: StorageConfig,
    /// `[signing]`
    pub signing: SigningConfig,
}

/// `[server]`: where and how the server listens.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The address to listen on.
    pub bind: String,
    /// The base URL advertised in `sseEndpoint`; empty: `http://` and the request's Host.
    pub public_url: String,
    /// The largest request body accepted; larger is 413.
    pub max_body_bytes: usize,
    /// Open streams at most; 0: `max_connections` less 1/32 of it.
    pub max_streams: usize,
    /// Open connections at most; 0: the open-file limit less 64. At the
    /// limit a new connection closes the one idle longest, or is closed.
    pub max_connections: usize,
    /// How long a client may take to send a request's body.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A request head must arrive whole within this of its first byte.
    #[serde(with = "humantime_serde")]
    pub head_timeout: Duration,
    /// How long a connection may stay idle (no request in progress, no byte
    /// of a next head) before it is closed. Longer than the heartbeat
    /// interval, so that agents can keep their connection alive between heartbeats.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long shutdown waits for requests in flight before it exits anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Origins (`scheme://host[:port]`) whose pages may call the API from a
    /// browser (CORS); every other cross-site request is refused.
    pub cors_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            public_url: String::new(),
            max_body_bytes: 262_144,
            max_streams: 0,
            max_connections: 0,
            request_timeout: Duration::from_secs(10),
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            shutdown_grace: Duration::from_secs(5),
            cors_origins: Vec::new(),
        }
    }
}

/// `[lifecycle]`: when agents go STALE and DEAD, and the brake on mass death.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleConfig {
    /// Advertised to agents at registration.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// LIVE to STALE after this long without a heartbeat.
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
    /// STALE to DEAD this long after becoming STALE.
    #[serde(with = "humantime_serde")]
    pub dead_after: Duration,
    /// The brake engages when more than this share of the LIVE and STALE
    /// agents went STALE within one `stale_after`; in (0, 1], 1 turns it off.
    pub brake_threshold: f64,
    /// The brake never engages with fewer LIVE and STALE agents.
    pub brake_min_agents: usize,
    /// The brake releases this long after it engaged at the latest.
    #[serde(with = "humantime_serde")]
    pub brake_max: Duration,
    /// Agents of any status (DEAD included) at most; a new one past it is 429.
    pub max_agents: usize,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        let core = registry_core::Settings::default();
        Self {
            heartbeat_interval: Duration::from_secs(30),
            stale_after: core.stale_after,
            dead_after: core.dead_after,
            brake_threshold: core.brake_threshold,
            brake_min_agents: core.brake_min_agents,
            brake_max: core.brake_max,
            max_agents: core.max_agents,
        }
    }
}

/// `[commands]`: expiry, retention and the allowed types.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct CommandsConfig {
    /// A command not acknowledged this long after creation expires.
    #[serde(with = "humantime_serde")]
    pub expiry: Duration,
    /// A final command stays readable this long.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// The command types operators may send.
    pub types: Vec<String>,
    /// PENDING and DELIVERED commands one agent holds at most: one more is
    /// 429, and a group or fleet command skips the agent.
    pub max_unfinished_per_agent: usize,
    /// Commands retained at most, in any status.
    pub max_retained: usize,
    /// Payload bytes retained at most; a rollout's payload counts once.
    pub max_retained_bytes: usize,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        let core = registry_core::Settings::default();
        Self {
            expiry: core.command_expiry,
            retention: core.command_retention,
            types: core.command_types,
            max_unfinished_per_agent: core.max_unfinished_per_agent,
            max_retained: core.max_retained,
            max_retained_bytes: core.max_retained_bytes,
        }
    }
}

/// `[sse]`: the agents' streams.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct SseConfig {
    /// A comment is sent when nothing else was for this long.
    #[serde(with = "humantime_serde")]
    pub keepalive: Duration,
    /// Commands queued for a stream; a reader this far behind loses its stream.
    pub queue: usize,
    /// Events kept for a reader of the fleet stream (`/api/v1/events`); a
    /// reader this far behind loses its stream.
    pub fleet_queue: usize,
    /// Sent as `retry:` at the start of each stream, plus a random jitter of up to as much again.
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
    /// Sent as `retry:` to a stream that a newer one for the same agent replaced.
    #[serde(with = "humantime_serde")]
    pub replaced_retry: Duration,
    /// What a new stream is sent first: `none` or `unacknowledged`.
    pub replay: Replay,
}

impl Default for SseConfig {
    fn default() -> Self {
        let core = registry_core::Settings::default();
        Self {
            keepalive: Duration::from_secs(15),
            queue: core.stream_queue,
            fleet_queue: core.fleet_queue,
            retry: Duration::from_secs(5),
            replaced_retry: Duration::from_secs(60),
            replay: core.replay,
        }
    }
}

/// `[auth]`: bearer tokens by role.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Tokens that may call the operator routes and `/metrics`.
    pub operator_tokens: Vec<String>,
    /// A file of operator tokens, one a line.
    pub operator_tokens_file: String,
    /// Tokens that may register agents.
    pub enrollment_tokens: Vec<String>,
    /// A file of enrollment tokens, one a line.
    pub enrollment_tokens_file: String,
    /// Serve without tokens on a non-loopback address.
    pub allow_open: bool,
}

/// `[storage]`: where the registry keeps its state (SPEC 8).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Which engine keeps the state.
    pub engine: StorageEngine,
    /// The embedded engine's file, relative to the working directory.
    pub path: PathBuf,
    /// The Redis engine's server (section 9); it may hold a password, never printed.
    pub redis_url: String,
    /// What every Redis key and channel starts with.
    pub redis_prefix: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            engine: StorageEngine::Embedded,
            path: PathBuf::from("data/registry.redb"),
            redis_url: "redis://127.0.0.1:6379/0".into(),
            redis_prefix: "registry:".into(),
        }
    }
}

/// `[signing]`: the key commands are signed with (SPEC 12).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct SigningConfig {
    /// The Ed25519 private key, unencrypted PKCS#8 PEM; empty: a key
    /// generated at first start and kept in storage (a new one at each start
    /// with `memory`).
    pub key_file: String,
    /// Whether commands are signed. Off only to measure what signing costs:
    /// events then carry no `signature` and `serverPublicKey` is null, which
    /// agents that require signatures (the SDK's `require_signatures()`) refuse.
    pub enabled: bool,
}

impl Default for SigningConfig {
    fn default() -> Self {
        Self {
            key_file: String::new(),
            enabled: true,
        }
    }
}

/// `storage.engine`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "lowercase")]
pub enum StorageEngine {
    /// One file at `storage.path`: a restart loses nothing but recent heartbeat times.
    Embedded,
    /// Nothing on disk: a restart loses everything.
    Memory,
    /// Replicas on one Redis (section 9).
    Redis,
}

/// A configuration that can't be used, with the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    /// An error described by `message`, which names the key at fault.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    fn key(key: &str, reason: impl std::fmt::Display) -> Self {
        Self(format!("{key}: {reason}"))
    }
}

impl Config {
    /// Reads every source in order and checks the result.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        Self::load_from(cli, std::env::vars())
    }

    /// Like [`load`](Self::load), with the environment given, for tests.
    pub fn load_from(
        cli: &Cli,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        match &cli.config {
            Some(path) => {
                if !path.is_file() {
                    return Err(ConfigError(format!(
                        "--config: {} is not a readable file",
                        path.display()
                    )));
                }
                builder = builder.add_source(config::File::from(path.as_path()));
            }
            None if Path::new(DEFAULT_CONFIG_FILE).is_file() => {
                builder = builder.add_source(config::File::with_name(DEFAULT_CONFIG_FILE));
            }
            None => {}
        }
        // Lists are split here rather than by config-rs, whose list parsing would
        // also turn a token such as `123456` into a number.
        let (lists, scalars): (Vec<_>, Vec<_>) = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .partition(|(name, _)| LIST_KEYS.contains(&env_key(name).as_str()));
        builder = builder.add_source(
            config::Environment::with_prefix("REGISTRY")
                .prefix_separator("_")
                .separator("__")
                .source(Some(scalars.into_iter().collect())),
        );
        for (name, value) in lists {
            let items: Vec<String> = value
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(str::to_owned)
                .collect();
            builder = builder
                .set_override(env_key(&name), items)
                .map_err(|err| ConfigError::key(&name, err))?;
        }
        if let Some(bind) = &cli.bind {
            builder = builder
                .set_override("server.bind", bind.as_str())
                .map_err(|err| ConfigError::key("--bind", err))?;
        }
        let config: Self = builder
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(describe)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone can't, section by section: durations within
    /// [`MAX_DURATION`] (and positive where zero makes no sense), numbers in
    /// their ranges, well-formed addresses and names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_server()?;
        self.validate_lifecycle()?;
        self.validate_commands()?;
        self.validate_sse()?;
        self.validate_storage()?;
        Ok(())
    }

    fn validate_server(&self) -> Result<(), ConfigError> {
        let server = &self.server;
        self.bind_addr()?;
        let url = &server.public_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::key(
                "server.public_url",
                "must start with http:// or https://, or be empty",
            ));
        }
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::key(
                "server.public_url",
                "must not hold white space",
            ));
        }
        check_range(
            "server.max_body_bytes",
            server.max_body_bytes,
            1..=MAX_BODY_BYTES,
        )?;
        check_positive_duration("server.request_timeout", server.request_timeout)?;
        check_positive_duration("server.head_timeout", server.head_timeout)?;
        check_positive_duration("server.idle_timeout", server.idle_timeout)?;
        // Zero is meaningful here: exit without waiting.
        check_duration("server.shutdown_grace", server.shutdown_grace)?;
        for origin in &server.cors_origins {
            Origin::parse(origin)
                .map_err(|reason| ConfigError::key("server.cors_origins", reason))?;
        }
        Ok(())
    }

    fn validate_lifecycle(&self) -> Result<(), ConfigError> {
        let lifecycle = &self.lifecycle;
        check_positive_duration("lifecycle.heartbeat_interval", lifecycle.heartbeat_interval)?;
        check_positive_duration("lifecycle.stale_after", lifecycle.stale_after)?;
        check_positive_duration("lifecycle.dead_after", lifecycle.dead_after)?;
        check_positive_duration("lifecycle.brake_max", lifecycle.brake_max)?;
        let threshold = lifecycle.brake_threshold;
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(ConfigError::key(
                "lifecycle.brake_threshold",
                format!("{threshold} must be more than 0 and at most 1 (1 turns the brake off)"),
            ));
        }
        check_at_least("lifecycle.max_agents", lifecycle.max_agents, 1)?;
        Ok(())
    }

    fn validate_commands(&self) -> Result<(), ConfigError> {
        let commands = &self.commands;
        check_positive_duration("commands.expiry", commands.expiry)?;
        check_positive_duration("commands.retention", commands.retention)?;
        check_at_least(
            "commands.max_unfinished_per_agent",
            commands.max_unfinished_per_agent,
            1,
        )?;
        check_at_least("commands.max_retained", commands.max_retained, 1)?;
        check_at_least(
            "commands.max_retained_bytes",
            commands.max_retained_bytes,
            1,
        )?;
        if commands.types.is_empty() {
            return Err(ConfigError::key(
                "commands.types",
                "must name at least one type",
            ));
        }
        // A type is written as the SSE `event:` field, so it must be a plain token.
        if let Some(bad) = commands.types.iter().find(|kind| {
            kind.is_empty()
                || kind.len() > 64
                || !kind
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
        }) {
            return Err(ConfigError::key(
                "commands.types",
                format!("{bad:?} must be 1 to 64 characters from A-Z a-z 0-9 . _ - :"),
            ));
        }
        if let Some(bad) = commands
            .types
            .iter()
            .find(|kind| RESERVED_EVENT_NAMES.contains(&kind.as_str()))
        {
            return Err(ConfigError::key(
                "commands.types",
                format!("{bad:?} names one of EventSource's own events (message, error, open)"),
            ));
        }
        Ok(())
    }

    fn validate_storage(&self) -> Result<(), ConfigError> {
        if self.storage.engine == StorageEngine::Embedded
            && self.storage.path.as_os_str().is_empty()
        {
            return Err(ConfigError::key("storage.path", "must name a file"));
        }
        Ok(())
    }

    fn validate_sse(&self) -> Result<(), ConfigError> {
        check_positive_duration("sse.keepalive", self.sse.keepalive)?;
        check_positive_duration("sse.retry", self.sse.retry)?;
        check_positive_duration("sse.replaced_retry", self.sse.replaced_retry)?;
        check_range("sse.queue", self.sse.queue, 1..=MAX_STREAM_QUEUE)?;
        // The fleet stream's queue is allocated whole, once: keep it reasonable.
        check_range("sse.fleet_queue", self.sse.fleet_queue, 1..=MAX_FLEET_QUEUE)?;
        Ok(())
    }

    /// `server.bind` as a socket address.
    pub fn bind_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.bind.parse().map_err(|err| {
            ConfigError::key("server.bind", format!("{:?}: {err}", self.server.bind))
        })
    }

    /// `server.max_connections` and `server.max_streams`, with each 0
    /// resolved: connections from the open-file limit less 64 for files and
    /// Redis, streams from the connections less 1/32 of them (for heartbeats,
    /// acks and operators). More streams than connections is invalid.
    pub fn connection_limits(&self, open_file_limit: u64) -> Result<ConnectionLimits, ConfigError> {
        let connections = match self.server.max_connections {
            0 => default_max_connections(open_file_limit),
            limit => limit,
        };
        let streams = match self.server.max_streams {
            0 => default_max_streams(connections),
            limit if limit > connections => {
                return Err(ConfigError::key(
                    "server.max_streams",
                    format!(
                        "{limit} is more than the {connections} connections allowed \
                         (server.max_connections, or the open-file limit less 64): \
                         every stream holds a connection"
                    ),
                ));
            }
            limit => limit,
        };
        Ok(ConnectionLimits {
            connections,
            streams,
        })
    }

    /// The core's settings, with `max_streams` resolved as in
    /// [`connection_limits`](Self::connection_limits).
    pub fn core_settings(&self, limits: ConnectionLimits) -> registry_core::Settings {
        registry_core::Settings {
            stale_after: self.lifecycle.stale_after,
            dead_after: self.lifecycle.dead_after,
            command_expiry: self.commands.expiry,
            command_retention: self.commands.retention,
            command_types: self.commands.types.clone(),
            stream_queue: self.sse.queue,
            fleet_queue: self.sse.fleet_queue,
            replay: self.sse.replay,
            max_streams: limits.streams,
            brake_threshold: self.lifecycle.brake_threshold,
            brake_min_agents: self.lifecycle.brake_min_agents,
            brake_max: self.lifecycle.brake_max,
            max_agents: self.lifecycle.max_agents,
            max_unfinished_per_agent: self.commands.max_unfinished_per_agent,
            max_retained: self.commands.max_retained,
            max_retained_bytes: self.commands.max_retained_bytes,
        }
    }
}

/// How many connections and streams the server holds open at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections at most, streams included.
    pub connections: usize,
    /// Open streams at most.
    pub streams: usize,
}

/// Fails unless `value` is at most [`MAX_DURATION`].
fn check_duration(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value > MAX_DURATION {
        return Err(ConfigError::key(
            key,
            format!(
                "{} is more than the longest allowed, one year",
                humantime::format_duration(value)
            ),
        ));
    }
    Ok(())
}

/// Fails unless `value` is at least a millisecond and at most [`MAX_DURATION`].
fn check_positive_duration(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value < MIN_DURATION {
        return Err(ConfigError::key(key, "must be at least 1ms"));
    }
    check_duration(key, value)
}

/// Fails unless `value` is at least `min`: a cap of zero would refuse everything.
fn check_at_least(key: &str, value: usize, min: usize) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::key(
            key,
            format!("{value} must be at least {min}"),
        ));
    }
    Ok(())
}

/// Fails unless `value` is in `range`.
fn check_range(
    key: &str,
    value: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<(), ConfigError> {
    if !range.contains(&value) {
        return Err(ConfigError::key(
            key,
            format!(
                "{value} is out of range: {} to {}",
                range.start(),
                range.end()
            ),
        ));
    }
    Ok(())
}

/// A config-rs error as the operator should read it, with the value left out
/// when its key may hold a secret (a token written where a list was
/// expected, a Redis URL with a password), and a TOML syntax error given by
/// line only, since the line it would quote may hold one.
fn describe(err: config::ConfigError) -> ConfigError {
    use config::ConfigError as Source;
    match err {
        // config-rs quotes the value in the error it wraps: name the key alone.
        Source::Type { key: Some(key), .. } | Source::At { key: Some(key), .. }
            if secret_key(&key).is_some() =>
        {
            let expected = secret_key(&key).map_or("", |(_, expected)| expected);
            ConfigError::key(
                &key,
                format!("invalid value (not shown, it may be a secret): expected {expected}"),
            )
        }
        Source::FileParse { uri, cause } => {
            let file = uri.unwrap_or_else(|| "the configuration file".into());
            let reason = match cause.downcast_ref::<toml::de::Error>() {
                Some(toml) => match (toml.span(), std::fs::read_to_string(&file)) {
                    (Some(span), Ok(text)) => {
                        let before = text.get(..span.start).unwrap_or(&text);
                        let line = before.matches('\n').count() + 1;
                        format!("not valid TOML at line {line}: {}", toml.message())
                    }
                    _ => format!("not valid TOML: {}", toml.message()),
                },
                None => "cannot be read".into(),
            };
            ConfigError(format!("{file}: {reason}"))
        }
        other => ConfigError(other.to_string()),
    }
}

/// The entry of [`SECRET_KEYS`] that `key` (`auth.operator_tokens[2]`
/// included) falls under, if any.
fn secret_key(key: &str) -> Option<(&'static str, &'static str)> {
    SECRET_KEYS.into_iter().find(|(secret, _)| {
        key.strip_prefix(secret)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('['))
    })
}

/// The configuration key of an environment variable: `REGISTRY_SSE__KEEPALIVE` is `sse.keepalive`.
fn env_key(name: &str) -> String {
    name.trim_start_matches(ENV_PREFIX)
        .to_ascii_lowercase()
        .replace("__", ".")
}

/// The open-file limit less [`FILE_DESCRIPTOR_RESERVE`], and at least 1.
fn default_max_connections(open_file_limit: u64) -> usize {
    usize::try_from(open_file_limit.saturating_sub(FILE_DESCRIPTOR_RESERVE))
        .unwrap_or(usize::MAX)
        .max(1)
}

/// `max_connections` less a thirty-second of it, kept for heartbeats, acks and
/// operators; at least 1.
fn default_max_streams(max_connections: usize) -> usize {
    (max_connections - max_connections / 32).max(1)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let cli = Cli {
            config: Some(PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../config/registry.toml"
            ))),
            bind: None,
        };
        Config::load_from(
            &cli,
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
    }

    /// Every `section.key` of a table of sections.
    fn keys(table: &toml::Table) -> BTreeSet<String> {
        table
            .iter()
            .flat_map(|(section, keys)| {
                let keys = keys.as_table().expect("a [section]");
                keys.keys().map(move |key| format!("{section}.{key}"))
            })
            .collect()
    }

    #[test]
    fn the_shipped_file_holds_exactly_the_built_in_defaults() {
        assert_eq!(load(&[]).unwrap(), Config::default());
        // A key missing from the file would fall back to its default above:
        // every key of the defaults must be written in the file too.
        let shipped = include_str!("../../config/registry.toml");
        let shipped: toml::Table = toml::from_str(shipped).expect("the shipped file is TOML");
        let defaults = toml::Table::try_from(Config::default()).expect("the defaults as TOML");
        let shipped = keys(&shipped);
        let missing: Vec<_> = keys(&defaults).difference(&shipped).cloned().collect();
        assert!(
            missing.is_empty(),
            "missing from config/registry.toml: {missing:?}"
        );
    }

    #[test]
    fn environment_overrides_the_file_and_parses_durations_and_lists() {
        let config = load(&[
            ("REGISTRY_LIFECYCLE__STALE_AFTER", "2s"),
            ("REGISTRY_SSE__KEEPALIVE", "500ms"),
            ("REGISTRY_COMMANDS__TYPES", "config-update,replay"),
            ("REGISTRY_SERVER__MAX_BODY_BYTES", "1024"),
        ])
        .unwrap();
        assert_eq!(config.lifecycle.stale_after, Duration::from_secs(2));
        assert_eq!(config.sse.keepalive, Duration::from_millis(500));
        assert_eq!(config.commands.types, ["config-update", "replay"]);
        assert_eq!(config.server.max_body_bytes, 1024);
    }

    #[test]
    fn stream_settings_parse_from_the_environment() {
        let config = load(&[
            ("REGISTRY_SSE__REPLAY", "unacknowledged"),
            ("REGISTRY_SSE__RETRY", "2s"),
            ("REGISTRY_SSE__REPLACED_RETRY", "1m"),
            (
                "REGISTRY_SERVER__CORS_ORIGINS",
                "https://ops.example, http://localhost:3000",
            ),
        ])
        .unwrap();
        assert_eq!(config.sse.replay, registry_core::Replay::Unacknowledged);
        assert_eq!(config.sse.retry, Duration::from_secs(2));
        assert_eq!(config.sse.replaced_retry, Duration::from_secs(60));
        assert_eq!(
            config.server.cors_origins,
            ["https://ops.example", "http://localhost:3000"]
        );
    }

    #[test]
    fn the_bind_flag_overrides_the_environment() {
        let cli = Cli {
            config: None,
            bind: Some("127.0.0.1:9999".into()),
        };
        let env = [("REGISTRY_SERVER__BIND".to_owned(), "127.0.0.1:1".to_owned())];
        let config = Config::load_from(&cli, env).unwrap();
        assert_eq!(config.server.bind, "127.0.0.1:9999");
    }

    #[test]
    fn an_invalid_setting_names_its_key() {
        for (name, value, key) in [
            ("REGISTRY_LIFECYCLE__STALE_AFTER", "soon", "stale_after"),
            (
                "REGISTRY_LIFECYCLE__DEAD_AFTER",
                "0s",
                "lifecycle.dead_after",
            ),
            ("REGISTRY_SERVER__BIND", "nowhere", "server.bind"),
            ("REGISTRY_SERVER__MAX_BODY_BYTES", "lots", "max_body_bytes"),
            ("REGISTRY_COMMANDS__TYPES", "a b", "commands.types"),
            (
                "REGISTRY_SERVER__PUBLIC_URL",
                "ftp://x",
                "server.public_url",
            ),
            ("REGISTRY_SERVER__COLOUR", "blue", "colour"),
            ("REGISTRY_COMMANDS__EXPIRY", "10000y", "commands.expiry"),
            (
                "REGISTRY_COMMANDS__EXPIRY",
                "300000000000y",
                "commands.expiry",
            ),
            ("REGISTRY_SERVER__HEAD_TIMEOUT", "0s", "server.head_timeout"),
            ("REGISTRY_SSE__KEEPALIVE", "100us", "sse.keepalive"),
            (
                "REGISTRY_SERVER__MAX_BODY_BYTES",
                "0",
                "server.max_body_bytes",
            ),
            ("REGISTRY_SSE__QUEUE", "65537", "sse.queue"),
            (
                "REGISTRY_LIFECYCLE__BRAKE_THRESHOLD",
                "0",
                "lifecycle.brake_threshold",
            ),
            (
                "REGISTRY_LIFECYCLE__BRAKE_THRESHOLD",
                "1.5",
                "lifecycle.brake_threshold",
            ),
            (
                "REGISTRY_LIFECYCLE__BRAKE_THRESHOLD",
                "NaN",
                "lifecycle.brake_threshold",
            ),
            ("REGISTRY_LIFECYCLE__BRAKE_MAX", "0s", "lifecycle.brake_max"),
            ("REGISTRY_COMMANDS__TYPES", "replay,error", "commands.types"),
            ("REGISTRY_COMMANDS__TYPES", "message", "commands.types"),
            ("REGISTRY_COMMANDS__TYPES", "open", "commands.types"),
            ("REGISTRY_SSE__RETRY", "0s", "sse.retry"),
            ("REGISTRY_SSE__REPLACED_RETRY", "0ms", "sse.replaced_retry"),
            ("REGISTRY_SSE__REPLAY", "all", "sse.replay"),
            (
                "REGISTRY_SERVER__CORS_ORIGINS",
                "https://ok.example,https://x.example/path",
                "server.cors_origins",
            ),
            ("REGISTRY_SERVER__CORS_ORIGINS", "*", "server.cors_origins"),
        ] {
            let err = load(&[(name, value)]).unwrap_err().to_string();
            assert!(err.contains(key), "{name}={value}: {err}");
        }
    }

    #[test]
    fn a_year_is_the_longest_duration_and_a_millisecond_the_shortest() {
        let config = load(&[
            ("REGISTRY_COMMANDS__EXPIRY", "1y"),
            ("REGISTRY_COMMANDS__RETENTION", "365d"),
            ("REGISTRY_SSE__KEEPALIVE", "1ms"),
            ("REGISTRY_SERVER__SHUTDOWN_GRACE", "0s"),
        ])
        .unwrap();
        assert_eq!(config.commands.expiry, MAX_DURATION);
        assert!(load(&[("REGISTRY_COMMANDS__EXPIRY", "1y 1s")]).is_err());
    }

    #[test]
    fn secret_keys_are_told_by_their_name_not_their_value() {
        assert!(secret_key("auth.operator_tokens").is_some());
        assert!(secret_key("auth.enrollment_tokens[3]").is_some());
        assert!(secret_key("storage.redis_url").is_some());
        assert!(secret_key("auth.operator_tokens_file").is_none());
        assert!(secret_key("server.public_url").is_none());
    }

    #[test]
    fn an_invalid_auth_setting_is_named_without_its_value() {
        let dir = std::env::temp_dir().join(format!("registry-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("registry.toml");
        std::fs::write(&file, "[auth]\noperator_tokens = \"s3cr3t-token\"\n").unwrap();
        let cli = Cli {
            config: Some(file),
            bind: None,
        };
        let err = Config::load_from(&cli, std::iter::empty())
            .unwrap_err()
            .to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("auth.operator_tokens"), "{err}");
        assert!(err.contains("expected a list of strings"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn zero_limits_leave_reserves_of_the_open_file_limit() {
        let limits = |connections, streams| {
            let mut config = Config::default();
            config.server.max_connections = connections;
            config.server.max_streams = streams;
            config.connection_limits(20_000)
        };
        let derived = limits(0, 0).unwrap();
        assert_eq!(derived.connections, 20_000 - 64);
        assert_eq!(derived.streams, 19_936 - 623);
        assert_eq!(limits(100, 0).unwrap().streams, 100 - 3);
        assert_eq!(limits(0, 500).unwrap().streams, 500);
        let err = limits(100, 101).unwrap_err().to_string();
        assert!(err.contains("server.max_streams"), "{err}");
        assert_eq!(default_max_connections(10), 1);
        assert_eq!(default_max_streams(1), 1);
    }
}
