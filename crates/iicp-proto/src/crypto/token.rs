//! Directory-signed tokens: the common format of PROTOCOL.md §17.5 and the three token
//! kinds built on it — consumer tokens (§8.10, §4.3), dispatch route tickets (§8.5) and
//! relay bind tickets (§14.6, §19 T18).
//!
//! Text form: `base64url_nopad(JSON claims)` + `.` + 128 hex digits of an Ed25519
//! signature over `DOMAIN + base64url_text`, where `DOMAIN` names the token kind and ends
//! in `\n`. The directory key is published by `GET /v1/directory-key` as 64 hex digits.
//!
//! Verification order: length and shape, signature (nothing unauthenticated is parsed),
//! claims JSON, then the per-kind claim checks. Issued claims are written in canonical
//! (sorted-key) JSON. Errors never contain the token or claim values.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::canonical;
use super::encoding::{b64url_decode, b64url_encode, is_lower_hex, to_array};

/// Domain string of consumer tokens.
pub const CONSUMER_TOKEN_DOMAIN: &str = "iicp:consumer-token:v1\n";
/// Domain string of dispatch route tickets.
pub const DISPATCH_TICKET_DOMAIN: &str = "iicp:dispatch-route-ticket:v1\n";
/// Domain string of relay bind tickets.
pub const RELAY_TICKET_DOMAIN: &str = "iicp:relay-bind-ticket:v1\n";

/// `typ` of a dispatch route ticket.
pub const DISPATCH_TICKET_TYPE: &str = "dispatch-route-ticket";
/// `aud` of a dispatch route ticket.
pub const DISPATCH_TICKET_AUDIENCE: &str = "iicp.directory.dispatch";
/// `typ` of a relay bind ticket.
pub const RELAY_TICKET_TYPE: &str = "relay-bind-ticket";
/// Wildcard accepted in consumer-token `intent` and relay-ticket `aud`.
pub const WILDCARD: &str = "*";

/// Consumer-token lifetime issued by directories, in seconds (§8.10).
pub const CONSUMER_TOKEN_TTL_SECS: u64 = 300;
/// Grace after `exp` a provider allows for consumer tokens, in seconds (§4.3).
pub const CONSUMER_TOKEN_GRACE_SECS: u64 = 10;
/// Relay bind ticket lifetime issued by the reference directory, in seconds (§14.6).
pub const RELAY_TICKET_TTL_SECS: u64 = 120;
/// Longest token text accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 8192;

/// Why a token was refused or could not be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not `<base64url>.<128 hex>`, too long, or the payload is not base64url.
    #[error("token is malformed")]
    Malformed,
    /// The directory public key is not 64 hex digits of a valid Ed25519 key.
    #[error("directory public key is invalid")]
    BadKey,
    /// The signature does not verify under the directory key and this token's domain.
    #[error("token signature does not verify")]
    BadSignature,
    /// The payload is not a JSON object with the claims this token kind requires.
    #[error("token claims are missing or malformed")]
    BadClaims,
    /// `v` is not 1.
    #[error("unsupported token version")]
    WrongVersion,
    /// `typ` does not name this token kind.
    #[error("wrong token type")]
    WrongType,
    /// `iss` is not the expected directory origin.
    #[error("wrong token issuer")]
    WrongIssuer,
    /// `aud` is not this audience.
    #[error("wrong token audience")]
    WrongAudience,
    /// `sub` is not the expected subject.
    #[error("wrong token subject")]
    WrongSubject,
    /// `node_id` is not the requested node.
    #[error("token is for another node")]
    WrongNode,
    /// `intent` does not match.
    #[error("token is for another intent")]
    WrongIntent,
    /// `exp` has passed.
    #[error("token has expired")]
    Expired,
    /// `jti` is missing or not the required number of lowercase hex digits.
    #[error("token id (jti) is missing or malformed")]
    BadJti,
    /// `policy_manifest_sha256` is malformed or does not match the route's manifest.
    #[error("token policy-manifest binding does not match")]
    PolicyManifestMismatch,
    /// The claims could not be serialised (issuing only).
    #[error("token claims cannot be serialised")]
    Unserialisable,
}

/// The three kinds of directory-signed token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenKind {
    /// `X-IICP-Consumer-Token` (§8.10).
    ConsumerToken,
    /// Dispatch route ticket (§8.5).
    DispatchRouteTicket,
    /// Relay bind ticket (§14.6).
    RelayBindTicket,
}

impl TokenKind {
    /// The domain string prepended to the payload text before signing.
    pub fn domain(self) -> &'static str {
        match self {
            Self::ConsumerToken => CONSUMER_TOKEN_DOMAIN,
            Self::DispatchRouteTicket => DISPATCH_TICKET_DOMAIN,
            Self::RelayBindTicket => RELAY_TICKET_DOMAIN,
        }
    }
}

/// A claim set carried by one [`TokenKind`].
pub trait Claims: Serialize + DeserializeOwned {
    /// The token kind (and hence signing domain) of these claims.
    const KIND: TokenKind;
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

/// The directory's Ed25519 signing key (issuer side). Zeroized on drop, never printed.
#[derive(Clone)]
pub struct DirectoryKey {
    key: SigningKey,
}

impl DirectoryKey {
    /// Generates a key from the injected RNG.
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

    /// The 32-byte seed, for persistence.
    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_bytes())
    }

    /// The public key to publish at `GET /v1/directory-key`.
    pub fn public_key(&self) -> DirectoryPublicKey {
        DirectoryPublicKey {
            key: self.key.verifying_key(),
        }
    }

    /// Signs raw claim bytes as a token of `kind`.
    pub fn sign_raw(&self, kind: TokenKind, claims_json: &[u8]) -> String {
        let payload = b64url_encode(claims_json);
        let mut message = String::with_capacity(kind.domain().len() + payload.len());
        message.push_str(kind.domain());
        message.push_str(&payload);
        let sig = self.key.sign(message.as_bytes());
        let mut token = payload;
        token.push('.');
        token.push_str(&hex::encode(sig.to_bytes()));
        token
    }

    /// Issues a token carrying `claims` (written as canonical JSON).
    ///
    /// # Errors
    /// [`TokenError::Unserialisable`] if the claims have no JSON form.
    pub fn issue<C: Claims>(&self, claims: &C) -> Result<String, TokenError> {
        let json = canonical::to_vec_from(claims).map_err(|_| TokenError::Unserialisable)?;
        Ok(self.sign_raw(C::KIND, &json))
    }
}

impl fmt::Debug for DirectoryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectoryKey")
            .field("public_key", &self.public_key().to_hex())
            .field("seed", &"<redacted>")
            .finish()
    }
}

/// The directory's Ed25519 public key (verifier side).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DirectoryPublicKey {
    key: VerifyingKey,
}

impl DirectoryPublicKey {
    /// From the raw 32 bytes.
    ///
    /// # Errors
    /// [`TokenError::BadKey`] for an invalid point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, TokenError> {
        VerifyingKey::from_bytes(bytes)
            .map(|key| Self { key })
            .map_err(|_| TokenError::BadKey)
    }

    /// From the 64-hex-digit `public_key` of `GET /v1/directory-key` (either case).
    ///
    /// # Errors
    /// [`TokenError::BadKey`] for bad hex, a wrong length or an invalid point.
    pub fn from_hex(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        if text.len() != 64 {
            return Err(TokenError::BadKey);
        }
        let bytes = hex::decode(text).map_err(|_| TokenError::BadKey)?;
        Self::from_bytes(&to_array::<32>(&bytes).ok_or(TokenError::BadKey)?)
    }

    /// The key as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.key.as_bytes())
    }

    /// The raw 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// Checks the shape and signature of `token` as a `kind` token and returns the
    /// decoded claim bytes (not yet checked semantically).
    ///
    /// # Errors
    /// [`TokenError::Malformed`] or [`TokenError::BadSignature`].
    pub fn verify_raw(&self, kind: TokenKind, token: &str) -> Result<Vec<u8>, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (payload, sig_hex) = token.split_once('.').ok_or(TokenError::Malformed)?;
        if payload.is_empty() || sig_hex.len() != 128 {
            return Err(TokenError::Malformed);
        }
        let sig = hex::decode(sig_hex).map_err(|_| TokenError::Malformed)?;
        let sig = to_array::<64>(&sig).ok_or(TokenError::Malformed)?;
        let mut message = Vec::with_capacity(kind.domain().len() + payload.len());
        message.extend_from_slice(kind.domain().as_bytes());
        message.extend_from_slice(payload.as_bytes());
        self.key
            .verify_strict(&message, &Signature::from_bytes(&sig))
            .map_err(|_| TokenError::BadSignature)?;
        b64url_decode(payload).ok_or(TokenError::Malformed)
    }

    /// Verifies the signature and parses the claims, without semantic checks.
    ///
    /// # Errors
    /// [`TokenError::Malformed`], [`TokenError::BadSignature`] or [`TokenError::BadClaims`].
    pub fn decode<C: Claims>(&self, token: &str) -> Result<C, TokenError> {
        let json = self.verify_raw(C::KIND, token)?;
        serde_json::from_slice(&json).map_err(|_| TokenError::BadClaims)
    }
}

impl fmt::Debug for DirectoryPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DirectoryPublicKey")
            .field(&self.to_hex())
            .finish()
    }
}

/// The directory origin used as `iss`: the base URL without a trailing `/` and without
/// a trailing `/api` (§8.5).
pub fn directory_origin(base_url: &str) -> &str {
    let s = base_url.trim_end_matches('/');
    s.strip_suffix("/api").unwrap_or(s).trim_end_matches('/')
}

fn random_hex<R: CryptoRng + RngCore>(rng: &mut R, bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rng.fill_bytes(&mut buf);
    hex::encode(buf)
}

// ---------------------------------------------------------------------------
// Consumer token (§8.10, §4.3)
// ---------------------------------------------------------------------------

/// Claims of a consumer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerTokenClaims {
    /// Version, 1.
    pub v: u64,
    /// Directory origin.
    pub iss: String,
    /// Caller node id.
    pub sub: String,
    /// Target (provider) node id.
    pub aud: String,
    /// Intent URN, or `"*"`.
    pub intent: String,
    /// Issued at, Unix seconds.
    #[serde(default)]
    pub iat: u64,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

impl Claims for ConsumerTokenClaims {
    const KIND: TokenKind = TokenKind::ConsumerToken;
}

impl ConsumerTokenClaims {
    /// Claims for a token issued at `now_unix` with the standard 300 s lifetime.
    pub fn new(
        issuer: &str,
        caller_node_id: &str,
        target_node_id: &str,
        intent: &str,
        now_unix: u64,
    ) -> Self {
        Self {
            v: 1,
            iss: issuer.to_owned(),
            sub: caller_node_id.to_owned(),
            aud: target_node_id.to_owned(),
            intent: intent.to_owned(),
            iat: now_unix,
            exp: now_unix.saturating_add(CONSUMER_TOKEN_TTL_SECS),
        }
    }
}

/// Provider-side check of `X-IICP-Consumer-Token`: signature, `v == 1`,
/// `aud == own_node_id`, `intent` equal to the task intent or `"*"`, and
/// `now_unix <= exp + 10`.
///
/// # Errors
/// The first failed check as a [`TokenError`].
pub fn verify_consumer_token(
    key: &DirectoryPublicKey,
    token: &str,
    own_node_id: &str,
    intent: &str,
    now_unix: u64,
) -> Result<ConsumerTokenClaims, TokenError> {
    let c: ConsumerTokenClaims = key.decode(token)?;
    if c.v != 1 {
        return Err(TokenError::WrongVersion);
    }
    if c.aud != own_node_id {
        return Err(TokenError::WrongAudience);
    }
    if c.intent != intent && c.intent != WILDCARD {
        return Err(TokenError::WrongIntent);
    }
    if now_unix > c.exp.saturating_add(CONSUMER_TOKEN_GRACE_SECS) {
        return Err(TokenError::Expired);
    }
    Ok(c)
}

// ---------------------------------------------------------------------------
// Dispatch route ticket (§8.5)
// ---------------------------------------------------------------------------

/// Claims of a dispatch route ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchTicketClaims {
    /// Version, 1.
    pub v: u64,
    /// `dispatch-route-ticket`.
    pub typ: String,
    /// Directory origin.
    pub iss: String,
    /// `iicp.directory.dispatch`.
    pub aud: String,
    /// Ticket id, 24 lowercase hex digits.
    pub jti: String,
    /// The routed node.
    pub node_id: String,
    /// The requested intent.
    pub intent: String,
    /// Issued at, Unix seconds.
    #[serde(default)]
    pub iat: u64,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Optional binding to the route's signed policy manifest (64 lowercase hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_manifest_sha256: Option<String>,
}

impl Claims for DispatchTicketClaims {
    const KIND: TokenKind = TokenKind::DispatchRouteTicket;
}

impl DispatchTicketClaims {
    /// Claims for a ticket issued at `now_unix`, valid `ttl_secs`, with a random `jti`.
    pub fn new<R: CryptoRng + RngCore>(
        rng: &mut R,
        issuer: &str,
        node_id: &str,
        intent: &str,
        now_unix: u64,
        ttl_secs: u64,
    ) -> Self {
        Self {
            v: 1,
            typ: DISPATCH_TICKET_TYPE.to_owned(),
            iss: issuer.to_owned(),
            aud: DISPATCH_TICKET_AUDIENCE.to_owned(),
            jti: random_hex(rng, 12),
            node_id: node_id.to_owned(),
            intent: intent.to_owned(),
            iat: now_unix,
            exp: now_unix.saturating_add(ttl_secs),
            policy_manifest_sha256: None,
        }
    }
}

/// What a client expects of a dispatch route ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchTicketCheck<'a> {
    /// Directory origin (see [`directory_origin`]).
    pub issuer: &'a str,
    /// The `node_id` of the returned route.
    pub node_id: &'a str,
    /// The intent that was requested.
    pub intent: &'a str,
    /// `route.node_policy_manifest.verification.canonical_sha256`, when the route has one.
    pub policy_manifest_sha256: Option<&'a str>,
}

/// Client-side check of a dispatch route ticket (§8.5): signature, `v == 1`, `typ`,
/// `aud`, `iss`, `node_id`, `intent`, `exp > now_unix`, `jti` of 24 lowercase hex, and
/// the optional policy-manifest binding (a ticket that binds a manifest is refused when
/// the route has none or a different one; a ticket without a binding is accepted).
///
/// # Errors
/// The first failed check as a [`TokenError`].
pub fn verify_dispatch_ticket(
    key: &DirectoryPublicKey,
    token: &str,
    expect: &DispatchTicketCheck<'_>,
    now_unix: u64,
) -> Result<DispatchTicketClaims, TokenError> {
    let c: DispatchTicketClaims = key.decode(token)?;
    if c.v != 1 {
        return Err(TokenError::WrongVersion);
    }
    if c.typ != DISPATCH_TICKET_TYPE {
        return Err(TokenError::WrongType);
    }
    if c.aud != DISPATCH_TICKET_AUDIENCE {
        return Err(TokenError::WrongAudience);
    }
    if c.iss != expect.issuer {
        return Err(TokenError::WrongIssuer);
    }
    if c.node_id != expect.node_id {
        return Err(TokenError::WrongNode);
    }
    if c.intent != expect.intent {
        return Err(TokenError::WrongIntent);
    }
    if c.exp <= now_unix {
        return Err(TokenError::Expired);
    }
    if !is_lower_hex(&c.jti, 24) {
        return Err(TokenError::BadJti);
    }
    if let Some(bound) = &c.policy_manifest_sha256 {
        if !is_lower_hex(bound, 64) || expect.policy_manifest_sha256 != Some(bound.as_str()) {
            return Err(TokenError::PolicyManifestMismatch);
        }
    }
    Ok(c)
}

// ---------------------------------------------------------------------------
// Relay bind ticket (§14.6)
// ---------------------------------------------------------------------------

/// Claims of a relay bind ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayTicketClaims {
    /// Version, 1.
    pub v: u64,
    /// `relay-bind-ticket`.
    pub typ: String,
    /// Ticket id, 32 lowercase hex digits. Optional in parsing only so that its absence
    /// (ref-dir at 9933c3f) is reported as [`TokenError::BadJti`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Directory origin.
    pub iss: String,
    /// Worker node id.
    pub sub: String,
    /// Relay node id, or `"*"`.
    pub aud: String,
    /// Issued at, Unix seconds.
    #[serde(default)]
    pub iat: u64,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

impl Claims for RelayTicketClaims {
    const KIND: TokenKind = TokenKind::RelayBindTicket;
}

impl RelayTicketClaims {
    /// Claims for a ticket issued at `now_unix` (120 s lifetime, random 32-hex `jti`);
    /// `relay_node_id` `None` means any relay (`"*"`).
    pub fn new<R: CryptoRng + RngCore>(
        rng: &mut R,
        issuer: &str,
        worker_node_id: &str,
        relay_node_id: Option<&str>,
        now_unix: u64,
    ) -> Self {
        Self {
            v: 1,
            typ: RELAY_TICKET_TYPE.to_owned(),
            jti: Some(random_hex(rng, 16)),
            iss: issuer.to_owned(),
            sub: worker_node_id.to_owned(),
            aud: relay_node_id.unwrap_or(WILDCARD).to_owned(),
            iat: now_unix,
            exp: now_unix.saturating_add(RELAY_TICKET_TTL_SECS),
        }
    }
}

/// Relay-side check of a bind ticket (§14.6, T18): signature, `v == 1`, `typ`,
/// `jti` present and 32 lowercase hex, `sub == worker_node_id`,
/// `aud == relay_node_id` or `"*"`, `exp > now_unix`.
///
/// # Errors
/// The first failed check as a [`TokenError`].
pub fn verify_relay_ticket(
    key: &DirectoryPublicKey,
    token: &str,
    worker_node_id: &str,
    relay_node_id: &str,
    now_unix: u64,
) -> Result<RelayTicketClaims, TokenError> {
    let c: RelayTicketClaims = key.decode(token)?;
    if c.v != 1 {
        return Err(TokenError::WrongVersion);
    }
    if c.typ != RELAY_TICKET_TYPE {
        return Err(TokenError::WrongType);
    }
    match &c.jti {
        Some(jti) if is_lower_hex(jti, 32) => {}
        _ => return Err(TokenError::BadJti),
    }
    if c.sub != worker_node_id {
        return Err(TokenError::WrongSubject);
    }
    if c.aud != relay_node_id && c.aud != WILDCARD {
        return Err(TokenError::WrongAudience);
    }
    if c.exp <= now_unix {
        return Err(TokenError::Expired);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;
    const ISS: &str = "https://directory.example.test";
    const CHAT: &str = "urn:iicp:intent:llm:chat:v1";

    fn dir() -> DirectoryKey {
        DirectoryKey::from_seed(&[9; 32])
    }

    #[test]
    fn origin() {
        assert_eq!(
            directory_origin("https://iicp.network/api"),
            "https://iicp.network"
        );
        assert_eq!(
            directory_origin("https://iicp.network/api/"),
            "https://iicp.network"
        );
        assert_eq!(directory_origin("https://d.example/"), "https://d.example");
        assert_eq!(
            directory_origin("https://d.example/apix"),
            "https://d.example/apix"
        );
    }

    #[test]
    fn key_hex_round_trip_and_errors() {
        let pk = dir().public_key();
        assert_eq!(DirectoryPublicKey::from_hex(&pk.to_hex()).unwrap(), pk);
        assert_eq!(
            DirectoryPublicKey::from_hex(&pk.to_hex().to_uppercase()).unwrap(),
            pk
        );
        assert_eq!(
            DirectoryPublicKey::from_hex("abcd"),
            Err(TokenError::BadKey)
        );
        assert_eq!(
            DirectoryPublicKey::from_hex(&"zz".repeat(32)),
            Err(TokenError::BadKey)
        );
        let dbg = format!("{:?}", dir());
        assert!(dbg.contains("<redacted>") && !dbg.contains(&hex::encode([9u8; 32])));
    }

    #[test]
    fn domains_separate_kinds() {
        let d = dir();
        let claims = ConsumerTokenClaims::new(ISS, "caller", "target", CHAT, NOW);
        let token = d.issue(&claims).unwrap();
        let pk = d.public_key();
        assert_eq!(
            pk.verify_raw(TokenKind::DispatchRouteTicket, &token),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            pk.verify_raw(TokenKind::RelayBindTicket, &token),
            Err(TokenError::BadSignature)
        );
        assert!(pk.verify_raw(TokenKind::ConsumerToken, &token).is_ok());
    }

    #[test]
    fn issued_payload_is_canonical_json() {
        let d = dir();
        let claims = ConsumerTokenClaims::new(ISS, "c", "t", CHAT, NOW);
        let token = d.issue(&claims).unwrap();
        let payload = token.split_once('.').unwrap().0;
        assert!(!payload.contains('='));
        let json = String::from_utf8(b64url_decode(payload).unwrap()).unwrap();
        assert!(json.starts_with(r#"{"aud":"t","exp":1800000300,"iat":1800000000,"intent":"#));
        assert_eq!(token.split_once('.').unwrap().1.len(), 128);
    }

    #[test]
    fn consumer_token_checks() {
        let d = dir();
        let pk = d.public_key();
        let token = d
            .issue(&ConsumerTokenClaims::new(ISS, "caller", "me", CHAT, NOW))
            .unwrap();
        assert!(verify_consumer_token(&pk, &token, "me", CHAT, NOW).is_ok());
        assert!(verify_consumer_token(&pk, &token, "me", CHAT, NOW + 310).is_ok());
        assert_eq!(
            verify_consumer_token(&pk, &token, "me", CHAT, NOW + 311),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify_consumer_token(&pk, &token, "other", CHAT, NOW),
            Err(TokenError::WrongAudience)
        );
        assert_eq!(
            verify_consumer_token(&pk, &token, "me", "urn:iicp:intent:llm:embedding:v1", NOW),
            Err(TokenError::WrongIntent)
        );
        let star = d
            .issue(&ConsumerTokenClaims::new(ISS, "caller", "me", "*", NOW))
            .unwrap();
        assert!(verify_consumer_token(&pk, &star, "me", "urn:iicp:intent:x:y:v1", NOW).is_ok());
        let mut c = ConsumerTokenClaims::new(ISS, "caller", "me", CHAT, NOW);
        c.v = 2;
        let v2 = d.issue(&c).unwrap();
        assert_eq!(
            verify_consumer_token(&pk, &v2, "me", CHAT, NOW),
            Err(TokenError::WrongVersion)
        );
        let other = DirectoryKey::from_seed(&[8; 32]).public_key();
        assert_eq!(
            verify_consumer_token(&other, &token, "me", CHAT, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn dispatch_ticket_checks() {
        let d = dir();
        let pk = d.public_key();
        let mut rng = rand_core::OsRng;
        let claims = DispatchTicketClaims::new(&mut rng, ISS, "node-1", CHAT, NOW, 120);
        assert!(is_lower_hex(&claims.jti, 24));
        let token = d.issue(&claims).unwrap();
        let ok = DispatchTicketCheck {
            issuer: ISS,
            node_id: "node-1",
            intent: CHAT,
            policy_manifest_sha256: None,
        };
        assert_eq!(
            verify_dispatch_ticket(&pk, &token, &ok, NOW).unwrap(),
            claims
        );
        assert_eq!(
            verify_dispatch_ticket(&pk, &token, &ok, NOW + 120),
            Err(TokenError::Expired)
        );

        let manifest = "ab".repeat(32);
        let mut bound = claims.clone();
        bound.policy_manifest_sha256 = Some(manifest.clone());
        let bound_token = d.issue(&bound).unwrap();
        let with = DispatchTicketCheck {
            policy_manifest_sha256: Some(&manifest),
            ..ok
        };
        assert!(verify_dispatch_ticket(&pk, &bound_token, &with, NOW).is_ok());
        assert!(verify_dispatch_ticket(&pk, &token, &with, NOW).is_ok());
        assert_eq!(
            verify_dispatch_ticket(&pk, &bound_token, &ok, NOW),
            Err(TokenError::PolicyManifestMismatch)
        );
        let other = "cd".repeat(32);
        let wrong = DispatchTicketCheck {
            policy_manifest_sha256: Some(&other),
            ..ok
        };
        assert_eq!(
            verify_dispatch_ticket(&pk, &bound_token, &wrong, NOW),
            Err(TokenError::PolicyManifestMismatch)
        );

        type Mutate = fn(&mut DispatchTicketClaims);
        let cases: [(Mutate, TokenError); 4] = [
            (
                |c| c.typ = "relay-bind-ticket".into(),
                TokenError::WrongType,
            ),
            (
                |c| c.jti = "0123456789ABCDEF01234567".into(),
                TokenError::BadJti,
            ),
            (|c| c.jti = "0123".into(), TokenError::BadJti),
            (|c| c.v = 0, TokenError::WrongVersion),
        ];
        for (mutate, err) in cases {
            let mut c = claims.clone();
            mutate(&mut c);
            assert_eq!(
                verify_dispatch_ticket(&pk, &d.issue(&c).unwrap(), &ok, NOW),
                Err(err)
            );
        }
    }

    #[test]
    fn relay_ticket_checks() {
        let d = dir();
        let pk = d.public_key();
        let mut rng = rand_core::OsRng;
        let claims = RelayTicketClaims::new(&mut rng, ISS, "worker", Some("relay"), NOW);
        let token = d.issue(&claims).unwrap();
        assert!(verify_relay_ticket(&pk, &token, "worker", "relay", NOW).is_ok());
        assert_eq!(
            verify_relay_ticket(&pk, &token, "worker", "relay", NOW + 120),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify_relay_ticket(&pk, &token, "other", "relay", NOW),
            Err(TokenError::WrongSubject)
        );
        assert_eq!(
            verify_relay_ticket(&pk, &token, "worker", "relay2", NOW),
            Err(TokenError::WrongAudience)
        );
        let any = d
            .issue(&RelayTicketClaims::new(&mut rng, ISS, "worker", None, NOW))
            .unwrap();
        assert!(verify_relay_ticket(&pk, &any, "worker", "whatever", NOW).is_ok());

        // ref-dir at 9933c3f omits jti: refused (T18).
        let no_jti = json!({"v":1,"typ":"relay-bind-ticket","iss":ISS,"sub":"worker","aud":"*","iat":NOW,"exp":NOW+120});
        let t = d.sign_raw(TokenKind::RelayBindTicket, no_jti.to_string().as_bytes());
        assert_eq!(
            verify_relay_ticket(&pk, &t, "worker", "r", NOW),
            Err(TokenError::BadJti)
        );
        let mut c = claims.clone();
        c.jti = Some("0123456789abcdef01234567".into());
        assert_eq!(
            verify_relay_ticket(&pk, &d.issue(&c).unwrap(), "worker", "relay", NOW),
            Err(TokenError::BadJti)
        );
        let mut c = claims;
        c.typ = DISPATCH_TICKET_TYPE.into();
        assert_eq!(
            verify_relay_ticket(&pk, &d.issue(&c).unwrap(), "worker", "relay", NOW),
            Err(TokenError::WrongType)
        );
    }

    #[test]
    fn malformed_inputs_never_panic() {
        let d = dir();
        let pk = d.public_key();
        let good = d
            .issue(&ConsumerTokenClaims::new(ISS, "c", "me", CHAT, NOW))
            .unwrap();
        let (payload, sig) = good.split_once('.').unwrap();
        let bad = [
            String::new(),
            ".".into(),
            "abc".into(),
            payload.to_string(),
            format!("{payload}."),
            format!(".{sig}"),
            format!("{payload}.{}", &sig[..126]),
            format!("{payload}.{sig}0"),
            format!("{payload}.{}zz", &sig[..126]),
            format!("{payload}.{sig}.x"),
            "é".repeat(100),
            "a".repeat(MAX_TOKEN_LEN + 1),
        ];
        for t in &bad {
            let r = verify_consumer_token(&pk, t, "me", CHAT, NOW);
            assert!(
                matches!(r, Err(TokenError::Malformed | TokenError::BadSignature)),
                "{t:?}: {r:?}"
            );
        }
        // Signed garbage is refused as claims, not a panic.
        for raw in [
            &b"not json"[..],
            b"[]",
            b"{}",
            b"{\"v\":\"1\"}",
            &[0xff, 0xfe],
        ] {
            let t = d.sign_raw(TokenKind::ConsumerToken, raw);
            assert_eq!(
                verify_consumer_token(&pk, &t, "me", CHAT, NOW),
                Err(TokenError::BadClaims)
            );
        }
        // A signed payload that is not base64url.
        let fake_payload = "***";
        let msg = format!("{CONSUMER_TOKEN_DOMAIN}{fake_payload}");
        let sig = hex::encode(d.key.sign(msg.as_bytes()).to_bytes());
        assert_eq!(
            verify_consumer_token(&pk, &format!("{fake_payload}.{sig}"), "me", CHAT, NOW),
            Err(TokenError::Malformed)
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_is_refused_without_panic(s in "\\PC{0,300}") {
            let pk = dir().public_key();
            let check =
                DispatchTicketCheck { issuer: ISS, node_id: "n", intent: CHAT, policy_manifest_sha256: None };
            let refused = verify_dispatch_ticket(&pk, &s, &check, NOW).is_err();
            proptest::prop_assert!(refused);
        }
    }
}
