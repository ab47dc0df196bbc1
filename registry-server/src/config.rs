//! The server's configuration: built-in defaults, then `config/registry.toml`
//! (or `--config PATH`), then `REGISTRY_<SECTION>__<KEY>` environment variables,
//! then command-line flags, later wins; checked whole before the server starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "config/registry.toml";

/// The largest `sse.fleet_queue`: about 100 MB of events held for the slowest reader.
const MAX_FLEET_QUEUE: usize = 1 << 20;
/// Descriptors kept back from streams, at least, when `max_streams` is 0.
const MIN_DESCRIPTOR_RESERVE: u64 = 256;
/// What every environment variable of the configuration starts with.
const ENV_PREFIX: &str = "REGISTRY_";
/// Keys whose environment variables hold comma-separated lists.
const LIST_KEYS: [&str; 3] = [
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
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
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
}

/// `[server]`: where and how the server listens.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The address to listen on.
    pub bind: String,
    /// The base URL advertised in `sseEndpoint`; empty: `http://` and the request's Host.
    pub public_url: String,
    /// The largest request body accepted; larger is 413.
    pub max_body_bytes: usize,
    /// Open streams at most; 0: the open-file limit less a reserve.
    pub max_streams: usize,
    /// How long a client may take to send a request's body.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long a connection may go without a complete request head: idle
    /// between requests, or sending a head slowly. Longer than the heartbeat
    /// interval, so that agents can keep their connection alive between heartbeats.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long shutdown waits for requests in flight before it exits anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            public_url: String::new(),
            max_body_bytes: 262_144,
            max_streams: 0,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// `[lifecycle]`: when agents go STALE and DEAD.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
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
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(30),
            stale_after: Duration::from_secs(90),
            dead_after: Duration::from_secs(300),
        }
    }
}

/// `[commands]`: expiry, retention and the allowed types.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
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
}

impl Default for CommandsConfig {
    fn default() -> Self {
        let core = registry_core::Settings::default();
        Self {
            expiry: core.command_expiry,
            retention: core.command_retention,
            types: core.command_types,
        }
    }
}

/// `[sse]`: the agents' streams.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
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
}

impl Default for SseConfig {
    fn default() -> Self {
        Self {
            keepalive: Duration::from_secs(15),
            queue: registry_core::Settings::default().stream_queue,
            fleet_queue: registry_core::Settings::default().fleet_queue,
        }
    }
}

/// `[auth]`: bearer tokens by role.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
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
            .map_err(|err| ConfigError(without_secrets(&err.to_string())))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone can't: positive durations, well-formed addresses and names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.bind_addr()?;
        let url = &self.server.public_url;
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
        for (key, value) in [
            ("server.max_body_bytes", self.server.max_body_bytes),
            ("sse.queue", self.sse.queue),
            ("sse.fleet_queue", self.sse.fleet_queue),
        ] {
            if value == 0 {
                return Err(ConfigError::key(key, "must be more than 0"));
            }
        }
        // The fleet stream's queue is allocated whole, once: keep it reasonable.
        if self.sse.fleet_queue > MAX_FLEET_QUEUE {
            return Err(ConfigError::key(
                "sse.fleet_queue",
                format!("must be at most {MAX_FLEET_QUEUE}"),
            ));
        }
        for (key, value) in [
            ("server.request_timeout", self.server.request_timeout),
            ("server.idle_timeout", self.server.idle_timeout),
            (
                "lifecycle.heartbeat_interval",
                self.lifecycle.heartbeat_interval,
            ),
            ("lifecycle.stale_after", self.lifecycle.stale_after),
            ("lifecycle.dead_after", self.lifecycle.dead_after),
            ("commands.expiry", self.commands.expiry),
            ("commands.retention", self.commands.retention),
            ("sse.keepalive", self.sse.keepalive),
        ] {
            if value.is_zero() {
                return Err(ConfigError::key(key, "must be more than 0"));
            }
        }
        if self.commands.types.is_empty() {
            return Err(ConfigError::key(
                "commands.types",
                "must name at least one type",
            ));
        }
        // A type is written as the SSE `event:` field, so it must be a plain token.
        if let Some(bad) = self.commands.types.iter().find(|kind| {
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
        Ok(())
    }

    /// `server.bind` as a socket address.
    pub fn bind_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.bind.parse().map_err(|err| {
            ConfigError::key("server.bind", format!("{:?}: {err}", self.server.bind))
        })
    }

    /// The core's settings, with `max_streams` resolved against the open-file limit.
    pub fn core_settings(&self, open_file_limit: u64) -> registry_core::Settings {
        registry_core::Settings {
            stale_after: self.lifecycle.stale_after,
            dead_after: self.lifecycle.dead_after,
            command_expiry: self.commands.expiry,
            command_retention: self.commands.retention,
            command_types: self.commands.types.clone(),
            stream_queue: self.sse.queue,
            fleet_queue: self.sse.fleet_queue,
            max_streams: match self.server.max_streams {
                0 => default_max_streams(open_file_limit),
                limit => limit,
            },
        }
    }
}

/// A config-rs error, with the value it quotes left out when the key holds
/// tokens: a token written where a list was expected must not reach the log.
fn without_secrets(message: &str) -> String {
    let Some((_, key)) = message.split_once("for key `") else {
        return message.to_owned();
    };
    let key = key.split('`').next().unwrap_or_default();
    if !(key.starts_with("auth.") && key.contains("token")) {
        return message.to_owned();
    }
    let expected = message
        .split_once(", expected ")
        .and_then(|(_, rest)| rest.split(" for key").next())
        .map(|expected| format!(": expected {expected}"))
        .unwrap_or_default();
    format!("{key}: invalid value (not shown, it may be a token){expected}")
}

/// The configuration key of an environment variable: `REGISTRY_SSE__KEEPALIVE` is `sse.keepalive`.
fn env_key(name: &str) -> String {
    name.trim_start_matches(ENV_PREFIX)
        .to_ascii_lowercase()
        .replace("__", ".")
}

/// The open-file limit less a reserve for heartbeats, acks, operators and the
/// process's own files: a thirty-second of the limit, and never under 256.
fn default_max_streams(open_file_limit: u64) -> usize {
    let reserve = (open_file_limit / 32).max(MIN_DESCRIPTOR_RESERVE);
    usize::try_from(open_file_limit.saturating_sub(reserve))
        .unwrap_or(usize::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn the_shipped_file_holds_exactly_the_built_in_defaults() {
        assert_eq!(load(&[]).unwrap(), Config::default());
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
        ] {
            let err = load(&[(name, value)]).unwrap_err().to_string();
            assert!(err.contains(key), "{name}={value}: {err}");
        }
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
        assert!(err.contains("expected a sequence"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn max_streams_zero_leaves_a_reserve_of_the_open_file_limit() {
        assert_eq!(default_max_streams(20_000), 20_000 - 625);
        assert_eq!(default_max_streams(1_024), 1_024 - 256);
        assert_eq!(default_max_streams(100), 1);
    }
}
