//! Operator identity: the key-backed identity an operator shares across every node it
//! runs (PROTOCOL.md §17; SEED-SDK.md §4).
//!
//! * [`OperatorFile`] is `~/.iicp/operator.json` exactly as the Python and TypeScript
//!   SDKs write it (`operator_id`, `created_at`, `display_name`, `contact`,
//!   `operator_secret`, `operator_integrity_hash`, optional `operator_secret_enc`), so one
//!   identity moves between SDKs unchanged. Unknown members are kept.
//! * [`Home`] is the configuration root (`$IICP_HOME`, else `~/.iicp`): it loads and
//!   saves the operator file and saved node profiles ([`NodeProfile`],
//!   `nodes/<name>.json`) atomically with mode 0600, and refuses to load an operator key
//!   that other users can read.
//! * [`OperatorIdentity`] is an unlocked identity: it signs the operator → node
//!   [`Delegation`] (§17.2) that [`crate::NodeBuilder::operator`] attaches to every
//!   REGISTER, and renames (§17.3, [`rename`]).
//! * At-rest encryption (§17.1): [`OperatorFile::encrypt`] / [`OperatorFile::decrypt`]
//!   with PBKDF2-HMAC-SHA256 (600 000 iterations) and AES-256-GCM bound to
//!   `operator_id`; a wrong passphrase is an error and changes nothing.
//!
//! Secrets (seed, node token, passphrases) are held in zeroizing storage and never
//! appear in `Debug` output or error messages. The library never prompts and never reads
//! `IICP_OPERATOR_PASSPHRASE`: the caller supplies passphrases.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use iicp_proto::crypto::atrest::{self, AtRestError, EncryptedSeed};
use iicp_proto::crypto::sign::{
    operator_integrity_hash, self_service_body, sign_delegation, sign_rename, sign_self_service,
    Delegation, OperatorKey, Rename, SelfServiceAction, DEFAULT_DELEGATION_TTL_SECS,
};
use iicp_proto::secret::Secret;
use iicp_transport::http::client::{HttpClient, HttpClientError, Redirects};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::clock::iso8601;

pub mod schema;
mod store;

pub(crate) use store::{create_private_dir, node_file_stem};
pub use store::{write_private_atomic, Home, NodeAuth, NodeProfile, DEFAULT_PROFILE_PORT};

/// Default lifetime of a delegation (§17.2: 3600 s, re-issued before expiry).
pub const DEFAULT_DELEGATION_TTL: Duration = Duration::from_secs(DEFAULT_DELEGATION_TTL_SECS);

/// Longest display name, in characters (§17.3).
pub const MAX_DISPLAY_NAME_CHARS: usize = 64;

/// Why an operator-identity operation failed. Messages name files and fields, never
/// secrets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorError {
    /// Neither `IICP_HOME` nor a home directory is known.
    #[error("cannot locate the configuration directory: set IICP_HOME or HOME")]
    NoHome,
    /// There is no operator file.
    #[error("no operator identity at {} (run `iicp init`)", .0.display())]
    NotFound(PathBuf),
    /// `init` would overwrite an existing identity.
    #[error("an operator identity already exists at {} (pass --force to replace it; the old key is lost)", .0.display())]
    AlreadyExists(PathBuf),
    /// The key file can be read by other users.
    #[error("{} is readable by other users (mode {mode:03o}); refusing to use it — run `chmod 600 {}`", .path.display(), .path.display())]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file could not be read.
    #[error("cannot read {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid JSON of the expected shape.
    #[error("{} is not a valid {what} file (line {line}, column {column})", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// `operator` or `node profile`.
        what: &'static str,
        /// Line of the first error.
        line: usize,
        /// Column of the first error.
        column: usize,
    },
    /// The identity has no key (a legacy `op-…` id): it cannot sign.
    #[error("the operator identity is keyless (legacy id): it cannot sign; run `iicp init --force` to create a key-backed one")]
    Keyless,
    /// The secret is encrypted and no passphrase was given.
    #[error("the operator secret is encrypted: set IICP_OPERATOR_PASSPHRASE or run interactively")]
    PassphraseRequired,
    /// `encrypt` on an encrypted file.
    #[error("the operator secret is already encrypted")]
    AlreadyEncrypted,
    /// `decrypt` on a plain file.
    #[error("the operator secret is not encrypted")]
    NotEncrypted,
    /// Sealing or unsealing failed (wrong passphrase, tampered or unsupported record).
    #[error(transparent)]
    AtRest(#[from] AtRestError),
    /// `operator_secret` is not a valid seed, or not the key of `operator_id`.
    #[error("operator_secret does not hold the key of operator_id")]
    KeyMismatch,
    /// The display name is empty, too long or has control characters.
    #[error("display name must be 1-64 characters without control characters or outer spaces")]
    DisplayName,
    /// A node profile name does not match `^[a-z0-9][a-z0-9._-]{0,62}$`.
    #[error("invalid node name {0:?}: use 1-63 of a-z 0-9 . _ - starting with a letter or digit")]
    NodeName(String),
    /// The directory refused or did not answer a signed request.
    #[error("directory {operation} failed{}: {message}", fmt_status(*.status))]
    Directory {
        /// The operation (`rename`).
        operation: &'static str,
        /// HTTP status, when the directory answered.
        status: Option<u16>,
        /// The directory's message, or the transport failure.
        message: String,
    },
}

fn fmt_status(status: Option<u16>) -> String {
    status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
}

/// Deserialises `null` as an empty string (other SDKs may write `null`).
fn nullable_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

fn nullable_secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    Ok(Option::<Secret>::deserialize(d)?.unwrap_or_default())
}

/// Whether `name` is an acceptable public display name (§17.3): 1–64 characters, no
/// control characters, no leading or trailing whitespace.
pub fn valid_display_name(name: &str) -> bool {
    let n = name.chars().count();
    (1..=MAX_DISPLAY_NAME_CHARS).contains(&n)
        && name.trim() == name
        && !name.chars().any(char::is_control)
}

/// `~/.iicp/operator.json`, member for member as the other SDKs write it.
#[derive(Clone, Serialize, Deserialize)]
pub struct OperatorFile {
    /// Standard base64 of the 32-byte Ed25519 public key (legacy: `op-<uuid>`).
    pub operator_id: String,
    /// Creation time, `YYYY-MM-DDTHH:MM:SSZ`.
    #[serde(default, deserialize_with = "nullable_string")]
    pub created_at: String,
    /// Public handle (mutable through [`rename`]).
    #[serde(default, deserialize_with = "nullable_string")]
    pub display_name: String,
    /// Private contact; stays on this machine.
    #[serde(default, deserialize_with = "nullable_string")]
    pub contact: String,
    /// Standard base64 of the 32-byte seed; empty when encrypted or keyless.
    #[serde(default, deserialize_with = "nullable_secret")]
    pub operator_secret: Secret,
    /// `sha256_hex(operator_id + ":" + created_at)`.
    #[serde(default, deserialize_with = "nullable_string")]
    pub operator_integrity_hash: String,
    /// The sealed seed, when encrypted at rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_secret_enc: Option<EncryptedSeed>,
    /// Members this crate does not know, kept as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl fmt::Debug for OperatorFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorFile")
            .field("operator_id", &self.operator_id)
            .field("created_at", &self.created_at)
            .field("display_name", &self.display_name)
            .field("key_backed", &self.is_key_backed())
            .field("encrypted", &self.is_encrypted())
            .finish_non_exhaustive()
    }
}

impl OperatorFile {
    /// A new key-backed identity created at `now_unix`.
    ///
    /// # Errors
    /// [`OperatorError::DisplayName`] for an invalid non-empty display name (an empty one
    /// is allowed: the directory then shows none).
    pub fn generate(
        display_name: &str,
        contact: &str,
        now_unix: u64,
    ) -> Result<Self, OperatorError> {
        if !display_name.is_empty() && !valid_display_name(display_name) {
            return Err(OperatorError::DisplayName);
        }
        let key = OperatorKey::generate(&mut rand_core::OsRng);
        let operator_id = key.operator_id();
        let created_at = iso8601(now_unix);
        Ok(Self {
            operator_integrity_hash: operator_integrity_hash(&operator_id, &created_at),
            operator_id,
            created_at,
            display_name: display_name.to_owned(),
            contact: contact.to_owned(),
            operator_secret: Secret::new(key.seed_base64().as_str()),
            operator_secret_enc: None,
            extra: Map::new(),
        })
    }

    /// Whether the seed is sealed (`operator_secret_enc` present).
    pub fn is_encrypted(&self) -> bool {
        self.operator_secret_enc.is_some()
    }

    /// Whether the identity has a key (plain or sealed), as opposed to a legacy keyless
    /// `op-…` id.
    pub fn is_key_backed(&self) -> bool {
        !self.operator_id.starts_with("op-")
            && (self.is_encrypted() || !self.operator_secret.is_empty())
    }

    /// The integrity hash, recomputed from `operator_id` and `created_at`.
    pub fn integrity_hash(&self) -> String {
        operator_integrity_hash(&self.operator_id, &self.created_at)
    }

    /// Opens the key: the plain seed, or the sealed one with `passphrase`.
    ///
    /// # Errors
    /// [`OperatorError::Keyless`], [`OperatorError::PassphraseRequired`],
    /// [`OperatorError::AtRest`] (wrong passphrase, tampered record) or
    /// [`OperatorError::KeyMismatch`].
    pub fn unlock(&self, passphrase: Option<&str>) -> Result<OperatorIdentity, OperatorError> {
        if !self.is_key_backed() {
            return Err(OperatorError::Keyless);
        }
        let key = match &self.operator_secret_enc {
            Some(record) => {
                let pass = passphrase.ok_or(OperatorError::PassphraseRequired)?;
                atrest::decrypt_operator_key(pass, record, &self.operator_id)?
            }
            None => OperatorKey::from_seed_base64(self.operator_secret.expose())
                .map_err(|_| OperatorError::KeyMismatch)?,
        };
        if key.operator_id() != self.operator_id {
            return Err(OperatorError::KeyMismatch);
        }
        Ok(OperatorIdentity {
            key,
            display_name: self.display_name.clone(),
            created_at: self.created_at.clone(),
            delegation_ttl: DEFAULT_DELEGATION_TTL,
        })
    }

    /// Seals the seed under `passphrase` (`operator_secret` becomes `""`). On error
    /// nothing changes.
    ///
    /// # Errors
    /// [`OperatorError::AlreadyEncrypted`], [`OperatorError::Keyless`],
    /// [`OperatorError::KeyMismatch`], [`OperatorError::AtRest`] (empty passphrase).
    pub fn encrypt(&mut self, passphrase: &str) -> Result<(), OperatorError> {
        if self.is_encrypted() {
            return Err(OperatorError::AlreadyEncrypted);
        }
        let identity = self.unlock(None)?;
        let record =
            atrest::encrypt_operator_key(&mut rand_core::OsRng, passphrase, &identity.key)?;
        self.operator_secret_enc = Some(record);
        self.operator_secret = Secret::default();
        Ok(())
    }

    /// Removes the at-rest encryption (`operator_secret` holds the seed again). On error
    /// (wrong passphrase) nothing changes.
    ///
    /// # Errors
    /// [`OperatorError::NotEncrypted`] or any error of [`OperatorFile::unlock`].
    pub fn decrypt(&mut self, passphrase: &str) -> Result<(), OperatorError> {
        if !self.is_encrypted() {
            return Err(OperatorError::NotEncrypted);
        }
        let identity = self.unlock(Some(passphrase))?;
        self.operator_secret = Secret::new(identity.key.seed_base64().as_str());
        self.operator_secret_enc = None;
        Ok(())
    }
}

/// An unlocked, key-backed operator identity: signs delegations and renames.
#[derive(Clone)]
pub struct OperatorIdentity {
    key: OperatorKey,
    display_name: String,
    created_at: String,
    delegation_ttl: Duration,
}

impl fmt::Debug for OperatorIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorIdentity")
            .field("operator_id", &self.operator_id())
            .field("display_name", &self.display_name)
            .field("created_at", &self.created_at)
            .field("delegation_ttl", &self.delegation_ttl)
            .finish_non_exhaustive()
    }
}

impl OperatorIdentity {
    /// An identity from a key and its public metadata.
    pub fn new(
        key: OperatorKey,
        display_name: impl Into<String>,
        created_at: impl Into<String>,
    ) -> Self {
        Self {
            key,
            display_name: display_name.into(),
            created_at: created_at.into(),
            delegation_ttl: DEFAULT_DELEGATION_TTL,
        }
    }

    /// The same identity issuing delegations valid for `ttl` (default 3600 s; at least
    /// 1 s).
    pub fn with_delegation_ttl(mut self, ttl: Duration) -> Self {
        self.delegation_ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// `operator_id` (= `operator_pub`).
    pub fn operator_id(&self) -> String {
        self.key.operator_id()
    }

    /// The public display name.
    pub fn display_name(&self) -> &str {
        &self.display_name
    }

    /// Self-attested creation time.
    pub fn created_at(&self) -> &str {
        &self.created_at
    }

    /// `operator_integrity_hash` (§17.1).
    pub fn integrity_hash(&self) -> String {
        operator_integrity_hash(&self.operator_id(), &self.created_at)
    }

    /// Lifetime of the delegations this identity signs.
    pub fn delegation_ttl(&self) -> Duration {
        self.delegation_ttl
    }

    /// The signing key.
    pub fn key(&self) -> &OperatorKey {
        &self.key
    }

    /// Signs the delegation of `node_id`, valid from `now_unix` for the delegation TTL.
    pub fn delegate(&self, node_id: &str, now_unix: u64) -> Delegation {
        sign_delegation(
            &self.key,
            node_id,
            now_unix.saturating_add(self.delegation_ttl.as_secs()),
        )
    }

    /// Signs a rename to `display_name` at `now_unix`.
    ///
    /// # Errors
    /// [`OperatorError::DisplayName`] for an invalid name.
    pub fn sign_rename(&self, display_name: &str, now_unix: u64) -> Result<Rename, OperatorError> {
        if !valid_display_name(display_name) {
            return Err(OperatorError::DisplayName);
        }
        Ok(sign_rename(&self.key, display_name, now_unix))
    }
}

/// What the directory answered to a rename.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RenameAck {
    /// The display name now in force.
    pub display_name: String,
    /// The directory's short public fingerprint of the operator key, if it sent one.
    pub operator_fingerprint: Option<String>,
    /// How many registered nodes now show the new name, if the directory said.
    pub nodes_updated: Option<u64>,
}

/// Signed rename through the directory: `POST {directory_url}/v1/operator/rename` with
/// `{operator_pub, display_name, ts, sig}` (§17.3). Update the local file's
/// `display_name` from the returned [`RenameAck`].
///
/// # Errors
/// [`OperatorError::DisplayName`] before any I/O; [`OperatorError::Directory`] when the
/// directory refuses or cannot be reached.
pub async fn rename(
    http: &HttpClient,
    directory_url: &str,
    identity: &OperatorIdentity,
    display_name: &str,
    now_unix: u64,
) -> Result<RenameAck, OperatorError> {
    let body = identity.sign_rename(display_name, now_unix)?;
    let v = operator_post(http, directory_url, "rename", "rename", &body).await?;
    Ok(RenameAck {
        display_name: v
            .get("display_name")
            .and_then(Value::as_str)
            .unwrap_or(display_name)
            .to_owned(),
        operator_fingerprint: v
            .get("operator_fingerprint")
            .and_then(Value::as_str)
            .map(str::to_owned),
        nodes_updated: v.get("nodes_updated").and_then(Value::as_u64),
    })
}

/// POSTs `body` to `{directory}/v1/operator/{path}` and returns the JSON answer.
async fn operator_post<B: Serialize + ?Sized>(
    http: &HttpClient,
    directory_url: &str,
    path: &str,
    operation: &'static str,
    body: &B,
) -> Result<Value, OperatorError> {
    let url = format!("{}/v1/operator/{path}", directory_url.trim_end_matches('/'));
    let failed = |status: Option<u16>, message: String| OperatorError::Directory {
        operation,
        status,
        message,
    };
    let reply = http
        .post_json(url, body)
        .header("accept", "application/json")
        .redirects(Redirects::follow(3))
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .map_err(|e| failed(None, transport_message(&e)))?;
    if !reply.is_success() {
        let err = reply.error_body();
        return Err(failed(Some(reply.status.as_u16()), err.message));
    }
    Ok(reply.json().unwrap_or(Value::Null))
}

/// A signed self-service body of `action` by `key` over a fresh challenge nonce of the
/// directory (PROTOCOL.md §17.3), `fields` included.
async fn self_service(
    http: &HttpClient,
    directory_url: &str,
    key: &OperatorKey,
    action: SelfServiceAction,
    fields: Map<String, Value>,
    now_unix: u64,
) -> Result<Map<String, Value>, OperatorError> {
    let challenge = operator_post(
        http,
        directory_url,
        "challenge",
        "challenge",
        &serde_json::json!({"operator_pub": key.operator_id()}),
    )
    .await?;
    let nonce = challenge
        .get("nonce")
        .and_then(Value::as_str)
        .ok_or_else(|| OperatorError::Directory {
            operation: "challenge",
            status: None,
            message: "the answer carries no nonce".into(),
        })?;
    let mut body = self_service_body(action, &key.operator_id(), nonce, now_unix, fields);
    let sig = sign_self_service(key, &body);
    body.insert("sig".into(), sig.into());
    Ok(body)
}

/// Revokes the operator key at a directory (`key_revoke`, `confirm: true`): policy
/// manifests it signed are then served `signed_revoked` and refused at registration,
/// and it binds no node. Permanent. Returns the directory's answer.
///
/// # Errors
/// [`OperatorError::Directory`] when the directory refuses or cannot be reached.
pub async fn revoke_key(
    http: &HttpClient,
    directory_url: &str,
    identity: &OperatorIdentity,
    reason_class: &str,
    now_unix: u64,
) -> Result<Value, OperatorError> {
    let mut fields = Map::new();
    fields.insert("confirm".into(), true.into());
    fields.insert("reason_class".into(), reason_class.into());
    let body = self_service(
        http,
        directory_url,
        &identity.key,
        SelfServiceAction::KeyRevoke,
        fields,
        now_unix,
    )
    .await?;
    operator_post(
        http,
        directory_url,
        "key/revoke",
        "key revoke",
        &Value::Object(body),
    )
    .await
}

/// Rotates the operator key to `successor` at a directory (`key_rotate`, signed by the
/// current key, with the successor's `key_rotate_successor` signature in
/// `new_key_sig`): the old key is then superseded. Returns the directory's answer.
///
/// # Errors
/// [`OperatorError::Directory`] when the directory refuses or cannot be reached.
pub async fn rotate_key(
    http: &HttpClient,
    directory_url: &str,
    identity: &OperatorIdentity,
    successor: &OperatorKey,
    now_unix: u64,
) -> Result<Value, OperatorError> {
    let mut fields = Map::new();
    fields.insert("new_operator_pub".into(), successor.operator_id().into());
    let mut body = self_service(
        http,
        directory_url,
        &identity.key,
        SelfServiceAction::KeyRotate,
        fields,
        now_unix,
    )
    .await?;
    let mut succ = Map::new();
    succ.insert("new_operator_pub".into(), successor.operator_id().into());
    succ.insert("rotation_epoch".into(), Value::Null);
    let nonce = body
        .get("nonce")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let succ = self_service_body(
        SelfServiceAction::KeyRotateSuccessor,
        &identity.operator_id(),
        &nonce,
        now_unix,
        succ,
    );
    body.insert(
        "new_key_sig".into(),
        sign_self_service(successor, &succ).into(),
    );
    operator_post(
        http,
        directory_url,
        "key/rotate",
        "key rotate",
        &Value::Object(body),
    )
    .await
}

impl OperatorFile {
    /// Replaces the key with `successor` (after a rotation): a new `operator_id`, its
    /// integrity hash from a new `created_at`; the display name and contact stay. An
    /// encrypted identity stays encrypted under `passphrase`.
    ///
    /// # Errors
    /// [`OperatorError::PassphraseRequired`] for an encrypted identity without one,
    /// [`OperatorError::AtRest`] when sealing fails.
    pub fn replace_key(
        &mut self,
        successor: &OperatorKey,
        passphrase: Option<&str>,
        now_unix: u64,
    ) -> Result<(), OperatorError> {
        let sealed = match (&self.operator_secret_enc, passphrase) {
            (Some(_), None) => return Err(OperatorError::PassphraseRequired),
            (Some(_), Some(p)) => Some(atrest::encrypt_operator_key(
                &mut rand_core::OsRng,
                p,
                successor,
            )?),
            (None, _) => None,
        };
        self.operator_id = successor.operator_id();
        self.created_at = iso8601(now_unix);
        self.operator_integrity_hash = operator_integrity_hash(&self.operator_id, &self.created_at);
        match sealed {
            Some(record) => {
                self.operator_secret_enc = Some(record);
                self.operator_secret = Secret::default();
            }
            None => self.operator_secret = Secret::new(successor.seed_base64().as_str()),
        }
        Ok(())
    }
}

pub(crate) fn transport_message(e: &HttpClientError) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_unlock_encrypt_decrypt() {
        let mut f = OperatorFile::generate("Ops", "me@example", 1_700_000_000).expect("gen");
        assert_eq!(f.created_at, "2023-11-14T22:13:20Z");
        assert_eq!(f.operator_integrity_hash, f.integrity_hash());
        assert!(f.is_key_backed() && !f.is_encrypted());
        let id = f.unlock(None).expect("unlock").operator_id();
        assert_eq!(id, f.operator_id);
        f.encrypt("pw").expect("encrypt");
        assert!(f.operator_secret.is_empty() && f.is_encrypted());
        assert!(matches!(
            f.unlock(None),
            Err(OperatorError::PassphraseRequired)
        ));
        let before = serde_json::to_string(&f).expect("json");
        assert!(matches!(
            f.decrypt("wrong"),
            Err(OperatorError::AtRest(AtRestError::WrongPassphrase))
        ));
        assert_eq!(serde_json::to_string(&f).expect("json"), before);
        assert!(matches!(
            f.encrypt("pw"),
            Err(OperatorError::AlreadyEncrypted)
        ));
        f.decrypt("pw").expect("decrypt");
        assert_eq!(f.unlock(None).expect("unlock").operator_id(), id);
        assert!(matches!(f.decrypt("pw"), Err(OperatorError::NotEncrypted)));
    }

    #[test]
    fn debug_never_shows_the_seed() {
        let f = OperatorFile::generate("", "", 0).expect("gen");
        let seed = f.operator_secret.expose().to_owned();
        let ident = f.unlock(None).expect("unlock");
        for text in [format!("{f:?}"), format!("{ident:?}")] {
            assert!(!text.contains(&seed), "{text}");
        }
    }

    #[test]
    fn display_names() {
        assert!(valid_display_name("Zoë / Ops"));
        assert!(!valid_display_name(""));
        assert!(!valid_display_name(" x"));
        assert!(!valid_display_name("a\nb"));
        assert!(!valid_display_name(&"x".repeat(65)));
        assert!(OperatorFile::generate("bad\u{7}", "", 0).is_err());
    }

    #[test]
    fn delegation_verifies_and_expires() {
        let f = OperatorFile::generate("Ops", "", 0).expect("gen");
        let ident = f
            .unlock(None)
            .expect("unlock")
            .with_delegation_ttl(Duration::from_secs(60));
        let d = ident.delegate("node-1", 1000);
        assert_eq!(d.not_after, 1060);
        assert_eq!(d.operator_pub, f.operator_id);
        iicp_proto::crypto::sign::verify_delegation_for_node(&d, "node-1", 1000).expect("ok");
    }

    #[test]
    fn keyless_legacy_file() {
        let f: OperatorFile = serde_json::from_value(serde_json::json!({
            "operator_id": "op-8e1d0c1e-0000-4000-8000-000000000000",
            "created_at": "2025-01-01T00:00:00Z",
            "display_name": null,
            "contact": null
        }))
        .expect("parse");
        assert!(!f.is_key_backed());
        assert!(matches!(f.unlock(None), Err(OperatorError::Keyless)));
    }
}
