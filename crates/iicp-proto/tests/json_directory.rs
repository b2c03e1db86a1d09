//! Directory bodies (PROTOCOL.md §8.2–§8.6, §8.10, §12, §16.1, §19 T9/T19/T20), checked
//! against every vendored capture of those endpoints and `fixtures/nodelist.json`.

// Tests may unwrap (DESIGN §3); the workspace lint targets library code.
#![allow(clippy::unwrap_used)]

use iicp_proto::directory::{
    Capability, ConsumerTokenRequest, ConsumerTokenResponse, DeregisterRequest, DeregisterResponse,
    DirectoryKey, DirectoryKeyError, DiscoverQuery, DiscoverQueryError, DiscoverView,
    DispatchTicketError, DispatchTicketRequest, DispatchTicketResponse, HeartbeatError,
    HeartbeatRequest, HeartbeatResponse, Limits, NodeList, RegisterAck, RegisterError,
    RegisterRequest,
};
use iicp_proto::error::{ErrorBody, ErrorCode};
use iicp_proto::intent::Intent;
use iicp_proto::task::Qos;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

fn data(name: &str) -> String {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// All exchanges of `endpoint` from both capture sets.
fn exchanges(endpoint: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for dir in ["http-inmem-dir-cx", "http-mariadb-dir"] {
        let v: Vec<Value> =
            serde_json::from_str(&data(&format!("captures/{dir}/{endpoint}.json"))).unwrap();
        out.extend(v);
    }
    assert!(!out.is_empty(), "no captures for {endpoint}");
    out
}

fn parse<T: DeserializeOwned>(src: &str, body: &str) -> T {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{src}: {e}"))
}

/// Drops null members recursively (we omit unset optionals on output).
fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

#[test]
fn register_requests_and_acks() {
    let mut acks = 0;
    for ex in exchanges("register") {
        let src = ex["source"].as_str().unwrap();
        let body = ex["request_body"].as_str().unwrap();
        let req: RegisterRequest = parse(src, body);
        req.validate().unwrap_or_else(|e| panic!("{src}: {e}"));
        assert_eq!(req.capabilities[0].intent, "urn:iicp:intent:llm:chat:v1");
        assert!(req.limits.max_concurrent >= 1);
        assert!(req.limits.tokens_per_min > 0);
        // Nothing is lost: re-serialising gives the body minus its typed nulls (unknown
        // members, nulls included, are kept verbatim in `extra`).
        let raw: Value = serde_json::from_str(body).unwrap();
        let again = serde_json::to_value(&req).unwrap();
        assert_eq!(strip_nulls(&again), strip_nulls(&raw), "{src}");
        if raw.get("sdk_update_last_attempted_version").is_some() {
            assert!(
                again.get("sdk_update_last_attempted_version").is_some(),
                "{src}"
            );
        }
        if let Some(key) = &req.cx_public_key {
            assert_eq!(key.algorithm, "X25519");
            assert!(key.key_id.starts_with("cx-"));
            assert!(key.supports_response_encryption());
        }
        if let Some(tok) = &req.current_node_token {
            assert!(!format!("{req:?}").contains(tok.expose()));
        }

        let status = ex["status"].as_u64().unwrap() as u16;
        let resp = ex["response_body"].as_str().unwrap();
        if status == 201 {
            acks += 1;
            let ack: RegisterAck = parse(src, resp);
            assert!(!ack.node_id.is_empty());
            let token = ack.node_token.as_ref().expect("node_token");
            let hmac = ack.node_hmac_key.as_ref().expect("node_hmac_key");
            let proxy = ack.proxy_token.as_ref().expect("proxy_token");
            assert_eq!(ack.directory.as_deref(), Some("iicp-directory-rs"));
            assert_eq!(ack.observed_source_ip.as_deref(), Some("unknown"));
            assert!(ack.expires_at.is_none());
            assert!(ack.jwt_expires_at.is_some());
            let dbg = format!("{ack:?}");
            for secret in [token.expose(), hmac.expose(), proxy.expose()] {
                assert!(!dbg.contains(secret), "{src}: Debug leaks a secret: {dbg}");
            }
        } else {
            let err = ErrorBody::parse(status, resp.as_bytes());
            assert_eq!(err.code, ErrorCode::E036, "{src}");
        }
    }
    assert!(acks >= 8);
}

#[test]
fn register_ack_aliases_and_debug() {
    let ack: RegisterAck = serde_json::from_value(json!({
        "node_id": "n", "token": "tok_AAAA_secret", "jwt_token": "eyJ.jwt.secret",
        "node_hmac_key": "hmac_secret", "proxy_token": "proxy_secret",
        "expires_at": "2026-01-01T00:00:00Z", "public_reachable": true, "new_field": 1
    }))
    .unwrap();
    assert_eq!(ack.node_token.as_ref().unwrap().expose(), "tok_AAAA_secret");
    assert_eq!(ack.extra.get("new_field"), Some(&json!(1)));
    let dbg = format!("{ack:?}");
    for s in [
        "tok_AAAA_secret",
        "eyJ.jwt.secret",
        "hmac_secret",
        "proxy_secret",
    ] {
        assert!(!dbg.contains(s), "{dbg}");
    }
    // Written back with the spec spelling.
    let out = serde_json::to_value(&ack).unwrap();
    assert_eq!(out["node_token"], "tok_AAAA_secret");
    assert!(out.get("token").is_none());
    // Both spellings at once: node_token wins.
    let both: RegisterAck =
        serde_json::from_value(json!({"node_id": "n", "node_token": "a", "token": "b"})).unwrap();
    assert_eq!(both.node_token.unwrap().expose(), "a");
}

#[test]
fn register_validation() {
    let intent: Intent = "urn:iicp:intent:llm:chat:v1".parse().unwrap();
    let limits = Limits {
        max_concurrent: 4,
        tokens_per_min: 10_000,
        ..Limits::default()
    };
    let ok = RegisterRequest::new(
        "https://node.example.com",
        "eu-central",
        vec![Capability::llm(&intent, vec!["llama3".into()], 8192)],
        limits,
    );
    ok.validate().unwrap();
    assert_eq!(
        serde_json::to_value(&ok).unwrap(),
        json!({"endpoint": "https://node.example.com", "region": "eu-central",
               "capabilities": [{"intent": "urn:iicp:intent:llm:chat:v1", "models": ["llama3"], "max_tokens": 8192}],
               "limits": {"max_concurrent": 4, "tokens_per_min": 10000}})
    );
    let check = |f: &dyn Fn(&mut RegisterRequest), expected: RegisterError| {
        let mut r = ok.clone();
        f(&mut r);
        assert_eq!(r.validate().unwrap_err(), expected);
    };
    check(&|r| r.endpoint.clear(), RegisterError::MissingEndpoint);
    check(&|r| r.region = "r".repeat(65), RegisterError::RegionTooLong);
    check(&|r| r.capabilities.clear(), RegisterError::NoCapabilities);
    check(
        &|r| r.capabilities[0].models.clear(),
        RegisterError::CapabilityModels { index: 0 },
    );
    check(
        &|r| r.capabilities[0].max_tokens = None,
        RegisterError::CapabilityMaxTokens { index: 0 },
    );
    check(
        &|r| r.limits.max_concurrent = 0,
        RegisterError::MaxConcurrent,
    );
    check(
        &|r| r.limits.max_concurrent = 257,
        RegisterError::MaxConcurrent,
    );
    check(
        &|r| {
            r.sdk_version = Some("0.1.0".into());
            r.sdk_compatibility_version = Some("0.2.0".into());
        },
        RegisterError::SdkVersionConflict,
    );
    check(
        &|r| r.implementation_name = Some("-bad".into()),
        RegisterError::ImplementationName,
    );
    check(
        &|r| r.implementation_version = Some("1 0".into()),
        RegisterError::VersionGrammar {
            field: "implementation_version",
        },
    );
    let mut bad_intent = ok.clone();
    bad_intent.capabilities[0].intent = "urn:iicp:intent:LLM:chat:v1".into();
    assert!(matches!(
        bad_intent.validate().unwrap_err(),
        RegisterError::CapabilityIntent { index: 0, .. }
    ));
    let mut named = ok.clone();
    named.implementation_name = Some("@iicp/rust-sdk".into());
    named.implementation_version = Some("0.1.0+build.1".into());
    named.sdk_version = Some("0.1.0".into());
    named.sdk_compatibility_version = Some("0.1.0".into());
    named.validate().unwrap();
    assert_eq!(named.effective_sdk_version(), Some("0.1.0"));
    // Missing required members parse (lenient) but do not validate.
    let empty: RegisterRequest = serde_json::from_str("{}").unwrap();
    assert_eq!(
        empty.validate().unwrap_err(),
        RegisterError::MissingEndpoint
    );
}

#[test]
fn heartbeat_requests_and_pongs() {
    let mut with_challenge = 0;
    for ex in exchanges("heartbeat") {
        let src = ex["source"].as_str().unwrap();
        let body = ex["request_body"].as_str().unwrap();
        let hb: HeartbeatRequest = parse(src, body);
        hb.validate().unwrap_or_else(|e| panic!("{src}: {e}"));
        assert_eq!(hb.node_id.len(), 36);
        let raw: Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            strip_nulls(&serde_json::to_value(&hb).unwrap()),
            strip_nulls(&raw),
            "{src}"
        );
        if let Some(tok) = &hb.node_token {
            assert!(!format!("{hb:?}").contains(tok.expose()));
        }
        if hb.challenge_response.is_some() {
            with_challenge += 1;
        }
        if let Some(m) = &hb.metrics {
            if !m.is_empty() {
                assert!(hb.metrics_batch_id.is_some());
                assert!(m.tasks_success.is_some());
            }
        }
        let status = ex["status"].as_u64().unwrap() as u16;
        let resp = ex["response_body"].as_str().unwrap();
        if status == 200 {
            let pong: HeartbeatResponse = parse(src, resp);
            assert!(pong.ok);
            assert_eq!(pong.next_heartbeat_ms, Some(30_000));
            assert_eq!(pong.challenge.as_ref().map(String::len), Some(32));
            assert!(pong.reputation_score.is_some());
            if let Some(batch) = &hb.metrics_batch_id {
                assert_eq!(pong.metrics_batch_accepted.as_ref(), Some(batch));
            }
        } else {
            assert_eq!(
                ErrorBody::parse(status, resp.as_bytes()).code,
                ErrorCode::Unauthorized
            );
        }
    }
    assert!(with_challenge >= 3);
}

#[test]
fn heartbeat_validation() {
    let mut hb = HeartbeatRequest::new("n1");
    hb.validate().unwrap();
    hb.load = Some(1.5);
    assert_eq!(hb.validate().unwrap_err(), HeartbeatError::Load);
    hb.load = Some(0.5);
    hb.metrics = Some(serde_json::from_value(json!({"tasks_success": 1})).unwrap());
    assert_eq!(hb.validate().unwrap_err(), HeartbeatError::MissingBatchId);
    hb.metrics_batch_id = Some("x".repeat(65));
    assert_eq!(hb.validate().unwrap_err(), HeartbeatError::BatchId);
    hb.metrics_batch_id = Some("batch-1".into());
    hb.validate().unwrap();
    hb.challenge_response = Some("ABCD".into());
    assert_eq!(
        hb.validate().unwrap_err(),
        HeartbeatError::ChallengeResponse
    );
    assert_eq!(
        HeartbeatRequest::new("").validate().unwrap_err(),
        HeartbeatError::MissingNodeId
    );
    assert_eq!(
        serde_json::to_value(HeartbeatRequest::new("n")).unwrap(),
        json!({"node_id": "n"})
    );
}

#[test]
fn discover_responses() {
    let mut lists = 0;
    for ex in exchanges("discover") {
        let src = ex["source"].as_str().unwrap();
        let status = ex["status"].as_u64().unwrap() as u16;
        let body = ex["response_body"].as_str().unwrap();
        if status != 200 {
            let err = ErrorBody::parse(status, body.as_bytes());
            assert_eq!(err.code, ErrorCode::ValidationError, "{src}");
            continue;
        }
        lists += 1;
        let list: NodeList = parse(src, body);
        let raw: Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            list.nodes.len(),
            raw["nodes"].as_array().unwrap().len(),
            "{src}"
        );
        assert_eq!(list.count, Some(list.nodes.len() as u64));
        assert_eq!(list.data_class.as_deref(), Some("route_dispatch"));
        assert!(list.diversity_evidence.is_some());
        for node in &list.nodes {
            assert!(node.node_id.is_some());
            assert!(node.endpoint.as_deref().unwrap().starts_with("http://"));
            assert!(node.score.unwrap() > 0.0);
            assert!(node.is_available());
            assert!(node.serves("urn:iicp:intent:llm:chat:v1"));
            assert_eq!(node.capabilities[0].models, vec!["fake-model".to_owned()]);
            // Evidence members survive as values; unknown members land in extra.
            assert!(node.route_evidence.is_some());
            assert!(node.extra.contains_key("trust_progress"));
            assert_eq!(node.key_ready, Some(node.cx_public_key.is_some()));
            if let Some(k) = node.cx_key() {
                assert_eq!(k.algorithm, "X25519");
            }
        }
        // Serialising and re-parsing is stable.
        let again: NodeList = serde_json::from_value(serde_json::to_value(&list).unwrap()).unwrap();
        assert_eq!(again, list);
        assert_eq!(
            strip_nulls(&serde_json::to_value(&list).unwrap()),
            strip_nulls(&raw),
            "{src}"
        );
    }
    assert!(lists >= 4);
}

#[test]
fn nodelist_fixture_and_t20_leniency() {
    let schema: Value = serde_json::from_str(&data("nodelist.json")).unwrap();
    assert_eq!(schema["required"], json!(["nodes"]));
    assert_eq!(
        schema["$defs"]["NodeSummary"]["required"],
        json!(["score", "available"])
    );
    let example = schema["examples"][0].clone();
    let list: NodeList = serde_json::from_value(example.clone()).unwrap();
    assert_eq!(list.nodes.len(), 2);
    let n0 = &list.nodes[0];
    assert_eq!(n0.score, Some(0.91));
    assert_eq!(n0.available, Some(true));
    assert_eq!(n0.latency_estimate_ms, Some(120));
    assert_eq!(
        n0.capabilities[0].models,
        vec!["llama3".to_owned(), "mistral".to_owned()]
    );
    assert_eq!(
        n0.node_policy_manifest.as_ref().unwrap()["training_use"],
        "none"
    );
    assert_eq!(serde_json::to_value(&list).unwrap(), example);

    // Minimal and odd shapes: cbor-draft members, array route_evidence, retired
    // public_key alias, malformed key, a broken node entry, float ints.
    let odd: NodeList = serde_json::from_value(json!({
        "nodes": [
            {"node_id": "a", "endpoint": "https://a", "score": 0.5, "available": true,
             "route_evidence": ["directory_observed"], "active_jobs": 1.0,
             "public_key": {"algorithm": "X25519", "encoding": "base64url", "key": "k", "key_id": "cx-1"}},
            {"node_id": "b", "cx_public_key": "not-an-object", "score": "0.7"},
            "garbage",
            {"node_id": 5}
        ],
        "total": 2, "intent": "urn:iicp:intent:llm:chat:v1"
    }))
    .unwrap();
    assert_eq!(odd.nodes.len(), 2);
    assert_eq!(odd.nodes[0].active_jobs, Some(1));
    assert_eq!(odd.nodes[0].cx_key().unwrap().key_id, "cx-1");
    assert!(odd.nodes[0].cx_public_key.is_none());
    assert!(odd.nodes[1].cx_key().is_none());
    assert_eq!(odd.nodes[1].score, Some(0.7));
    assert_eq!(odd.extra.get("total"), Some(&json!(2)));
    let empty: NodeList = serde_json::from_str("{}").unwrap();
    assert!(empty.nodes.is_empty());
}

#[test]
fn discover_query_pairs() {
    let intent: Intent = "urn:iicp:intent:llm:chat:v1".parse().unwrap();
    let mut q = DiscoverQuery::new(&intent);
    q.qos = Some(Qos::BestEffort);
    q.limit = Some(10);
    q.region = Some("local-py".into());
    q.min_reputation = Some(0.5);
    q.view = Some(DiscoverView::Public);
    q.cip_capable = Some(true);
    let pairs = q.to_query_pairs();
    assert_eq!(
        pairs[0],
        ("intent", "urn:iicp:intent:llm:chat:v1".to_owned())
    );
    assert!(pairs.contains(&("qos", "best-effort".to_owned())));
    let back =
        DiscoverQuery::from_query_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str()))).unwrap();
    assert_eq!(back, q);
    assert_eq!(back.effective_limit(), 10);

    // The captured query strings (already decoded).
    let captured: Vec<(&str, &str)> = vec![
        ("limit", "10"),
        ("intent", "urn:iicp:intent:llm:chat:v1"),
        ("region", "local-py"),
    ];
    let q = DiscoverQuery::from_query_pairs(captured).unwrap();
    assert_eq!(q.limit, Some(10));
    assert_eq!(
        DiscoverQuery::from_query_pairs([("intent", "urn:iicp:intent:x.acme:thing:v1")])
            .unwrap()
            .effective_limit(),
        10
    );

    let err = |pairs: Vec<(&str, &str)>| DiscoverQuery::from_query_pairs(pairs).unwrap_err();
    assert_eq!(err(vec![]), DiscoverQueryError::MissingIntent);
    assert_eq!(err(vec![("intent", "")]), DiscoverQueryError::MissingIntent);
    assert!(matches!(
        err(vec![("intent", "urn:iicp:intent:LLM:v1")]),
        DiscoverQueryError::Intent(_)
    ));
    let ok_intent = "urn:iicp:intent:llm:chat:v1";
    for (k, v) in [
        ("min_reputation", "2.0"),
        ("min_reputation", "-0.1"),
        ("min_reputation", "NaN"),
        ("min_quality_score", "x"),
        ("limit", "0"),
        ("limit", "ten"),
        ("qos", "fast"),
        ("view", "all"),
        ("max_multiplier", "-1"),
        ("cip_capable", "maybe"),
    ] {
        assert!(
            matches!(
                err(vec![("intent", ok_intent), (k, v)]),
                DiscoverQueryError::InvalidParam { .. }
            ),
            "{k}={v}"
        );
    }
    let msg = err(vec![("intent", ok_intent), ("min_reputation", "2.0")]).to_string();
    assert!(
        msg.contains("min_reputation") && !msg.contains("2.0"),
        "{msg}"
    );
    let clamped = DiscoverQuery::from_query_pairs([
        ("intent", ok_intent),
        ("limit", "500"),
        ("qos", "best_effort"),
        ("cip_capable", "1"),
        ("unknown", "x"),
    ])
    .unwrap();
    assert_eq!(clamped.limit, Some(50));
    assert_eq!(clamped.qos, Some(Qos::BestEffort));
    assert_eq!(clamped.cip_capable, Some(true));
    // First occurrence wins.
    let first =
        DiscoverQuery::from_query_pairs([("intent", ok_intent), ("limit", "5"), ("limit", "zzz")])
            .unwrap();
    assert_eq!(first.limit, Some(5));
}

#[test]
fn dispatch_tickets() {
    let mut issued = 0;
    for ex in exchanges("dispatch-ticket") {
        let src = ex["source"].as_str().unwrap();
        let status = ex["status"].as_u64().unwrap() as u16;
        let req_body = ex["request_body"].as_str().unwrap();
        let resp = ex["response_body"].as_str().unwrap();
        let parsed: Result<DispatchTicketRequest, _> = serde_json::from_str(req_body);
        if status == 201 {
            issued += 1;
            let ticket: DispatchTicketResponse = parse(src, resp);
            assert_eq!(ticket.algorithm.as_deref(), Some("ed25519"));
            assert_eq!(ticket.prompt_payload_accepted, Some(false));
            let route = ticket.route.as_ref().unwrap();
            assert_eq!(route.node_id, ticket.node_id);
            assert!(route.endpoint.is_some());
            assert!(ticket.ticket.expose().contains('.'));
            assert!(
                !format!("{ticket:?}").contains(ticket.ticket.expose()),
                "{src}"
            );
            let raw: Value = serde_json::from_str(resp).unwrap();
            assert_eq!(
                strip_nulls(&serde_json::to_value(&ticket).unwrap()),
                strip_nulls(&raw)
            );
            // A directory accepted `"qos": "invalid"` here; the spec says 422. Our
            // strict Qos turns it into a parse error.
            if req_body.contains("\"invalid\"") {
                assert!(parsed.is_err(), "{src}");
            } else {
                let req = parsed.unwrap_or_else(|e| panic!("{src}: {e}"));
                req.validate().unwrap_or_else(|e| panic!("{src}: {e}"));
            }
        } else {
            let err = ErrorBody::parse(status, resp.as_bytes());
            let req = parsed.unwrap();
            match err.code {
                ErrorCode::ValidationError => assert_eq!(
                    req.validate().unwrap_err(),
                    DispatchTicketError::PromptMaterial { member: "prompt" }
                ),
                ErrorCode::PolicyRefused => {
                    req.validate().unwrap();
                    assert!(iicp_proto::intent::check_intent_policy(&req.intent).is_err());
                }
                other => panic!("{src}: unexpected {other}"),
            }
        }
    }
    assert!(issued >= 5);
}

#[test]
fn dispatch_ticket_validation() {
    let intent: Intent = "urn:iicp:intent:llm:chat:v1".parse().unwrap();
    let mut r = DispatchTicketRequest::new(&intent);
    r.validate().unwrap();
    assert_eq!(
        serde_json::to_value(&r).unwrap(),
        json!({"intent": "urn:iicp:intent:llm:chat:v1"})
    );
    for member in [
        "messages",
        "Payload",
        "input",
        "chat",
        "content",
        "response",
        "iicp_conf",
    ] {
        let mut with = r.clone();
        with.extra.insert(member.into(), json!("SECRET PROMPT"));
        let err = with.validate().unwrap_err();
        assert!(
            matches!(err, DispatchTicketError::PromptMaterial { .. }),
            "{member}"
        );
        assert!(!err.to_string().contains("SECRET"));
    }
    r.node_id = Some("a".into());
    r.node_id_prefix = Some("b".into());
    assert_eq!(
        r.validate().unwrap_err(),
        DispatchTicketError::NodeSelectorConflict
    );
    r.node_id_prefix = None;
    r.exclude_node_id_prefixes = vec!["x".into(); 11];
    assert_eq!(
        r.validate().unwrap_err(),
        DispatchTicketError::TooManyExclusions
    );
    r.exclude_node_id_prefixes.truncate(10);
    r.limit = Some(51);
    assert_eq!(r.validate().unwrap_err(), DispatchTicketError::Limit);
    r.limit = Some(10);
    r.min_reputation = Some(1.5);
    assert_eq!(
        r.validate().unwrap_err(),
        DispatchTicketError::MinReputation
    );
}

#[test]
fn deregister_directory_key_consumer_token() {
    for ex in exchanges("deregister") {
        let src = ex["source"].as_str().unwrap();
        let req: DeregisterRequest = parse(src, ex["request_body"].as_str().unwrap());
        assert_eq!(req.node_id.len(), 36);
        let resp: DeregisterResponse = parse(src, ex["response_body"].as_str().unwrap());
        assert!(resp.deregistered);
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            serde_json::from_str::<Value>(ex["request_body"].as_str().unwrap()).unwrap()
        );
    }
    for ex in exchanges("directory-key") {
        let src = ex["source"].as_str().unwrap();
        let key: DirectoryKey = parse(src, ex["response_body"].as_str().unwrap());
        assert_eq!(key.key_bytes().unwrap()[0], 0x30);
    }
    let bad = DirectoryKey {
        public_key: "zz".into(),
        algorithm: "ed25519".into(),
        ..DirectoryKey::default()
    };
    assert_eq!(bad.key_bytes().unwrap_err(), DirectoryKeyError::Encoding);
    let rsa = DirectoryKey {
        algorithm: "rsa".into(),
        ..bad
    };
    assert_eq!(rsa.key_bytes().unwrap_err(), DirectoryKeyError::Algorithm);

    let req = ConsumerTokenRequest {
        target_node_id: "t".into(),
        intent: "*".into(),
        ..ConsumerTokenRequest::default()
    };
    assert_eq!(
        serde_json::to_value(&req).unwrap(),
        json!({"target_node_id": "t", "intent": "*"})
    );
    let resp: ConsumerTokenResponse = serde_json::from_value(json!({
        "token": "eyJjbGFpbXMi.abcdef", "expires_at": 1780000000,
        "caller_node_id": "c", "target_node_id": "t", "intent": "*"
    }))
    .unwrap();
    assert_eq!(resp.expires_at, Some(1_780_000_000));
    assert!(!format!("{resp:?}").contains("eyJjbGFpbXMi"));
}

#[test]
fn capability_keeps_unknown_members() {
    let cap: Capability = serde_json::from_value(json!({
        "intent": "urn:iicp:intent:mcp:tools/call:v1",
        "models": ["m"], "max_tokens": 1,
        "mcp_tools": [{"name": "t"}], "mcp_version": "2026-07-28",
        "mcp_versions": ["2026-07-28"], "sandboxed": true,
        "features": ["tool_calling"], "limits": {"x": {"value": 1, "unit": "s"}},
        "extensions": {"org.example": {}}
    }))
    .unwrap();
    assert_eq!(cap.parsed_intent().unwrap().action(), Some("tools/call"));
    assert!(cap.extra.contains_key("mcp_versions"));
    assert!(cap.extra.contains_key("sandboxed"));
    assert_eq!(cap.modalities(), vec!["text".to_owned()]);
    let back: Capability = serde_json::from_value(serde_json::to_value(&cap).unwrap()).unwrap();
    assert_eq!(back, cap);
}
