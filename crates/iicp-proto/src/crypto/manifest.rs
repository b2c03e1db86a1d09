//! Signed node policy manifests (PROTOCOL.md §17.4; dir §3.1 `policy_manifest`, §3.4
//! `node_policy_manifest`; ADR 0016).
//!
//! A manifest is a JSON object in which a node declares how it handles data
//! (`retention`, `training_use`, `jurisdiction`, `subprocessors`, …). It may carry a
//! `signature` block `{algorithm: "Ed25519", key_id, public_key, signed_at, expires_at,
//! signature}`. The signed bytes are the canonical JSON ([`super::canonical`]: keys
//! sorted recursively, compact, `/` and non-ASCII unescaped) of the whole manifest with
//! only `signature.signature` removed, so `signed_at` and `expires_at` are covered.
//! `canonical_sha256` is the SHA-256 (lowercase hex) of those bytes; a dispatch ticket
//! binds a route to it (`policy_manifest_sha256`, §8.5).
//!
//! The directory adds evidence to the manifest it serves ([`DIRECTORY_MEMBERS`]:
//! `verification`, `manifest_identity_level`, fingerprints, `evidence`). A node's own
//! manifest must not carry those members, except `evidence: "self_attested"`, the only
//! evidence a node can claim about itself ([`validate`]). [`signed_originals`] undoes the
//! directory's additions so a client can check the node's signature itself.
//!
//! Time is never read here: `now_unix` comes from the caller.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::canonical;
use super::encoding::{b64_decode, b64url_decode, to_array};
use super::sign::{OperatorKey, OperatorPublicKey};
use crate::time::{iso8601, parse_rfc3339};

/// The only signature algorithm.
pub const ALGORITHM: &str = "Ed25519";

/// Lifetime of a manifest signed by [`sign`]: 90 days, as the reference SDKs sign.
pub const MANIFEST_TTL_SECS: u64 = 90 * 24 * 3600;

/// How far in the future `signed_at` may lie (clock skew), in seconds.
pub const SIGNED_AT_SKEW_SECS: i64 = 300;

/// Largest manifest accepted, in canonical bytes.
pub const MAX_MANIFEST_BYTES: usize = 16 * 1024;

/// Members only a directory computes. A node's manifest carrying one of them is refused
/// by [`validate`]; a client removes them before it checks a signature.
pub const DIRECTORY_MEMBERS: [&str; 8] = [
    "verification",
    "manifest_identity_level",
    "operator_fingerprint",
    "policy_key_fingerprint",
    "operator_governance",
    "revoked_at",
    "rotation_epoch",
    "revocation_reason_class",
];

/// `training_use` values (dir §3.4).
pub const TRAINING_USE: [&str; 3] = ["none", "opt_in", "provider_defined"];

/// `retention.task_payload` values (dir §3.4).
pub const TASK_PAYLOAD_RETENTION: [&str; 3] = ["none", "transient", "provider_defined"];

/// Why a manifest is malformed ([`validate`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The manifest is not a JSON object.
    #[error("policy manifest must be a JSON object")]
    NotObject,
    /// Its canonical form exceeds [`MAX_MANIFEST_BYTES`].
    #[error("policy manifest exceeds {MAX_MANIFEST_BYTES} bytes")]
    TooLarge,
    /// A member has the wrong type or a value outside its enumeration.
    #[error("policy manifest member `{member}` {problem}")]
    Member {
        /// JSON pointer of the member.
        member: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The node claims a member only the directory computes.
    #[error("policy manifest member `{0}` is computed by the directory and cannot be declared")]
    DirectoryMember(String),
}

fn member(member: &str, problem: &'static str) -> ManifestError {
    ManifestError::Member {
        member: member.to_owned(),
        problem,
    }
}

/// Checks a node's manifest before it is signed, registered or stored: an object of at
/// most [`MAX_MANIFEST_BYTES`]; the documented members have their documented types and
/// values (`training_use`, `retention.task_payload`, `retention.logs_days` ≥ 0,
/// `remote_executor_can_read_prompt` boolean, string lists, `evidence` only
/// `self_attested`); no directory-computed member. Unknown members are allowed (the
/// schema is open).
///
/// # Errors
/// The first problem found.
pub fn validate(manifest: &Value) -> Result<(), ManifestError> {
    let m = manifest.as_object().ok_or(ManifestError::NotObject)?;
    if canonical::to_vec(manifest).len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge);
    }
    for name in DIRECTORY_MEMBERS {
        if m.contains_key(name) {
            return Err(ManifestError::DirectoryMember(name.to_owned()));
        }
    }
    let opt_str = |key: &str| match m.get(key) {
        None | Some(Value::Null) | Some(Value::String(_)) => Ok(()),
        Some(_) => Err(member(&format!("/{key}"), "must be a string")),
    };
    for key in [
        "version",
        "jurisdiction",
        "policy_url",
        "contact_url",
        "signed_statement",
    ] {
        opt_str(key)?;
    }
    match m.get("training_use") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if TRAINING_USE.contains(&s.as_str()) => {}
        Some(_) => {
            return Err(member(
                "/training_use",
                "must be one of none, opt_in, provider_defined",
            ))
        }
    }
    match m.get("remote_executor_can_read_prompt") {
        None | Some(Value::Bool(_)) => {}
        Some(_) => {
            return Err(member(
                "/remote_executor_can_read_prompt",
                "must be a boolean",
            ))
        }
    }
    match m.get("evidence") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "self_attested" => {}
        Some(_) => return Err(ManifestError::DirectoryMember("evidence".to_owned())),
    }
    for key in ["subprocessors", "unsupported_intents"] {
        match m.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
            Some(_) => return Err(member(&format!("/{key}"), "must be a list of strings")),
        }
    }
    match m.get("retention") {
        None | Some(Value::Null) => {}
        Some(Value::Object(r)) => {
            match r.get("task_payload") {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if TASK_PAYLOAD_RETENTION.contains(&s.as_str()) => {}
                Some(_) => {
                    return Err(member(
                        "/retention/task_payload",
                        "must be one of none, transient, provider_defined",
                    ))
                }
            }
            match r.get("logs_days") {
                None | Some(Value::Null) => {}
                Some(v) if v.as_u64().is_some() => {}
                Some(_) => {
                    return Err(member(
                        "/retention/logs_days",
                        "must be a non-negative integer",
                    ))
                }
            }
        }
        Some(_) => return Err(member("/retention", "must be an object")),
    }
    match m.get("signature") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(_) => return Err(member("/signature", "must be an object")),
    }
    Ok(())
}

/// The bytes a manifest's signature covers: the canonical JSON of the manifest without
/// `signature.signature` (without `signature` when it is not an object).
pub fn canonical_bytes(manifest: &Map<String, Value>) -> Vec<u8> {
    let mut copy = manifest.clone();
    match copy.get_mut("signature") {
        Some(Value::Object(sig)) => {
            sig.remove("signature");
        }
        Some(_) => {
            copy.remove("signature");
        }
        None => {}
    }
    canonical::to_vec(&Value::Object(copy))
}

/// SHA-256 (lowercase hex) of [`canonical_bytes`].
pub fn canonical_sha256(manifest: &Map<String, Value>) -> String {
    hex::encode(Sha256::digest(canonical_bytes(manifest)))
}

/// `key_id` of a policy key: the first 12 hex of SHA-256 of the raw 32-byte key.
pub fn key_id(key: &OperatorPublicKey) -> String {
    public_key_sha256(key)[..12].to_owned()
}

/// SHA-256 (lowercase hex) of the raw 32-byte key.
pub fn public_key_sha256(key: &OperatorPublicKey) -> String {
    hex::encode(Sha256::digest(key.to_bytes()))
}

/// Short public fingerprint of a policy key (`policy_key_fingerprint`): the first 16
/// hex of [`public_key_sha256`].
pub fn policy_key_fingerprint(key: &OperatorPublicKey) -> String {
    public_key_sha256(key)[..16].to_owned()
}

/// Short public fingerprint of an operator (`operator_fingerprint`): the first 16 hex of
/// SHA-256 of the `operator_pub` text (standard base64).
pub fn operator_fingerprint(operator_pub: &str) -> String {
    let digest = hex::encode(Sha256::digest(operator_pub.as_bytes()));
    digest[..16].to_owned()
}

/// Signs `manifest` with the operator key at `now_unix`: any previous `signature` and
/// directory-computed member is dropped, then `signature = {algorithm, key_id,
/// public_key (operator_id), signed_at, expires_at (+90 days)}` is added and signed.
pub fn sign(
    mut manifest: Map<String, Value>,
    key: &OperatorKey,
    now_unix: u64,
) -> Map<String, Value> {
    manifest.remove("signature");
    for name in DIRECTORY_MEMBERS {
        manifest.remove(name);
    }
    let public = key.public_key();
    let mut block = Map::new();
    block.insert("algorithm".into(), ALGORITHM.into());
    block.insert("key_id".into(), key_id(&public).into());
    block.insert("public_key".into(), public.operator_id().into());
    block.insert("signed_at".into(), iso8601(now_unix).into());
    block.insert(
        "expires_at".into(),
        iso8601(now_unix.saturating_add(MANIFEST_TTL_SECS)).into(),
    );
    manifest.insert("signature".into(), Value::Object(block));
    let signature = key.sign_base64(&canonical_bytes(&manifest));
    if let Some(Value::Object(block)) = manifest.get_mut("signature") {
        block.insert("signature".into(), signature.into());
    }
    manifest
}

/// `verification.status` (dir §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// No signature.
    SelfAttested,
    /// The signature verifies and the manifest has not expired.
    SignedValid,
    /// A signature that does not verify or is malformed.
    SignedInvalid,
    /// A valid signature past `expires_at`.
    SignedExpired,
    /// The policy key was revoked (directory lifecycle registry).
    SignedRevoked,
    /// The policy key was superseded by a rotation (directory lifecycle registry).
    SignedSuperseded,
}

impl Status {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SelfAttested => "self_attested",
            Self::SignedValid => "signed_valid",
            Self::SignedInvalid => "signed_invalid",
            Self::SignedExpired => "signed_expired",
            Self::SignedRevoked => "signed_revoked",
            Self::SignedSuperseded => "signed_superseded",
        }
    }

    /// From the wire name.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::SelfAttested,
            Self::SignedValid,
            Self::SignedInvalid,
            Self::SignedExpired,
            Self::SignedRevoked,
            Self::SignedSuperseded,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// The `evidence` word of the same fact (dir §3.4 `evidence`).
    pub fn evidence(self) -> &'static str {
        match self {
            Self::SelfAttested => "self_attested",
            Self::SignedValid => "signed_verified",
            Self::SignedInvalid => "signed_invalid",
            Self::SignedExpired => "signed_expired",
            Self::SignedRevoked => "directory_revoked",
            Self::SignedSuperseded => "directory_superseded",
        }
    }
}

/// `manifest_identity_level` (dir §3.4, #602), ordered by accountability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdentityLevel {
    /// Unsigned.
    SelfAttested,
    /// Signed, the signature verifies.
    SignedValid,
    /// Signed with the key of the operator the directory verified for this node
    /// (operator delegation, §17.2).
    OperatorBound,
    /// Operator-bound and the operator accepted the current terms and DPA.
    KnownOperator,
    /// The policy key was superseded by a rotation: always refused by strict profiles.
    Rotated,
    /// The policy key was revoked: always refused by strict profiles.
    Revoked,
}

impl IdentityLevel {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SelfAttested => "self_attested",
            Self::SignedValid => "signed_valid",
            Self::OperatorBound => "operator_bound",
            Self::KnownOperator => "known_operator",
            Self::Rotated => "rotated",
            Self::Revoked => "revoked",
        }
    }

    /// From the wire name.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::SelfAttested,
            Self::SignedValid,
            Self::OperatorBound,
            Self::KnownOperator,
            Self::Rotated,
            Self::Revoked,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// Rank for `≥` comparisons; `None` for `rotated` and `revoked`, which satisfy no
    /// requirement.
    pub fn rank(self) -> Option<u8> {
        match self {
            Self::SelfAttested => Some(0),
            Self::SignedValid => Some(1),
            Self::OperatorBound => Some(2),
            Self::KnownOperator => Some(3),
            Self::Rotated | Self::Revoked => None,
        }
    }

    /// Whether this level meets `required`.
    pub fn satisfies(self, required: IdentityLevel) -> bool {
        match (self.rank(), required.rank()) {
            (Some(have), Some(need)) => have >= need,
            _ => false,
        }
    }
}

/// The result of checking a manifest's signature ([`verify`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    /// The outcome.
    pub status: Status,
    /// `signature.algorithm` when signed.
    pub algorithm: Option<String>,
    /// `signature.key_id` when signed.
    pub key_id: Option<String>,
    /// `signature.signed_at` when signed.
    pub signed_at: Option<String>,
    /// `signature.expires_at` when signed.
    pub expires_at: Option<String>,
    /// `signed_at` in unix seconds, when it parsed.
    pub signed_at_unix: Option<i64>,
    /// `expires_at` in unix seconds, when it parsed.
    pub expires_at_unix: Option<i64>,
    /// SHA-256 of the canonical bytes.
    pub canonical_sha256: String,
    /// SHA-256 of the raw policy key, when it decoded.
    pub public_key_sha256: Option<String>,
    /// The policy key, when the signature verified.
    pub public_key: Option<OperatorPublicKey>,
    /// A short, redacted reason when the status is not `signed_valid`/`self_attested`.
    pub error: Option<&'static str>,
}

impl Verification {
    /// The public `verification` block (dir §3.4): `status`, `algorithm`, `key_id`,
    /// `signed_at`, `expires_at`, `canonical_sha256`, `public_key_sha256`, `error`.
    pub fn to_json(&self) -> Value {
        let opt = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
        serde_json::json!({
            "status": self.status.as_str(),
            "algorithm": opt(&self.algorithm),
            "key_id": opt(&self.key_id),
            "signed_at": opt(&self.signed_at),
            "expires_at": opt(&self.expires_at),
            "canonical_sha256": self.canonical_sha256,
            "public_key_sha256": opt(&self.public_key_sha256),
            "error": self.error,
        })
    }

    /// The status at `now_unix` of a [`check`]ed manifest: a verified signature is
    /// invalid while `signed_at` lies more than 300 s ahead, and expired once
    /// `expires_at` has passed.
    pub fn at(&self, now_unix: u64) -> Status {
        let now = i64::try_from(now_unix).unwrap_or(i64::MAX);
        match (self.status, self.signed_at_unix, self.expires_at_unix) {
            (Status::SignedValid, Some(signed), _)
                if signed > now.saturating_add(SIGNED_AT_SKEW_SECS) =>
            {
                Status::SignedInvalid
            }
            (Status::SignedValid, _, Some(exp)) if exp <= now => Status::SignedExpired,
            (status, _, _) => status,
        }
    }
}

/// Decodes a policy key given as standard base64 or base64url (32 bytes).
fn decode_key(text: &str) -> Option<OperatorPublicKey> {
    let bytes = b64_decode(text).or_else(|| b64url_decode(text.trim()))?;
    OperatorPublicKey::from_bytes(&to_array::<32>(&bytes)?).ok()
}

/// Checks a manifest's signature at `now_unix`: [`check`], then the time gates of
/// [`Verification::at`].
pub fn verify(manifest: &Map<String, Value>, now_unix: u64) -> Verification {
    let mut v = check(manifest);
    let status = v.at(now_unix);
    if status == Status::SignedInvalid && v.status == Status::SignedValid {
        v = invalid(v, "signed_in_the_future");
    }
    v.status = status;
    v
}

/// Checks a manifest's signature without looking at the time. Unsigned →
/// `self_attested`; a signature block that is malformed, names another algorithm, whose
/// `key_id` does not match its key, whose dates do not parse or are out of order, or
/// whose signature does not verify → `signed_invalid`; otherwise `signed_valid`, and
/// [`Verification::at`] applies the dates.
pub fn check(manifest: &Map<String, Value>) -> Verification {
    let mut v = Verification {
        status: Status::SelfAttested,
        algorithm: None,
        key_id: None,
        signed_at: None,
        expires_at: None,
        signed_at_unix: None,
        expires_at_unix: None,
        canonical_sha256: canonical_sha256(manifest),
        public_key_sha256: None,
        public_key: None,
        error: None,
    };
    let block = match manifest.get("signature") {
        None | Some(Value::Null) => return v,
        Some(Value::Object(block)) => block,
        Some(_) => return invalid(v, "malformed_signature_block"),
    };
    let text = |key: &str| block.get(key).and_then(Value::as_str).map(str::to_owned);
    v.algorithm = text("algorithm");
    v.key_id = text("key_id");
    v.signed_at = text("signed_at");
    v.expires_at = text("expires_at");
    if !v
        .algorithm
        .as_deref()
        .is_some_and(|a| a.eq_ignore_ascii_case(ALGORITHM))
    {
        return invalid(v, "unsupported_algorithm");
    }
    let Some(key) = text("public_key").as_deref().and_then(decode_key) else {
        return invalid(v, "malformed_public_key");
    };
    v.public_key_sha256 = Some(public_key_sha256(&key));
    if v.key_id.as_deref().is_some_and(|id| id != key_id(&key)) {
        return invalid(v, "key_id_mismatch");
    }
    v.signed_at_unix = v.signed_at.as_deref().and_then(parse_rfc3339);
    v.expires_at_unix = v.expires_at.as_deref().and_then(parse_rfc3339);
    let (Some(signed_at), Some(expires_at)) = (v.signed_at_unix, v.expires_at_unix) else {
        return invalid(v, "malformed_timestamp");
    };
    if expires_at <= signed_at {
        return invalid(v, "expires_before_signed");
    }
    let Some(signature) = block.get("signature").and_then(Value::as_str) else {
        return invalid(v, "malformed_signature");
    };
    if key
        .verify_base64(&canonical_bytes(manifest), signature)
        .is_err()
    {
        return invalid(v, "signature_mismatch");
    }
    v.public_key = Some(key);
    v.status = Status::SignedValid;
    v
}

fn invalid(mut v: Verification, error: &'static str) -> Verification {
    v.status = Status::SignedInvalid;
    v.error = Some(error);
    v
}

/// The node manifests a served `node_policy_manifest` can have come from: the served
/// object without the directory's members and `evidence`, then the same with
/// `evidence: "self_attested"` (the one value a node may declare, which the directory
/// overwrites with its own evidence). A client verifies each and accepts the first
/// whose signature checks.
pub fn signed_originals(served: &Map<String, Value>) -> [Map<String, Value>; 2] {
    let mut bare = served.clone();
    for name in DIRECTORY_MEMBERS {
        bare.remove(name);
    }
    bare.remove("evidence");
    let mut with_evidence = bare.clone();
    with_evidence.insert("evidence".into(), "self_attested".into());
    [bare, with_evidence]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_893_456_000;

    fn key() -> OperatorKey {
        OperatorKey::from_seed(&[7; 32])
    }

    fn manifest() -> Map<String, Value> {
        json!({
            "version": "2026-07-02",
            "jurisdiction": "DE",
            "remote_executor_can_read_prompt": true,
            "training_use": "none",
            "retention": {"task_payload": "none", "logs_days": 7},
            "subprocessors": ["self-hosted"],
            "unsupported_intents": [],
            "evidence": "self_attested"
        })
        .as_object()
        .cloned()
        .unwrap()
    }

    #[test]
    fn signed_manifest_verifies_and_expires() {
        let signed = sign(manifest(), &key(), NOW);
        assert!(validate(&Value::Object(signed.clone())).is_ok());
        let v = verify(&signed, NOW + 10);
        assert_eq!(v.status, Status::SignedValid, "{v:?}");
        assert_eq!(v.public_key, Some(key().public_key()));
        assert_eq!(
            v.key_id.as_deref(),
            Some(key_id(&key().public_key()).as_str())
        );
        assert_eq!(v.signed_at.as_deref(), Some("2030-01-01T00:00:00Z"));
        assert_eq!(v.expires_at.as_deref(), Some("2030-04-01T00:00:00Z"));
        assert_eq!(v.at(NOW + MANIFEST_TTL_SECS), Status::SignedExpired);
        assert_eq!(
            verify(&signed, NOW + MANIFEST_TTL_SECS).status,
            Status::SignedExpired
        );
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let signed = sign(manifest(), &key(), NOW);
        let mut tampered = signed.clone();
        tampered["retention"]["task_payload"] = "provider_defined".into();
        assert_eq!(verify(&tampered, NOW).status, Status::SignedInvalid);
        assert_eq!(verify(&tampered, NOW).error, Some("signature_mismatch"));
        // the dates are covered
        let mut later = signed.clone();
        later["signature"]["expires_at"] = "2031-01-01T00:00:00Z".into();
        assert_eq!(verify(&later, NOW).status, Status::SignedInvalid);
        // another key with a matching key_id still fails
        let other = OperatorKey::from_seed(&[8; 32]).public_key();
        let mut swapped = signed.clone();
        swapped["signature"]["public_key"] = other.operator_id().into();
        swapped["signature"]["key_id"] = key_id(&other).into();
        assert_eq!(verify(&swapped, NOW).status, Status::SignedInvalid);
        let mut wrong_id = signed.clone();
        wrong_id["signature"]["key_id"] = "000000000000".into();
        assert_eq!(verify(&wrong_id, NOW).error, Some("key_id_mismatch"));
        let mut alg = signed;
        alg["signature"]["algorithm"] = "RS256".into();
        assert_eq!(verify(&alg, NOW).error, Some("unsupported_algorithm"));
    }

    #[test]
    fn unsigned_is_self_attested_and_future_signatures_are_refused() {
        let v = verify(&manifest(), NOW);
        assert_eq!(v.status, Status::SelfAttested);
        assert_eq!(v.canonical_sha256.len(), 64);
        let future = sign(manifest(), &key(), NOW + 3600);
        assert_eq!(verify(&future, NOW).error, Some("signed_in_the_future"));
        assert_eq!(verify(&future, NOW + 3600).status, Status::SignedValid);
    }

    #[test]
    fn base64url_keys_verify() {
        let mut signed = sign(manifest(), &key(), NOW);
        let raw = key().public_key().to_bytes();
        let url = super::super::encoding::b64url_encode(&raw);
        signed["signature"]["public_key"] = url.into();
        // the key text is signed too: re-sign over the new text
        let sig = key().sign_base64(&canonical_bytes(&signed));
        signed["signature"]["signature"] = sig.into();
        assert_eq!(verify(&signed, NOW).status, Status::SignedValid);
    }

    #[test]
    fn served_manifest_reconstructs_the_signed_original() {
        let signed = sign(manifest(), &key(), NOW);
        let mut served = signed.clone();
        served.insert("verification".into(), json!({"status": "signed_valid"}));
        served.insert("manifest_identity_level".into(), "operator_bound".into());
        served.insert("evidence".into(), "signed_verified".into());
        served.insert("policy_key_fingerprint".into(), "abcd".into());
        let ok: Vec<_> = signed_originals(&served)
            .into_iter()
            .filter(|m| verify(m, NOW).status == Status::SignedValid)
            .collect();
        assert_eq!(ok, vec![signed.clone()]);
        // a manifest signed without `evidence` reconstructs from the bare candidate
        let mut plain = manifest();
        plain.remove("evidence");
        let signed = sign(plain, &key(), NOW);
        let mut served = signed.clone();
        served.insert("evidence".into(), "signed_verified".into());
        assert_eq!(
            verify(&signed_originals(&served)[0], NOW).status,
            Status::SignedValid
        );
    }

    #[test]
    fn validation_names_the_member() {
        let bad = |v: Value| validate(&v).unwrap_err().to_string();
        assert!(bad(json!([])).contains("JSON object"));
        assert!(bad(json!({"training_use": "sometimes"})).contains("/training_use"));
        assert!(bad(json!({"retention": {"task_payload": 1}})).contains("/retention/task_payload"));
        assert!(bad(json!({"retention": {"logs_days": -1}})).contains("logs_days"));
        assert!(bad(json!({"subprocessors": [1]})).contains("/subprocessors"));
        assert!(bad(json!({"verification": {}})).contains("computed by the directory"));
        assert!(bad(json!({"evidence": "signed_verified"})).contains("evidence"));
        assert!(bad(json!({"x": "y".repeat(MAX_MANIFEST_BYTES)})).contains("exceeds"));
        assert!(validate(&json!({"custom": {"anything": 1}})).is_ok());
    }

    #[test]
    fn identity_levels_order_and_refuse_rotation() {
        use IdentityLevel::*;
        assert!(OperatorBound.satisfies(SignedValid));
        assert!(KnownOperator.satisfies(OperatorBound));
        assert!(!SignedValid.satisfies(OperatorBound));
        assert!(!Revoked.satisfies(SelfAttested));
        assert!(!Rotated.satisfies(SelfAttested));
        for l in [
            SelfAttested,
            SignedValid,
            OperatorBound,
            KnownOperator,
            Rotated,
            Revoked,
        ] {
            assert_eq!(IdentityLevel::parse(l.as_str()), Some(l));
        }
    }
}
