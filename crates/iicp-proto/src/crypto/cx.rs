//! IICP-CX Tier 1 payload confidentiality, byte-exact per PROTOCOL.md §16 (key
//! advertisement §16.1, request envelope §16.2, algorithm §16.3, encrypted response
//! §16.4, errors §16.5) and DESIGN §4.6 / §19 T11.
//!
//! Request (client → node):
//! 1. `eph` = random X25519 key; `shared = X25519(eph, node_pub)`;
//! 2. `nonce` = 12 random bytes;
//! 3. `key = HKDF-SHA256(ikm = shared, salt = nonce, info = "IICP-CX-v1" ‖ task_id ‖ intent)`
//!    (plain concatenation), 32 bytes;
//! 4. `aad = task_id + "|" + intent` (with the separator);
//! 5. `encrypted_body = AES-256-GCM(key, nonce, payload JSON, aad)` (ciphertext ‖ tag);
//! 6. envelope [`IicpConf`]; all byte fields base64url without padding.
//!
//! Response (`response_encryption_v1`): same `shared`, fresh 12-byte nonce,
//! `key = HKDF-SHA256(shared, salt = nonce, info = "IICP-CX-RESP-v1" ‖ task_id)`,
//! `aad = task_id + "|resp"`, envelope [`IicpConfResp`].
//!
//! The key advertisement itself is the wire type [`crate::directory::CxPublicKey`];
//! this module turns it into a usable [`NodePublicKey`] and builds it from a
//! [`CxKeyPair`]. `key_id` is an opaque label: it is echoed, never recomputed, when
//! talking to a node. Low-order (non-contributory) X25519 inputs are refused on both
//! sides. Input base64url is accepted with or without padding.

use std::fmt;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use hkdf::Hkdf;
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::encoding::{b64url_decode, b64url_encode, to_array};
use crate::directory::CxPublicKey;
use crate::error::ErrorCode;

/// Envelope version of Tier 1.
pub const VERSION: u64 = 1;
/// `cx_public_key.algorithm`.
pub const ALGORITHM: &str = "X25519";
/// `cx_public_key.encoding`.
pub const ENCODING: &str = "base64url";
/// Key feature announcing encrypted responses (§16.4).
pub const RESPONSE_ENCRYPTION_V1: &str = "response_encryption_v1";
/// Value of the CALL's `cx_response_encryption` member when the client requires an
/// encrypted response.
pub const RESPONSE_ENCRYPTION_REQUIRED: &str = "required";
/// HKDF `info` prefix for the request key.
pub const REQUEST_INFO: &[u8] = b"IICP-CX-v1";
/// HKDF `info` prefix for the response key.
pub const RESPONSE_INFO: &[u8] = b"IICP-CX-RESP-v1";
/// AES-GCM nonce length.
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Longest key lifetime a node should advertise (`not_after`), in seconds (90 days).
pub const MAX_KEY_LIFETIME_SECS: u64 = 90 * 24 * 3600;

/// A CX failure. [`CxError::wire_code`] is the code a node sends; see its docs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CxError {
    /// The node has no CX private key but received `iicp_conf`.
    #[error("this node has no CX key")]
    NoKey,
    /// `recipient_key_id` names no key this node holds.
    #[error("unknown CX recipient key id")]
    UnknownKeyId,
    /// The envelope `version` is not 1.
    #[error("unsupported CX envelope version {0}")]
    UnsupportedVersion(u64),
    /// The key advertisement is not `X25519` / `base64url`.
    #[error("unsupported CX key algorithm or encoding")]
    UnsupportedAlgorithm,
    /// The envelope is not a JSON object with the required members.
    #[error("malformed CX envelope")]
    BadEnvelope,
    /// A byte field is not base64url or has the wrong length.
    #[error("CX field `{0}` is not valid base64url of the expected length")]
    BadEncoding(&'static str),
    /// The `aad` is not UTF-8 `task_id|intent` (or the task id contains `|`).
    #[error("CX additional data is malformed")]
    BadAad,
    /// The `aad` names another task id or intent than the outer CALL.
    #[error("CX additional data does not match the task")]
    AadMismatch,
    /// The peer key is a low-order point (the shared secret would be all zeros).
    #[error("CX peer key is not usable")]
    WeakKey,
    /// Authentication failed: wrong key, tampered ciphertext, nonce or aad.
    #[error("CX decryption failed")]
    DecryptFailed,
    /// The decrypted request payload is not JSON.
    #[error("CX payload is not valid JSON")]
    BadPayload,
    /// Encryption failed (plaintext too large for AES-GCM).
    #[error("CX encryption failed")]
    EncryptFailed,
}

impl CxError {
    /// The code a **node** should send today: the shipped SDK codes
    /// (`IICP-CX-01` no key, `IICP-CX-02` any other failure to open the request), all
    /// with HTTP 400, because that is what deployed reference clients receive from
    /// reference nodes (§16.5). Client-side failures map to `IICP-CX-02` as well.
    pub fn wire_code(&self) -> ErrorCode {
        match self {
            Self::NoKey => ErrorCode::Cx01,
            _ => ErrorCode::Cx02,
        }
    }

    /// HTTP status to send with [`CxError::wire_code`] (400).
    pub fn http_status(&self) -> u16 {
        400
    }

    /// The target-model code of [cx §6] (`IICP-E060` unknown key id, `E061` unsupported
    /// version, `E062` decrypt/format failure, `E064` CX not supported), for logs and a
    /// future switch; not what deployed peers send.
    pub fn spec_code(&self) -> ErrorCode {
        match self {
            Self::UnknownKeyId => ErrorCode::E060,
            Self::UnsupportedVersion(_) => ErrorCode::E061,
            Self::NoKey | Self::UnsupportedAlgorithm => ErrorCode::E064,
            _ => ErrorCode::E062,
        }
    }
}

/// `key_id` as the reference SDKs compute it: `"cx-"` + the first 16 hex digits of
/// SHA-256 of the raw 32-byte public key.
pub fn key_id_for(public_key: &[u8; 32]) -> String {
    let digest = Sha256::digest(public_key);
    let mut id = String::from("cx-");
    id.push_str(&hex::encode(&digest[..8]));
    id
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

/// A node's static X25519 key pair with the `key_id` it advertises. The secret is
/// zeroized on drop and never printed.
#[derive(Clone)]
pub struct CxKeyPair {
    secret: StaticSecret,
    public: PublicKey,
    key_id: String,
}

impl CxKeyPair {
    /// Generates a key pair from the injected RNG (`key_id` per [`key_id_for`]).
    pub fn generate<R: CryptoRng + RngCore>(rng: &mut R) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(bytes.as_mut());
        Self::from_secret_bytes(&bytes)
    }

    /// Rebuilds the key pair from its stored 32-byte secret.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        let secret = StaticSecret::from(*secret);
        let public = PublicKey::from(&secret);
        let key_id = key_id_for(public.as_bytes());
        Self {
            secret,
            public,
            key_id,
        }
    }

    /// Replaces the advertised `key_id` (for keys advertised under another label).
    pub fn with_key_id(mut self, key_id: impl Into<String>) -> Self {
        self.key_id = key_id.into();
        self
    }

    /// The 32-byte secret, for persistence.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// The advertised key id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public half with its key id.
    pub fn public_key(&self) -> NodePublicKey {
        NodePublicKey {
            bytes: self.public.to_bytes(),
            key_id: self.key_id.clone(),
        }
    }

    /// The `cx_public_key` object to put in REGISTER / heartbeat: `X25519`,
    /// `base64url`, the key, its id, `not_after` (ISO-8601 UTC, at most 90 days ahead,
    /// supplied by the caller), `hybrid_pq: null`, and the `response_encryption_v1`
    /// feature when `response_encryption` is true.
    pub fn advertisement(
        &self,
        not_after: Option<String>,
        response_encryption: bool,
    ) -> CxPublicKey {
        CxPublicKey {
            algorithm: ALGORITHM.to_owned(),
            encoding: ENCODING.to_owned(),
            key: b64url_encode(self.public.as_bytes()),
            key_id: self.key_id.clone(),
            not_after,
            hybrid_pq: Some(Value::Null),
            features: if response_encryption {
                vec![RESPONSE_ENCRYPTION_V1.to_owned()]
            } else {
                Vec::new()
            },
            ..CxPublicKey::default()
        }
    }
}

impl fmt::Debug for CxKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CxKeyPair")
            .field("key_id", &self.key_id)
            .field("public", &b64url_encode(self.public.as_bytes()))
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A node's X25519 public key and the `key_id` to echo as `recipient_key_id`.
#[derive(Clone, PartialEq, Eq)]
pub struct NodePublicKey {
    bytes: [u8; 32],
    key_id: String,
}

impl NodePublicKey {
    /// From raw bytes and the advertised key id.
    pub fn new(bytes: [u8; 32], key_id: impl Into<String>) -> Self {
        Self {
            bytes,
            key_id: key_id.into(),
        }
    }

    /// From a received `cx_public_key`: `algorithm` must be `X25519` and `encoding`
    /// `base64url` (both case-insensitive; empty is tolerated), `key` 32 bytes.
    /// An empty `key_id` is filled with [`key_id_for`].
    ///
    /// # Errors
    /// [`CxError::UnsupportedAlgorithm`] or [`CxError::BadEncoding`] (`key`).
    pub fn from_advertisement(adv: &CxPublicKey) -> Result<Self, CxError> {
        let alg_ok = adv.algorithm.is_empty() || adv.algorithm.eq_ignore_ascii_case(ALGORITHM);
        let enc_ok = adv.encoding.is_empty() || adv.encoding.eq_ignore_ascii_case(ENCODING);
        if !alg_ok || !enc_ok {
            return Err(CxError::UnsupportedAlgorithm);
        }
        let bytes = decode_fixed::<32>(&adv.key, "key")?;
        let key_id = if adv.key_id.is_empty() {
            key_id_for(&bytes)
        } else {
            adv.key_id.clone()
        };
        Ok(Self { bytes, key_id })
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// The key id to send as `recipient_key_id`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

impl fmt::Debug for NodePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodePublicKey")
            .field("key_id", &self.key_id)
            .field("key", &b64url_encode(&self.bytes))
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Envelopes
// ---------------------------------------------------------------------------

/// The request envelope `iicp_conf` (§16.2). Byte fields stay base64url text; they are
/// decoded (padding optional) when opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IicpConf {
    /// Envelope version, 1.
    pub version: u64,
    /// `key_id` of the node key used.
    pub recipient_key_id: String,
    /// The client's ephemeral X25519 public key (32 bytes).
    pub kem_ciphertext: String,
    /// AES-256-GCM ciphertext ‖ 16-byte tag.
    pub encrypted_body: String,
    /// 12-byte nonce.
    pub nonce: String,
    /// UTF-8 `task_id|intent`.
    pub aad: String,
    /// Length of the plaintext payload JSON, in bytes (informative).
    #[serde(default)]
    pub plaintext_size: u64,
}

impl IicpConf {
    /// Parses the `iicp_conf` member of a CALL.
    ///
    /// # Errors
    /// [`CxError::BadEnvelope`] if it is not an object with the required members.
    pub fn from_value(value: &Value) -> Result<Self, CxError> {
        Self::deserialize(value).map_err(|_| CxError::BadEnvelope)
    }

    /// The envelope as a JSON value.
    pub fn to_value(&self) -> Value {
        serde_json::json!({
            "version": self.version,
            "recipient_key_id": self.recipient_key_id,
            "kem_ciphertext": self.kem_ciphertext,
            "encrypted_body": self.encrypted_body,
            "nonce": self.nonce,
            "aad": self.aad,
            "plaintext_size": self.plaintext_size,
        })
    }
}

/// The response envelope `iicp_conf_resp` (§16.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IicpConfResp {
    /// Envelope version, 1.
    pub version: u64,
    /// 12-byte nonce.
    pub nonce: String,
    /// AES-256-GCM ciphertext ‖ 16-byte tag of the full response JSON.
    pub encrypted_body: String,
}

impl IicpConfResp {
    /// Parses the `iicp_conf_resp` member of an encrypted RESPONSE.
    ///
    /// # Errors
    /// [`CxError::BadEnvelope`] if it is not an object with the required members.
    pub fn from_value(value: &Value) -> Result<Self, CxError> {
        Self::deserialize(value).map_err(|_| CxError::BadEnvelope)
    }

    /// The envelope as a JSON value.
    pub fn to_value(&self) -> Value {
        serde_json::json!({
            "version": self.version,
            "nonce": self.nonce,
            "encrypted_body": self.encrypted_body,
        })
    }
}

// ---------------------------------------------------------------------------
// Primitives
// ---------------------------------------------------------------------------

fn decode_fixed<const N: usize>(text: &str, field: &'static str) -> Result<[u8; N], CxError> {
    let bytes = b64url_decode(text).ok_or(CxError::BadEncoding(field))?;
    to_array::<N>(&bytes).ok_or(CxError::BadEncoding(field))
}

fn decode_body(text: &str) -> Result<Vec<u8>, CxError> {
    let bytes = b64url_decode(text).ok_or(CxError::BadEncoding("encrypted_body"))?;
    if bytes.len() < TAG_LEN {
        return Err(CxError::BadEncoding("encrypted_body"));
    }
    Ok(bytes)
}

fn check_version(version: u64) -> Result<(), CxError> {
    if version != VERSION {
        return Err(CxError::UnsupportedVersion(version));
    }
    Ok(())
}

/// X25519 with the contributory check.
fn agree(secret: &StaticSecret, peer: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, CxError> {
    let shared = secret.diffie_hellman(&PublicKey::from(*peer));
    if !shared.was_contributory() {
        return Err(CxError::WeakKey);
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

/// HKDF-SHA256 to 32 bytes. `on_error` is returned if expansion fails, which cannot
/// happen for 32 bytes (the limit is 8160) but is not unwrapped.
fn derive(
    shared: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    info: &[&[u8]],
    on_error: CxError,
) -> Result<Zeroizing<[u8; 32]>, CxError> {
    let hk = Hkdf::<Sha256>::new(Some(nonce), shared);
    let mut okm = Zeroizing::new([0u8; 32]);
    hk.expand_multi_info(info, okm.as_mut())
        .map_err(|_| on_error)?;
    Ok(okm)
}

fn encrypt(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    msg: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, CxError> {
    Aes256Gcm::new(&(*key).into())
        .encrypt(&(*nonce).into(), Payload { msg, aad })
        .map_err(|_| CxError::EncryptFailed)
}

fn decrypt(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    msg: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CxError> {
    Aes256Gcm::new(&(*key).into())
        .decrypt(&(*nonce).into(), Payload { msg, aad })
        .map(Zeroizing::new)
        .map_err(|_| CxError::DecryptFailed)
}

// ---------------------------------------------------------------------------
// Response key (both sides)
// ---------------------------------------------------------------------------

/// The per-request secret that encrypts (node) or opens (client) the response of
/// `response_encryption_v1`. Zeroized on drop, never printed.
#[derive(Clone)]
pub struct ResponseKey {
    shared: Zeroizing<[u8; 32]>,
    task_id: String,
}

impl ResponseKey {
    /// The task this key belongs to.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    fn aad(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(self.task_id.len() + 5);
        aad.extend_from_slice(self.task_id.as_bytes());
        aad.extend_from_slice(b"|resp");
        aad
    }

    /// Node side: encrypts the full response JSON with a fresh nonce from `rng`.
    ///
    /// # Errors
    /// [`CxError::EncryptFailed`].
    pub fn seal<R: CryptoRng + RngCore>(
        &self,
        rng: &mut R,
        response_json: &[u8],
    ) -> Result<IicpConfResp, CxError> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        self.seal_with_nonce(&nonce, response_json)
    }

    fn seal_with_nonce(
        &self,
        nonce: &[u8; NONCE_LEN],
        response_json: &[u8],
    ) -> Result<IicpConfResp, CxError> {
        self.seal_with_aad(nonce, response_json, &self.aad())
    }

    /// Encrypts `plaintext` under this key with `nonce` and `aad`.
    fn seal_with_aad(
        &self,
        nonce: &[u8; NONCE_LEN],
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<IicpConfResp, CxError> {
        let key = derive(
            &self.shared,
            nonce,
            &[RESPONSE_INFO, self.task_id.as_bytes()],
            CxError::EncryptFailed,
        )?;
        let body = encrypt(&key, nonce, plaintext, aad)?;
        Ok(IicpConfResp {
            version: VERSION,
            nonce: b64url_encode(nonce),
            encrypted_body: b64url_encode(&body),
        })
    }

    /// Decrypts `resp` under this key with `aad`.
    fn open_with_aad(
        &self,
        resp: &IicpConfResp,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CxError> {
        check_version(resp.version)?;
        let nonce = decode_fixed::<NONCE_LEN>(&resp.nonce, "nonce")?;
        let body = decode_body(&resp.encrypted_body)?;
        let key = derive(
            &self.shared,
            &nonce,
            &[RESPONSE_INFO, self.task_id.as_bytes()],
            CxError::DecryptFailed,
        )?;
        decrypt(&key, &nonce, &body, aad)
    }

    /// The AAD of streamed chunk `index`: `task_id|resp|chunk:<index>` (ADR 0013), so a
    /// chunk cannot be replayed at another position or passed off as the buffered
    /// answer.
    fn chunk_aad(&self, index: u64) -> Vec<u8> {
        let mut aad = self.aad();
        aad.extend_from_slice(b"|chunk:");
        aad.extend_from_slice(index.to_string().as_bytes());
        aad
    }

    /// Node side: encrypts one streamed chunk (the JSON text of a lifecycle event's
    /// result) at sequence `index`, with a fresh nonce from `rng` (ADR 0013).
    ///
    /// # Errors
    /// [`CxError::EncryptFailed`].
    pub fn seal_chunk<R: CryptoRng + RngCore>(
        &self,
        rng: &mut R,
        index: u64,
        chunk_json: &[u8],
    ) -> Result<IicpConfResp, CxError> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        self.seal_with_aad(&nonce, chunk_json, &self.chunk_aad(index))
    }

    /// Client side: opens the streamed chunk sealed at sequence `index`.
    ///
    /// # Errors
    /// As [`ResponseKey::open`]; a chunk sealed at another index fails to decrypt.
    pub fn open_chunk(
        &self,
        index: u64,
        resp: &IicpConfResp,
    ) -> Result<Zeroizing<Vec<u8>>, CxError> {
        self.open_with_aad(resp, &self.chunk_aad(index))
    }

    /// Client side: opens an `iicp_conf_resp` and returns the response JSON bytes.
    ///
    /// # Errors
    /// [`CxError::UnsupportedVersion`], [`CxError::BadEncoding`] or
    /// [`CxError::DecryptFailed`].
    pub fn open(&self, resp: &IicpConfResp) -> Result<Zeroizing<Vec<u8>>, CxError> {
        self.open_with_aad(resp, &self.aad())
    }
}

impl fmt::Debug for ResponseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseKey")
            .field("task_id", &self.task_id)
            .field("shared", &"<redacted>")
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------

/// The result of [`seal_request`]: the envelope to send, and the key that opens the
/// encrypted response.
#[derive(Debug, Clone)]
pub struct SealedRequest {
    /// The `iicp_conf` member of the CALL (which then carries no `payload`).
    pub envelope: IicpConf,
    /// Opens the `iicp_conf_resp` of the reply.
    pub response_key: ResponseKey,
}

/// Client side: encrypts `payload_json` (the JSON bytes of the CALL's `payload`) to the
/// node key, binding `task_id` and `intent`.
///
/// # Errors
/// [`CxError::BadAad`] if `task_id` contains `|`, [`CxError::WeakKey`] for a low-order
/// node key, [`CxError::EncryptFailed`].
pub fn seal_request<R: CryptoRng + RngCore>(
    rng: &mut R,
    node: &NodePublicKey,
    task_id: &str,
    intent: &str,
    payload_json: &[u8],
) -> Result<SealedRequest, CxError> {
    let mut eph = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(eph.as_mut());
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    seal_request_with(&eph, &nonce, node, task_id, intent, payload_json)
}

fn seal_request_with(
    eph_secret: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    node: &NodePublicKey,
    task_id: &str,
    intent: &str,
    payload_json: &[u8],
) -> Result<SealedRequest, CxError> {
    if task_id.contains('|') {
        return Err(CxError::BadAad);
    }
    let eph = StaticSecret::from(*eph_secret);
    let eph_pub = PublicKey::from(&eph);
    let shared = agree(&eph, &node.bytes)?;
    let key = derive(
        &shared,
        nonce,
        &[REQUEST_INFO, task_id.as_bytes(), intent.as_bytes()],
        CxError::EncryptFailed,
    )?;
    let aad = format!("{task_id}|{intent}");
    let body = encrypt(&key, nonce, payload_json, aad.as_bytes())?;
    Ok(SealedRequest {
        envelope: IicpConf {
            version: VERSION,
            recipient_key_id: node.key_id.clone(),
            kem_ciphertext: b64url_encode(eph_pub.as_bytes()),
            encrypted_body: b64url_encode(&body),
            nonce: b64url_encode(nonce),
            aad: b64url_encode(aad.as_bytes()),
            plaintext_size: payload_json.len() as u64,
        },
        response_key: ResponseKey {
            shared,
            task_id: task_id.to_owned(),
        },
    })
}

// ---------------------------------------------------------------------------
// Node side
// ---------------------------------------------------------------------------

/// A decrypted request: the task id and intent bound in the `aad`, the payload JSON
/// bytes, and the key for the encrypted response. The payload is zeroized on drop and
/// never printed.
pub struct OpenedRequest {
    task_id: String,
    intent: String,
    payload: Zeroizing<Vec<u8>>,
    response_key: ResponseKey,
}

impl OpenedRequest {
    /// Task id from the `aad`.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// Intent from the `aad`.
    pub fn intent(&self) -> &str {
        &self.intent
    }

    /// The decrypted payload JSON bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The decrypted payload parsed as JSON.
    ///
    /// # Errors
    /// [`CxError::BadPayload`] if it is not JSON.
    pub fn payload_json(&self) -> Result<Value, CxError> {
        serde_json::from_slice(&self.payload).map_err(|_| CxError::BadPayload)
    }

    /// The key to encrypt the response with (`response_encryption_v1`).
    pub fn response_key(&self) -> &ResponseKey {
        &self.response_key
    }

    /// Checks that the `aad` names the outer CALL's `task_id` and `intent`. Nodes must
    /// call this (or use [`open_call`]) so that an envelope cannot be replayed under
    /// another task.
    ///
    /// # Errors
    /// [`CxError::AadMismatch`].
    pub fn ensure_matches(&self, task_id: &str, intent: &str) -> Result<(), CxError> {
        if self.task_id != task_id || self.intent != intent {
            return Err(CxError::AadMismatch);
        }
        Ok(())
    }
}

impl fmt::Debug for OpenedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenedRequest")
            .field("task_id", &self.task_id)
            .field("intent", &self.intent)
            .field(
                "payload",
                &format_args!("<{} bytes redacted>", self.payload.len()),
            )
            .finish()
    }
}

/// Node side: opens an `iicp_conf` with this node's key. Checks, in order: version,
/// `recipient_key_id`, encodings, `aad` shape, key agreement, decryption.
///
/// # Errors
/// Any [`CxError`] except the client-only ones; send [`CxError::wire_code`].
pub fn open_request(key: &CxKeyPair, conf: &IicpConf) -> Result<OpenedRequest, CxError> {
    check_version(conf.version)?;
    if conf.recipient_key_id != key.key_id {
        return Err(CxError::UnknownKeyId);
    }
    let eph_pub = decode_fixed::<32>(&conf.kem_ciphertext, "kem_ciphertext")?;
    let nonce = decode_fixed::<NONCE_LEN>(&conf.nonce, "nonce")?;
    let aad = b64url_decode(&conf.aad).ok_or(CxError::BadEncoding("aad"))?;
    let body = decode_body(&conf.encrypted_body)?;
    let aad_text = std::str::from_utf8(&aad).map_err(|_| CxError::BadAad)?;
    let (task_id, intent) = aad_text.split_once('|').ok_or(CxError::BadAad)?;
    let shared = agree(&key.secret, &eph_pub)?;
    let aes_key = derive(
        &shared,
        &nonce,
        &[REQUEST_INFO, task_id.as_bytes(), intent.as_bytes()],
        CxError::DecryptFailed,
    )?;
    let payload = decrypt(&aes_key, &nonce, &body, &aad)?;
    Ok(OpenedRequest {
        task_id: task_id.to_owned(),
        intent: intent.to_owned(),
        payload,
        response_key: ResponseKey {
            shared,
            task_id: task_id.to_owned(),
        },
    })
}

/// Node side with several keys (rotation overlap): picks the key whose id is
/// `recipient_key_id`.
///
/// # Errors
/// [`CxError::NoKey`] when `keys` is empty, [`CxError::UnknownKeyId`] when no key
/// matches, or any error of [`open_request`].
pub fn open_request_any(keys: &[CxKeyPair], conf: &IicpConf) -> Result<OpenedRequest, CxError> {
    if keys.is_empty() {
        return Err(CxError::NoKey);
    }
    let key = keys
        .iter()
        .find(|k| k.key_id == conf.recipient_key_id)
        .ok_or(CxError::UnknownKeyId)?;
    open_request(key, conf)
}

/// Node side, CALL-level: [`open_request`] plus [`OpenedRequest::ensure_matches`]
/// against the CALL's outer `task_id` and `intent`.
///
/// # Errors
/// Any error of [`open_request`], or [`CxError::AadMismatch`].
pub fn open_call(
    key: &CxKeyPair,
    conf: &IicpConf,
    task_id: &str,
    intent: &str,
) -> Result<OpenedRequest, CxError> {
    let opened = open_request(key, conf)?;
    opened.ensure_matches(task_id, intent)?;
    Ok(opened)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK: &str = "task-kat-1";
    const CHAT: &str = "urn:iicp:intent:llm:chat:v1";
    const PAYLOAD: &[u8] = br#"{"messages":[{"role":"user","content":"hi"}]}"#;

    fn seq(start: u8) -> [u8; 32] {
        core::array::from_fn(|i| start + i as u8)
    }

    fn node() -> CxKeyPair {
        CxKeyPair::from_secret_bytes(&seq(1))
    }

    /// Known-answer test. Expected values were computed independently with Python's
    /// `cryptography` 48.0 (X25519PrivateKey / HKDF(SHA256) / AESGCM), following
    /// PROTOCOL.md §16.3–16.4 literally: node secret = bytes 0x01..=0x20, ephemeral
    /// secret = 0x21..=0x40, request nonce = 0x41..=0x4c, response nonce = 0x51..=0x5c.
    #[test]
    fn known_answer() {
        let node = node();
        assert_eq!(
            node.advertisement(None, true).key,
            "B6N8vBQgk8i3VdwbEOhstCY3StFqqFPtC9_AsrhtHHw"
        );
        assert_eq!(node.key_id(), "cx-aaa8fff703b50b22");
        let nonce: [u8; 12] = core::array::from_fn(|i| 0x41 + i as u8);
        let sealed =
            seal_request_with(&seq(0x21), &nonce, &node.public_key(), TASK, CHAT, PAYLOAD).unwrap();
        assert_eq!(
            hex::encode(sealed.response_key.shared.as_ref()),
            "a84dc7c3c8f058b1b2dc4cd1e9b5dc0a7987f88b6a9564cde3391fc421159e77"
        );
        let e = &sealed.envelope;
        assert_eq!(e.version, 1);
        assert_eq!(e.recipient_key_id, "cx-aaa8fff703b50b22");
        assert_eq!(
            e.kem_ciphertext,
            "WGmv9FBUlzLLqu1eXfmzCm2jHLDldCutWtShp2jxpns"
        );
        assert_eq!(e.nonce, "QUJDREVGR0hJSktM");
        assert_eq!(e.aad, "dGFzay1rYXQtMXx1cm46aWljcDppbnRlbnQ6bGxtOmNoYXQ6djE");
        assert_eq!(
            e.encrypted_body,
            "0gVTj0WW868Zgdgxt1RWhiEpiCGxsgtsAsKqmlTw1DCxk28HZn538YdE7V0HfeEy__hazjNjq3aFJrkJog"
        );
        assert_eq!(e.plaintext_size, PAYLOAD.len() as u64);
        assert_eq!(
            hex::encode(
                derive(
                    &sealed.response_key.shared,
                    &nonce,
                    &[REQUEST_INFO, TASK.as_bytes(), CHAT.as_bytes()],
                    CxError::EncryptFailed,
                )
                .unwrap()
                .as_ref()
            ),
            "7ef3064fab4d214c23e99cc30dc7439cd682756a755c9547497ef11bc1be9bfe"
        );

        let opened = open_call(&node, e, TASK, CHAT).unwrap();
        assert_eq!(opened.payload(), PAYLOAD);

        let resp = br#"{"generated_by_ai":true,"result":{"text":"ok"},"status":"success","task_id":"task-kat-1"}"#;
        let rnonce: [u8; 12] = core::array::from_fn(|i| 0x51 + i as u8);
        let r = opened
            .response_key()
            .seal_with_nonce(&rnonce, resp)
            .unwrap();
        assert_eq!(r.nonce, "UVJTVFVWV1hZWltc");
        assert_eq!(
            r.encrypted_body,
            "kq-mvRnQLbzOW-iiyReSEoDmgMfD2CTTItSQ8p3EIiCH6hVsaYqe3uWCIEr32kE8YTW9npWoo5H08-WKUb8jqe9ZYPzdxOPWi6P6v55ynMPkPrRDlQLJLXvUgmim-hBoInRojuk5OXyt"
        );
        assert_eq!(sealed.response_key.open(&r).unwrap().as_slice(), resp);
    }

    #[test]
    fn chunks_are_bound_to_their_index() {
        let mut rng = rand_core::OsRng;
        let node = node();
        let nonce: [u8; 12] = core::array::from_fn(|i| 0x41 + i as u8);
        let sealed =
            seal_request_with(&seq(0x21), &nonce, &node.public_key(), TASK, CHAT, PAYLOAD).unwrap();
        let opened = open_call(&node, &sealed.envelope, TASK, CHAT).unwrap();
        let node_key = opened.response_key();
        let chunk = br#"{"choices":[{"delta":{"content":"hel"}}]}"#;
        let c3 = node_key.seal_chunk(&mut rng, 3, chunk).unwrap();
        assert_eq!(
            sealed.response_key.open_chunk(3, &c3).unwrap().as_slice(),
            chunk
        );
        // at another position, or as the buffered answer, it does not open
        assert!(matches!(
            sealed.response_key.open_chunk(4, &c3),
            Err(CxError::DecryptFailed)
        ));
        assert!(matches!(
            sealed.response_key.open(&c3),
            Err(CxError::DecryptFailed)
        ));
        let whole = node_key.seal(&mut rng, chunk).unwrap();
        assert!(sealed.response_key.open_chunk(0, &whole).is_err());
        // fresh nonces: the same chunk seals differently
        let again = node_key.seal_chunk(&mut rng, 3, chunk).unwrap();
        assert_ne!(again.nonce, c3.nonce);
    }

    #[test]
    fn round_trip_with_rng() {
        let mut rng = rand_core::OsRng;
        let node = CxKeyPair::generate(&mut rng);
        let sealed = seal_request(&mut rng, &node.public_key(), "t-1", CHAT, PAYLOAD).unwrap();
        let opened = open_call(&node, &sealed.envelope, "t-1", CHAT).unwrap();
        assert_eq!(
            opened.payload_json().unwrap()["messages"][0]["content"],
            "hi"
        );
        let r = opened
            .response_key()
            .seal(&mut rng, b"{\"ok\":true}")
            .unwrap();
        assert_eq!(
            sealed.response_key.open(&r).unwrap().as_slice(),
            b"{\"ok\":true}"
        );
        // Fresh randomness every time.
        let again = seal_request(&mut rng, &node.public_key(), "t-1", CHAT, PAYLOAD).unwrap();
        assert_ne!(
            again.envelope.kem_ciphertext,
            sealed.envelope.kem_ciphertext
        );
        assert_ne!(again.envelope.nonce, sealed.envelope.nonce);
        // Persisted secret reproduces the key pair.
        let back = CxKeyPair::from_secret_bytes(&node.secret_bytes());
        assert_eq!(back.public_key(), node.public_key());
    }

    fn sealed() -> (CxKeyPair, SealedRequest) {
        let node = node();
        let nonce = [7u8; 12];
        let s =
            seal_request_with(&seq(0x21), &nonce, &node.public_key(), TASK, CHAT, PAYLOAD).unwrap();
        (node, s)
    }

    fn flip(text: &str) -> String {
        let mut bytes = b64url_decode(text).unwrap();
        bytes[0] ^= 1;
        b64url_encode(&bytes)
    }

    #[test]
    fn tamper_every_request_field() {
        let (node, s) = sealed();
        let e = &s.envelope;
        let check = |conf: IicpConf, want: CxError| {
            assert_eq!(open_request(&node, &conf).map(|_| ()).unwrap_err(), want);
        };
        check(
            IicpConf {
                version: 2,
                ..e.clone()
            },
            CxError::UnsupportedVersion(2),
        );
        check(
            IicpConf {
                recipient_key_id: "cx-0000".into(),
                ..e.clone()
            },
            CxError::UnknownKeyId,
        );
        check(
            IicpConf {
                kem_ciphertext: flip(&e.kem_ciphertext),
                ..e.clone()
            },
            CxError::DecryptFailed,
        );
        check(
            IicpConf {
                encrypted_body: flip(&e.encrypted_body),
                ..e.clone()
            },
            CxError::DecryptFailed,
        );
        check(
            IicpConf {
                nonce: flip(&e.nonce),
                ..e.clone()
            },
            CxError::DecryptFailed,
        );
        check(
            IicpConf {
                aad: b64url_encode(format!("{TASK}|urn:iicp:intent:llm:embedding:v1").as_bytes()),
                ..e.clone()
            },
            CxError::DecryptFailed,
        );
        check(
            IicpConf {
                aad: b64url_encode(b"other-task|urn:iicp:intent:llm:chat:v1"),
                ..e.clone()
            },
            CxError::DecryptFailed,
        );
        // plaintext_size is informative only.
        assert!(open_request(
            &node,
            &IicpConf {
                plaintext_size: 1,
                ..e.clone()
            }
        )
        .is_ok());
        // Truncated body.
        let mut body = b64url_decode(&e.encrypted_body).unwrap();
        body.pop();
        check(
            IicpConf {
                encrypted_body: b64url_encode(&body),
                ..e.clone()
            },
            CxError::DecryptFailed,
        );
    }

    #[test]
    fn bad_encodings() {
        let (node, s) = sealed();
        let e = &s.envelope;
        let check = |conf: IicpConf, want: CxError| {
            assert_eq!(open_request(&node, &conf).map(|_| ()).unwrap_err(), want);
        };
        check(
            IicpConf {
                kem_ciphertext: "AAAA".into(),
                ..e.clone()
            },
            CxError::BadEncoding("kem_ciphertext"),
        );
        check(
            IicpConf {
                kem_ciphertext: "*".into(),
                ..e.clone()
            },
            CxError::BadEncoding("kem_ciphertext"),
        );
        check(
            IicpConf {
                nonce: b64url_encode(&[0; 16]),
                ..e.clone()
            },
            CxError::BadEncoding("nonce"),
        );
        check(
            IicpConf {
                aad: "%%".into(),
                ..e.clone()
            },
            CxError::BadEncoding("aad"),
        );
        check(
            IicpConf {
                encrypted_body: b64url_encode(&[0; 15]),
                ..e.clone()
            },
            CxError::BadEncoding("encrypted_body"),
        );
        check(
            IicpConf {
                encrypted_body: "+/".into(),
                ..e.clone()
            },
            CxError::BadEncoding("encrypted_body"),
        );
        check(
            IicpConf {
                aad: b64url_encode(b"no-separator"),
                ..e.clone()
            },
            CxError::BadAad,
        );
        check(
            IicpConf {
                aad: b64url_encode(&[0xff, b'|', 0xfe]),
                ..e.clone()
            },
            CxError::BadAad,
        );
        // Low-order ephemeral key (all zeros): refused, like Python `cryptography`.
        check(
            IicpConf {
                kem_ciphertext: b64url_encode(&[0; 32]),
                ..e.clone()
            },
            CxError::WeakKey,
        );
        // Padded base64url is accepted on input.
        let pad = |t: &str| format!("{t}{}", "=".repeat((4 - t.len() % 4) % 4));
        let padded = IicpConf {
            kem_ciphertext: pad(&e.kem_ciphertext),
            aad: pad(&e.aad),
            encrypted_body: pad(&e.encrypted_body),
            ..e.clone()
        };
        assert!(padded.kem_ciphertext.ends_with('='));
        assert!(open_request(&node, &padded).is_ok());
    }

    #[test]
    fn wrong_key_and_aad_mismatch() {
        let (_, s) = sealed();
        let other = CxKeyPair::from_secret_bytes(&seq(0x61)).with_key_id("cx-aaa8fff703b50b22");
        assert_eq!(
            open_request(&other, &s.envelope).map(|_| ()).unwrap_err(),
            CxError::DecryptFailed
        );
        let node = node();
        assert_eq!(
            open_call(&node, &s.envelope, "task-2", CHAT)
                .map(|_| ())
                .unwrap_err(),
            CxError::AadMismatch
        );
        assert_eq!(
            open_call(&node, &s.envelope, TASK, "urn:iicp:intent:llm:embedding:v1")
                .map(|_| ())
                .unwrap_err(),
            CxError::AadMismatch
        );
        assert!(open_request_any(
            &[other.clone().with_key_id("cx-x"), node.clone()],
            &s.envelope
        )
        .is_ok());
        assert_eq!(
            open_request_any(&[], &s.envelope).map(|_| ()).unwrap_err(),
            CxError::NoKey
        );
        assert_eq!(
            open_request_any(&[other.with_key_id("cx-x")], &s.envelope)
                .map(|_| ())
                .unwrap_err(),
            CxError::UnknownKeyId
        );
        let weak = NodePublicKey::new([0; 32], "cx-0");
        assert_eq!(
            seal_request(&mut rand_core::OsRng, &weak, TASK, CHAT, PAYLOAD)
                .map(|_| ())
                .unwrap_err(),
            CxError::WeakKey
        );
        assert_eq!(
            seal_request(
                &mut rand_core::OsRng,
                &node.public_key(),
                "a|b",
                CHAT,
                PAYLOAD
            )
            .map(|_| ())
            .unwrap_err(),
            CxError::BadAad
        );
    }

    #[test]
    fn tamper_every_response_field() {
        let (node, s) = sealed();
        let opened = open_request(&node, &s.envelope).unwrap();
        let r = opened
            .response_key()
            .seal_with_nonce(&[3; 12], b"{}")
            .unwrap();
        let key = &s.response_key;
        assert_eq!(
            key.open(&IicpConfResp {
                version: 0,
                ..r.clone()
            })
            .unwrap_err(),
            CxError::UnsupportedVersion(0)
        );
        assert_eq!(
            key.open(&IicpConfResp {
                nonce: flip(&r.nonce),
                ..r.clone()
            })
            .unwrap_err(),
            CxError::DecryptFailed
        );
        assert_eq!(
            key.open(&IicpConfResp {
                encrypted_body: flip(&r.encrypted_body),
                ..r.clone()
            })
            .unwrap_err(),
            CxError::DecryptFailed
        );
        assert_eq!(
            key.open(&IicpConfResp {
                nonce: "AA".into(),
                ..r.clone()
            })
            .unwrap_err(),
            CxError::BadEncoding("nonce")
        );
        // A response key for another task cannot open it.
        let other = ResponseKey {
            shared: key.shared.clone(),
            task_id: "task-2".into(),
        };
        assert_eq!(other.open(&r).unwrap_err(), CxError::DecryptFailed);
        // The request envelope's body is not a valid response.
        let swapped = IicpConfResp {
            version: 1,
            nonce: s.envelope.nonce.clone(),
            encrypted_body: s.envelope.encrypted_body.clone(),
        };
        assert_eq!(key.open(&swapped).unwrap_err(), CxError::DecryptFailed);
    }

    #[test]
    fn advertisement_round_trip() {
        let node = node();
        let adv = node.advertisement(Some("2027-01-01T00:00:00Z".into()), true);
        let json = serde_json::to_value(&adv).unwrap();
        assert_eq!(json["algorithm"], "X25519");
        assert_eq!(json["encoding"], "base64url");
        assert_eq!(json["hybrid_pq"], Value::Null);
        assert!(json.as_object().unwrap().contains_key("hybrid_pq"));
        assert_eq!(json["features"][0], "response_encryption_v1");
        let pk = NodePublicKey::from_advertisement(&adv).unwrap();
        assert_eq!(pk, node.public_key());
        let bad = CxPublicKey {
            algorithm: "P-256".into(),
            ..adv.clone()
        };
        assert_eq!(
            NodePublicKey::from_advertisement(&bad),
            Err(CxError::UnsupportedAlgorithm)
        );
        let bad = CxPublicKey {
            key: "AAAA".into(),
            ..adv.clone()
        };
        assert_eq!(
            NodePublicKey::from_advertisement(&bad),
            Err(CxError::BadEncoding("key"))
        );
        let no_id = CxPublicKey {
            key_id: String::new(),
            ..adv
        };
        assert_eq!(
            NodePublicKey::from_advertisement(&no_id).unwrap().key_id(),
            node.key_id()
        );
    }

    #[test]
    fn envelope_json_and_errors() {
        let (_, s) = sealed();
        let v = s.envelope.to_value();
        assert_eq!(IicpConf::from_value(&v).unwrap(), s.envelope);
        assert_eq!(serde_json::to_value(&s.envelope).unwrap(), v);
        assert_eq!(
            IicpConf::from_value(&Value::from("x")),
            Err(CxError::BadEnvelope)
        );
        assert_eq!(
            IicpConf::from_value(&serde_json::json!({"version": 1})),
            Err(CxError::BadEnvelope)
        );
        assert_eq!(
            IicpConfResp::from_value(&serde_json::json!({"version": "1"})),
            Err(CxError::BadEnvelope)
        );
        assert_eq!(CxError::NoKey.wire_code(), ErrorCode::Cx01);
        assert_eq!(CxError::DecryptFailed.wire_code(), ErrorCode::Cx02);
        assert_eq!(CxError::UnknownKeyId.spec_code(), ErrorCode::E060);
        assert_eq!(CxError::UnsupportedVersion(2).spec_code(), ErrorCode::E061);
        assert_eq!(CxError::DecryptFailed.spec_code(), ErrorCode::E062);
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let (node, s) = sealed();
        let opened = open_request(&node, &s.envelope).unwrap();
        for text in [
            format!("{node:?}"),
            format!("{:?}", s.response_key),
            format!("{opened:?}"),
            format!("{s:?}"),
        ] {
            assert!(!text.contains("messages"), "{text}");
            assert!(!text.contains(&hex::encode(node.secret_bytes().as_ref())));
            assert!(!text.contains(&hex::encode(s.response_key.shared.as_ref())));
        }
    }

    proptest::proptest! {
        #[test]
        fn garbage_envelopes_never_panic(
            version in 0u64..3, kem in "\\PC{0,60}", body in "\\PC{0,80}", nonce in "\\PC{0,20}", aad in "\\PC{0,60}",
        ) {
            let node = node();
            let conf = IicpConf {
                version, recipient_key_id: node.key_id().to_owned(), kem_ciphertext: kem,
                encrypted_body: body, nonce, aad, plaintext_size: 0,
            };
            proptest::prop_assert!(open_request(&node, &conf).is_err());
        }
    }
}
