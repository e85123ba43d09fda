//! Envelope encryption, blind indexes and keyed hashes.
//!
//! Guarantees:
//! - a phone number is stored only as AEAD ciphertext under its subject's own data
//!   key; the data key is stored only wrapped by the key-encryption key (KEK), so
//!   destroying one wrapped key makes that subject's data unreadable everywhere
//!   (crypto-shredding);
//! - equality look-ups use a blind index, HMAC-SHA256 under a key of its own, never a
//!   plain hash (the phone-number space is small enough to hash exhaustively);
//! - one-time codes are kept only as HMAC-SHA256 under the code pepper, bound to the
//!   verification they belong to, and compared in constant time;
//! - API keys are kept only as SHA-256 of their random secret part.
//!
//! Key material is zeroised on drop and never printed by `Debug`.

mod keyring;

pub use keyring::{Keyring, SecretSource};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

type HmacSha256 = Hmac<Sha256>;

/// Version byte in front of every ciphertext, so the format can change later.
const CIPHERTEXT_V1: u8 = 1;
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("ciphertext is malformed or was not made with this key")]
    Decrypt,
}

/// 32 bytes of key material.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct KeyBytes([u8; 32]);

impl KeyBytes {
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        OsRng.fill_bytes(&mut k);
        Self(k)
    }

    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyBytes(<redacted>)")
    }
}

fn seal(key: &KeyBytes, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.expose().into());
    // Nonces need to be unique, not secret: 192 random bits from the thread's CSPRNG
    // (ChaCha12, seeded and periodically reseeded from the OS) make a repeat
    // practically impossible, without a system call per encryption.
    let mut nonce = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
    out.push(CIPHERTEXT_V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

fn open(key: &KeyBytes, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != CIPHERTEXT_V1 {
        return Err(CryptoError::Decrypt);
    }
    let cipher = XChaCha20Poly1305::new(key.expose().into());
    cipher
        .decrypt(
            XNonce::from_slice(&sealed[1..1 + NONCE_LEN]),
            Payload {
                msg: &sealed[1 + NONCE_LEN..],
                aad,
            },
        )
        .map_err(|_| CryptoError::Decrypt)
}

/// The key-encryption key: wraps subjects' data keys.
#[derive(Debug, Clone)]
pub struct Kek(KeyBytes);

impl Kek {
    pub fn new(key: KeyBytes) -> Self {
        Self(key)
    }

    /// Wraps a data key; `aad` binds it to its owner (the subject's blind index).
    pub fn wrap(&self, dk: &DataKey, aad: &[u8]) -> Vec<u8> {
        seal(&self.0, dk.0.expose(), aad)
    }

    pub fn unwrap_key(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey, CryptoError> {
        let mut raw = open(&self.0, wrapped, aad)?;
        let bytes: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Decrypt)?;
        raw.zeroize();
        Ok(DataKey(KeyBytes(bytes)))
    }
}

/// One subject's data key. Everything personal about the subject is sealed under it.
#[derive(Debug, Clone)]
pub struct DataKey(KeyBytes);

impl DataKey {
    pub fn generate() -> Self {
        Self(KeyBytes::generate())
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        seal(&self.0, plaintext, aad)
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open(&self.0, sealed, aad)
    }
}

/// A keyed hash of an E.164 number, for look-ups and uniqueness.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlindIndex(pub [u8; 32]);

impl BlindIndex {
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        b.try_into().ok().map(Self)
    }

    /// A short, non-reversible handle for logs and audit entries.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl std::fmt::Debug for BlindIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlindIndex({}…)", self.short())
    }
}

/// Computes blind indexes (HMAC-SHA256 under the blind-index key).
#[derive(Debug, Clone)]
pub struct BlindIndexer(KeyBytes);

impl BlindIndexer {
    pub fn new(key: KeyBytes) -> Self {
        Self(key)
    }

    pub fn index(&self, e164: &str) -> BlindIndex {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(self.0.expose())
            .expect("HMAC takes any key length");
        mac.update(e164.as_bytes());
        BlindIndex(mac.finalize().into_bytes().into())
    }

    /// A pseudonym for another identifier (an IP network, an account reference, a
    /// device id, a number prefix): keyed like the blind index, with a domain so that no
    /// two kinds can collide with each other or with a number's index. 128 bits in hex,
    /// short enough for a counter key.
    pub fn pseudonym(&self, domain: &str, value: &[u8]) -> String {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(self.0.expose())
            .expect("HMAC takes any key length");
        mac.update(b"pseudonym\0");
        mac.update(domain.as_bytes());
        mac.update(b"\0");
        mac.update(value);
        hex::encode(&mac.finalize().into_bytes()[..16])
    }
}

/// Hashes one-time codes under the pepper, bound to the verification id.
#[derive(Debug, Clone)]
pub struct CodeHasher(KeyBytes);

impl CodeHasher {
    pub fn new(pepper: KeyBytes) -> Self {
        Self(pepper)
    }

    pub fn hash(&self, verification_id: &str, code: &str) -> [u8; 32] {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(self.0.expose())
            .expect("HMAC takes any key length");
        mac.update(verification_id.as_bytes());
        mac.update(b"\x00");
        mac.update(code.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Constant-time comparison of a candidate code against the stored hash.
    pub fn matches(&self, verification_id: &str, candidate: &str, stored: &[u8]) -> bool {
        let h = self.hash(verification_id, candidate);
        stored.len() == 32 && bool::from(h.ct_eq(stored))
    }
}

/// Prefix of every API key, so leaked keys are recognisable by secret scanners.
pub const API_KEY_PREFIX: &str = "rfk_";

/// A freshly created API key: the full key is shown once and never stored.
pub struct NewApiKey {
    pub id: String,
    pub key: String,
    pub secret_hash: [u8; 32],
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

pub fn generate_api_key() -> NewApiKey {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut id);
    OsRng.fill_bytes(&mut secret);
    let id = hex::encode(id);
    let secret = hex::encode(secret);
    let secret_hash = Sha256::digest(secret.as_bytes()).into();
    NewApiKey {
        key: format!("{API_KEY_PREFIX}{id}_{secret}"),
        id,
        secret_hash,
    }
}

/// Splits a presented key into its id and the SHA-256 of its secret part.
pub fn parse_api_key(presented: &str) -> Option<(&str, [u8; 32])> {
    let rest = presented.strip_prefix(API_KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    if id.len() != 16 || secret.len() != 64 {
        return None;
    }
    Some((id, Sha256::digest(secret.as_bytes()).into()))
}

pub fn api_key_hash_matches(presented: &[u8; 32], stored: &[u8]) -> bool {
    stored.len() == 32 && bool::from(presented.ct_eq(stored))
}

/// SHA-256, for request fingerprints and similar non-secret digests.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Random bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    OsRng.fill_bytes(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_key_opens_only_with_its_aad_and_kek() {
        let kek = Kek::new(KeyBytes::generate());
        let dk = DataKey::generate();
        let wrapped = kek.wrap(&dk, b"owner-1");
        let back = kek.unwrap_key(&wrapped, b"owner-1").unwrap();
        let sealed = back.seal(b"+447700900123", b"phone");
        assert_eq!(dk.open(&sealed, b"phone").unwrap(), b"+447700900123");
        assert_eq!(
            kek.unwrap_key(&wrapped, b"owner-2").unwrap_err(),
            CryptoError::Decrypt
        );
        let other = Kek::new(KeyBytes::generate());
        assert!(other.unwrap_key(&wrapped, b"owner-1").is_err());
        assert!(dk.open(&sealed, b"other-aad").is_err());
    }

    #[test]
    fn ciphertexts_are_randomised_and_tamper_evident() {
        let dk = DataKey::generate();
        let a = dk.seal(b"same", b"");
        let b = dk.seal(b"same", b"");
        assert_ne!(a, b);
        let mut t = a.clone();
        *t.last_mut().unwrap() ^= 1;
        assert!(dk.open(&t, b"").is_err());
        assert!(dk.open(&a[..10], b"").is_err());
    }

    #[test]
    fn blind_index_is_keyed_and_deterministic() {
        let k = KeyBytes::generate();
        let a = BlindIndexer::new(k.clone());
        let b = BlindIndexer::new(k);
        let c = BlindIndexer::new(KeyBytes::generate());
        assert_eq!(a.index("+447700900123"), b.index("+447700900123"));
        assert_ne!(a.index("+447700900123"), a.index("+447700900124"));
        assert_ne!(a.index("+447700900123"), c.index("+447700900123"));
        assert!(!format!("{:?}", a.index("+1")).contains("+1"));
    }

    #[test]
    fn code_hash_is_bound_to_verification() {
        let h = CodeHasher::new(KeyBytes::generate());
        let stored = h.hash("VE1", "123456");
        assert!(h.matches("VE1", "123456", &stored));
        assert!(!h.matches("VE1", "123457", &stored));
        assert!(!h.matches("VE2", "123456", &stored));
        assert!(!h.matches("VE1", "123456", &stored[..31]));
    }

    #[test]
    fn api_keys_round_trip_and_reject_garbage() {
        let k = generate_api_key();
        let (id, hash) = parse_api_key(&k.key).unwrap();
        assert_eq!(id, k.id);
        assert!(api_key_hash_matches(&hash, &k.secret_hash));
        assert!(parse_api_key("rfk_short_x").is_none());
        assert!(parse_api_key("bearer").is_none());
        assert!(!format!("{k:?}").contains(&k.key));
    }
}
