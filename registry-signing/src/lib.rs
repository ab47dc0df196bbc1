//! Signed commands (SPEC 12), in one small crate that the server and the
//! agent SDK both use, so that what one signs the other verifies by the same
//! code: the canonical form (RFC 8785), the server's Ed25519 key, and a
//! command event's signed data.
//!
//! The server signs each command event's data: the JSON object an agent's
//! stream carries in `data:`, which names the command, the agent and
//! `expiresAt`. The signature is Ed25519 (RFC 8032, pure, as
//! `ed25519-dalek` makes it) over the UTF-8 bytes of the RFC 8785 canonical
//! form of that object, and travels as its last member, `"signature"`, in
//! standard base64 with padding. An agent verifies with the registration
//! answer's `serverPublicKey` ([`PublicKey::verify_data`]).
//!
//! Why not more: each agent's data names that agent and its own command, so
//! one rollout's signatures can't be shared, and Ed25519 hashes its whole
//! message; what is shared is the payload's canonical form, computed once
//! per request ([`canonical_payload`]).
//!
//! # Layout
//!
//! - [`ahead`]: [`AheadSigner`], signing with nonces made ahead of time, which
//!   the server's streams use.
//! - [`canonical`]: RFC 8785 (by `serde_jcs`), and the ±2^53 rule for numbers.
//! - [`key`]: [`ServerKey`] (PKCS#8 PEM, generated, or a stored seed) and [`PublicKey`].
//! - [`signed`]: [`ServerKey::sign_object`] and [`PublicKey::verify_data`].

pub mod ahead;
pub mod canonical;
pub mod key;
pub mod signed;

pub use ahead::AheadSigner;
pub use canonical::{CanonicalError, MAX_SAFE_INTEGER, canonical_payload, check_numbers};
pub use key::{KeyError, PublicKey, ServerKey};
pub use signed::{SIGNATURE_MEMBER, SIGNATURE_ROOM, VerifyError};
