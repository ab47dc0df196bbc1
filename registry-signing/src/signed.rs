//! A signed command's data (SPEC 12): the event's data object with a last
//! member `"signature"`, the standard base64 of the Ed25519 signature of the
//! UTF-8 bytes of the canonical form of the object without it. Signing
//! appends the member to canonical text the caller already has; verifying
//! takes the member out of whatever text arrived and canonicalizes the rest,
//! so a proxy that reformats the JSON does not break it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

use crate::canonical;
use crate::key::{PublicKey, ServerKey};

/// The member of a command event's data that holds its signature.
pub const SIGNATURE_MEMBER: &str = "signature";

/// The length of a signature in standard base64 with padding (64 bytes).
const SIGNATURE_BASE64_LENGTH: usize = 88;

/// Why a command's data does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The data is not JSON, or not an object.
    #[error("the data is not a JSON object: {0}")]
    NotAnObject(String),
    /// The object has no `signature` member.
    #[error("the data has no signature")]
    Unsigned,
    /// `signature` is not standard base64 of 64 bytes.
    #[error("the signature is not standard base64 of 64 bytes")]
    MalformedSignature,
    /// The rest of the object has no canonical form.
    #[error(transparent)]
    Canonical(#[from] canonical::CanonicalError),
    /// The signature is not the key's signature of this data: it was changed,
    /// or signed by another key.
    #[error("the signature does not match the data and the server's key")]
    Mismatch,
}

impl ServerKey {
    /// The signed form of a data object, given the object's canonical form
    /// (RFC 8785): the same text with `"signature"` appended as its last member.
    ///
    /// `canonical_object` must be the canonical form of a JSON object without
    /// a `signature` member (the caller's tests show that what it passes is);
    /// the signature covers exactly its bytes.
    pub fn sign_object(&self, canonical_object: &str) -> String {
        with_signature(canonical_object, &self.sign(canonical_object.as_bytes()))
    }
}

/// The room a signed object needs beyond its canonical form: `,"signature":"` +
/// the base64 + `"}` in place of the closing `}`.
pub const SIGNATURE_ROOM: usize = SIGNATURE_BASE64_LENGTH + SIGNATURE_MEMBER.len() + 6;

/// `canonical_object` with `"signature"` appended as its last member, holding `signature`.
pub(crate) fn with_signature(canonical_object: &str, signature: &[u8; 64]) -> String {
    let mut signed = Vec::with_capacity(canonical_object.len() + SIGNATURE_ROOM);
    signed.extend_from_slice(canonical_object.as_bytes());
    append_signature(&mut signed, 0, signature);
    // UTF-8 with ASCII appended is UTF-8: the lossy branch is never taken,
    // and keeps this free of a panic.
    String::from_utf8(signed)
        .unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned())
}

/// Appends `"signature"` to the canonical object that `buffer` holds from
/// `start` on, in place: its closing `}` gives way to the member.
pub(crate) fn append_signature(buffer: &mut Vec<u8>, start: usize, signature: &[u8; 64]) {
    debug_assert!(buffer[start..].starts_with(b"{") && buffer.ends_with(b"}"));
    buffer.pop();
    buffer.reserve(SIGNATURE_ROOM);
    if buffer.len() - start > 1 {
        buffer.push(b',');
    }
    buffer.push(b'"');
    buffer.extend_from_slice(SIGNATURE_MEMBER.as_bytes());
    buffer.extend_from_slice(b"\":\"");
    let encoded = buffer.len();
    buffer.resize(encoded + SIGNATURE_BASE64_LENGTH, 0);
    let written = STANDARD.encode_slice(signature, &mut buffer[encoded..]);
    debug_assert_eq!(written, Ok(SIGNATURE_BASE64_LENGTH));
    buffer.extend_from_slice(b"\"}");
}

impl PublicKey {
    /// Checks the signature of a command event's data, as it arrived (the
    /// text of the event's `data:` lines): parses it, takes `signature` out,
    /// and verifies it over the canonical form of the rest.
    pub fn verify_data(&self, data: &str) -> Result<(), VerifyError> {
        let value: Value =
            serde_json::from_str(data).map_err(|err| VerifyError::NotAnObject(err.to_string()))?;
        match value {
            Value::Object(object) => self.verify_object(object),
            _ => Err(VerifyError::NotAnObject("another JSON value".into())),
        }
    }

    /// Like [`verify_data`](Self::verify_data), for data already parsed.
    pub fn verify_object(&self, mut object: Map<String, Value>) -> Result<(), VerifyError> {
        let signature = match object.remove(SIGNATURE_MEMBER) {
            Some(Value::String(signature)) => signature,
            Some(_) => return Err(VerifyError::MalformedSignature),
            None => return Err(VerifyError::Unsigned),
        };
        let signature: [u8; 64] = STANDARD
            .decode(signature)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(VerifyError::MalformedSignature)?;
        let canonical = canonical::to_string(&object)?;
        if self.verifies(canonical.as_bytes(), &signature) {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key() -> ServerKey {
        ServerKey::from_seed(&[7; 32]).unwrap()
    }

    #[test]
    fn the_signature_is_the_last_member_and_verifies() {
        let data = json!({"b": [1, 2], "a": "x"});
        let signed = key().sign_object(&canonical::to_string(&data).unwrap());
        assert!(
            signed.starts_with(r#"{"a":"x","b":[1,2],"signature":""#),
            "{signed}"
        );
        assert_eq!(key().public_key().verify_data(&signed), Ok(()));
        let empty = key().sign_object("{}");
        assert!(empty.starts_with(r#"{"signature":""#), "{empty}");
        assert_eq!(key().public_key().verify_data(&empty), Ok(()));
    }

    #[test]
    fn reformatting_keeps_a_signature_and_any_change_breaks_it() {
        let signed = key().sign_object(r#"{"a":"x","n":1}"#);
        let value: Value = serde_json::from_str(&signed).unwrap();
        let reformatted = serde_json::to_string_pretty(&value).unwrap();
        let public = key().public_key();
        assert_eq!(public.verify_data(&reformatted), Ok(()));
        let changed = signed.replace(r#""n":1"#, r#""n":2"#);
        assert_eq!(public.verify_data(&changed), Err(VerifyError::Mismatch));
        let other = ServerKey::from_seed(&[8; 32]).unwrap().public_key();
        assert_eq!(other.verify_data(&signed), Err(VerifyError::Mismatch));
        assert_eq!(
            public.verify_data(r#"{"a":"x"}"#),
            Err(VerifyError::Unsigned)
        );
        assert_eq!(
            public.verify_data(r#"{"signature":"AAAA"}"#),
            Err(VerifyError::MalformedSignature)
        );
        assert!(matches!(
            public.verify_data("[1]"),
            Err(VerifyError::NotAnObject(_))
        ));
    }
}
