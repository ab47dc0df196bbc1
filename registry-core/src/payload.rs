//! A command's payload as the registry holds it: the JSON text the operator
//! sent, checked once when it arrived, less its insignificant white space, and
//! shared (`Arc`) by every command of a rollout. Never a parsed tree: a
//! `serde_json::Value` costs up to 16 times its text (a 256 KiB `[0,0,...]`
//! takes 4 MiB), and each command would have held one.

use std::fmt;
use std::sync::Arc;

use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// A JSON value as compact text, cheap to clone: every clone shares one copy.
///
/// Numbers, strings and the order of members are kept exactly as sent; only
/// white space between tokens is dropped, so the value is written on one line
/// (an SSE `data:` line) and takes no more than its size on the wire.
#[derive(Clone)]
pub struct Payload(Arc<RawValue>);

impl Payload {
    /// `{}`: the payload of a command sent without one (or with `null`).
    pub fn empty_object() -> Self {
        Self::parse("{}").expect("{} is a JSON value")
    }

    /// The payload of the JSON text `raw` (whose syntax `serde_json` checked
    /// as it read it), compacted, once it passes the rules of [`check`].
    pub fn from_raw(raw: Box<RawValue>) -> Result<Self, serde_json::Error> {
        check(raw.get())?;
        let compact = match compact(raw.get()) {
            // Compacting valid JSON leaves valid JSON, so this check never fails.
            Some(text) => RawValue::from_string(text).unwrap_or(raw),
            None => raw,
        };
        Ok(Self(Arc::from(compact)))
    }

    /// Parses `text` as one JSON value.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        Self::from_raw(serde_json::from_str::<Box<RawValue>>(text)?)
    }

    /// The payload of a parsed value (for tests and tools; the server never
    /// parses a payload into a tree).
    pub fn from_value(value: &serde_json::Value) -> Self {
        let raw = serde_json::value::to_raw_value(value)
            .expect("a JSON value always serializes: its keys are strings");
        Self(Arc::from(raw))
    }

    /// The compact JSON text.
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

/// Reads `text` as `serde_json` reads a value into a tree, building nothing:
/// what taking its raw text skips is checked here, once, as parsing it would
/// have: escapes (a lone surrogate such as `"\\ud800"` is refused) and nesting
/// at most 128 deep, which a `serde_json` reader (an agent's, say) would refuse.
fn check(text: &str) -> Result<(), serde_json::Error> {
    serde_json::from_str::<Checked>(text).map(drop)
}

/// A JSON value read to its end and dropped as it is read.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `deserialize_any`, not `deserialize_ignored_any`, which skips without checking.
        deserializer.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

/// `text` without white space outside strings, or `None` when it has none.
/// `text` is valid JSON, so a string is whatever lies between an unescaped
/// quote and the next one.
fn compact(text: &str) -> Option<String> {
    let is_space = |byte: u8| matches!(byte, b' ' | b'\t' | b'\n' | b'\r');
    let mut in_string = false;
    let mut escaped = false;
    let first_space = text.bytes().position(|byte| {
        match (in_string, escaped, byte) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (_, false, b'"') => in_string = !in_string,
            (false, _, byte) if is_space(byte) => return true,
            _ => {}
        }
        false
    })?;
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..first_space]);
    for c in text[first_space..].chars() {
        match (in_string, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (_, false, '"') => in_string = !in_string,
            (false, _, c) if c.is_ascii() && is_space(c as u8) => continue,
            _ => {}
        }
        out.push(c);
    }
    Some(out)
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

/// Two payloads are equal when their compact texts are.
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
        Self::from_raw(raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn white_space_between_tokens_goes_and_strings_stay_as_sent() {
        let payload =
            Payload::parse("{ \"a b\" : [1, 2.50, 1e3] ,\n\t\"q\\\" x\": \"\\\\ \" }").unwrap();
        assert_eq!(payload.get(), r#"{"a b":[1,2.50,1e3],"q\" x":"\\ "}"#);
    }

    #[test]
    fn compact_text_is_kept_without_a_copy() {
        let text = r#"{"z":1,"a":"é ü"}"#;
        assert_eq!(compact(text), None);
        assert_eq!(Payload::parse(text).unwrap().get(), text);
    }

    #[test]
    fn non_ascii_text_around_white_space_survives() {
        let payload = Payload::parse("[ \"日本\" , \"€\" ]").unwrap();
        assert_eq!(payload.get(), r#"["日本","€"]"#);
    }

    #[test]
    fn clones_share_one_copy() {
        let payload = Payload::parse(r#"{"n":1}"#).unwrap();
        let clone = payload.clone();
        assert!(payload.shares_with(&clone));
        assert_eq!(payload, Payload::parse(r#"{ "n": 1 }"#).unwrap());
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
    fn serializes_as_the_json_it_holds() {
        let payload = Payload::parse(r#"{ "n" : [true, null] }"#).unwrap();
        assert_eq!(
            serde_json::to_string(&payload).unwrap(),
            r#"{"n":[true,null]}"#
        );
        let back: Payload = serde_json::from_str(r#"{"n":[true,null]}"#).unwrap();
        assert_eq!(back, payload);
    }
}
