//! IICP-CX types against real traffic (PROTOCOL.md §16): the reference Python and Rust
//! clients' `iicp_conf` envelopes, the nodes' `iicp_conf_resp` replies and the
//! advertised `cx_public_key` objects, from the interop capture `http-inmem-dir-cx`.
//!
//! The capture does not contain any node private key, so the envelopes cannot be
//! decrypted here; the test checks everything that can be checked without it: shape,
//! encodings and lengths, the AAD binding to the outer task, `key_id` derivation and
//! that every envelope names a key some node advertised. The byte-exact algorithm is
//! pinned by the known-answer test in `src/crypto/cx.rs`.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use iicp_proto::crypto::cx::{
    key_id_for, open_request, seal_request, CxError, CxKeyPair, IicpConf, IicpConfResp,
    NodePublicKey,
};
use iicp_proto::directory::CxPublicKey;
use serde_json::Value;

use base64::Engine as _;

fn exchanges(endpoint: &str) -> Vec<Value> {
    let path = format!(
        "{}/tests/data/captures/http-inmem-dir-cx/{endpoint}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(path).expect("capture present");
    serde_json::from_str::<Vec<Value>>(&text).expect("capture JSON")
}

fn body(exchange: &Value, field: &str) -> Value {
    serde_json::from_str(exchange[field].as_str().unwrap()).unwrap()
}

fn b64url(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .unwrap()
}

fn advertised_keys() -> Vec<NodePublicKey> {
    let mut keys = Vec::new();
    for ex in exchanges("register") {
        let req = body(&ex, "request_body");
        let adv: CxPublicKey = serde_json::from_value(req["cx_public_key"].clone()).unwrap();
        let key = NodePublicKey::from_advertisement(&adv).unwrap();
        // Both reference SDKs derive key_id as "cx-" + 16 hex of sha256(raw key).
        assert_eq!(key.key_id(), key_id_for(key.as_bytes()));
        assert!(adv.supports_response_encryption());
        keys.push(key);
    }
    keys
}

#[test]
fn crypto_cx_registered_keys_parse() {
    let keys = advertised_keys();
    assert!(keys.len() >= 2, "both reference nodes registered a key");
}

#[test]
fn crypto_cx_captured_envelopes_parse() {
    let keys = advertised_keys();
    let mut requests = 0;
    let mut responses = 0;
    for ex in exchanges("task") {
        let call = body(&ex, "request_body");
        let Some(conf_value) = call.get("iicp_conf") else {
            continue;
        };
        assert!(
            call.get("payload").is_none(),
            "an encrypted CALL carries no payload"
        );
        let conf = IicpConf::from_value(conf_value).unwrap();
        requests += 1;

        assert_eq!(conf.version, 1);
        assert!(keys.iter().any(|k| k.key_id() == conf.recipient_key_id));
        assert_eq!(b64url(&conf.kem_ciphertext).len(), 32);
        assert_eq!(b64url(&conf.nonce).len(), 12);
        assert_eq!(
            b64url(&conf.encrypted_body).len() as u64,
            conf.plaintext_size + 16
        );
        let aad = String::from_utf8(b64url(&conf.aad)).unwrap();
        let task_id = call["task_id"].as_str().unwrap();
        let intent = call["intent"].as_str().unwrap();
        assert_eq!(aad, format!("{task_id}|{intent}"));
        assert_eq!(IicpConf::from_value(&conf.to_value()).unwrap(), conf);

        // A node holding some other key refuses the envelope with a typed error.
        let stranger = CxKeyPair::from_secret_bytes(&[42; 32]);
        assert_eq!(
            open_request(&stranger, &conf).unwrap_err(),
            CxError::UnknownKeyId
        );
        let impostor = stranger.with_key_id(conf.recipient_key_id.clone());
        assert_eq!(
            open_request(&impostor, &conf).unwrap_err(),
            CxError::DecryptFailed
        );

        if call["cx_response_encryption"] == "required" && ex["status"] == 200 {
            let reply = body(&ex, "response_body");
            assert_eq!(reply["status"], "encrypted");
            assert_eq!(reply["task_id"], call["task_id"]);
            assert!(reply.get("result").is_none());
            let resp = IicpConfResp::from_value(&reply["iicp_conf_resp"]).unwrap();
            assert_eq!(resp.version, 1);
            assert_eq!(b64url(&resp.nonce).len(), 12);
            assert!(b64url(&resp.encrypted_body).len() > 16);
            responses += 1;
        }
    }
    assert!(requests >= 4, "captured {requests} encrypted CALLs");
    assert!(responses >= 4, "captured {responses} encrypted responses");
}

/// Our client envelope has exactly the member set the reference clients send.
#[test]
fn crypto_cx_envelope_member_set_matches_reference() {
    let task = exchanges("task")
        .into_iter()
        .find_map(|ex| body(&ex, "request_body").get("iicp_conf").cloned())
        .unwrap();
    let node = CxKeyPair::generate(&mut rand_core::OsRng);
    let sealed = seal_request(
        &mut rand_core::OsRng,
        &node.public_key(),
        "t",
        "urn:iicp:intent:llm:chat:v1",
        b"{}",
    )
    .unwrap();
    let ours = serde_json::to_value(&sealed.envelope).unwrap();
    let mut a: Vec<_> = task.as_object().unwrap().keys().cloned().collect();
    let mut b: Vec<_> = ours.as_object().unwrap().keys().cloned().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
}
