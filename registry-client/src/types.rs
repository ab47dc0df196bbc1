//! The registry's wire types as its clients read and write them (SPEC 3, 4,
//! 11, 12): agents, commands, rollouts, fleet events and problems. Written
//! from the contract, not shared with the server, so that the SDK depends on
//! nothing but the wire. Unknown fields are ignored, as the contract asks.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A moment as the API writes it: RFC 3339 in UTC with milliseconds
/// (`2026-03-11T18:10:15.123Z`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    /// The moment as a [`SystemTime`].
    pub fn system_time(self) -> SystemTime {
        self.0
    }

    /// How long ago it was, by this machine's clock; zero if it is in the future.
    pub fn elapsed(self) -> std::time::Duration {
        SystemTime::now().duration_since(self.0).unwrap_or_default()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_rfc3339_millis(self.0).fmt(f)
    }
}

impl FromStr for Timestamp {
    type Err = humantime::TimestampError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        humantime::parse_rfc3339(text).map(Self)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where an agent is in its lifecycle (SPEC 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AgentStatus {
    /// Registered and heartbeating.
    Live,
    /// No heartbeat for `stale_after`.
    Stale,
    /// Still STALE `dead_after` after it became STALE.
    Dead,
}

impl AgentStatus {
    /// The status as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "LIVE",
            Self::Stale => "STALE",
            Self::Dead => "DEAD",
        }
    }
}

impl fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AgentStatus {
    type Err = String;

    /// Any letter case, as the server takes it.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_uppercase().as_str() {
            "LIVE" => Ok(Self::Live),
            "STALE" => Ok(Self::Stale),
            "DEAD" => Ok(Self::Dead),
            _ => Err(format!("'{text}' is not one of LIVE, STALE, DEAD")),
        }
    }
}

/// An agent as operators see it (SPEC 3.2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    /// Its id, chosen by the agent.
    pub agent_id: String,
    /// The service's name.
    pub name: String,
    /// Its group.
    pub group: String,
    /// Its version, if it declared one.
    #[serde(default)]
    pub version: Option<String>,
    /// The routes it serves.
    #[serde(default)]
    pub route_ids: Vec<String>,
    /// What it can do.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Its status now.
    pub status: AgentStatus,
    /// Its first registration.
    pub registered_at: Timestamp,
    /// Its last registration or heartbeat.
    pub last_heartbeat_at: Timestamp,
    /// When its status last changed.
    pub status_changed_at: Timestamp,
    /// Whether a stream is open for it now.
    pub connected: bool,
}

/// Where a command is in its life (SPEC 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CommandStatus {
    /// Created; not yet written to an open stream of the agent.
    Pending,
    /// Written to the agent's open stream; not acknowledged yet.
    Delivered,
    /// Acknowledged by the agent, with a result.
    Acknowledged,
    /// Not acknowledged in time.
    Expired,
}

impl CommandStatus {
    /// Whether the command will not change any more.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Acknowledged | Self::Expired)
    }

    /// The status as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Delivered => "DELIVERED",
            Self::Acknowledged => "ACKNOWLEDGED",
            Self::Expired => "EXPIRED",
        }
    }
}

impl fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an agent says a command went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AckResult {
    /// It worked.
    Success,
    /// It did not.
    Failure,
}

impl fmt::Display for AckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Success => "SUCCESS",
            Self::Failure => "FAILURE",
        })
    }
}

/// A command as operators read it (SPEC 4), and as an acknowledgement answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandView {
    /// Its id (a UUID).
    pub command_id: String,
    /// The agent it is for.
    pub agent_id: String,
    /// Its type (`config-update`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// What the operator sent.
    pub payload: Value,
    /// The rollout it belongs to, for a command sent to a group or the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<String>,
    /// Where it is in its life.
    pub status: CommandStatus,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it expires unless acknowledged.
    pub expires_at: Timestamp,
    /// When it was written to the agent's stream.
    #[serde(default)]
    pub delivered_at: Option<Timestamp>,
    /// When the agent acknowledged it.
    #[serde(default)]
    pub acknowledged_at: Option<Timestamp>,
    /// What the agent said of the outcome.
    #[serde(default)]
    pub result: Option<AckResult>,
    /// The agent's message.
    #[serde(default)]
    pub message: Option<String>,
}

/// What an operator sends: `{"type": "config-update", "payload": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandRequest {
    /// One of the server's `commands.types`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Any JSON value; `{}` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

impl CommandRequest {
    /// A command of `kind` with `payload`.
    pub fn new(kind: impl Into<String>, payload: Value) -> Self {
        Self {
            kind: kind.into(),
            payload: Some(payload),
        }
    }
}

/// One command of a rollout: which agent got which command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutCommand {
    /// The command's id.
    pub command_id: String,
    /// The agent it is for.
    pub agent_id: String,
}

/// The answer to a group or fleet command (SPEC 3.2): the payload once, and
/// the commands created as pairs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStarted {
    /// The rollout's id, for [`Operator::rollout`](crate::Operator::rollout).
    pub rollout_id: String,
    /// The commands' type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The commands' payload.
    #[serde(default)]
    pub payload: Value,
    /// How many commands were created.
    pub targeted: u64,
    /// LIVE agents left out because they hold too many unfinished commands.
    #[serde(default)]
    pub skipped: u64,
    /// When the commands were created.
    pub created_at: Timestamp,
    /// When they expire unless acknowledged.
    pub expires_at: Timestamp,
    /// One pair per command created.
    #[serde(default)]
    pub commands: Vec<RolloutCommand>,
}

/// A rollout's progress (SPEC 11): its commands counted by status now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutView {
    /// Its id.
    pub rollout_id: String,
    /// The commands' type.
    #[serde(rename = "type")]
    pub kind: String,
    /// `group:NAME` or `fleet`.
    pub target: String,
    /// When its commands were created.
    pub created_at: Timestamp,
    /// When they expire unless acknowledged.
    pub expires_at: Timestamp,
    /// How many commands it created.
    pub targeted: u64,
    /// LIVE agents left out.
    pub skipped: u64,
    /// Commands not yet written to a stream.
    pub pending: u64,
    /// Commands written, not yet acknowledged.
    pub delivered: u64,
    /// Commands acknowledged (`succeeded + failed`).
    pub acknowledged: u64,
    /// Acknowledged with SUCCESS.
    pub succeeded: u64,
    /// Acknowledged with FAILURE.
    pub failed: u64,
    /// Not acknowledged in time.
    pub expired: u64,
    /// True when none is PENDING or DELIVERED.
    pub done: bool,
}

impl RolloutView {
    /// Commands that will not change any more: acknowledged or expired.
    pub fn finished(&self) -> u64 {
        self.acknowledged + self.expired
    }
}

/// Data of an `agent` event of the fleet stream (SPEC 11).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentEvent {
    /// The agent that changed.
    pub agent_id: String,
    /// Its group.
    pub group: String,
    /// Its status before; `None` for a new agent.
    pub from: Option<AgentStatus>,
    /// Its status after; `None` for a deleted agent.
    pub to: Option<AgentStatus>,
    /// When it changed.
    pub at: Timestamp,
    /// Whether a stream is open for it after the change, when the server says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected: Option<bool>,
}

/// Data of a `brake` event of the fleet stream (SPEC 13).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrakeEvent {
    /// Whether the brake is engaged from `at` on.
    pub engaged: bool,
    /// When it engaged or released.
    pub at: Timestamp,
}

/// One event of the fleet stream (`GET /api/v1/events`).
#[derive(Clone, Debug, PartialEq)]
pub enum FleetEvent {
    /// An agent appeared, changed, or was deleted.
    Agent(AgentEvent),
    /// A rollout's counts changed.
    Rollout(RolloutView),
    /// The brake engaged or released.
    Brake(BrakeEvent),
    /// An event this client does not know, as sent.
    Other {
        /// The event's name.
        event: String,
        /// Its data.
        data: Value,
    },
}

impl FleetEvent {
    /// The event's name on the stream.
    pub fn name(&self) -> &str {
        match self {
            Self::Agent(_) => "agent",
            Self::Rollout(_) => "rollout",
            Self::Brake(_) => "brake",
            Self::Other { event, .. } => event,
        }
    }

    /// Reads the event named `event` with `data`; an event whose data does not
    /// match its known shape is kept as [`FleetEvent::Other`].
    pub fn parse(event: &str, data: &str) -> Result<Self, serde_json::Error> {
        let value: Value = serde_json::from_str(data)?;
        let known = match event {
            "agent" => serde_json::from_value(value.clone()).map(Self::Agent).ok(),
            "rollout" => serde_json::from_value(value.clone())
                .map(Self::Rollout)
                .ok(),
            "brake" => serde_json::from_value(value.clone()).map(Self::Brake).ok(),
            _ => None,
        };
        Ok(known.unwrap_or(Self::Other {
            event: event.to_owned(),
            data: value,
        }))
    }

    /// The event's data as JSON.
    pub fn data(&self) -> Value {
        let value = match self {
            Self::Agent(agent) => serde_json::to_value(agent),
            Self::Rollout(rollout) => serde_json::to_value(rollout),
            Self::Brake(brake) => serde_json::to_value(brake),
            Self::Other { data, .. } => return data.clone(),
        };
        value.unwrap_or(Value::Null)
    }
}

/// An RFC 9457 problem, as every error of the server is (SPEC 3.4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// `about:blank`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The status's reason phrase.
    #[serde(default)]
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What was wrong, in words.
    #[serde(default)]
    pub detail: String,
}

/// The answer to a registration (SPEC 3.1).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Registered {
    /// Whether the id was registered already.
    #[serde(default)]
    pub(crate) resumed: bool,
    /// Where the agent's stream is.
    pub(crate) sse_endpoint: String,
    /// How often to heartbeat.
    pub(crate) heartbeat_interval_ms: u64,
    /// The longest silence on the stream before a comment, when the server says.
    #[serde(default)]
    pub(crate) keepalive_ms: Option<u64>,
    /// The base64 of the server's Ed25519 key, when it signs commands.
    #[serde(default)]
    pub(crate) server_public_key: Option<String>,
    /// The agent's own token, when the server uses tokens.
    #[serde(default)]
    pub(crate) agent_token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_read_and_write_as_the_api_does() {
        let text = "\"2026-03-11T18:10:15.123Z\"";
        let at: Timestamp = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&at).unwrap(), text);
    }

    #[test]
    fn fleet_events_are_typed_and_unknown_ones_kept() {
        let agent = FleetEvent::parse(
            "agent",
            r#"{"agentId":"a","group":"g","from":null,"to":"LIVE","at":"2026-03-11T18:10:15.123Z","extra":1}"#,
        )
        .unwrap();
        assert!(matches!(
            agent,
            FleetEvent::Agent(AgentEvent {
                to: Some(AgentStatus::Live),
                ..
            })
        ));
        let other = FleetEvent::parse("future", r#"{"x":1}"#).unwrap();
        assert_eq!(
            other,
            FleetEvent::Other {
                event: "future".into(),
                data: json!({"x": 1})
            }
        );
    }

    #[test]
    fn statuses_parse_in_any_letter_case() {
        assert_eq!("stale".parse::<AgentStatus>(), Ok(AgentStatus::Stale));
        assert!("gone".parse::<AgentStatus>().is_err());
    }
}
