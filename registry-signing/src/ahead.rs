//! Signing with the costly half made ahead of time: a stock of Ed25519
//! nonces, so that signing a command on a stream costs one SHA-512 pass over
//! it and a scalar multiply-add (about 2 µs), not a scalar multiplication of
//! the base point and its compression (about 30 µs on the project's machine),
//! which a fleet command would otherwise pay once per agent while the agents
//! wait.
//!
//! An Ed25519 signature of message M is (R, S) with R = [r]B and
//! S = r + SHA-512(R || A || M) · a (mod L). RFC 8032 derives r from the
//! message, r = SHA-512(prefix || M), which puts [r]B after the message is
//! known. A verifier can't tell how r was chosen, only that the equation
//! holds, so r may be drawn before the message exists, as long as it is
//! secret, unpredictable, and never used twice (two signatures sharing an r
//! reveal the key). Each nonce here is r = SHA-512(prefix || 32 fresh bytes
//! from the operating system || a counter) mod L: the secret prefix keeps r
//! unpredictable even if the randomness were weak, the counter keeps it
//! unique within a process, the randomness across processes and restarts;
//! each is taken out of the stock once. The cost is that the registry's
//! signatures are not the deterministic ones of RFC 8032 (signing the same
//! bytes twice gives two signatures); every one verifies as Ed25519. When the
//! stock is empty, signing falls back to RFC 8032's deterministic signature.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::hazmat::ExpandedSecretKey;
use sha2::{Digest, Sha512};
use zeroize::Zeroize;

use crate::key::ServerKey;
use crate::signed;

/// Nonces made in one batch: their points are compressed with one field
/// inversion for the whole batch.
const BATCH: usize = 64;

/// One nonce: the secret r and its commitment R = [r]B, compressed. Wiped when dropped.
struct Nonce {
    secret: Scalar,
    commitment: CompressedEdwardsY,
}

impl Drop for Nonce {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

/// The server's key with a stock of nonces made ahead; shared by every
/// stream. [`restock`](Self::restock) fills the stock (off the streams'
/// path, see the module's comment); [`sign_object_in`](Self::sign_object_in) takes
/// one nonce out per signature.
pub struct AheadSigner {
    key: ServerKey,
    secret: ExpandedSecretKey,
    public: [u8; 32],
    stock: Mutex<Vec<Nonce>>,
    /// Counts the nonces ever derived, part of what each one is derived from.
    derived: AtomicU64,
    /// Counts the signatures made.
    signed: AtomicU64,
}

impl AheadSigner {
    /// `key` with an empty stock.
    pub fn new(key: ServerKey) -> Self {
        let secret = key.expanded();
        let public = key.public_key().to_bytes();
        Self {
            key,
            secret,
            public,
            stock: Mutex::new(Vec::new()),
            derived: AtomicU64::new(0),
            signed: AtomicU64::new(0),
        }
    }

    /// The key it signs with.
    pub fn key(&self) -> &ServerKey {
        &self.key
    }

    /// Signatures made so far: a restocker waits for it to stand still.
    pub fn signatures_made(&self) -> u64 {
        self.signed.load(Ordering::Relaxed)
    }

    /// Nonces in stock now.
    pub fn in_stock(&self) -> usize {
        self.lock().len()
    }

    /// Makes one batch of nonces and adds it to the stock, unless it already
    /// holds `up_to`; returns how many it made (0: none were wanted, or the
    /// operating system gave no randomness, and signing stays deterministic).
    pub fn restock(&self, up_to: usize) -> usize {
        let missing = up_to.saturating_sub(self.in_stock()).min(BATCH);
        if missing == 0 {
            return 0;
        }
        let mut fresh = zeroize::Zeroizing::new([0_u8; 32]);
        if getrandom::fill(fresh.as_mut_slice()).is_err() {
            return 0;
        }
        let first = self.derived.fetch_add(missing as u64, Ordering::Relaxed);
        let mut secrets: Vec<Scalar> = (0..missing as u64)
            .map(|n| {
                let mut wide: [u8; 64] = Sha512::new()
                    .chain_update(self.secret.hash_prefix)
                    .chain_update(fresh.as_slice())
                    .chain_update((first + n).to_le_bytes())
                    .finalize()
                    .into();
                let secret = Scalar::from_bytes_mod_order_wide(&wide);
                wide.zeroize();
                secret
            })
            .collect();
        let points: Vec<EdwardsPoint> = secrets.iter().map(EdwardsPoint::mul_base).collect();
        let commitments = EdwardsPoint::compress_batch_alloc(&points);
        let nonces = secrets
            .iter()
            .zip(commitments)
            .map(|(secret, commitment)| Nonce {
                secret: *secret,
                commitment,
            });
        self.lock().extend(nonces);
        secrets.zeroize();
        missing
    }

    /// The Ed25519 signature of `message`, with a nonce from the stock, or,
    /// when it is empty, RFC 8032's deterministic one.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signed.fetch_add(1, Ordering::Relaxed);
        let Some(nonce) = self.lock().pop() else {
            return self.key.sign(message);
        };
        let challenge: [u8; 64] = Sha512::new()
            .chain_update(nonce.commitment.as_bytes())
            .chain_update(self.public)
            .chain_update(message)
            .finalize()
            .into();
        let challenge = Scalar::from_bytes_mod_order_wide(&challenge);
        let response = challenge * self.secret.scalar + nonce.secret;
        let mut signature = [0_u8; 64];
        signature[..32].copy_from_slice(nonce.commitment.as_bytes());
        signature[32..].copy_from_slice(response.as_bytes());
        signature
    }

    /// Makes the canonical object that `buffer` holds from `start` on its
    /// signed form, as [`ServerKey::sign_object`] makes it, signed by
    /// [`sign`](Self::sign): the signature is appended in place (no copy;
    /// [`SIGNATURE_ROOM`](crate::SIGNATURE_ROOM) bytes of spare capacity
    /// spare a reallocation). What comes before `start` (an event's other
    /// fields, say) is left as it is and not signed.
    pub fn sign_object_in(&self, buffer: &mut Vec<u8>, start: usize) {
        let signature = self.sign(&buffer[start..]);
        signed::append_signature(buffer, start, &signature);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Nonce>> {
        // The stock is a list of independent nonces: a panic while it was
        // held leaves none half made.
        self.stock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for AheadSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AheadSigner")
            .field("key", &self.key)
            .field("in_stock", &self.in_stock())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> AheadSigner {
        AheadSigner::new(ServerKey::generate().unwrap())
    }

    #[test]
    fn signatures_made_with_nonces_from_the_stock_verify_and_each_nonce_is_used_once() {
        let signer = signer();
        assert_eq!(signer.restock(10), 10);
        assert_eq!(signer.restock(10), 0);
        let public = signer.key().public_key();
        let message = br#"{"agentId":"a","commandId":"c"}"#;
        let first = signer.sign(message);
        let second = signer.sign(message);
        assert_eq!(signer.in_stock(), 8);
        assert!(public.verifies(message, &first));
        assert!(public.verifies(message, &second));
        assert_ne!(first[..32], second[..32], "a nonce was used twice");
        assert!(!public.verifies(b"another message", &first));
    }

    #[test]
    fn with_an_empty_stock_the_signature_is_rfc_8032s() {
        let signer = signer();
        let message = b"message";
        assert_eq!(signer.sign(message), signer.key().sign(message));
    }

    #[test]
    fn a_batch_is_at_most_its_size_and_the_stock_its_bound() {
        let signer = signer();
        assert_eq!(signer.restock(1_000), BATCH);
        assert_eq!(signer.restock(BATCH + 3), 3);
        assert_eq!(signer.in_stock(), BATCH + 3);
    }

    #[test]
    fn a_signed_object_verifies_like_one_signed_deterministically() {
        let signer = signer();
        signer.restock(1);
        let mut buffer = b"data: {\"a\":\"x\",\"n\":1}".to_vec();
        signer.sign_object_in(&mut buffer, "data: ".len());
        assert_eq!(signer.in_stock(), 0);
        let signed = std::str::from_utf8(&buffer).unwrap();
        let data = signed.strip_prefix("data: ").unwrap();
        signer.key().public_key().verify_data(data).unwrap();
        assert!(
            data.starts_with(r#"{"a":"x","n":1,"signature":""#),
            "{data}"
        );
    }
}
