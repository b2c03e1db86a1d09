//! Known-answer test of the signed node policy manifest (PROTOCOL.md §17.4) against a
//! vector made by the Python SDK (`data/policy-manifest-kat.json`, provenance in
//! `data/README.md`). Generator, run with the SDK's venv:
//!
//! ```text
//! op = OperatorIdentity(operator_id=b64(pub(seed)), created_at=..., operator_secret=b64(seed))
//! signed = load_and_sign_policy_manifest("manifest.json", op, now=datetime(2030,1,1,tzinfo=UTC))
//! canon = canonical_manifest(signed)
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use iicp_proto::crypto::manifest::{self, Status};
use iicp_proto::crypto::sign::OperatorKey;
use serde_json::{Map, Value};

const KAT: &str = include_str!("data/policy-manifest-kat.json");

fn kat() -> Value {
    serde_json::from_str(KAT).unwrap()
}

fn obj(v: &Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn key(k: &Value) -> OperatorKey {
    let seed: [u8; 32] = hex::decode(k["seed_hex"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    OperatorKey::from_seed(&seed)
}

#[test]
fn our_signature_is_byte_identical_to_the_python_sdk() {
    let k = kat();
    let now = k["now_unix"].as_u64().unwrap();
    let ours = manifest::sign(obj(&k["unsigned"]), &key(&k), now);
    assert_eq!(Value::Object(ours.clone()), k["signed"]);
    assert_eq!(
        String::from_utf8(manifest::canonical_bytes(&ours)).unwrap(),
        k["canonical_bytes"].as_str().unwrap()
    );
    assert_eq!(
        manifest::canonical_sha256(&ours),
        k["canonical_sha256"].as_str().unwrap()
    );
}

#[test]
fn the_python_sdk_signature_verifies_here() {
    let k = kat();
    let now = k["now_unix"].as_u64().unwrap();
    let signed = obj(&k["signed"]);
    let v = manifest::verify(&signed, now + 60);
    assert_eq!(v.status, Status::SignedValid, "{v:?}");
    assert_eq!(v.canonical_sha256, k["canonical_sha256"].as_str().unwrap());
    assert_eq!(v.public_key, Some(key(&k).public_key()));
    assert!(manifest::validate(&k["signed"]).is_ok());
    // one changed character anywhere is detected
    let text = KAT.replace("Rechenzentrum N\u{fc}rnberg", "Rechenzentrum Nuernberg");
    let tampered: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        manifest::verify(&obj(&tampered["signed"]), now).status,
        Status::SignedInvalid
    );
}
