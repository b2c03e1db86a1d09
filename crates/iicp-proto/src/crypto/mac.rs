//! HMAC-SHA256 proofs keyed with the directory-issued `node_hmac_key`, and
//! constant-time credential comparison.
//!
//! * Heartbeat liveness, PROTOCOL.md §8.3 / §17.6: `challenge_response` = lowercase hex
//!   HMAC-SHA256(`node_hmac_key`, previous PONG's `challenge`).
//! * CIP worker receipt, §8.11: `signature` = hex HMAC-SHA256(`node_hmac_key`,
//!   `"{task_id}:{tokens_used}:::{nonce}:{response_hash}[:{querying_node_id}]"`), with
//!   `response_hash` = SHA-256 hex of the sorted compact JSON of the result.
//! * Node-token checks, §4.3 TASK-1: constant-time equality.
//!
//! Key encoding: the reference SDKs key the HMAC with the UTF-8 bytes of the
//! `node_hmac_key` string exactly as the directory returned it (a hex string is *not*
//! hex-decoded first); the `&str` functions here do the same.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::canonical;

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC takes keys of any length, so `new_from_slice` cannot fail; the fallback only
    // exists to avoid an `unwrap`.
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| <HmacSha256 as KeyInit>::new(&Default::default()));
    for p in parts {
        m.update(p);
    }
    m
}

/// Lowercase hex HMAC-SHA256 of `message` under raw `key` bytes.
pub fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    hex::encode(mac(key, &[message]).finalize().into_bytes())
}

/// Constant-time check of a hex HMAC-SHA256 (either case) of `message` under `key`.
/// Malformed hex is simply `false`.
pub fn verify_hmac_sha256_hex(key: &[u8], message: &[u8], tag_hex: &str) -> bool {
    if tag_hex.len() != 64 {
        return false;
    }
    match hex::decode(tag_hex) {
        Ok(tag) => mac(key, &[message]).verify_slice(&tag).is_ok(),
        Err(_) => false,
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha256(bytes))
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Heartbeat `challenge_response` for the PONG `challenge` (§8.3).
pub fn challenge_response(node_hmac_key: &str, challenge: &str) -> String {
    hmac_sha256_hex(node_hmac_key.as_bytes(), challenge.as_bytes())
}

/// Directory side: constant-time check of a heartbeat `challenge_response`.
pub fn verify_challenge_response(node_hmac_key: &str, challenge: &str, response_hex: &str) -> bool {
    verify_hmac_sha256_hex(node_hmac_key.as_bytes(), challenge.as_bytes(), response_hex)
}

/// `response_hash` of a CIP receipt: SHA-256 hex of the result as Python's
/// `json.dumps(result, sort_keys=True, separators=(",", ":"))` writes it (non-ASCII
/// escaped, see [`canonical::to_string_ascii`]).
pub fn response_hash(result: &Value) -> String {
    sha256_hex(canonical::to_string_ascii(result).as_bytes())
}

/// The fields a CIP worker receipt signature covers (§8.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt<'a> {
    /// The completed task.
    pub task_id: &'a str,
    /// Tokens used.
    pub tokens_used: u64,
    /// 32 random hex digits, single use.
    pub nonce: &'a str,
    /// [`response_hash`] of the result.
    pub response_hash: &'a str,
    /// The caller's node id, when known (appended as a sixth field).
    pub querying_node_id: Option<&'a str>,
}

impl Receipt<'_> {
    /// `"{task_id}:{tokens_used}:::{nonce}:{response_hash}[:{querying_node_id}]"` — the
    /// parent-task and session fields are empty.
    pub fn message(&self) -> String {
        let mut m = format!(
            "{}:{}:::{}:{}",
            self.task_id, self.tokens_used, self.nonce, self.response_hash
        );
        if let Some(q) = self.querying_node_id.filter(|q| !q.is_empty()) {
            m.push(':');
            m.push_str(q);
        }
        m
    }

    /// The receipt `signature`: lowercase hex HMAC-SHA256 of [`Receipt::message`].
    pub fn sign(&self, node_hmac_key: &str) -> String {
        hmac_sha256_hex(node_hmac_key.as_bytes(), self.message().as_bytes())
    }

    /// Directory side: constant-time check of a receipt `signature`.
    pub fn verify(&self, node_hmac_key: &str, signature_hex: &str) -> bool {
        verify_hmac_sha256_hex(
            node_hmac_key.as_bytes(),
            self.message().as_bytes(),
            signature_hex,
        )
    }
}

/// Constant-time equality of two credentials (node tokens, bearer tokens). Only the
/// length can leak through timing.
pub fn tokens_equal(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc4231_case_2() {
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// Expected values computed independently with Python 3:
    /// `hmac.new(b"k3y-hex-0123", b"28e9068de4f7470e82617b5d05d78148", hashlib.sha256).hexdigest()`.
    #[test]
    fn challenge_response_kat() {
        let r = challenge_response("k3y-hex-0123", "28e9068de4f7470e82617b5d05d78148");
        assert_eq!(
            r,
            "beb3baa89827b0b2340e24eb2a35bae2e391d8310f28855b07efe3aa173ece16"
        );
        assert!(verify_challenge_response(
            "k3y-hex-0123",
            "28e9068de4f7470e82617b5d05d78148",
            &r
        ));
        assert!(verify_challenge_response(
            "k3y-hex-0123",
            "28e9068de4f7470e82617b5d05d78148",
            &r.to_uppercase()
        ));
        assert!(!verify_challenge_response(
            "k3y-hex-0124",
            "28e9068de4f7470e82617b5d05d78148",
            &r
        ));
        assert!(!verify_challenge_response(
            "k3y-hex-0123",
            "28e9068de4f7470e82617b5d05d78149",
            &r
        ));
        assert!(!verify_challenge_response(
            "k3y-hex-0123",
            "28e9068de4f7470e82617b5d05d78148",
            &r[..62]
        ));
        assert!(!verify_challenge_response("k3y-hex-0123", "x", "zz"));
        assert!(!verify_challenge_response(
            "k3y-hex-0123",
            "x",
            &"é".repeat(32)
        ));
    }

    /// Expected values computed independently with Python 3, mirroring §8.11:
    /// `rh = sha256(json.dumps(result, sort_keys=True, separators=(",", ":")).encode()).hexdigest()`,
    /// `hmac.new(b"k3y", f"t-1:42:::{'ab'*16}:{rh}".encode(), sha256).hexdigest()` (and with
    /// `:caller-1` appended).
    #[test]
    fn receipt_kat() {
        let result = json!({"text": "Grüße", "usage": {"total_tokens": 42, "prompt_tokens": 2}});
        let rh = response_hash(&result);
        assert_eq!(
            rh,
            "2728d0ab48b0624c104d680630495e41bf82b46c056692c0ea3c891fbaed1293"
        );
        let nonce = "ab".repeat(16);
        let mut r = Receipt {
            task_id: "t-1",
            tokens_used: 42,
            nonce: &nonce,
            response_hash: &rh,
            querying_node_id: None,
        };
        assert_eq!(r.message(), format!("t-1:42:::{nonce}:{rh}"));
        let sig = r.sign("k3y");
        assert_eq!(
            sig,
            "55dc6aca3ecfd0afdf6fbc478c7fac4cb94e02f26b02fab16666f65968315767"
        );
        assert!(r.verify("k3y", &sig));
        assert!(!r.verify("k3z", &sig));
        r.querying_node_id = Some("caller-1");
        assert_eq!(
            r.sign("k3y"),
            "01efb0f974eebb6c35d525a8cf70482cf4fad13a24005c39d4cc3df90029f182"
        );
        assert!(!r.verify("k3y", &sig));
        for tamper in [
            Receipt {
                task_id: "t-2",
                ..r
            },
            Receipt {
                tokens_used: 43,
                ..r
            },
            Receipt { nonce: "cd", ..r },
            Receipt {
                response_hash: "00",
                ..r
            },
            Receipt {
                querying_node_id: Some("caller-2"),
                ..r
            },
        ] {
            assert!(!tamper.verify("k3y", &r.sign("k3y")));
        }
    }

    #[test]
    fn constant_time_token_equality() {
        assert!(tokens_equal("abc", "abc"));
        assert!(!tokens_equal("abc", "abd"));
        assert!(!tokens_equal("abc", "abcd"));
        assert!(tokens_equal("", ""));
    }
}
