//! Dispatch route ticket verification against the spec fixture
//! `dispatch-route-ticket-v1.json` (PROTOCOL.md §8.5, §17.5) and against a real ticket
//! captured from a directory (interop capture `http-inmem-dir-cx`).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use iicp_proto::crypto::token::{
    directory_origin, verify_dispatch_ticket, DirectoryPublicKey, DispatchTicketCheck, TokenError,
    DISPATCH_TICKET_DOMAIN,
};
use serde_json::Value;

fn load(path: &str) -> Value {
    let text = std::fs::read_to_string(format!("{}/tests/data/{path}", env!("CARGO_MANIFEST_DIR")))
        .expect("test data present");
    serde_json::from_str(&text).expect("valid JSON")
}

/// Every `validation_vectors` case of the fixture, with the fixture's token aliases:
/// `valid` / `wrong_audience` name the fixture's tokens, `valid+0` is the valid token
/// with a `0` appended (a 129-digit signature), anything else is the literal token.
#[test]
fn crypto_dispatch_fixture_every_case() {
    let fx = load("dispatch-route-ticket-v1.json");
    assert_eq!(fx["domain"], DISPATCH_TICKET_DOMAIN);
    let key = DirectoryPublicKey::from_hex(fx["public_key_hex"].as_str().unwrap()).unwrap();
    let valid = fx["valid"]["token"].as_str().unwrap();
    let wrong_audience = fx["wrong_audience"]["token"].as_str().unwrap();

    let vectors = fx["validation_vectors"].as_array().unwrap();
    let invalid_cases: Vec<&str> = fx["invalid_cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // The fixture lists 7 invalid cases plus the valid one.
    assert_eq!(vectors.len(), invalid_cases.len() + 1);

    let mut seen = Vec::new();
    for case in vectors {
        let name = case["name"].as_str().unwrap();
        let token = match case["token"].as_str().unwrap() {
            "valid" => valid.to_owned(),
            "wrong_audience" => wrong_audience.to_owned(),
            "valid+0" => format!("{valid}0"),
            literal => literal.to_owned(),
        };
        let check = DispatchTicketCheck {
            issuer: case["issuer"].as_str().unwrap(),
            node_id: case["node_id"].as_str().unwrap(),
            intent: case["intent"].as_str().unwrap(),
            policy_manifest_sha256: None,
        };
        let now = case["now_s"].as_u64().unwrap();
        let got = verify_dispatch_ticket(&key, &token, &check, now);
        let want_valid = case["expected"] == "valid";
        assert_eq!(got.is_ok(), want_valid, "case {name}: {got:?}");
        // The specific reason, so a case cannot pass for the wrong cause.
        let want_err = match name {
            "valid" => None,
            "malformed_token" => Some(TokenError::Malformed),
            "bad_signature" => Some(TokenError::Malformed), // 129 hex digits
            "expired" => Some(TokenError::Expired),
            "wrong_issuer" => Some(TokenError::WrongIssuer),
            "wrong_audience" => Some(TokenError::WrongAudience),
            "wrong_node" => Some(TokenError::WrongNode),
            "wrong_intent" => Some(TokenError::WrongIntent),
            other => panic!("unknown fixture case {other}"),
        };
        if let Some(err) = want_err {
            assert_eq!(got.unwrap_err(), err, "case {name}");
            assert!(invalid_cases.contains(&name), "{name} listed as invalid");
        } else {
            let claims = got.unwrap();
            let expected: Value = fx["valid"]["claims"].clone();
            assert_eq!(serde_json::to_value(&claims).unwrap(), expected);
        }
        seen.push(name.to_owned());
    }
    assert_eq!(seen.len(), 8);
}

/// The same fixture token with a flipped signature digit (a well-formed but wrong
/// signature) and with a tampered payload.
#[test]
fn crypto_dispatch_fixture_tampering() {
    let fx = load("dispatch-route-ticket-v1.json");
    let key = DirectoryPublicKey::from_hex(fx["public_key_hex"].as_str().unwrap()).unwrap();
    let valid = fx["valid"]["token"].as_str().unwrap();
    let check = DispatchTicketCheck {
        issuer: "https://directory.example.test",
        node_id: "node-00000001",
        intent: "urn:iicp:intent:llm:chat:v1",
        policy_manifest_sha256: None,
    };
    let mut bad_sig = valid.to_owned();
    let last = bad_sig.pop().unwrap();
    bad_sig.push(if last == '0' { '1' } else { '0' });
    assert_eq!(
        verify_dispatch_ticket(&key, &bad_sig, &check, 1_800_000_000),
        Err(TokenError::BadSignature)
    );
    let bad_payload = format!("eyJ2IjoyLC{}", &valid[10..]);
    assert_eq!(
        verify_dispatch_ticket(&key, &bad_payload, &check, 1_800_000_000),
        Err(TokenError::BadSignature)
    );
    // The fixture's wrong-audience token is genuinely signed by the same key.
    let wrong_audience = fx["wrong_audience"]["token"].as_str().unwrap();
    assert_eq!(
        verify_dispatch_ticket(&key, wrong_audience, &check, 1_800_000_000),
        Err(TokenError::WrongAudience)
    );
}

fn capture_body(set: &str, endpoint: &str, index: usize, field: &str) -> Value {
    let exchanges = load(&format!("captures/{set}/{endpoint}.json"));
    let text = exchanges[index][field]
        .as_str()
        .expect("body text")
        .to_owned();
    serde_json::from_str(&text).expect("body is JSON")
}

/// A real ticket issued by the Rust reference directory during the interop run, checked
/// with the directory key it published, at the time it was issued.
#[test]
fn crypto_real_captured_dispatch_ticket_verifies() {
    let key_body = capture_body("http-inmem-dir-cx", "directory-key", 0, "response_body");
    assert_eq!(key_body["algorithm"], "ed25519");
    let key = DirectoryPublicKey::from_hex(key_body["public_key"].as_str().unwrap()).unwrap();

    let resp = capture_body("http-inmem-dir-cx", "dispatch-ticket", 0, "response_body");
    let ticket = resp["ticket"].as_str().unwrap();
    let node_id = resp["node_id"].as_str().unwrap();
    let intent = resp["intent"].as_str().unwrap();
    let expires_at = resp["expires_at"].as_u64().unwrap();
    assert_eq!(resp["route"]["node_id"], node_id);

    // That directory was configured with the public origin `https://iicp.network`.
    let issuer = directory_origin("https://iicp.network/api");
    let check = DispatchTicketCheck {
        issuer,
        node_id,
        intent,
        policy_manifest_sha256: None,
    };
    let issued_at = expires_at - 120;
    let claims = verify_dispatch_ticket(&key, ticket, &check, issued_at).unwrap();
    assert_eq!(claims.iat, issued_at);
    assert_eq!(claims.exp, expires_at);
    assert!(resp["ticket_id_prefix"]
        .as_str()
        .unwrap()
        .starts_with(&claims.jti[..12]));
    assert!(verify_dispatch_ticket(&key, ticket, &check, expires_at - 1).is_ok());
    assert_eq!(
        verify_dispatch_ticket(&key, ticket, &check, expires_at),
        Err(TokenError::Expired)
    );
    let other_issuer = DispatchTicketCheck {
        issuer: "http://127.0.0.1:8091",
        ..check
    };
    assert_eq!(
        verify_dispatch_ticket(&key, ticket, &other_issuer, issued_at),
        Err(TokenError::WrongIssuer)
    );
}
