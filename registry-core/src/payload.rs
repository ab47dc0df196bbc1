//! A command's payload as the registry holds it: the canonical form (RFC 8785)
//! of the JSON the operator sent, made once when it arrived and shared (`Arc`)
//! by every command of a rollout. It is the form each agent's event is signed
//! in (SPEC 12), so a stream writes it as it is. A tree (`serde_json::Value`)
//! is built only for the moment of canonicalizing, never kept: it costs up to
//! 16 times its text (a 256 KiB `[0,0,...]` takes 4 MiB).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

/// A JSON value as canonical text (RFC 8785), cheap to clone: every clone
/// shares one copy.
///
/// No white space, members sorted by name, strings with the fewest escapes,
/// numbers as ECMAScript writes doubles: the same value as sent, on one line
/// (an SSE `data:` line), and no larger than its compact form but for a rare
/// exponent (`1e21` is written `1e+21`).
#[derive(Clone)]
pub struct Payload(Arc<RawValue>);

impl Payload {
    /// `{}`: the payload of a command sent without one (or with `null`).
    pub fn empty_object() -> Self {
        Self::parse("{}").expect("{} is a JSON value")
    }

    /// The payload of the JSON text `raw`, as an operator sent it: refused if
    /// it is not JSON `serde_json` would read into a tree (a lone surrogate
    /// such as `"\ud800"`, nesting deeper than 128), or holds a number
    /// beyond ±2^53, which a signature's canonical form (a double) would
    /// change; then made canonical.
    pub fn from_raw(raw: &RawValue) -> Result<Self, serde_json::Error> {
        Self::canonical(raw.get(), true)
    }

    /// Parses `text` as one JSON value sent by an operator ([`from_raw`](Self::from_raw)).
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        Self::from_raw(&serde_json::from_str::<Box<RawValue>>(text)?)
    }

    /// A payload as storage kept it, made canonical again (a version before
    /// signing kept it as sent). A number beyond ±2^53, which only such a
    /// version let in, is kept as the double it reads as rather than make
    /// the file unreadable.
    pub fn from_stored(text: &str) -> Result<Self, serde_json::Error> {
        Self::canonical(text, false)
    }

    /// Reads an optional payload from a stored record ([`from_stored`](Self::from_stored)).
    pub fn deserialize_stored<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Self>, D::Error> {
        match Option::<Box<RawValue>>::deserialize(deserializer)? {
            Some(raw) => Self::from_stored(raw.get())
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }

    /// The payload of a parsed value (for tests and tools; the server never
    /// keeps a payload as a tree). Numbers are not checked.
    pub fn from_value(value: &Value) -> Self {
        let text = registry_signing::canonical::to_string(value)
            .expect("a JSON value has a canonical form: its keys are strings, its numbers finite");
        Self(Arc::from(
            RawValue::from_string(text).expect("canonical JSON is JSON"),
        ))
    }

    fn canonical(text: &str, check_numbers: bool) -> Result<Self, serde_json::Error> {
        use serde::de::Error as _;
        let value: Value = serde_json::from_str(text)?;
        if check_numbers {
            registry_signing::check_numbers(&value, "payload")
                .map_err(serde_json::Error::custom)?;
        }
        let text =
            registry_signing::canonical::to_string(&value).map_err(serde_json::Error::custom)?;
        Ok(Self(Arc::from(RawValue::from_string(text)?)))
    }

    /// The canonical JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Its size in bytes, as counted against `commands.max_retained_bytes`.
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    /// Whether the text is empty; never true of a valid payload.
    pub fn is_empty(&self) -> bool {
        self.0.get().is_empty()
    }

    /// Whether `self` and `other` share one copy of the text.
    pub fn shares_with(&self, other: &Payload) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

/// Two payloads are equal when their canonical texts are: when they hold the same JSON value.
impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for Payload {}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Self::from_raw(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn white_space_goes_members_are_sorted_and_numbers_are_written_as_doubles() {
        let payload =
            Payload::parse("{ \"q\\\" x\" : \"\\\\ \\/\" ,\n\t\"a b\" : [1, 2.50, 1e3, -0.0] }")
                .unwrap();
        assert_eq!(payload.get(), r#"{"a b":[1,2.5,1000,0],"q\" x":"\\ /"}"#);
    }

    #[test]
    fn non_ascii_text_stays_as_itself() {
        let payload = Payload::parse("[ \"日本\" , \"\\u20ac\" ]").unwrap();
        assert_eq!(payload.get(), r#"["日本","€"]"#);
    }

    #[test]
    fn clones_share_one_copy() {
        let payload = Payload::parse(r#"{"n":1}"#).unwrap();
        let clone = payload.clone();
        assert!(payload.shares_with(&clone));
        assert_eq!(payload, Payload::parse(r#"{ "n": 1.0 }"#).unwrap());
    }

    #[test]
    fn invalid_json_is_refused() {
        assert!(Payload::parse("{").is_err());
        assert!(Payload::parse("[1,]").is_err());
        assert!(
            Payload::parse(r#"{"k": "\ud800"}"#).is_err(),
            "a lone surrogate"
        );
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(Payload::parse(&deep).is_err(), "nested past 128");
        let fine = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(Payload::parse(&fine).is_ok());
    }

    #[test]
    fn a_number_beyond_two_to_the_53_is_refused_from_an_operator_and_kept_from_storage() {
        let err = Payload::parse(r#"{"ids": [1, 9007199254740993]}"#).unwrap_err();
        assert!(err.to_string().contains("payload.ids[1]"), "{err}");
        assert!(Payload::parse("[9007199254740992, -9007199254740992]").is_ok());
        assert!(Payload::parse("1e300").is_err());
        let stored = Payload::from_stored(r#"{"ids": [9007199254740993]}"#).unwrap();
        assert_eq!(stored.get(), r#"{"ids":[9007199254740992]}"#);
        let record: Option<Payload> =
            Payload::deserialize_stored(&mut serde_json::Deserializer::from_str("null")).unwrap();
        assert_eq!(record, None);
    }

    #[test]
    fn serializes_as_the_json_it_holds() {
        let payload = Payload::parse(r#"{ "n" : [true, null] }"#).unwrap();
        assert_eq!(
            serde_json::to_string(&payload).unwrap(),
            r#"{"n":[true,null]}"#
        );
        let back: Payload = serde_json::from_str(r#"{"n":[true,null]}"#).unwrap();
        assert_eq!(back, payload);
        assert_eq!(
            Payload::from_value(&serde_json::json!({"b": 1.0, "a": 2})).get(),
            r#"{"a":2,"b":1}"#
        );
    }
}
