//! The command model: ids, statuses, the operator's request, the agent's
//! acknowledgement, the command view, and the event written to an agent's
//! stream, whose serde form is the canonical form the server signs.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::agent::AgentId;
use crate::clock::Timestamp;
use crate::payload::Payload;
use crate::rollout::RolloutId;

/// A command's unique id: a UUID v7, so ids sort by creation time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct CommandId(Uuid);

impl CommandId {
    pub(crate) fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The id as a 128-bit number, which sorts as the id does: a storage key.
    pub fn as_u128(self) -> u128 {
        self.0.as_u128()
    }

    /// The id's text, as `Display` writes it, written into `buffer` without
    /// allocating: a stream writes one per event.
    pub fn encode(self, buffer: &mut [u8; 36]) -> &str {
        self.0.hyphenated().encode_lower(buffer)
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for CommandId {
    type Err = uuid::Error;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(value).map(Self)
    }
}

/// Where a command is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "UPPERCASE")]
pub enum CommandStatus {
    /// Created, not yet written to an open stream of the agent.
    Pending,
    /// Written to the agent's open stream, not acknowledged yet.
    Delivered,
    /// The agent acknowledged it. Final.
    Acknowledged,
    /// Not acknowledged within the expiry. Final.
    Expired,
}

impl CommandStatus {
    /// Every status, in life order.
    pub const ALL: [Self; 4] = [
        Self::Pending,
        Self::Delivered,
        Self::Acknowledged,
        Self::Expired,
    ];

    /// The status as the wire writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Delivered => "DELIVERED",
            Self::Acknowledged => "ACKNOWLEDGED",
            Self::Expired => "EXPIRED",
        }
    }

    /// Whether the command can no longer change.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Acknowledged | Self::Expired)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// What an operator asks to send: `{"type": "config-update", "payload": {...}}`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommandRequest {
    /// One of the configured command types (`commands.types`).
    #[cfg_attr(feature = "openapi", schema(examples("config-update")))]
    #[serde(rename = "type")]
    pub kind: String,
    /// Any JSON value; `{}` when absent or null. Checked as JSON while the
    /// body is read, and held as compact text from then on (see [`Payload`]).
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    #[serde(default)]
    pub payload: Option<Payload>,
}

/// How the agent says the command went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "UPPERCASE")]
pub enum AckResult {
    /// It worked (the default).
    #[default]
    Success,
    /// It did not.
    Failure,
}

/// The optional body of an acknowledgement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Ack {
    /// `SUCCESS` unless said otherwise.
    #[serde(default)]
    pub result: Option<AckResult>,
    /// What the agent says about it.
    #[serde(default)]
    pub message: Option<String>,
}

/// A command as operators and agents read it (SPEC 4).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CommandView {
    /// Its id.
    pub command_id: CommandId,
    /// The agent it is for.
    pub agent_id: AgentId,
    /// Its type.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(rename = "type")]
    pub kind: Arc<str>,
    /// What the operator sent.
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub payload: Payload,
    /// The rollout it belongs to, when it was sent to a group or the fleet
    /// (an addition to the contract's fields).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<RolloutId>,
    /// Where it is in its life.
    pub status: CommandStatus,
    /// When it was created.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    /// When it expires unless acknowledged.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub expires_at: Timestamp,
    /// When it was written to the agent's stream.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub delivered_at: Option<Timestamp>,
    /// When the agent acknowledged it.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub acknowledged_at: Option<Timestamp>,
    /// What the agent said of the outcome.
    pub result: Option<AckResult>,
    /// The agent's message.
    pub message: Option<String>,
}

/// What an agent's stream carries for one command; serialized as the event's
/// `data`, before the server appends its `signature` (SPEC 12).
///
/// The fields are declared in canonical order (RFC 8785 sorts members by
/// name) and the payload is canonical already, so that serde_json's form of
/// an event is its canonical form: what the server signs, with no second
/// serialization. A test holds this to the canonical serializer's output.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CommandEvent {
    /// The agent it is for: a signature names its agent.
    pub agent_id: AgentId,
    /// The command's id, also the event's `id`.
    pub command_id: CommandId,
    /// When it was created.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    /// When it expires unless acknowledged: a signature is worth nothing after it.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub expires_at: Timestamp,
    /// What the operator sent, in its canonical form.
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub payload: Payload,
    /// Its type, also the event's `event` name.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(rename = "type")]
    pub kind: Arc<str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_id_reads_as_its_display() {
        let id = CommandId::new();
        assert_eq!(id.encode(&mut [0; 36]), id.to_string());
    }

    #[test]
    fn command_ids_are_time_ordered_uuids() {
        let first = CommandId::new();
        let second = CommandId::new();
        assert!(first < second);
        assert_eq!(first.to_string().parse::<CommandId>().unwrap(), first);
    }

    #[test]
    fn an_event_as_serde_json_writes_it_is_its_canonical_form() {
        let payload = r#"{"z": [1.0, 1e-7, 0.000001, -0.0, 4.50], "a": {"\u20ac": "\/\u000f", "\ud83d\ude02": 1, "\ufb33": 2}}"#;
        for (kind, payload) in [
            ("config-update", payload),
            ("deep\"trace\u{7f}é", "null"),
            ("replay", r#""text""#),
        ] {
            let event = CommandEvent {
                agent_id: AgentId::parse("order-7f3a:a_b.c").unwrap(),
                command_id: CommandId::new(),
                created_at: Timestamp::from_unix_millis(1_764_000_000_123),
                expires_at: Timestamp::from_unix_millis(1_764_000_060_123),
                payload: Payload::parse(payload).unwrap(),
                kind: Arc::from(kind),
            };
            let written = serde_json::to_string(&event).unwrap();
            let canonical = registry_signing::canonical::to_string(
                &serde_json::from_str::<serde_json::Value>(&written).unwrap(),
            )
            .unwrap();
            assert_eq!(written, canonical);
        }
    }

    #[test]
    fn an_empty_ack_means_success_without_message() {
        let ack: Ack = serde_json::from_str("{}").unwrap();
        assert_eq!(ack.result.unwrap_or_default(), AckResult::Success);
        assert_eq!(ack.message, None);
    }
}
