//! The rollout model (SPEC 11): what a group or fleet command creates, its id,
//! the answer to the push (SPEC 3.2: the payload once, the commands as
//! `{commandId, agentId}` pairs) and the view of its progress. The rules that
//! count a rollout's commands are in `state::rollouts`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::agent::{AgentId, GroupName};
use crate::clock::Timestamp;
use crate::command::CommandId;
use crate::payload::Payload;

/// A rollout's id: a UUID v7, so ids sort by creation time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct RolloutId(Uuid);

impl RolloutId {
    pub(crate) fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The id as a 128-bit number, which sorts as the id does: a storage key.
    pub fn as_u128(self) -> u128 {
        self.0.as_u128()
    }

    /// The id whose 128-bit number is `value` (a storage key read back).
    pub fn from_u128(value: u128) -> Self {
        Self(Uuid::from_u128(value))
    }
}

impl fmt::Display for RolloutId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for RolloutId {
    type Err = uuid::Error;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(value).map(Self)
    }
}

/// Whom a rollout's commands went to: `group:NAME` or `fleet` on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The LIVE agents of one group.
    Group(GroupName),
    /// Every LIVE agent.
    Fleet,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Group(group) => write!(f, "group:{group}"),
            Self::Fleet => f.write_str("fleet"),
        }
    }
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text == "fleet" {
            return Ok(Self::Fleet);
        }
        text.strip_prefix("group:")
            .and_then(|group| GroupName::parse(group).ok())
            .map(Self::Group)
            .ok_or_else(|| serde::de::Error::custom(format!("not a rollout target: {text:?}")))
    }
}

/// One command of a rollout, as the push answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CommandRef {
    /// The command's id.
    pub command_id: CommandId,
    /// The agent it is for.
    pub agent_id: AgentId,
}

/// The answer to a group or fleet command (SPEC 3.2): the payload once, not
/// once per agent, so that its size grows by a command id and an agent id per
/// agent, not by the payload.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct NewRollout {
    /// The rollout's id (`GET /api/v1/rollouts/{rolloutId}`).
    pub rollout_id: RolloutId,
    /// The commands' type.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(rename = "type")]
    pub kind: Arc<str>,
    /// The payload every command carries.
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub payload: Payload,
    /// The commands created: one per LIVE agent targeted.
    pub targeted: usize,
    /// The LIVE agents left out because they already hold
    /// `commands.max_unfinished_per_agent` unfinished commands.
    pub skipped: usize,
    /// When the commands were created.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    /// When they expire unless acknowledged.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub expires_at: Timestamp,
    /// The commands, ordered by `agentId`.
    pub commands: Vec<CommandRef>,
}

/// A rollout's commands by status. A command dropped with its deleted agent
/// stays counted: as EXPIRED if it was unfinished, else in its last status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutCounts {
    /// PENDING now.
    pub pending: usize,
    /// DELIVERED now.
    pub delivered: usize,
    /// ACKNOWLEDGED with `SUCCESS`.
    pub succeeded: usize,
    /// ACKNOWLEDGED with `FAILURE`.
    pub failed: usize,
    /// EXPIRED, or dropped unfinished.
    pub expired: usize,
}

impl RolloutCounts {
    /// ACKNOWLEDGED, either way.
    pub fn acknowledged(&self) -> usize {
        self.succeeded + self.failed
    }

    /// PENDING or DELIVERED.
    pub fn unfinished(&self) -> usize {
        self.pending + self.delivered
    }
}

/// A rollout's progress (SPEC 11): its commands counted by status now.
///
/// `pending + delivered + acknowledged + expired = targeted` and
/// `succeeded + failed = acknowledged`; `done` once none is PENDING or DELIVERED.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RolloutView {
    /// Its id.
    pub rollout_id: RolloutId,
    /// The commands' type.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(rename = "type")]
    pub kind: Arc<str>,
    /// `group:NAME` or `fleet`.
    #[cfg_attr(feature = "openapi", schema(value_type = String, examples("group:order-service-prod")))]
    pub target: Target,
    /// When its commands were created.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    /// When its commands expire unless acknowledged.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub expires_at: Timestamp,
    /// Commands created.
    pub targeted: usize,
    /// LIVE agents left out: they held `commands.max_unfinished_per_agent` already.
    pub skipped: usize,
    /// Commands not yet written to a stream.
    pub pending: usize,
    /// Commands written to a stream, not acknowledged yet.
    pub delivered: usize,
    /// Commands acknowledged.
    pub acknowledged: usize,
    /// Commands acknowledged with `SUCCESS`.
    pub succeeded: usize,
    /// Commands acknowledged with `FAILURE`.
    pub failed: usize,
    /// Commands expired, or dropped unfinished with their deleted agent.
    pub expired: usize,
    /// Whether no command is PENDING or DELIVERED any more.
    pub done: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_read_as_they_are_written() {
        let group = Target::Group(GroupName::parse("order-service-prod").unwrap());
        assert_eq!(
            serde_json::to_string(&group).unwrap(),
            r#""group:order-service-prod""#
        );
        for target in [group, Target::Fleet] {
            let text = serde_json::to_string(&target).unwrap();
            assert_eq!(serde_json::from_str::<Target>(&text).unwrap(), target);
        }
        assert!(serde_json::from_str::<Target>(r#""group:""#).is_err());
    }

    #[test]
    fn rollout_ids_are_time_ordered_uuids() {
        let first = RolloutId::new();
        let second = RolloutId::new();
        assert!(first < second);
        assert_eq!(RolloutId::from_u128(first.as_u128()), first);
        assert_eq!(first.to_string().parse::<RolloutId>().unwrap(), first);
    }
}
