//! The canonical form a signature covers: RFC 8785, the JSON Canonicalization
//! Scheme (JCS). Members sorted by their names' UTF-16 code units, no white
//! space, strings with the fewest escapes, numbers as ECMAScript writes an
//! IEEE 754 double. The serializer is `serde_jcs`'s; this module adds the
//! rule that keeps a number's value intact through it.

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// The largest integer an IEEE 754 double holds exactly with every integer
/// below it: 2^53.
pub const MAX_SAFE_INTEGER: u64 = 1 << 53;

/// Why a value has no canonical form that keeps its meaning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// A number beyond ±2^53: as the double RFC 8785 reads it, it may no
    /// longer be the number that was sent.
    #[error(
        "{number} at {path} is beyond ±2^53 (9007199254740992): signed commands carry numbers \
         as IEEE 754 doubles (RFC 8785), which hold integers exactly only up to 2^53; send \
         larger numbers as strings"
    )]
    UnsafeNumber {
        /// Where it is, as `payload.limits[2]`.
        path: String,
        /// The number as parsed.
        number: String,
    },
    /// The value can't be written as JSON at all (a non-finite float, a map
    /// whose keys are not strings).
    #[error("no canonical JSON form: {0}")]
    NotJson(String),
}

/// The canonical (RFC 8785) form of `value`.
///
/// Integers are written as the doubles they convert to: call
/// [`check_numbers`] first where a value came from outside.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> Result<String, CanonicalError> {
    serde_jcs::to_string(value).map_err(|err| CanonicalError::NotJson(err.to_string()))
}

/// Checks that every number in `value` is within ±2^53, so that its canonical
/// form (a double) is the number given. `root` names the value in the error's
/// path (`payload` gives `payload.limits[2]`).
///
/// Every double beyond 2^53 is an integer, and a JSON parser reads an integer
/// too large for 64 bits as a double without a word, so the rule is on the
/// magnitude, whatever the number's written form.
pub fn check_numbers(value: &Value, root: &str) -> Result<(), CanonicalError> {
    let mut path = root.to_owned();
    check_at(value, &mut path)
}

fn check_at(value: &Value, path: &mut String) -> Result<(), CanonicalError> {
    match value {
        Value::Number(number) => {
            let safe = if let Some(n) = number.as_u64() {
                n <= MAX_SAFE_INTEGER
            } else if let Some(n) = number.as_i64() {
                n.unsigned_abs() <= MAX_SAFE_INTEGER
            } else {
                // Exact: 2^53 is a double, and no double lies strictly between
                // it and the next one up.
                number
                    .as_f64()
                    .is_some_and(|n| n.abs() <= MAX_SAFE_INTEGER as f64)
            };
            if safe {
                Ok(())
            } else {
                Err(CanonicalError::UnsafeNumber {
                    path: path.clone(),
                    number: number.to_string(),
                })
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{index}]"));
                check_at(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Object(members) => {
            for (name, member) in members {
                let len = path.len();
                path.push('.');
                path.push_str(name);
                check_at(member, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Null | Value::Bool(_) | Value::String(_) => Ok(()),
    }
}

/// A command's payload in the form it is kept, sent and signed: checked by
/// [`check_numbers`] (under the name `payload`), then canonical. Computed
/// once per command request, shared by every command of a rollout, so that
/// each agent's event only assembles its own few fields around it.
pub fn canonical_payload(payload: &Value) -> Result<Box<RawValue>, CanonicalError> {
    check_numbers(payload, "payload")?;
    let text = to_string(payload)?;
    RawValue::from_string(text).map_err(|err| CanonicalError::NotJson(err.to_string()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn numbers_up_to_two_to_the_53_are_kept_and_beyond_are_refused_with_their_path() {
        let safe = json!({"a": [9007199254740992_u64, -9007199254740992_i64, 1.5, -0.0, 1e15]});
        assert_eq!(check_numbers(&safe, "payload"), Ok(()));
        for (value, path) in [
            (
                json!({"limits": [1, 2, 9007199254740993_u64]}),
                "payload.limits[2]",
            ),
            (json!({"n": -9007199254740993_i64}), "payload.n"),
            (json!([{"big": 1e300}]), "payload[0].big"),
            (json!(u64::MAX), "payload"),
        ] {
            match check_numbers(&value, "payload") {
                Err(CanonicalError::UnsafeNumber { path: at, .. }) => assert_eq!(at, path),
                other => panic!("{value}: {other:?}"),
            }
        }
        let huge: Value = serde_json::from_str("123456789012345678901234567890").unwrap();
        assert!(
            check_numbers(&huge, "payload").is_err(),
            "parsed as a double"
        );
    }

    #[test]
    fn a_payload_is_kept_canonical() {
        let payload: Value =
            serde_json::from_str(r#"{ "b": 1.0, "a": "\u00e9\/", "c": [1E2, 0.000001] }"#).unwrap();
        let kept = canonical_payload(&payload).unwrap();
        assert_eq!(kept.get(), r#"{"a":"é/","b":1,"c":[100,0.000001]}"#);
    }
}
