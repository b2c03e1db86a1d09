//! Ed25519 operator identity and the artefacts it signs: PROTOCOL.md §17.1 (keys and
//! identifiers, integrity hash), §17.2 (operator → node delegation), §17.3 (rename and
//! the self-service family), with the canonical form of §17.6.
//!
//! `operator_id` = `operator_pub` = standard padded base64 of the 32-byte Ed25519 public
//! key; signatures are standard base64 of 64 bytes. Signed bytes are the canonical
//! JSON of [`super::canonical`]; the known-answer tests of §17.2/§17.3 pin them.
//!
//! Time is never read here: expiry and the ±300 s timestamp window are checked against
//! the caller's `now_unix`.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::canonical;
use super::encoding::{b64_decode, b64_encode, to_array};

/// Prefix of the bytes signed by operator self-service requests (§17.3).
pub const SELF_SERVICE_PREFIX: &str = "iicp:operator:self-service:v1\n";

/// Allowed clock skew, in seconds, for signed `ts` fields (rename, self-service).
pub const TIMESTAMP_WINDOW_SECS: u64 = 300;

/// Default delegation lifetime used by the reference SDKs (§17.2), in seconds.
pub const DEFAULT_DELEGATION_TTL_SECS: u64 = 3600;

/// Why an operator key, signature or signed artefact was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The public key is not standard base64 of a valid 32-byte Ed25519 key.
    #[error("operator public key is not base64 of a valid 32-byte Ed25519 key")]
    BadPublicKey,
    /// The seed is not base64 of exactly 32 bytes.
    #[error("operator seed is not base64 of 32 bytes")]
    BadSeed,
    /// The signature is not base64 of 64 bytes.
    #[error("signature is not base64 of 64 bytes")]
    BadSignatureEncoding,
    /// The signature does not verify over the canonical bytes.
    #[error("signature does not verify")]
    Invalid,
    /// `not_after` has passed.
    #[error("signed artefact has expired")]
    Expired,
    /// The signed `ts` is more than 300 s away from now.
    #[error("signed timestamp is outside the allowed window")]
    TimestampOutOfWindow,
    /// The delegation names another node.
    #[error("delegation was issued for another node")]
    WrongNode,
    /// A required field is missing or has the wrong JSON type.
    #[error("field `{0}` is missing or has the wrong type")]
    MissingField(&'static str),
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

/// An operator's Ed25519 signing key. The secret is zeroized on drop and never printed.
#[derive(Clone)]
pub struct OperatorKey {
    key: SigningKey,
}

impl OperatorKey {
    /// Generates a new key from the injected RNG.
    pub fn generate<R: CryptoRng + RngCore>(rng: &mut R) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        Self::from_seed(&seed)
    }

    /// Builds the key from its 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// Builds the key from a seed slice.
    ///
    /// # Errors
    /// [`SignatureError::BadSeed`] unless the slice is exactly 32 bytes.
    pub fn from_seed_slice(seed: &[u8]) -> Result<Self, SignatureError> {
        let seed = Zeroizing::new(to_array::<32>(seed).ok_or(SignatureError::BadSeed)?);
        Ok(Self::from_seed(&seed))
    }

    /// Builds the key from the standard base64 seed stored as `operator_secret` in
    /// `operator.json`.
    ///
    /// # Errors
    /// [`SignatureError::BadSeed`] on bad base64 or a length other than 32 bytes.
    pub fn from_seed_base64(text: &str) -> Result<Self, SignatureError> {
        let bytes = Zeroizing::new(b64_decode(text).ok_or(SignatureError::BadSeed)?);
        Self::from_seed_slice(&bytes)
    }

    /// The 32-byte seed (zeroized when the returned value drops).
    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_bytes())
    }

    /// The seed as standard base64 (the `operator_secret` form).
    pub fn seed_base64(&self) -> Zeroizing<String> {
        let seed = self.seed();
        Zeroizing::new(b64_encode(seed.as_ref()))
    }

    /// The public half.
    pub fn public_key(&self) -> OperatorPublicKey {
        OperatorPublicKey {
            key: self.key.verifying_key(),
        }
    }

    /// `operator_id`: standard base64 of the 32-byte public key.
    pub fn operator_id(&self) -> String {
        self.public_key().operator_id()
    }

    /// Signs raw bytes.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// Signs raw bytes and returns the signature as standard base64.
    pub fn sign_base64(&self, message: &[u8]) -> String {
        b64_encode(&self.sign(message))
    }
}

impl fmt::Debug for OperatorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorKey")
            .field("operator_id", &self.operator_id())
            .field("seed", &"<redacted>")
            .finish()
    }
}

/// An operator's Ed25519 public key (`operator_pub`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OperatorPublicKey {
    key: VerifyingKey,
}

impl OperatorPublicKey {
    /// From the raw 32 bytes.
    ///
    /// # Errors
    /// [`SignatureError::BadPublicKey`] when the bytes are not a valid curve point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, SignatureError> {
        VerifyingKey::from_bytes(bytes)
            .map(|key| Self { key })
            .map_err(|_| SignatureError::BadPublicKey)
    }

    /// From an `operator_id` / `operator_pub` (standard base64, padding optional).
    ///
    /// # Errors
    /// [`SignatureError::BadPublicKey`] on bad base64, wrong length or invalid point.
    pub fn from_operator_id(text: &str) -> Result<Self, SignatureError> {
        let bytes = b64_decode(text).ok_or(SignatureError::BadPublicKey)?;
        let bytes = to_array::<32>(&bytes).ok_or(SignatureError::BadPublicKey)?;
        Self::from_bytes(&bytes)
    }

    /// The raw 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// `operator_id`: standard padded base64 of the 32 bytes.
    pub fn operator_id(&self) -> String {
        b64_encode(self.key.as_bytes())
    }

    /// Verifies a raw 64-byte signature (strict Ed25519: rejects small-order keys and
    /// non-canonical encodings).
    ///
    /// # Errors
    /// [`SignatureError::BadSignatureEncoding`] for a wrong length,
    /// [`SignatureError::Invalid`] when it does not verify.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        let sig = to_array::<64>(signature).ok_or(SignatureError::BadSignatureEncoding)?;
        self.key
            .verify_strict(message, &Signature::from_bytes(&sig))
            .map_err(|_| SignatureError::Invalid)
    }

    /// Verifies a standard base64 signature.
    ///
    /// # Errors
    /// As [`OperatorPublicKey::verify`], plus bad base64.
    pub fn verify_base64(&self, message: &[u8], signature_b64: &str) -> Result<(), SignatureError> {
        let sig = b64_decode(signature_b64).ok_or(SignatureError::BadSignatureEncoding)?;
        self.verify(message, &sig)
    }
}

impl fmt::Debug for OperatorPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("OperatorPublicKey")
            .field(&self.operator_id())
            .finish()
    }
}

/// `operator_integrity_hash` = lowercase hex SHA-256 of `operator_id + ":" + created_at`
/// (§17.1).
pub fn operator_integrity_hash(operator_id: &str, created_at: &str) -> String {
    let mut h = Sha256::new();
    h.update(operator_id.as_bytes());
    h.update(b":");
    h.update(created_at.as_bytes());
    hex::encode(h.finalize())
}

fn check_window(ts: u64, now_unix: u64) -> Result<(), SignatureError> {
    if ts.abs_diff(now_unix) > TIMESTAMP_WINDOW_SECS {
        return Err(SignatureError::TimestampOutOfWindow);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Delegation (§17.2)
// ---------------------------------------------------------------------------

/// `operator_delegation`: the operator's signed statement that `node_id` runs under
/// its identity until `not_after` (§17.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    /// The delegated node's id.
    pub node_id: String,
    /// The operator's public key, standard base64.
    pub operator_pub: String,
    /// Expiry, Unix seconds.
    pub not_after: u64,
    /// Ed25519 signature over [`Delegation::signing_bytes`], standard base64.
    pub sig: String,
}

impl Delegation {
    /// The canonical bytes the signature covers.
    pub fn signing_bytes(&self) -> Vec<u8> {
        delegation_signing_bytes(&self.node_id, &self.operator_pub, self.not_after)
    }
}

/// `{"node_id":…,"not_after":…,"operator_pub":…}` in canonical form (§17.2).
pub fn delegation_signing_bytes(node_id: &str, operator_pub: &str, not_after: u64) -> Vec<u8> {
    canonical::to_vec(&json!({
        "node_id": node_id,
        "not_after": not_after,
        "operator_pub": operator_pub,
    }))
}

/// Signs a delegation of `node_id` valid until `not_after` (Unix seconds).
pub fn sign_delegation(key: &OperatorKey, node_id: &str, not_after: u64) -> Delegation {
    let operator_pub = key.operator_id();
    let sig = key.sign_base64(&delegation_signing_bytes(node_id, &operator_pub, not_after));
    Delegation {
        node_id: node_id.to_owned(),
        operator_pub,
        not_after,
        sig,
    }
}

/// Verifies a delegation's signature and that `now_unix <= not_after`.
///
/// The caller must also check that `node_id` is the node it is about (or use
/// [`verify_delegation_for_node`]).
///
/// # Errors
/// [`SignatureError::Expired`], [`SignatureError::BadPublicKey`],
/// [`SignatureError::BadSignatureEncoding`] or [`SignatureError::Invalid`].
pub fn verify_delegation(delegation: &Delegation, now_unix: u64) -> Result<(), SignatureError> {
    if now_unix > delegation.not_after {
        return Err(SignatureError::Expired);
    }
    let key = OperatorPublicKey::from_operator_id(&delegation.operator_pub)?;
    key.verify_base64(&delegation.signing_bytes(), &delegation.sig)
}

/// [`verify_delegation`] plus `delegation.node_id == node_id`.
///
/// # Errors
/// [`SignatureError::WrongNode`] or any error of [`verify_delegation`].
pub fn verify_delegation_for_node(
    delegation: &Delegation,
    node_id: &str,
    now_unix: u64,
) -> Result<(), SignatureError> {
    if delegation.node_id != node_id {
        return Err(SignatureError::WrongNode);
    }
    verify_delegation(delegation, now_unix)
}

// ---------------------------------------------------------------------------
// Rename (§17.3)
// ---------------------------------------------------------------------------

/// Body of `POST /v1/operator/rename` (§17.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rename {
    /// The operator's public key, standard base64.
    pub operator_pub: String,
    /// The new public display name.
    pub display_name: String,
    /// Signing time, Unix seconds.
    pub ts: u64,
    /// Ed25519 signature over [`Rename::signing_bytes`], standard base64.
    pub sig: String,
}

impl Rename {
    /// The canonical bytes the signature covers.
    pub fn signing_bytes(&self) -> Vec<u8> {
        rename_signing_bytes(&self.display_name, &self.operator_pub, self.ts)
    }
}

/// `{"display_name":…,"operator_pub":…,"ts":…}` in canonical form (§17.3).
pub fn rename_signing_bytes(display_name: &str, operator_pub: &str, ts: u64) -> Vec<u8> {
    canonical::to_vec(&json!({
        "display_name": display_name,
        "operator_pub": operator_pub,
        "ts": ts,
    }))
}

/// Signs a rename to `display_name` at time `ts`.
pub fn sign_rename(key: &OperatorKey, display_name: &str, ts: u64) -> Rename {
    let operator_pub = key.operator_id();
    let sig = key.sign_base64(&rename_signing_bytes(display_name, &operator_pub, ts));
    Rename {
        operator_pub,
        display_name: display_name.to_owned(),
        ts,
        sig,
    }
}

/// Verifies a rename: signature, and `ts` within ±300 s of `now_unix`.
///
/// # Errors
/// [`SignatureError::TimestampOutOfWindow`] or a key/signature error.
pub fn verify_rename(rename: &Rename, now_unix: u64) -> Result<(), SignatureError> {
    check_window(rename.ts, now_unix)?;
    let key = OperatorPublicKey::from_operator_id(&rename.operator_pub)?;
    key.verify_base64(&rename.signing_bytes(), &rename.sig)
}

// ---------------------------------------------------------------------------
// Self-service (§17.3)
// ---------------------------------------------------------------------------

/// The `action` of an operator self-service request (§17.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SelfServiceAction {
    /// `accept` (terms / DPA acceptance).
    Accept,
    /// `key_rotate`, signed by the old key.
    KeyRotate,
    /// `key_rotate_successor`, signed by the new key into `new_key_sig`.
    KeyRotateSuccessor,
    /// `key_revoke`.
    KeyRevoke,
    /// `dsr_export`.
    DsrExport,
    /// `dsr_restrict`.
    DsrRestrict,
    /// `dsr_anonymize`.
    DsrAnonymize,
}

impl SelfServiceAction {
    /// Every action.
    pub const ALL: [SelfServiceAction; 7] = [
        Self::Accept,
        Self::KeyRotate,
        Self::KeyRotateSuccessor,
        Self::KeyRevoke,
        Self::DsrExport,
        Self::DsrRestrict,
        Self::DsrAnonymize,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::KeyRotate => "key_rotate",
            Self::KeyRotateSuccessor => "key_rotate_successor",
            Self::KeyRevoke => "key_revoke",
            Self::DsrExport => "dsr_export",
            Self::DsrRestrict => "dsr_restrict",
            Self::DsrAnonymize => "dsr_anonymize",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == text)
    }
}

/// Builds a self-service body: `fields` plus `action`, `operator_pub`, `nonce` and `ts`
/// (these four override same-named entries of `fields`).
pub fn self_service_body(
    action: SelfServiceAction,
    operator_pub: &str,
    nonce: &str,
    ts: u64,
    fields: Map<String, Value>,
) -> Map<String, Value> {
    let mut body = fields;
    body.insert("action".into(), Value::from(action.as_str()));
    body.insert("operator_pub".into(), Value::from(operator_pub));
    body.insert("nonce".into(), Value::from(nonce));
    body.insert("ts".into(), Value::from(ts));
    body
}

/// The signed bytes: [`SELF_SERVICE_PREFIX`] + canonical JSON of `body` without `sig`
/// and `new_key_sig`.
pub fn self_service_signing_bytes(body: &Map<String, Value>) -> Vec<u8> {
    let mut stripped = body.clone();
    stripped.remove("sig");
    stripped.remove("new_key_sig");
    let mut out = String::from(SELF_SERVICE_PREFIX);
    canonical::write(&Value::Object(stripped), &mut out);
    out.into_bytes()
}

/// Signs a self-service body; returns the standard base64 signature (for `sig`, or for
/// `new_key_sig` when `key` is the successor key signing a `key_rotate_successor` body).
pub fn sign_self_service(key: &OperatorKey, body: &Map<String, Value>) -> String {
    key.sign_base64(&self_service_signing_bytes(body))
}

/// Verifies `signature_b64` over a self-service body with `signer`, and that the body's
/// `ts` is within ±300 s of `now_unix`.
///
/// # Errors
/// [`SignatureError::MissingField`] (`ts`), [`SignatureError::TimestampOutOfWindow`] or a
/// signature error.
pub fn verify_self_service(
    body: &Map<String, Value>,
    signer: &OperatorPublicKey,
    signature_b64: &str,
    now_unix: u64,
) -> Result<(), SignatureError> {
    let ts = body
        .get("ts")
        .and_then(Value::as_u64)
        .ok_or(SignatureError::MissingField("ts"))?;
    check_window(ts, now_unix)?;
    signer.verify_base64(&self_service_signing_bytes(body), signature_b64)
}

/// Verifies a received self-service body with its own `operator_pub` and `sig` fields.
///
/// # Errors
/// [`SignatureError::MissingField`] for `operator_pub`, `sig` or `ts`, or any error of
/// [`verify_self_service`].
pub fn verify_self_service_request(
    body: &Map<String, Value>,
    now_unix: u64,
) -> Result<(), SignatureError> {
    let operator_pub = body
        .get("operator_pub")
        .and_then(Value::as_str)
        .ok_or(SignatureError::MissingField("operator_pub"))?;
    let sig = body
        .get("sig")
        .and_then(Value::as_str)
        .ok_or(SignatureError::MissingField("sig"))?;
    let key = OperatorPublicKey::from_operator_id(operator_pub)?;
    verify_self_service(body, &key, sig, now_unix)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_893_456_000;

    fn key(byte: u8) -> OperatorKey {
        OperatorKey::from_seed(&[byte; 32])
    }

    #[test]
    fn kat_delegation_bytes() {
        assert_eq!(
            delegation_signing_bytes("node-kat-1", "T3BQdWJLZXlCYXNlNjQ=", 1_893_456_000),
            br#"{"node_id":"node-kat-1","not_after":1893456000,"operator_pub":"T3BQdWJLZXlCYXNlNjQ="}"#
        );
    }

    #[test]
    fn kat_rename_bytes() {
        assert_eq!(
            rename_signing_bytes("New Name", "T3BQdWI=", 1_893_456_000),
            br#"{"display_name":"New Name","operator_pub":"T3BQdWI=","ts":1893456000}"#
        );
    }

    #[test]
    fn kat_self_service_bytes() {
        let mut fields = Map::new();
        fields.insert("terms_version".into(), "2026-07".into());
        fields.insert("dpa_version".into(), "2026-07".into());
        fields.insert("sig".into(), "ignored".into());
        fields.insert("new_key_sig".into(), "ignored".into());
        let body = self_service_body(
            SelfServiceAction::Accept,
            "T3BQdWI=",
            "nonce-1234567890",
            1_893_456_000,
            fields,
        );
        assert_eq!(
            self_service_signing_bytes(&body),
            "iicp:operator:self-service:v1\n{\"action\":\"accept\",\"dpa_version\":\"2026-07\",\"nonce\":\"nonce-1234567890\",\"operator_pub\":\"T3BQdWI=\",\"terms_version\":\"2026-07\",\"ts\":1893456000}".as_bytes()
        );
    }

    #[test]
    fn rfc8032_test_vector_1() {
        // RFC 8032 §7.1 TEST 1: pins the Ed25519 primitive and the base64 forms.
        let seed: [u8; 32] =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .unwrap()
                .try_into()
                .unwrap();
        let k = OperatorKey::from_seed(&seed);
        assert_eq!(
            hex::encode(k.public_key().to_bytes()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        assert_eq!(
            k.operator_id(),
            "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
        );
        assert_eq!(
            hex::encode(k.sign(b"")),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }

    #[test]
    fn operator_id_and_seed_round_trip() {
        let mut rng = rand_core::OsRng;
        let k = OperatorKey::generate(&mut rng);
        let id = k.operator_id();
        assert_eq!(id.len(), 44);
        assert!(id.ends_with('='));
        let back = OperatorKey::from_seed_base64(&k.seed_base64()).unwrap();
        assert_eq!(back.operator_id(), id);
        assert_eq!(
            OperatorPublicKey::from_operator_id(&id).unwrap(),
            k.public_key()
        );
        assert!(matches!(
            OperatorKey::from_seed_base64("AAAA"),
            Err(SignatureError::BadSeed)
        ));
        assert!(matches!(
            OperatorKey::from_seed_base64("!!"),
            Err(SignatureError::BadSeed)
        ));
        assert!(matches!(
            OperatorKey::from_seed_slice(&[0; 31]),
            Err(SignatureError::BadSeed)
        ));
    }

    #[test]
    fn debug_redacts_the_seed() {
        let k = key(7);
        let dbg = format!("{k:?}");
        assert!(dbg.contains("<redacted>"));
        assert!(!dbg.contains(k.seed_base64().as_str()));
        assert!(!dbg.contains(&hex::encode(k.seed().as_ref())));
    }

    #[test]
    fn delegation_round_trip_and_expiry() {
        let k = key(1);
        let d = sign_delegation(&k, "node-1", NOW + 3600);
        assert_eq!(verify_delegation(&d, NOW), Ok(()));
        assert_eq!(verify_delegation(&d, NOW + 3600), Ok(()));
        assert_eq!(
            verify_delegation(&d, NOW + 3601),
            Err(SignatureError::Expired)
        );
        assert_eq!(verify_delegation_for_node(&d, "node-1", NOW), Ok(()));
        assert_eq!(
            verify_delegation_for_node(&d, "node-2", NOW),
            Err(SignatureError::WrongNode)
        );
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(serde_json::from_value::<Delegation>(json).unwrap(), d);
    }

    #[test]
    fn delegation_tamper_every_field() {
        let k = key(1);
        let d = sign_delegation(&k, "node-1", NOW + 3600);
        let mut t = d.clone();
        t.node_id = "node-2".into();
        assert_eq!(verify_delegation(&t, NOW), Err(SignatureError::Invalid));
        let mut t = d.clone();
        t.not_after += 1;
        assert_eq!(verify_delegation(&t, NOW), Err(SignatureError::Invalid));
        let mut t = d.clone();
        t.operator_pub = key(2).operator_id();
        assert_eq!(verify_delegation(&t, NOW), Err(SignatureError::Invalid));
        let mut t = d.clone();
        t.operator_pub = "not base64!".into();
        assert_eq!(
            verify_delegation(&t, NOW),
            Err(SignatureError::BadPublicKey)
        );
        let mut t = d.clone();
        t.sig = sign_delegation(&k, "node-1", NOW + 3601).sig;
        assert_eq!(verify_delegation(&t, NOW), Err(SignatureError::Invalid));
        let mut t = d.clone();
        t.sig = "AAAA".into();
        assert_eq!(
            verify_delegation(&t, NOW),
            Err(SignatureError::BadSignatureEncoding)
        );
        let mut t = d;
        t.sig = "%%%".into();
        assert_eq!(
            verify_delegation(&t, NOW),
            Err(SignatureError::BadSignatureEncoding)
        );
    }

    #[test]
    fn rename_round_trip_window_and_tamper() {
        let k = key(3);
        let r = sign_rename(&k, "Zoë / Ops", NOW);
        assert_eq!(verify_rename(&r, NOW), Ok(()));
        assert_eq!(verify_rename(&r, NOW + 300), Ok(()));
        assert_eq!(verify_rename(&r, NOW - 300), Ok(()));
        assert_eq!(
            verify_rename(&r, NOW + 301),
            Err(SignatureError::TimestampOutOfWindow)
        );
        assert_eq!(
            verify_rename(&r, NOW - 301),
            Err(SignatureError::TimestampOutOfWindow)
        );
        let mut t = r.clone();
        t.display_name.push('x');
        assert_eq!(verify_rename(&t, NOW), Err(SignatureError::Invalid));
        let mut t = r.clone();
        t.ts += 1;
        assert_eq!(verify_rename(&t, NOW), Err(SignatureError::Invalid));
        let mut t = r.clone();
        t.operator_pub = key(4).operator_id();
        assert_eq!(verify_rename(&t, NOW), Err(SignatureError::Invalid));
        let mut t = r;
        t.sig = sign_rename(&k, "Other", NOW).sig;
        assert_eq!(verify_rename(&t, NOW), Err(SignatureError::Invalid));
    }

    #[test]
    fn self_service_round_trip_and_tamper() {
        let old = key(5);
        let new = key(6);
        let mut fields = Map::new();
        fields.insert("new_operator_pub".into(), new.operator_id().into());
        fields.insert("reason_class".into(), "operator_rotation".into());
        let mut body = self_service_body(
            SelfServiceAction::KeyRotate,
            &old.operator_id(),
            "n-1",
            NOW,
            fields,
        );
        let sig = sign_self_service(&old, &body);
        body.insert("sig".into(), sig.clone().into());
        assert_eq!(verify_self_service_request(&body, NOW + 10), Ok(()));
        assert_eq!(
            verify_self_service(&body, &old.public_key(), &sig, NOW),
            Ok(())
        );
        assert_eq!(
            verify_self_service(&body, &new.public_key(), &sig, NOW),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify_self_service_request(&body, NOW + 301),
            Err(SignatureError::TimestampOutOfWindow)
        );
        for field in [
            "action",
            "operator_pub",
            "nonce",
            "new_operator_pub",
            "reason_class",
        ] {
            let mut t = body.clone();
            let v = t.get(field).and_then(Value::as_str).unwrap().to_owned();
            let changed = if field == "operator_pub" {
                new.operator_id()
            } else {
                v + "x"
            };
            t.insert(field.into(), changed.into());
            assert!(verify_self_service_request(&t, NOW).is_err(), "{field}");
        }
        let mut t = body.clone();
        t.insert("ts".into(), (NOW + 1).into());
        assert_eq!(
            verify_self_service_request(&t, NOW),
            Err(SignatureError::Invalid)
        );
        let mut t = body.clone();
        t.insert("extra".into(), Value::Null);
        assert_eq!(
            verify_self_service_request(&t, NOW),
            Err(SignatureError::Invalid)
        );
        let mut t = body.clone();
        t.remove("ts");
        assert_eq!(
            verify_self_service_request(&t, NOW),
            Err(SignatureError::MissingField("ts"))
        );
        let mut t = body;
        t.remove("sig");
        assert_eq!(
            verify_self_service_request(&t, NOW),
            Err(SignatureError::MissingField("sig"))
        );
    }

    #[test]
    fn actions_round_trip() {
        for a in SelfServiceAction::ALL {
            assert_eq!(SelfServiceAction::parse(a.as_str()), Some(a));
        }
        assert_eq!(SelfServiceAction::parse("nope"), None);
    }

    #[test]
    fn integrity_hash() {
        // Expected value computed independently with Python:
        // hashlib.sha256(b"abc:2026-01-01T00:00:00Z").hexdigest()
        assert_eq!(
            operator_integrity_hash("abc", "2026-01-01T00:00:00Z"),
            "163096a943b0daac020fae9013c6f73705f1c74ad97f51d22af3a5442273c3a0"
        );
        assert_eq!(operator_integrity_hash("abc", "x").len(), 64);
    }
}
