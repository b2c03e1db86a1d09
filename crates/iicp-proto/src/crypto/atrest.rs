//! At-rest encryption of the operator seed in `operator.json` (PROTOCOL.md §17.1,
//! DESIGN §4.14): PBKDF2-HMAC-SHA256 (600 000 iterations, stored in the record) derives
//! a 32-byte key from the passphrase (UTF-8) and a 16-byte random salt; AES-256-GCM with
//! a 12-byte random nonce seals the raw 32-byte Ed25519 seed, with AAD = UTF-8
//! `operator_id` so a sealed seed cannot be moved to another identity.
//!
//! The record is the `operator_secret_enc` object the TypeScript, Python and Rust SDKs
//! write, byte-compatible across them: `{"v": 1, "kdf": "pbkdf2-hmac-sha256",
//! "iter": 600000, "salt": <std base64>, "nonce": <std base64>, "ct": <std base64 of
//! ciphertext ‖ tag>}` (standard padded base64; padding optional on input).
//!
//! No file or environment access here: the caller reads `IICP_OPERATOR_PASSPHRASE` or
//! prompts, and is expected to keep the passphrase in zeroizing storage. The derived
//! key and every plaintext copy of the seed made here are zeroized.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::encoding::{b64_decode, b64_encode, to_array};
use super::sign::OperatorKey;

/// `operator_secret_enc.v`.
pub const VERSION: u64 = 1;
/// `operator_secret_enc.kdf`.
pub const KDF: &str = "pbkdf2-hmac-sha256";
/// PBKDF2 iteration count written by [`encrypt_seed`] (OWASP 2023).
pub const ITERATIONS: u32 = 600_000;
/// Largest iteration count accepted when decrypting (bounds the work a hostile file
/// can cause).
pub const MAX_ITERATIONS: u32 = 10_000_000;
/// Salt length in bytes.
pub const SALT_LEN: usize = 16;
/// AES-GCM nonce length in bytes.
pub const NONCE_LEN: usize = 12;

/// Why sealing or unsealing failed. Messages are fixed and contain no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AtRestError {
    /// The passphrase is empty.
    #[error("passphrase must not be empty")]
    EmptyPassphrase,
    /// `v` or `kdf` is not one this crate understands.
    #[error("unsupported operator_secret_enc format")]
    UnsupportedFormat,
    /// `iter` is 0 or above [`MAX_ITERATIONS`].
    #[error("operator_secret_enc iteration count out of range")]
    BadIterations,
    /// A field is not base64 of the expected length.
    #[error("operator_secret_enc field `{0}` is malformed")]
    BadEncoding(&'static str),
    /// Authentication failed: wrong passphrase, tampered record or other operator_id.
    #[error("operator secret decryption failed (wrong passphrase or corrupt file)")]
    WrongPassphrase,
    /// The decrypted seed does not belong to the expected operator_id.
    #[error("decrypted operator key does not match operator_id")]
    KeyMismatch,
    /// Encryption failed.
    #[error("operator secret encryption failed")]
    EncryptFailed,
}

/// The `operator_secret_enc` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedSeed {
    /// Format version, 1.
    pub v: u64,
    /// Key derivation, `pbkdf2-hmac-sha256`.
    pub kdf: String,
    /// PBKDF2 iterations.
    pub iter: u32,
    /// 16-byte salt, standard base64.
    pub salt: String,
    /// 12-byte nonce, standard base64.
    pub nonce: String,
    /// Ciphertext ‖ 16-byte tag of the 32-byte seed, standard base64.
    pub ct: String,
}

fn derive_key(passphrase: &str, salt: &[u8], iterations: u32) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    pbkdf2::pbkdf2_hmac::<Sha256>(passphrase.as_bytes(), salt, iterations, key.as_mut());
    key
}

fn seal(
    passphrase: &str,
    seed: &[u8; 32],
    operator_id: &str,
    iterations: u32,
    salt: &[u8; SALT_LEN],
    nonce: &[u8; NONCE_LEN],
) -> Result<EncryptedSeed, AtRestError> {
    if passphrase.is_empty() {
        return Err(AtRestError::EmptyPassphrase);
    }
    let key = derive_key(passphrase, salt, iterations);
    let ct = Aes256Gcm::new(&(*key).into())
        .encrypt(
            &(*nonce).into(),
            Payload {
                msg: seed,
                aad: operator_id.as_bytes(),
            },
        )
        .map_err(|_| AtRestError::EncryptFailed)?;
    Ok(EncryptedSeed {
        v: VERSION,
        kdf: KDF.to_owned(),
        iter: iterations,
        salt: b64_encode(salt),
        nonce: b64_encode(nonce),
        ct: b64_encode(&ct),
    })
}

/// Seals a 32-byte seed under `passphrase` with [`ITERATIONS`] and a fresh salt and
/// nonce from `rng`, bound to `operator_id`.
///
/// # Errors
/// [`AtRestError::EmptyPassphrase`] or [`AtRestError::EncryptFailed`].
pub fn encrypt_seed<R: CryptoRng + RngCore>(
    rng: &mut R,
    passphrase: &str,
    seed: &[u8; 32],
    operator_id: &str,
) -> Result<EncryptedSeed, AtRestError> {
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut salt);
    rng.fill_bytes(&mut nonce);
    seal(passphrase, seed, operator_id, ITERATIONS, &salt, &nonce)
}

/// Opens a record and returns the 32-byte seed. Uses the iteration count stored in the
/// record.
///
/// # Errors
/// [`AtRestError::UnsupportedFormat`], [`AtRestError::BadIterations`],
/// [`AtRestError::BadEncoding`], [`AtRestError::EmptyPassphrase`] or
/// [`AtRestError::WrongPassphrase`].
pub fn decrypt_seed(
    passphrase: &str,
    record: &EncryptedSeed,
    operator_id: &str,
) -> Result<Zeroizing<[u8; 32]>, AtRestError> {
    if record.v != VERSION || record.kdf != KDF {
        return Err(AtRestError::UnsupportedFormat);
    }
    if record.iter == 0 || record.iter > MAX_ITERATIONS {
        return Err(AtRestError::BadIterations);
    }
    if passphrase.is_empty() {
        return Err(AtRestError::EmptyPassphrase);
    }
    let salt = b64_decode(&record.salt).ok_or(AtRestError::BadEncoding("salt"))?;
    if salt.is_empty() {
        return Err(AtRestError::BadEncoding("salt"));
    }
    let nonce = b64_decode(&record.nonce)
        .and_then(|n| to_array::<NONCE_LEN>(&n))
        .ok_or(AtRestError::BadEncoding("nonce"))?;
    let ct = b64_decode(&record.ct).ok_or(AtRestError::BadEncoding("ct"))?;
    if ct.len() != 32 + 16 {
        return Err(AtRestError::BadEncoding("ct"));
    }
    let key = derive_key(passphrase, &salt, record.iter);
    let plain = Zeroizing::new(
        Aes256Gcm::new(&(*key).into())
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: &ct,
                    aad: operator_id.as_bytes(),
                },
            )
            .map_err(|_| AtRestError::WrongPassphrase)?,
    );
    to_array::<32>(&plain)
        .map(Zeroizing::new)
        .ok_or(AtRestError::WrongPassphrase)
}

/// Seals an operator key; the AAD is the key's own `operator_id`.
///
/// # Errors
/// As [`encrypt_seed`].
pub fn encrypt_operator_key<R: CryptoRng + RngCore>(
    rng: &mut R,
    passphrase: &str,
    key: &OperatorKey,
) -> Result<EncryptedSeed, AtRestError> {
    encrypt_seed(rng, passphrase, &key.seed(), &key.operator_id())
}

/// Opens a record into an [`OperatorKey`] and checks that it is the key of
/// `operator_id`.
///
/// # Errors
/// As [`decrypt_seed`], plus [`AtRestError::KeyMismatch`].
pub fn decrypt_operator_key(
    passphrase: &str,
    record: &EncryptedSeed,
    operator_id: &str,
) -> Result<OperatorKey, AtRestError> {
    let seed = decrypt_seed(passphrase, record, operator_id)?;
    let key = OperatorKey::from_seed(&seed);
    if key.operator_id() != operator_id {
        return Err(AtRestError::KeyMismatch);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: &str = "correct horse battery staple \u{2713}";
    const OP: &str = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=";

    fn seed() -> [u8; 32] {
        core::array::from_fn(|i| i as u8)
    }

    /// Records produced independently with Python `cryptography` 48.0 (PBKDF2HMAC +
    /// AESGCM) from seed 0x00..=0x1f, salt 0xa0..=0xaf, nonce 0xc0..=0xcb and the
    /// passphrase above (UTF-8); `OP` is standard base64 of that seed's Ed25519 key.
    fn python_record(iter: u32) -> EncryptedSeed {
        let ct = match iter {
            600_000 => "pSC4jLgKPFGuK6QM/c5vMwHnrgiD1MHKImfbTz5r+z20jDrmpDRQWqs+ILXmN6ky",
            _ => "bMcbB3IwI5Tv0cBrNnRIIljksmKDoAgPVDXjzEzKXuOYilC3OxuWHVpYrib1Bswz",
        };
        serde_json::from_value(serde_json::json!({
            "v": 1, "kdf": "pbkdf2-hmac-sha256", "iter": iter,
            "salt": "oKGio6SlpqeoqaqrrK2urw==", "nonce": "wMHCw8TFxsfIycrL", "ct": ct,
        }))
        .unwrap()
    }

    fn fixed_salt_nonce() -> ([u8; 16], [u8; 12]) {
        (
            core::array::from_fn(|i| 0xa0 + i as u8),
            core::array::from_fn(|i| 0xc0 + i as u8),
        )
    }

    /// The only test that runs the full 600 000 iterations: a cross-language record.
    #[test]
    fn python_kat_600k() {
        let key = decrypt_operator_key(PASS, &python_record(600_000), OP).unwrap();
        assert_eq!(key.seed().as_ref(), &seed());
        assert_eq!(key.operator_id(), OP);
    }

    #[test]
    fn python_kat_low_iterations_byte_identical() {
        let (salt, nonce) = fixed_salt_nonce();
        let ours = seal(PASS, &seed(), OP, 1000, &salt, &nonce).unwrap();
        assert_eq!(ours, python_record(1000));
        assert_eq!(OperatorKey::from_seed(&seed()).operator_id(), OP);
    }

    #[test]
    fn json_field_names() {
        let (salt, nonce) = fixed_salt_nonce();
        let rec = seal(PASS, &seed(), OP, 1000, &salt, &nonce).unwrap();
        let v = serde_json::to_value(&rec).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["ct", "iter", "kdf", "nonce", "salt", "v"]);
    }

    #[test]
    fn wrong_passphrase_operator_id_and_tamper() {
        let (salt, nonce) = fixed_salt_nonce();
        let rec = seal(PASS, &seed(), OP, 1000, &salt, &nonce).unwrap();
        assert_eq!(
            decrypt_seed("wrong", &rec, OP).unwrap_err(),
            AtRestError::WrongPassphrase
        );
        assert_eq!(
            decrypt_seed(PASS, &rec, "other-operator").unwrap_err(),
            AtRestError::WrongPassphrase
        );
        assert_eq!(
            decrypt_seed("", &rec, OP).unwrap_err(),
            AtRestError::EmptyPassphrase
        );
        let flip = |s: &str| {
            let mut b = b64_decode(s).unwrap();
            b[0] ^= 1;
            b64_encode(&b)
        };
        for t in [
            EncryptedSeed {
                ct: flip(&rec.ct),
                ..rec.clone()
            },
            EncryptedSeed {
                nonce: flip(&rec.nonce),
                ..rec.clone()
            },
            EncryptedSeed {
                salt: flip(&rec.salt),
                ..rec.clone()
            },
            EncryptedSeed {
                iter: 999,
                ..rec.clone()
            },
        ] {
            assert_eq!(
                decrypt_seed(PASS, &t, OP).unwrap_err(),
                AtRestError::WrongPassphrase
            );
        }
        assert_eq!(
            decrypt_seed(
                PASS,
                &EncryptedSeed {
                    v: 2,
                    ..rec.clone()
                },
                OP
            )
            .unwrap_err(),
            AtRestError::UnsupportedFormat
        );
        assert_eq!(
            decrypt_seed(
                PASS,
                &EncryptedSeed {
                    kdf: "scrypt".into(),
                    ..rec.clone()
                },
                OP
            )
            .unwrap_err(),
            AtRestError::UnsupportedFormat
        );
        assert_eq!(
            decrypt_seed(
                PASS,
                &EncryptedSeed {
                    iter: 0,
                    ..rec.clone()
                },
                OP
            )
            .unwrap_err(),
            AtRestError::BadIterations
        );
        assert_eq!(
            decrypt_seed(
                PASS,
                &EncryptedSeed {
                    iter: MAX_ITERATIONS + 1,
                    ..rec.clone()
                },
                OP
            )
            .unwrap_err(),
            AtRestError::BadIterations
        );
        for (t, field) in [
            (
                EncryptedSeed {
                    salt: "!".into(),
                    ..rec.clone()
                },
                "salt",
            ),
            (
                EncryptedSeed {
                    salt: String::new(),
                    ..rec.clone()
                },
                "salt",
            ),
            (
                EncryptedSeed {
                    nonce: "AAAA".into(),
                    ..rec.clone()
                },
                "nonce",
            ),
            (
                EncryptedSeed {
                    ct: "AAAA".into(),
                    ..rec.clone()
                },
                "ct",
            ),
            (
                EncryptedSeed {
                    ct: "%%".into(),
                    ..rec.clone()
                },
                "ct",
            ),
        ] {
            assert_eq!(
                decrypt_seed(PASS, &t, OP).unwrap_err(),
                AtRestError::BadEncoding(field)
            );
        }
        assert_eq!(
            seal("", &seed(), OP, 1000, &salt, &nonce).unwrap_err(),
            AtRestError::EmptyPassphrase
        );
    }

    #[test]
    fn key_mismatch_is_detected() {
        let (salt, nonce) = fixed_salt_nonce();
        // Sealed under an operator_id that is not this seed's key.
        let other = OperatorKey::from_seed(&[9; 32]).operator_id();
        let rec = seal(PASS, &seed(), &other, 1000, &salt, &nonce).unwrap();
        assert_eq!(
            decrypt_operator_key(PASS, &rec, &other).unwrap_err(),
            AtRestError::KeyMismatch
        );
    }

    #[test]
    fn error_messages_do_not_leak() {
        let (salt, nonce) = fixed_salt_nonce();
        let rec = seal(PASS, &seed(), OP, 1000, &salt, &nonce).unwrap();
        let err = decrypt_seed("hunter2", &rec, OP).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains("hunter2") && !text.contains(PASS));
    }
}
