//! Property round trips (serialise → parse gives an equal value) for the JSON bodies of
//! PROTOCOL.md §4, §6 and §8.

// Tests may unwrap (DESIGN §3); the workspace lint targets library code.
#![allow(clippy::unwrap_used)]
// Generators fill values field by field, which reads better than giant literals.
#![allow(clippy::field_reassign_with_default)]

use iicp_proto::directory::{
    Capability, CxPublicKey, HeartbeatMetrics, HeartbeatRequest, Limits, NodeEntry, RegisterRequest,
};
use iicp_proto::error::{ErrorBody, ErrorCode};
use iicp_proto::ids::TaskId;
use iicp_proto::secret::Secret;
use iicp_proto::task::{
    Consensus, Constraints, ErrorObject, Metrics, Priority, Qos, TaskAuth, TaskRequest,
    TaskResponse, TaskStatus, TraceInfo,
};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|i| Value::from(i64::from(i))),
        "[a-zA-Z0-9 _:./-]{0,16}".prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map("[a-z]{1,6}", json_value(), 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// Unknown members: keys that no body type declares.
fn extra() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("x_[a-z]{1,8}", json_value(), 0..3)
        .prop_map(|m| m.into_iter().collect())
}

fn opt_str() -> impl Strategy<Value = Option<String>> {
    prop::option::of("[a-zA-Z0-9 _.:/-]{0,20}")
}

fn opt_unit_f64() -> impl Strategy<Value = Option<f64>> {
    prop::option::of((0u32..=1000).prop_map(|n| f64::from(n) / 1000.0))
}

fn qos() -> impl Strategy<Value = Qos> {
    prop::sample::select(Qos::ALL.to_vec())
}

fn known_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(ErrorCode::ALL.to_vec())
}

fn any_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        3 => known_code(),
        1 => "zz_[a-z]{1,8}".prop_map(ErrorCode::Unknown),
    ]
}

fn task_id() -> impl Strategy<Value = TaskId> {
    prop_oneof![
        prop::array::uniform16(any::<u8>())
            .prop_map(|b| TaskId::from(uuid::Builder::from_random_bytes(b).into_uuid())),
        "[a-z0-9-]{1,40}".prop_map(|s| TaskId::parse_lenient(&s).unwrap()),
    ]
}

fn constraints() -> impl Strategy<Value = Constraints> {
    (
        prop::option::of(0u64..400_000),
        prop::option::of(qos()),
        prop::option::of(prop::sample::select(vec![
            Priority::Low,
            Priority::Normal,
            Priority::High,
            Priority::Critical,
        ])),
        prop::option::of(prop::sample::select(vec![
            Consensus::None,
            Consensus::FirstCompleted,
            Consensus::MajorityOf3,
            Consensus::MajorityOf5,
        ])),
        opt_str(),
        prop::option::of(any::<u32>()),
        opt_str(),
        prop::option::of(prop::collection::vec("[a-z:-]{1,20}", 0..3)),
        extra(),
    )
        .prop_map(
            |(timeout_ms, qos, priority, consensus, region, max_tokens, model, req, extra)| {
                let mut c = Constraints::default();
                c.timeout_ms = timeout_ms;
                c.qos = qos;
                c.priority = priority;
                c.consensus = consensus;
                c.region = region;
                c.max_tokens = max_tokens;
                c.model = model;
                c.required_profiles = req;
                c.extra = extra;
                c
            },
        )
}

fn task_request() -> impl Strategy<Value = TaskRequest> {
    (
        task_id(),
        "[a-z:._/-]{1,40}",
        prop::option::of(json_object()),
        prop::option::of(json_object()),
        constraints(),
        prop::option::of(prop::option::of("[A-Za-z0-9_]{1,40}")),
        prop::option::of((opt_str(), opt_str())),
        (opt_str(), opt_str(), opt_str()),
        extra(),
    )
        .prop_map(
            |(
                task_id,
                intent,
                payload,
                conf,
                constraints,
                auth,
                trace,
                (cx, src, nonce),
                extra,
            )| {
                let mut r = TaskRequest::new(
                    task_id,
                    &"urn:iicp:intent:llm:chat:v1".parse().unwrap(),
                    Value::Null,
                );
                r.intent = intent;
                r.payload = payload;
                r.iicp_conf = conf;
                r.constraints = constraints;
                r.auth = auth.map(|t| {
                    let mut a = TaskAuth::default();
                    a.node_token = t.map(Secret::new);
                    a
                });
                r.trace = trace.map(|(trace_id, origin_node)| {
                    let mut t = TraceInfo::default();
                    t.trace_id = trace_id;
                    t.origin_node = origin_node;
                    t
                });
                r.cx_response_encryption = cx;
                r.source_node_id = src;
                r.nonce = nonce;
                r.extra = extra;
                r
            },
        )
}

fn task_response() -> impl Strategy<Value = TaskResponse> {
    (
        task_id(),
        prop::sample::select(vec![
            TaskStatus::Success,
            TaskStatus::Error,
            TaskStatus::Timeout,
            TaskStatus::Partial,
            TaskStatus::Encrypted,
        ]),
        prop::option::of(json_value().prop_filter("non-null", |v| !v.is_null())),
        prop::option::of((prop::option::of(any_code()), "[a-z ]{0,20}", extra())),
        prop::option::of((
            prop::option::of(0u64..1_000_000),
            prop::option::of(any::<u32>()),
        )),
        (
            opt_str(),
            prop::option::of(any::<bool>()),
            prop::option::of(json_object()),
        ),
        extra(),
    )
        .prop_map(
            |(task_id, status, result, error, metrics, (model, ai, conf), extra)| {
                let mut r = TaskResponse::success(task_id, Value::Null);
                r.status = status;
                r.result = result;
                r.error = error.map(|(code, message, extra)| ErrorObject {
                    code,
                    message,
                    extra,
                });
                r.metrics = metrics.map(|(latency_ms, tokens)| {
                    let mut m = Metrics::default();
                    m.latency_ms = latency_ms;
                    m.tokens_used = tokens.map(u64::from);
                    m
                });
                r.model_used = model;
                r.generated_by_ai = ai;
                r.iicp_conf_resp = conf;
                r.extra = extra;
                r
            },
        )
}

fn cx_key() -> impl Strategy<Value = CxPublicKey> {
    (
        "[A-Za-z0-9_-]{43}",
        "cx-[0-9a-f]{16}",
        opt_str(),
        prop::collection::vec("[a-z_0-9]{1,24}", 0..2),
        extra(),
    )
        .prop_map(|(key, key_id, not_after, features, extra)| CxPublicKey {
            algorithm: "X25519".into(),
            encoding: "base64url".into(),
            key,
            key_id,
            not_after,
            hybrid_pq: None,
            features,
            extra,
        })
}

fn capability() -> impl Strategy<Value = Capability> {
    (
        "urn:iicp:intent:[a-z]{1,8}:[a-z]{1,8}:v[0-9]",
        prop::collection::vec("[a-z0-9.:-]{1,12}", 0..3),
        prop::option::of(1u32..200_000),
        prop::option::of(prop::collection::vec(
            prop::sample::select(vec![
                "text".to_owned(),
                "image".to_owned(),
                "audio".to_owned(),
            ]),
            1..3,
        )),
        opt_str(),
        prop::option::of(json_object()),
        extra(),
    )
        .prop_map(|(intent, models, max_tokens, mods, quant, limits, extra)| {
            let mut c = Capability::default();
            c.intent = intent;
            c.models = models;
            c.max_tokens = max_tokens;
            c.input_modalities = mods;
            c.quantization = quant;
            c.limits = limits;
            c.extra = extra;
            c
        })
}

fn register_request() -> impl Strategy<Value = RegisterRequest> {
    (
        ("https?://[a-z0-9.]{1,20}(:[0-9]{2,5})?", "[a-z-]{0,16}"),
        prop::collection::vec(capability(), 0..3),
        (0u32..300, any::<u32>(), extra()),
        (
            opt_str(),
            prop::option::of("[0-9a-f]{8,64}"),
            prop::option::of(cx_key()),
        ),
        (
            opt_str(),
            prop::option::of(any::<u16>()),
            prop::option::of(any::<bool>()),
        ),
        (
            prop::option::of(json_object()),
            opt_str(),
            opt_str(),
            prop::option::of(any::<u32>()),
        ),
        extra(),
    )
        .prop_map(
            |(
                (endpoint, region),
                caps,
                (mc, tpm, lextra),
                (node_id, tok, cx),
                (te, rap, rc),
                (deleg, sdk, imp, interval),
                extra,
            )| {
                let mut limits = Limits::default();
                limits.max_concurrent = mc;
                limits.tokens_per_min = u64::from(tpm);
                limits.extra = lextra;
                let mut r = RegisterRequest::new(endpoint, region, caps, limits);
                r.node_id = node_id;
                r.current_node_token = tok.map(Secret::new);
                r.cx_public_key = cx;
                r.transport_endpoint = te;
                r.relay_accept_port = rap;
                r.relay_capable = rc;
                r.operator_delegation = deleg;
                r.sdk_version = sdk.clone();
                r.sdk_compatibility_version = sdk;
                r.implementation_name = imp;
                r.auto_update_interval_s = interval.map(u64::from);
                r.extra = extra;
                r
            },
        )
}

fn heartbeat_request() -> impl Strategy<Value = HeartbeatRequest> {
    (
        "[0-9a-f-]{1,36}",
        (
            opt_unit_f64(),
            prop::option::of(0u32..1000),
            prop::option::of(any::<bool>()),
        ),
        prop::option::of((
            prop::option::of(any::<u32>()),
            prop::option::of(any::<u32>()),
            prop::option::of((0u32..1_000_000).prop_map(|n| f64::from(n) / 100.0)),
            extra(),
        )),
        (
            opt_str(),
            prop::option::of("[0-9a-f]{64}"),
            prop::option::of("[0-9a-f]{8}"),
        ),
        (
            opt_str(),
            prop::option::of(prop::collection::vec("[a-z0-9-]{1,10}", 0..3)),
        ),
        (
            prop::option::of(json_object()),
            prop::option::of(any::<u32>()),
        ),
        extra(),
    )
        .prop_map(
            |(
                node_id,
                (load, jobs, avail),
                metrics,
                (batch, chal, tok),
                (status, models),
                (stab, recov),
                extra,
            )| {
                let mut h = HeartbeatRequest::new(node_id);
                h.load = load;
                h.active_jobs = jobs;
                h.available = avail;
                h.metrics = metrics.map(|(s, f, avg, extra)| {
                    let mut m = HeartbeatMetrics::default();
                    m.tasks_success = s.map(u64::from);
                    m.tasks_failed = f.map(u64::from);
                    m.avg_latency_ms = avg;
                    m.extra = extra;
                    m
                });
                h.metrics_batch_id = batch;
                h.challenge_response = chal;
                h.node_token = tok.map(Secret::new);
                h.status = status;
                h.health_models = models;
                h.backend_stability = stab;
                h.recovery_attempt = recov;
                h.extra = extra;
                h
            },
        )
}

fn node_entry() -> impl Strategy<Value = NodeEntry> {
    (
        (opt_str(), opt_str(), opt_str(), opt_str()),
        (
            opt_unit_f64(),
            prop::option::of(any::<bool>()),
            opt_unit_f64(),
            prop::option::of(0u32..10_000),
        ),
        (
            opt_unit_f64(),
            prop::option::of(any::<u32>()),
            prop::option::of(cx_key()),
        ),
        prop::collection::vec(capability(), 0..3),
        (
            prop::option::of(json_value().prop_filter("non-null", |v| !v.is_null())),
            opt_str(),
            prop::option::of(any::<u16>()),
        ),
        extra(),
    )
        .prop_map(
            |(
                (node_id, endpoint, te, region),
                (score, avail, load, jobs),
                (rep, lat, cx),
                caps,
                (evidence, tier, port),
                extra,
            )| {
                let mut n = NodeEntry::default();
                n.node_id = node_id;
                n.endpoint = endpoint;
                n.transport_endpoint = te;
                n.region = region;
                n.score = score;
                n.available = avail;
                n.load = load;
                n.active_jobs = jobs;
                n.reputation_score = rep;
                n.latency_estimate_ms = lat.map(u64::from);
                n.cx_public_key = cx;
                n.capabilities = caps;
                n.route_evidence = evidence;
                n.reachability_tier = tier;
                n.relay_accept_port = port;
                n.extra = extra;
                n
            },
        )
}

fn error_body() -> impl Strategy<Value = ErrorBody> {
    (
        any_code(),
        "[A-Za-z0-9 ,.:_-]{1,60}",
        prop::sample::select(vec![
            400u16, 401, 403, 404, 409, 422, 429, 500, 502, 503, 504,
        ]),
        (
            opt_str(),
            prop::option::of(any::<u32>()),
            prop::option::of(any_code()),
            opt_str(),
        ),
        extra(),
    )
        .prop_map(
            |(code, message, status, (qos, retry, legacy, reason), extra)| {
                let mut b = ErrorBody::new(code, message).with_status(status);
                b.qos_class = qos;
                b.retry_after_ms = retry.map(u64::from);
                b.legacy_code = legacy;
                b.reason = reason;
                b.extra = extra;
                b
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn task_request_round_trip(req in task_request()) {
        let bytes = serde_json::to_vec(&req).unwrap();
        let back: TaskRequest = serde_json::from_slice(&bytes).unwrap();
        prop_assert_eq!(&back, &req);
        // Debug never shows payload or token.
        if let Some(Some(tok)) = req.auth.as_ref().map(|a| a.node_token.as_ref()) {
            let dbg = format!("{:?}", req);
            prop_assert!(!dbg.contains(tok.expose()) || tok.expose().len() < 6);
        }
    }

    #[test]
    fn task_response_round_trip(resp in task_response()) {
        let bytes = serde_json::to_vec(&resp).unwrap();
        let back: TaskResponse = serde_json::from_slice(&bytes).unwrap();
        prop_assert_eq!(&back, &resp);
        // The lenient client parser agrees on plain successes.
        let plain_success = matches!(resp.status, TaskStatus::Success | TaskStatus::Partial)
            && resp.result.is_some()
            && resp.error.is_none();
        if plain_success {
            let parsed = TaskResponse::parse(200, &bytes).unwrap();
            prop_assert_eq!(parsed, resp);
        } else if matches!(resp.status, TaskStatus::Error | TaskStatus::Timeout) || resp.error.is_some() {
            prop_assert!(TaskResponse::parse(200, &bytes).is_err());
        }
    }

    #[test]
    fn register_request_round_trip(req in register_request()) {
        let bytes = serde_json::to_vec(&req).unwrap();
        let back: RegisterRequest = serde_json::from_slice(&bytes).unwrap();
        prop_assert_eq!(back, req);
    }

    #[test]
    fn heartbeat_request_round_trip(hb in heartbeat_request()) {
        let bytes = serde_json::to_vec(&hb).unwrap();
        let back: HeartbeatRequest = serde_json::from_slice(&bytes).unwrap();
        prop_assert_eq!(back, hb);
    }

    #[test]
    fn node_entry_round_trip(node in node_entry()) {
        let bytes = serde_json::to_vec(&node).unwrap();
        let back: NodeEntry = serde_json::from_slice(&bytes).unwrap();
        prop_assert_eq!(back, node);
    }

    #[test]
    fn error_body_round_trip(body in error_body()) {
        let bytes = serde_json::to_vec(&body).unwrap();
        let status = body.http_status.unwrap();
        let back = ErrorBody::parse(status, &bytes);
        prop_assert_eq!(&back, &body);
        let via_serde: ErrorBody = serde_json::from_slice(&bytes).unwrap();
        prop_assert_eq!(via_serde.with_status(status), body);
    }

    #[test]
    fn error_parse_never_panics(status in 100u16..600, body in prop::collection::vec(any::<u8>(), 0..300)) {
        let b = ErrorBody::parse(status, &body);
        prop_assert!(b.message.chars().count() <= iicp_proto::error::MAX_MESSAGE_CHARS);
        let _ = TaskResponse::parse(status, &body);
    }

    #[test]
    fn error_parse_never_panics_on_markup(status in 400u16..600, body in "[<>/a-z &;#\"=]{0,200}") {
        let b = ErrorBody::parse(status, body.as_bytes());
        prop_assert!(!b.message.is_empty());
    }
}
