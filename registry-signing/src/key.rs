//! The server's Ed25519 key pair: read from a PKCS#8 PEM file (by
//! `ed25519-dalek`'s `pkcs8` support, never by hand), generated from the
//! operating system's randomness, or rebuilt from the 32-byte seed kept in
//! storage; and its public key, in the standard base64 agents are given.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::hazmat::ExpandedSecretKey;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, EncodePrivateKey, KeypairBytes, spki::der::pem::LineEnding,
};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

/// The length of a seed (RFC 8032's "private key"), and of a public key.
pub const KEY_LENGTH: usize = 32;

/// Why a key can't be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The PEM text is not an unencrypted PKCS#8 Ed25519 private key.
    #[error("not an unencrypted PKCS#8 Ed25519 private key in PEM ({0})")]
    NotPkcs8Ed25519(String),
    /// The PEM holds an encrypted key, which the server can't ask a passphrase for.
    #[error(
        "an encrypted private key: the server needs it unencrypted (openssl pkey -in KEY -out PLAIN)"
    )]
    Encrypted,
    /// Bytes of the wrong length for a seed or a public key.
    #[error("{found} bytes where an Ed25519 key has 32")]
    WrongLength {
        /// How many there were.
        found: usize,
    },
    /// A public key that is not standard base64 with padding.
    #[error("not standard base64: {0}")]
    NotBase64(String),
    /// 32 bytes that are no point of the curve.
    #[error("not an Ed25519 public key")]
    NotAPublicKey,
    /// The operating system gave no randomness to make a key with.
    #[error("no randomness to generate a key: {0}")]
    NoRandomness(String),
}

/// The server's private key. Its seed is wiped from memory when it is dropped,
/// and it never prints: its `Debug` shows the public key alone.
#[derive(Clone)]
pub struct ServerKey {
    key: SigningKey,
}

impl ServerKey {
    /// Reads an unencrypted PKCS#8 private key in PEM, such as
    /// `openssl genpkey -algorithm ed25519` writes (v1, or v2 with the
    /// public key, which must then match).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            return Err(KeyError::Encrypted);
        }
        SigningKey::from_pkcs8_pem(pem)
            .map(|key| Self { key })
            .map_err(|err| KeyError::NotPkcs8Ed25519(err.to_string()))
    }

    /// A new key from the operating system's randomness.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = Zeroizing::new([0_u8; KEY_LENGTH]);
        getrandom::fill(seed.as_mut_slice())
            .map_err(|err| KeyError::NoRandomness(err.to_string()))?;
        Ok(Self {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// The key whose 32-byte seed (RFC 8032's private key) is `seed`.
    pub fn from_seed(seed: &[u8]) -> Result<Self, KeyError> {
        let seed: &[u8; KEY_LENGTH] = seed
            .try_into()
            .map_err(|_| KeyError::WrongLength { found: seed.len() })?;
        Ok(Self {
            key: SigningKey::from_bytes(seed),
        })
    }

    /// The 32-byte seed, as storage keeps it; wiped when dropped.
    pub fn seed(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.key.to_bytes().to_vec())
    }

    /// The key as an unencrypted PKCS#8 PEM document, as a key file holds
    /// it: version 1, the seed alone, as `openssl genpkey` writes it (OpenSSL
    /// 3.0 can't read version 2, which adds the public key).
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        let seed_only = KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        };
        match seed_only.to_pkcs8_pem(LineEnding::LF) {
            Ok(pem) => pem,
            // Encoding 32 + 32 known bytes has no way to fail.
            Err(err) => unreachable!("a PKCS#8 document of an Ed25519 key: {err}"),
        }
    }

    /// The public key agents verify with.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
        }
    }

    /// The Ed25519 signature (RFC 8032, pure Ed25519) of `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// The secret scalar and nonce prefix RFC 8032 derives from the seed,
    /// for [`AheadSigner`](crate::AheadSigner); wiped when dropped.
    pub(crate) fn expanded(&self) -> ExpandedSecretKey {
        ExpandedSecretKey::from(self.key.as_bytes())
    }
}

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerKey")
            .field("public_key", &self.public_key().to_base64())
            .finish_non_exhaustive()
    }
}

/// A server's public key: what the registration answer's `serverPublicKey` carries.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
}

impl PublicKey {
    /// The key whose 32 bytes (RFC 8032's encoding) are `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let bytes: &[u8; KEY_LENGTH] = bytes
            .try_into()
            .map_err(|_| KeyError::WrongLength { found: bytes.len() })?;
        VerifyingKey::from_bytes(bytes)
            .map(|key| Self { key })
            .map_err(|_| KeyError::NotAPublicKey)
    }

    /// The key `serverPublicKey` names: standard base64, with padding, of its 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = STANDARD
            .decode(text)
            .map_err(|err| KeyError::NotBase64(err.to_string()))?;
        Self::from_bytes(&bytes)
    }

    /// Its 32 bytes.
    pub fn to_bytes(&self) -> [u8; KEY_LENGTH] {
        self.key.to_bytes()
    }

    /// Standard base64, with padding, of its 32 bytes: `serverPublicKey`.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.key.as_bytes())
    }

    /// Whether `signature` is this key's signature of `message`. Strict
    /// (RFC 8032 section 5.1.7 with the checks of `verify_strict`): weak keys
    /// and malleated signatures are refused.
    pub fn verifies(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.key
            .verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PublicKey").field(&self.to_base64()).finish()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}
