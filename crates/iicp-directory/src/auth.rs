//! Node credentials: issuing, hashing and checking them.
//!
//! PROTOCOL.md §8.0 and §8.2: `node_token` (bearer for heartbeat, deregister, `/v1/me`,
//! consumer tokens, credits), `proxy_token` (telemetry only), `node_hmac_key`
//! (heartbeat challenge and receipt HMAC, §8.3/§8.11) and `jwt_token` (HS256, 1 h,
//! `sub = node_id`, a self-identifying bearer).
//!
//! Tokens are 32 random bytes (64 hex digits) returned once; only their SHA-256 is
//! stored (a fast hash is enough for 256-bit random secrets, and unlike bcrypt it lets
//! the directory find a node from its token alone). Comparisons are constant-time. The
//! JWT is bound to the current token hash (`tv` claim), so rotating the token revokes
//! it. Nothing here logs or formats a credential.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use iicp_proto::secret::Secret;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// JWT lifetime (§8.0: 1 h).
pub(crate) const JWT_TTL_SECS: u64 = 3600;

/// 32 random bytes as 64 lowercase hex digits.
pub(crate) fn random_token() -> Secret {
    let mut bytes = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(bytes.as_mut());
    Secret::new(hex::encode(bytes.as_ref()))
}

/// `n` random bytes as lowercase hex (nonces, challenges): OS randomness drawn in
/// blocks (one `getrandom` per 256 heartbeat challenges instead of one per heartbeat).
pub(crate) use iicp_transport::random::random_hex;

/// SHA-256 of a token, hex. What the store keeps.
pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Constant-time check of `token` against a stored hash.
pub(crate) fn token_matches(token: &str, stored_hash: &str) -> bool {
    let computed = token_hash(token);
    computed.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

#[derive(Serialize, Deserialize)]
struct JwtClaims {
    sub: String,
    iat: u64,
    exp: u64,
    /// First 16 hex digits of the node-token hash the JWT was issued with.
    tv: String,
}

/// HS256 JWT issuer/verifier keyed from the directory key seed.
pub(crate) struct JwtKey {
    key: Zeroizing<[u8; 32]>,
}

impl JwtKey {
    /// Derives the JWT key from the directory signing-key seed.
    pub(crate) fn derive(seed: &[u8; 32]) -> Self {
        let mut h = Sha256::new();
        h.update(b"iicp-directory:jwt-hs256:v1\n");
        h.update(seed);
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&h.finalize());
        Self { key }
    }

    fn mac(&self, input: &[u8]) -> Option<Vec<u8>> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.key.as_ref()).ok()?;
        mac.update(input);
        Some(mac.finalize().into_bytes().to_vec())
    }

    /// Issues a JWT for `node_id`, bound to the token hash.
    pub(crate) fn issue(&self, node_id: &str, token_hash: &str, now_secs: u64) -> Option<Secret> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = JwtClaims {
            sub: node_id.to_owned(),
            iat: now_secs,
            exp: now_secs.saturating_add(JWT_TTL_SECS),
            tv: token_hash.get(..16).unwrap_or(token_hash).to_owned(),
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).ok()?);
        let signing_input = format!("{header}.{payload}");
        let sig = URL_SAFE_NO_PAD.encode(self.mac(signing_input.as_bytes())?);
        Some(Secret::new(format!("{signing_input}.{sig}")))
    }

    /// Verifies a JWT; returns `(node_id, token-hash prefix)` when the signature is
    /// valid and it has not expired.
    pub(crate) fn verify(&self, jwt: &str, now_secs: u64) -> Option<(String, String)> {
        if jwt.len() > 2048 {
            return None;
        }
        let mut parts = jwt.split('.');
        let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let expected = self.mac(format!("{h}.{p}").as_bytes())?;
        let given = URL_SAFE_NO_PAD.decode(s).ok()?;
        if !bool::from(expected.ct_eq(&given)) {
            return None;
        }
        let claims: JwtClaims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).ok()?).ok()?;
        (claims.exp > now_secs).then_some((claims.sub, claims.tv))
    }
}

pub(crate) use iicp_proto::time::iso8601;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_jwt() {
        let t = random_token();
        assert_eq!(t.expose().len(), 64);
        let h = token_hash(t.expose());
        assert!(token_matches(t.expose(), &h));
        assert!(!token_matches("nope", &h));
        let key = JwtKey::derive(&[7u8; 32]);
        let jwt = key.issue("node-1", &h, 1000).unwrap();
        let (sub, tv) = key.verify(jwt.expose(), 1001).unwrap();
        assert_eq!(sub, "node-1");
        assert_eq!(tv, h[..16]);
        assert!(key.verify(jwt.expose(), 1000 + JWT_TTL_SECS).is_none());
        assert!(JwtKey::derive(&[8u8; 32])
            .verify(jwt.expose(), 1001)
            .is_none());
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_780_000_000), "2026-05-28T20:26:40Z");
    }
}
