//! IICP-CX round trips against fake nodes that open the envelope with
//! `crypto::cx::open_call` and encrypt their response (PROTOCOL.md §16).

use std::sync::Arc;

use iicp_client::{Encryption, ErrorCode};
use iicp_proto::crypto::cx::CxKeyPair;
use iicp_testkit::fake::*;
use iicp_testkit::time::*;
use rand_core::OsRng;
use serde_json::json;

#[tokio::test]
async fn encrypted_request_and_encrypted_response() {
    let key = CxKeyPair::generate(&mut OsRng);
    let node = fake_node(&node_id(1), Some(key.clone()), vec![]).await;
    let dir = fake_directory(vec![node.entry()], Tickets::Off).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let done = client.submit(chat_task()).await.expect("submit");
    assert!(done.encrypted);
    assert_eq!(
        done.result()["choices"][0]["message"]["content"],
        format!("hello from {}", node_id(1))
    );
    let body = node.calls()[0].json();
    assert!(body.get("payload").is_none());
    assert_eq!(body["iicp_conf"]["version"], 1);
    assert_eq!(body["iicp_conf"]["recipient_key_id"], key.key_id());
    assert_eq!(body["cx_response_encryption"], "required");
    // the node decrypted exactly what we sent; nothing in clear on the wire
    assert_eq!(
        node.payloads()[0]["messages"][0]["content"],
        "PAYLOAD-MARKER-7f3a"
    );
    assert!(!node.server.raw().contains("PAYLOAD-MARKER"));
}

#[tokio::test]
async fn encrypted_request_with_plaintext_response_when_the_key_has_no_feature() {
    let key = CxKeyPair::generate(&mut OsRng);
    let node = fake_node(&node_id(1), Some(key.clone()), vec![]).await;
    let mut entry = node.entry();
    entry["cx_public_key"]["features"] = json!([]);
    let dir = fake_directory(vec![entry], Tickets::Off).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let done = client.submit(chat_task()).await.expect("submit");
    assert!(done.encrypted);
    let body = node.calls()[0].json();
    assert!(body.get("cx_response_encryption").is_none());
    assert!(body.get("iicp_conf").is_some());
}

#[tokio::test]
async fn plaintext_reply_is_refused_when_encryption_was_required() {
    let a = fake_node(
        &node_id(1),
        Some(CxKeyPair::generate(&mut OsRng)),
        vec![Reply::PlainAlways],
    )
    .await;
    let b = fake_node(&node_id(2), Some(CxKeyPair::generate(&mut OsRng)), vec![]).await;
    let dir = fake_directory(vec![a.entry(), b.entry()], Tickets::Off).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let err = client
        .submit(chat_task())
        .await
        .expect_err("plaintext refused");
    assert_eq!(err.code().as_str(), "IICP-CX-RESP-REQUIRED");
    assert_eq!(b.count(), 0, "no silent re-execution elsewhere");
}

#[tokio::test]
async fn cx_errors_never_downgrade_to_plaintext() {
    // The node advertises a key it does not hold: it answers IICP-CX-02.
    let advertised = CxKeyPair::generate(&mut OsRng);
    let node = fake_node(&node_id(1), Some(CxKeyPair::generate(&mut OsRng)), vec![]).await;
    let entry = node_entry(&node_id(1), &node.url(), Some(&advertised), &[]);
    let keyless = fake_node(&node_id(2), None, vec![]).await;
    let dir = fake_directory(vec![entry, keyless.entry()], Tickets::Off).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .encryption(Encryption::AllowPlaintext)
        .build()
        .expect("client");
    let err = client.submit(chat_task()).await.expect_err("cx failure");
    assert_eq!(err.status_code(), Some(400));
    assert!(matches!(
        err.code(),
        ErrorCode::Cx02 | ErrorCode::Cx01 | ErrorCode::Unknown(_)
    ));
    assert_eq!(node.count(), 1);
    assert!(node.calls()[0].json().get("payload").is_none());
    assert_eq!(keyless.count(), 0, "no plaintext retry after a CX error");
    assert!(!node.server.raw().contains("PAYLOAD-MARKER"));
}

#[tokio::test]
async fn malformed_keys_make_a_node_ineligible() {
    let node = fake_node(&node_id(1), Some(CxKeyPair::generate(&mut OsRng)), vec![]).await;
    let mut entry = node.entry();
    entry["cx_public_key"]["key"] = json!("not-base64url-32-bytes");
    let dir = fake_directory(vec![entry], Tickets::Off).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .encryption(Encryption::AllowPlaintext)
        .build()
        .expect("client");
    let err = client.submit(chat_task()).await.expect_err("bad key");
    assert_eq!(err.code(), &ErrorCode::NoNodesAvailable);
    assert_eq!(node.count(), 0);
}
