//! The agent model: identity and group names with their validation rules, the
//! registration request, the lifecycle status, and the agent view operators read.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::InvalidField;

/// Longest `agentId` or `group`, in characters.
pub const MAX_ID_LEN: usize = 128;
/// Longest `name`, in characters.
pub const MAX_NAME_LEN: usize = 256;
/// Longest `version`, and longest entry of `routeIds` or `capabilities`, in characters.
pub const MAX_TEXT_LEN: usize = 256;
/// Most entries in `routeIds` or in `capabilities`.
pub const MAX_LIST_LEN: usize = 1024;
/// Path words that can't be agent ids, since they name other routes.
pub const RESERVED_AGENT_IDS: [&str; 4] = ["register", "commands", "groups", "events"];

/// Checks the id rule shared by `agentId` and `group`: 1 to 128 characters
/// from `A-Z a-z 0-9 . _ - :`.
fn check_id(field: &'static str, value: &str) -> Result<(), InvalidField> {
    if value.is_empty() {
        return Err(InvalidField::new(field, "must not be empty"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(InvalidField::new(
            field,
            format!("must be at most {MAX_ID_LEN} characters"),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
    {
        return Err(InvalidField::new(
            field,
            format!("may only hold A-Z a-z 0-9 . _ - : (found {bad:?})"),
        ));
    }
    // Ids are path segments, and clients resolve `.` and `..` away before sending.
    if value == "." || value == ".." {
        return Err(InvalidField::new(
            field,
            format!("'{value}' can't be used: URLs resolve it as a path step"),
        ));
    }
    Ok(())
}

fn check_text(
    field: &'static str,
    value: &str,
    min: usize,
    max: usize,
) -> Result<(), InvalidField> {
    let len = value.chars().count();
    if len < min || len > max {
        let reason = if min == 0 {
            format!("must be at most {max} characters")
        } else {
            format!("must be {min} to {max} characters")
        };
        return Err(InvalidField::new(field, reason));
    }
    Ok(())
}

fn check_list(field: &'static str, values: &[String]) -> Result<(), InvalidField> {
    if values.len() > MAX_LIST_LEN {
        return Err(InvalidField::new(
            field,
            format!("must hold at most {MAX_LIST_LEN} entries"),
        ));
    }
    values
        .iter()
        .try_for_each(|value| check_text(field, value, 0, MAX_TEXT_LEN))
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[cfg_attr(
            feature = "openapi",
            derive(utoipa::ToSchema),
            schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,128}$")
        )]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// An agent's own persistent identity, validated against the id rule.
    AgentId
);
id_type!(
    /// The name all instances of one service share, validated against the id rule.
    GroupName
);

impl AgentId {
    /// Validates `value` as the `agentId` field: the id rule, and not a reserved word.
    pub fn parse(value: &str) -> Result<Self, InvalidField> {
        check_id("agentId", value)?;
        if RESERVED_AGENT_IDS.contains(&value) {
            return Err(InvalidField::new(
                "agentId",
                format!("'{value}' is reserved (register, commands, groups and events are)"),
            ));
        }
        Ok(Self(value.into()))
    }
}

impl GroupName {
    /// Validates `value` as the `group` field.
    pub fn parse(value: &str) -> Result<Self, InvalidField> {
        check_id("group", value)?;
        Ok(Self(value.into()))
    }
}

/// Ids read back from storage are checked as a request's would be, so a
/// damaged record is refused rather than served.
macro_rules! deserialize_checked {
    ($name:ident) => {
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::parse(&value).map_err(serde::de::Error::custom)
            }
        }
    };
}
deserialize_checked!(AgentId);
deserialize_checked!(GroupName);

/// The body of `POST /api/v1/agents/register`, as received; [`validate`](Self::validate) checks it.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(description = "The body of a registration. Unknown fields are ignored.")
)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationRequest {
    /// The agent's persistent id: 1 to 128 characters from `A-Z a-z 0-9 . _ - :`;
    /// `register`, `commands`, `groups` and `events` are reserved.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[A-Za-z0-9._:-]{1,128}$", examples("order-7f3a"))
    )]
    pub agent_id: String,
    /// The service's name, 1 to 256 characters.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 256, examples("order-service"))
    )]
    pub name: String,
    /// The group the agent belongs to, by the same rule as `agentId`.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[A-Za-z0-9._:-]{1,128}$", examples("order-service-prod"))
    )]
    pub group: String,
    /// The agent's version, if it says; at most 256 characters.
    #[cfg_attr(feature = "openapi", schema(max_length = 256, examples("1.4.2")))]
    #[serde(default)]
    pub version: Option<String>,
    /// The routes the agent serves: at most 1024, each at most 256 characters.
    #[cfg_attr(feature = "openapi", schema(max_items = 1024, max_length = 256))]
    #[serde(default)]
    pub route_ids: Option<Vec<String>>,
    /// What the agent can do: at most 1024, each at most 256 characters.
    #[cfg_attr(feature = "openapi", schema(max_items = 1024, max_length = 256))]
    #[serde(default)]
    pub capabilities: Option<Vec<String>>,
}

impl RegistrationRequest {
    /// Checks every field against the contract's rules, naming the first one that breaks them.
    pub fn validate(self) -> Result<Registration, InvalidField> {
        let agent_id = AgentId::parse(&self.agent_id)?;
        check_text("name", &self.name, 1, MAX_NAME_LEN)?;
        let group = GroupName::parse(&self.group)?;
        if let Some(version) = &self.version {
            check_text("version", version, 0, MAX_TEXT_LEN)?;
        }
        let route_ids = self.route_ids.unwrap_or_default();
        check_list("routeIds", &route_ids)?;
        let capabilities = self.capabilities.unwrap_or_default();
        check_list("capabilities", &capabilities)?;
        Ok(Registration {
            agent_id,
            credential: None,
            metadata: AgentMetadata {
                name: self.name,
                group,
                version: self.version,
                route_ids,
                capabilities,
            },
        })
    }
}

/// A validated registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Who registers.
    pub agent_id: AgentId,
    /// The digest of the token issued with this registration, when tokens are in use.
    /// It replaces the agent's former one, which stops working.
    pub credential: Option<Credential>,
    /// What it says about itself; replaced whole on re-registration.
    pub metadata: AgentMetadata,
}

impl Registration {
    /// The same registration, binding the agent to the token whose digest is `credential`.
    pub fn with_credential(self, credential: Credential) -> Self {
        Self {
            credential: Some(credential),
            ..self
        }
    }
}

/// The digest of an agent's secret token. The registry keeps only digests, never
/// tokens, and finds an agent by the digest of the token it presents.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Credential(pub [u8; 32]);

/// Stored as 64 hexadecimal digits.
impl Serialize for Credential {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut hex = String::with_capacity(64);
        for byte in self.0 {
            hex.push_str(&format!("{byte:02x}"));
        }
        serializer.serialize_str(&hex)
    }
}

impl<'de> Deserialize<'de> for Credential {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let hex = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        let invalid = || serde::de::Error::custom("a credential is 64 hexadecimal digits");
        if hex.len() != 64 {
            return Err(invalid());
        }
        let mut digest = [0_u8; 32];
        for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| invalid())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| invalid())?;
        }
        Ok(Self(digest))
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Even a digest is kept out of logs.
        f.write_str("Credential(..)")
    }
}

/// What an agent declares about itself at registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct AgentMetadata {
    /// The service's name.
    pub name: String,
    /// The group the agent belongs to.
    pub group: GroupName,
    /// The agent's version.
    pub version: Option<String>,
    /// The routes the agent serves.
    pub route_ids: Vec<String>,
    /// What the agent can do.
    pub capabilities: Vec<String>,
}

/// Where an agent is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "UPPERCASE")]
pub enum AgentStatus {
    /// Heartbeating.
    Live,
    /// No heartbeat for `stale_after`.
    Stale,
    /// Still STALE `dead_after` after it became STALE.
    Dead,
}

impl AgentStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [Self; 3] = [Self::Live, Self::Stale, Self::Dead];

    /// The status as the wire writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "LIVE",
            Self::Stale => "STALE",
            Self::Dead => "DEAD",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AgentStatus {
    type Err = InvalidField;

    /// Parses a status in any letter case, as the `status` filter accepts it.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(value))
            .ok_or_else(|| {
                InvalidField::new(
                    "status",
                    format!("'{value}' is not one of LIVE, STALE, DEAD"),
                )
            })
    }
}

/// An agent as operators see it (SPEC 3.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    /// The agent's id.
    pub agent_id: AgentId,
    /// What the agent declared at its last registration, shared with the
    /// registry: a listing copies a handle, not the lists.
    #[cfg_attr(feature = "openapi", schema(value_type = AgentMetadata))]
    #[serde(flatten)]
    pub metadata: Arc<AgentMetadata>,
    /// Its lifecycle status now.
    pub status: AgentStatus,
    /// When it first registered; kept across re-registrations.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub registered_at: Timestamp,
    /// Its last registration or heartbeat.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub last_heartbeat_at: Timestamp,
    /// When its status last changed (or it registered, or revived).
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub status_changed_at: Timestamp,
    /// Whether a stream is open for it now.
    pub connected: bool,
}

/// Which agents a listing returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentFilter {
    /// Only agents in this status.
    pub status: Option<AgentStatus>,
    /// Only agents of this group.
    pub group: Option<String>,
}

/// One lifecycle transition of one agent, as logged, counted and broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// The agent that changed.
    pub agent_id: AgentId,
    /// Its status before.
    pub from: AgentStatus,
    /// Its status after.
    pub to: AgentStatus,
    /// When the change took effect: the deadline, or the heartbeat that revived it.
    pub at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(agent_id: &str) -> RegistrationRequest {
        RegistrationRequest {
            agent_id: agent_id.into(),
            name: "order-service".into(),
            group: "order-service-prod".into(),
            version: None,
            route_ids: None,
            capabilities: None,
        }
    }

    #[test]
    fn agent_id_accepts_the_whole_charset_up_to_128_characters() {
        assert!(AgentId::parse("Az09._-:").is_ok());
        assert!(AgentId::parse(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn agent_id_refuses_empty_long_and_foreign_characters() {
        assert_eq!(AgentId::parse("").unwrap_err().field, "agentId");
        assert!(AgentId::parse(&"a".repeat(129)).is_err());
        for bad in ["a b", "a/b", "é", "a\nb", "a\0b", "a%2F"] {
            assert!(AgentId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ids_that_urls_resolve_away_are_refused() {
        for id in [".", ".."] {
            assert_eq!(AgentId::parse(id).unwrap_err().field, "agentId");
            assert_eq!(GroupName::parse(id).unwrap_err().field, "group");
        }
        assert!(AgentId::parse("...").is_ok());
        assert!(AgentId::parse(".hidden").is_ok());
    }

    #[test]
    fn agent_id_refuses_reserved_words() {
        for word in RESERVED_AGENT_IDS {
            let err = AgentId::parse(word).unwrap_err();
            assert!(err.reason.contains("reserved"), "{err}");
        }
        assert!(
            AgentId::parse("Register").is_ok(),
            "reserved words are exact"
        );
    }

    #[test]
    fn group_follows_the_id_rule_but_has_no_reserved_words() {
        assert!(GroupName::parse("commands").is_ok());
        assert_eq!(GroupName::parse("a b").unwrap_err().field, "group");
    }

    #[test]
    fn registration_names_the_invalid_field() {
        let mut req = request("a-1");
        req.name = String::new();
        assert_eq!(req.validate().unwrap_err().field, "name");

        let mut req = request("a-1");
        req.name = "n".repeat(257);
        assert_eq!(req.validate().unwrap_err().field, "name");

        let mut req = request("a-1");
        req.route_ids = Some(vec!["r".repeat(257)]);
        assert_eq!(req.validate().unwrap_err().field, "routeIds");

        let mut req = request("a-1");
        req.capabilities = Some(vec![String::new(); MAX_LIST_LEN + 1]);
        assert_eq!(req.validate().unwrap_err().field, "capabilities");

        assert_eq!(request("groups").validate().unwrap_err().field, "agentId");
    }

    #[test]
    fn status_filter_parses_in_any_letter_case() {
        assert_eq!("stale".parse::<AgentStatus>(), Ok(AgentStatus::Stale));
        assert_eq!("Dead".parse::<AgentStatus>(), Ok(AgentStatus::Dead));
        assert_eq!("gone".parse::<AgentStatus>().unwrap_err().field, "status");
    }
}
