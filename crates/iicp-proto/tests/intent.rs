//! Intent URN validator (PROTOCOL.md §2.2, §19 T1) and the prohibited-intent guardrail.

// Tests may unwrap (DESIGN §3); the workspace lint targets library code.
#![allow(clippy::unwrap_used)]

use iicp_proto::error::ErrorCode;
use iicp_proto::intent::{
    check_intent_policy, Intent, IntentError, RiskCategory, RiskTaxonomy, MAX_LEN,
};
use iicp_proto::task::TaskRequest;
use proptest::prelude::*;
use serde_json::Value;

fn data(name: &str) -> String {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

#[test]
fn every_registry_intent_parses() {
    let doc: Value = serde_json::from_str(&data("intents.json")).unwrap();
    let intents = doc["intents"].as_array().unwrap();
    assert!(intents.len() >= 17);
    for entry in intents {
        let urn = entry["urn"].as_str().unwrap();
        let intent: Intent = urn.parse().unwrap_or_else(|e| panic!("{urn}: {e}"));
        assert_eq!(intent.as_str(), urn);
        assert_eq!(intent.to_string(), urn);
        assert_eq!(intent.version(), 1);
        assert!(!intent.is_custom());
    }
}

#[test]
fn legacy_and_slash_registry_urns() {
    let t: Intent = "urn:iicp:intent:translate:v1".parse().unwrap();
    assert_eq!(t.domain(), "translate");
    assert_eq!(t.action(), None);
    let m: Intent = "urn:iicp:intent:mcp:tools/call:v1".parse().unwrap();
    assert_eq!(m.domain(), "mcp");
    assert_eq!(m.action(), Some("tools/call"));
}

#[test]
fn custom_intent_accessors() {
    let i: Intent = "urn:iicp:intent:x.acme:invoice-classify:v12"
        .parse()
        .unwrap();
    assert!(i.is_custom());
    assert_eq!(i.domain(), "x.acme");
    assert_eq!(i.vendor(), Some("acme"));
    assert_eq!(i.action(), Some("invoice-classify"));
    assert_eq!(i.version(), 12);
    let deep: Intent = "urn:iicp:intent:x.exp.sub:a:b_c:v3".parse().unwrap();
    assert_eq!(deep.vendor(), Some("exp.sub"));
    assert_eq!(deep.action(), Some("a:b_c"));
}

#[test]
fn table_of_good_urns() {
    let good = [
        "urn:iicp:intent:llm:chat:v1",
        "urn:iicp:intent:llm:completion:v1",
        "urn:iicp:intent:llm:embedding:v1",
        "urn:iicp:intent:code:lint:v1",
        "urn:iicp:intent:translate:v1",
        "urn:iicp:intent:classify:v1",
        "urn:iicp:intent:mcp:tools/call:v1",
        "urn:iicp:intent:x.acme:invoice-classify:v1",
        "urn:iicp:intent:x.exp:multimodal-audio:v1",
        "urn:iicp:intent:x.a.b-c_d:x:v9",
        "urn:iicp:intent:x:v1",
        "urn:iicp:intent:a_b-c:d_e-f:v0",
        "urn:iicp:intent:llm:chat:v4294967295",
        "urn:iicp:intent:llm:chat:extra:v2",
        "urn:iicp:intent:9:9:v9",
        "urn:iicp:intent:x.acme:v1",
        "urn:iicp:intent:audio:transcribe:v10",
    ];
    for urn in good {
        let i = Intent::new(urn).unwrap_or_else(|e| panic!("{urn} should pass: {e}"));
        assert_eq!(i.as_str(), urn);
        assert!(Intent::check(urn).is_ok());
    }
}

#[test]
fn table_of_bad_urns() {
    use IntentError as E;
    let too_long = format!("urn:iicp:intent:llm:{}:v1", "a".repeat(MAX_LEN));
    type Check = fn(&IntentError) -> bool;
    let bad: Vec<(&str, Check)> = vec![
        ("", |e| *e == E::Empty),
        ("urn:openai:gpt4", |e| matches!(e, E::MissingPrefix { .. })),
        ("iicp:intent:llm:chat:v1", |e| {
            matches!(e, E::MissingPrefix { .. })
        }),
        ("urn:iicp:intent:", |e| {
            matches!(e, E::EmptySegment { index: 0 })
        }),
        ("urn:iicp:intent:LLM:chat:v1", |e| {
            matches!(e, E::Uppercase { .. })
        }),
        ("URN:IICP:INTENT:llm:chat:v1", |e| {
            matches!(e, E::Uppercase { .. })
        }),
        ("urn:iicp:intent:llm:Chat:v1", |e| {
            matches!(e, E::Uppercase { .. })
        }),
        ("urn:iicp:intent:llm:chat:V1", |e| {
            matches!(e, E::Uppercase { .. })
        }),
        ("urn:iicp:intent:llm:chat:v1+fast", |e| *e == E::Modifier),
        ("urn:iicp:intent:llm:chat+attested:v1", |e| {
            *e == E::Modifier
        }),
        ("urn:iicp:intent:llm::chat:v1", |e| {
            matches!(e, E::EmptySegment { index: 1 })
        }),
        ("urn:iicp:intent::chat:v1", |e| {
            matches!(e, E::EmptySegment { index: 0 })
        }),
        ("urn:iicp:intent:llm:chat:", |e| {
            matches!(e, E::EmptySegment { .. })
        }),
        ("urn:iicp:intent:llm:chat", |e| *e == E::MissingVersion),
        ("urn:iicp:intent:llm:chat:v", |e| *e == E::MissingVersion),
        ("urn:iicp:intent:llm:chat:1", |e| *e == E::MissingVersion),
        ("urn:iicp:intent:llm:chat:vx", |e| *e == E::MissingVersion),
        ("urn:iicp:intent:llm:chat:v1.0", |e| *e == E::MissingVersion),
        ("urn:iicp:intent:llm", |e| *e == E::MissingVersion),
        ("urn:iicp:intent:v1", |e| *e == E::MissingVersion),
        ("urn:iicp:intent:llm:chat:v99999999999", |e| {
            *e == E::VersionOutOfRange
        }),
        (" urn:iicp:intent:llm:chat:v1", |e| {
            matches!(e, E::Whitespace { position: 0 })
        }),
        ("urn:iicp:intent:llm:chat:v1\n", |e| {
            matches!(e, E::Whitespace { .. })
        }),
        ("urn:iicp:intent:llm :chat:v1", |e| {
            matches!(e, E::Whitespace { .. })
        }),
        ("urn:iicp:intent:x.:chat:v1", |e| *e == E::EmptyVendor),
        ("urn:iicp:intent:x.ac/me:chat:v1", |e| {
            matches!(e, E::InvalidChar { index: 0, ch: '/' })
        }),
        ("urn:iicp:intent:l.m:chat:v1", |e| {
            matches!(e, E::InvalidChar { index: 0, ch: '.' })
        }),
        ("urn:iicp:intent:ll/m:chat:v1", |e| {
            matches!(e, E::InvalidChar { index: 0, ch: '/' })
        }),
        ("urn:iicp:intent:llm:ch.at:v1", |e| {
            matches!(e, E::InvalidChar { index: 1, ch: '.' })
        }),
        ("urn:iicp:intent:llm:chät:v1", |e| {
            matches!(e, E::InvalidChar { index: 1, .. })
        }),
        ("urn:iicp:intent:llm:ch@t:v1", |e| {
            matches!(e, E::InvalidChar { index: 1, ch: '@' })
        }),
        (too_long.as_str(), |e| matches!(e, E::TooLong { .. })),
    ];
    assert!(bad.len() >= 30);
    for (urn, expected) in bad {
        let err = Intent::new(urn).expect_err(urn);
        assert!(expected(&err), "{urn:?}: unexpected error {err:?}");
        // Messages never echo more than a short quote of the input.
        assert!(err.to_string().len() < 160, "{urn:?}: {err}");
    }
}

#[test]
fn missing_prefix_error_truncates_the_quote() {
    let huge = "x".repeat(200);
    let err = Intent::new(huge.as_str()).unwrap_err();
    let text = err.to_string();
    assert!(text.len() < 120, "{text}");
    assert!(text.contains('…'));
}

#[test]
fn serde_validates() {
    let ok: Intent = serde_json::from_str("\"urn:iicp:intent:llm:chat:v1\"").unwrap();
    assert_eq!(
        serde_json::to_string(&ok).unwrap(),
        "\"urn:iicp:intent:llm:chat:v1\""
    );
    assert!(serde_json::from_str::<Intent>("\"urn:iicp:intent:LLM:chat:v1\"").is_err());
    assert!(serde_json::from_str::<Intent>("42").is_err());
    let from_string = Intent::try_from("urn:iicp:intent:llm:chat:v1".to_owned()).unwrap();
    assert_eq!(from_string, ok);
    assert_eq!(String::from(ok), "urn:iicp:intent:llm:chat:v1");
}

#[test]
fn task_samples() {
    for name in ["task-valid.json", "task-batch.json"] {
        let req: TaskRequest = serde_json::from_str(&data(name)).unwrap();
        let intent = req.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(intent.as_str(), req.intent);
    }
    let invalid: TaskRequest = serde_json::from_str(&data("task-invalid-intent.json")).unwrap();
    let err = invalid.validate().unwrap_err();
    assert!(
        matches!(
            err,
            iicp_proto::task::TaskRequestError::Intent(IntentError::MissingPrefix { .. })
        ),
        "{err:?}"
    );
    // Missing `auth` is not the node's parse concern (T2): it parses and validates; the
    // auth mode decides.
    let no_auth: TaskRequest =
        serde_json::from_str(&data("task-invalid-missing-auth.json")).unwrap();
    assert!(no_auth.validate().is_ok());
    assert!(no_auth.auth.is_none());
}

#[test]
fn guardrail_refuses_prohibited_and_high_risk() {
    for urn in [
        "urn:iicp:intent:credit:decision:v1",
        "urn:iicp:intent:x.acme:social-scoring:v1",
        "urn:iicp:intent:employment:hiring:v1",
        "  URN:IICP:INTENT:LAW-ENFORCEMENT:X:V1  ",
        "urn:iicp:intent:drone:control:v2",
        "urn:iicp:intent:x.bad:csam:v1",
    ] {
        let refusal = check_intent_policy(urn).expect_err(urn);
        assert_eq!(refusal.code(), ErrorCode::PolicyRefused);
        assert_eq!(refusal.code().as_str(), "IICP-POLICY-001");
        assert!(refusal.category.is_refused());
        let text = refusal.to_string();
        assert!(
            !text.contains("urn:"),
            "refusal must not echo the URN: {text}"
        );
    }
    let r = check_intent_policy("urn:iicp:intent:credit:decision:v1").unwrap_err();
    assert_eq!(r.rule_id, "eu-ai-act-credit-essential-services");
    assert_eq!(r.category, RiskCategory::HighRisk);
    let p = check_intent_policy("urn:iicp:intent:x.acme:social-scoring:v1").unwrap_err();
    assert_eq!(p.category, RiskCategory::Prohibited);
}

#[test]
fn guardrail_allows_general_and_transparency_intents() {
    for urn in [
        "urn:iicp:intent:llm:chat:v1",
        "urn:iicp:intent:translate:v1",
        "urn:iicp:intent:x.acme:chatbot:v1",
        "urn:iicp:intent:creative:generate:v1",
        "urn:iicp:intent:mcp:tools/call:v1",
    ] {
        assert!(check_intent_policy(urn).is_ok(), "{urn}");
    }
    let doc: Value = serde_json::from_str(&data("intents.json")).unwrap();
    for entry in doc["intents"].as_array().unwrap() {
        let urn = entry["urn"].as_str().unwrap();
        assert!(
            check_intent_policy(urn).is_ok(),
            "registry intent refused: {urn}"
        );
    }
}

#[test]
fn builtin_taxonomy_has_the_fixture_categories() {
    let builtin = RiskTaxonomy::builtin().expect("embedded taxonomy parses");
    assert!(builtin.rules.len() >= 10);
    assert!(builtin
        .rules
        .iter()
        .any(|r| r.category == RiskCategory::TransparencyRisk));
}

fn valid_urn() -> impl Strategy<Value = String> {
    let domain = prop_oneof!["[a-z0-9_-]{1,12}", "x\\.[a-z0-9_.-]{1,12}".prop_map(|s| s),];
    let segs = prop::collection::vec("[a-z0-9_/-]{1,10}", 0..4);
    (domain, segs, 0u32..100_000).prop_map(|(d, segs, v)| {
        let mut urn = format!("urn:iicp:intent:{d}");
        for s in segs {
            urn.push(':');
            urn.push_str(&s);
        }
        urn.push_str(&format!(":v{v}"));
        urn
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn display_parse_identity(urn in valid_urn()) {
        let intent: Intent = urn.parse().unwrap();
        prop_assert_eq!(intent.to_string(), urn.clone());
        let again: Intent = intent.to_string().parse().unwrap();
        prop_assert_eq!(&again, &intent);
        prop_assert!(intent.domain().len() <= urn.len());
        let json = serde_json::to_string(&intent).unwrap();
        let back: Intent = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, intent);
    }

    #[test]
    fn parse_never_panics(s in "\\PC{0,80}") {
        let _ = Intent::new(s.as_str());
        let _ = check_intent_policy(&s);
    }

    #[test]
    fn parse_never_panics_near_valid(prefix in valid_urn(), junk in "[A-Z+ :./x]{0,6}", at in 0usize..80) {
        let mut s = prefix;
        let at = at.min(s.len());
        s.insert_str(at, &junk);
        if let Ok(i) = Intent::new(s.as_str()) {
            prop_assert_eq!(i.as_str(), s.as_str());
        }
    }
}

/// Every character at the front of the URN and in its middle, ASCII and not: whitespace
/// and controls are `Whitespace`, uppercase letters `Uppercase`, at their byte offset,
/// before any other check; the ASCII ones are checked byte by byte, the others by
/// character, and both follow the same rule.
#[test]
fn whitespace_control_and_uppercase_at_any_position() {
    let valid = "urn:iicp:intent:llm:chat:v1";
    let others = [
        'é', 'Ä', '\u{85}', '\u{a0}', '\u{2028}', 'Σ', '東', '\u{7f}',
    ];
    for c in (0u8..0x80).map(char::from).chain(others) {
        for at in [0, 9, valid.len()] {
            let mut urn = valid.to_owned();
            urn.insert(at, c);
            let want = if c.is_whitespace() || c.is_control() {
                Some(IntentError::Whitespace { position: at })
            } else if c.is_uppercase() {
                Some(IntentError::Uppercase { position: at })
            } else {
                None
            };
            let got = Intent::new(urn.as_str()).err();
            match want {
                Some(e) => assert_eq!(got, Some(e), "{c:?} at {at}"),
                None => assert!(
                    !matches!(
                        got,
                        Some(IntentError::Whitespace { .. } | IntentError::Uppercase { .. })
                    ),
                    "{c:?} at {at}: {got:?}"
                ),
            }
        }
    }
}
