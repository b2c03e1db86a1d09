//! Validation before I/O, the timeout cap, empty discovery, credentials (never leaked),
//! the discovery cache, discover filtering and the chat helper.

use std::sync::Arc;
use std::time::Duration;

use iicp_client::time::ManualClock;
use iicp_client::{
    ChatOptions, Client, DiscoverOptions, Encryption, ErrorCode, RouteDiscovery, Task,
};
use iicp_proto::crypto::cx::CxKeyPair;
use iicp_proto::task::ChatMessage;
use iicp_testkit::fake::*;
use iicp_testkit::server::*;
use iicp_testkit::time::*;
use rand_core::OsRng;
use serde_json::json;

fn key() -> Option<CxKeyPair> {
    Some(CxKeyPair::generate(&mut OsRng))
}

#[tokio::test]
async fn bad_intents_are_refused_without_any_network_io() {
    let node = fake_node(&node_id(1), key(), vec![]).await;
    let dir = fake_directory(vec![node.entry()], Tickets::On).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    for (intent, code) in [
        ("urn:iicp:intent:LLM:chat:v1", ErrorCode::InvalidIntent),
        ("not-a-urn", ErrorCode::InvalidIntent),
        ("urn:iicp:intent:llm::chat:v1", ErrorCode::InvalidIntent),
        ("urn:iicp:intent:llm:chat+fast:v1", ErrorCode::InvalidIntent),
        ("urn:iicp:intent:llm:chat", ErrorCode::InvalidIntent),
        (
            "urn:iicp:intent:credit:decision:v1",
            ErrorCode::PolicyRefused,
        ),
    ] {
        let err = client
            .submit(Task::new(intent, json!({"x": 1})))
            .await
            .expect_err(intent);
        assert_eq!(err.code(), &code, "{intent}");
        assert!(!err.is_retryable());
        let err = client
            .discover(intent, DiscoverOptions::default())
            .await
            .expect_err(intent);
        assert_eq!(err.code(), &code, "{intent}");
        let err = client
            .chat_with(
                vec![ChatMessage::new("user", "hi")],
                ChatOptions {
                    intent: Some(intent.to_owned()),
                    ..ChatOptions::default()
                },
            )
            .await
            .expect_err(intent);
        assert_eq!(err.code(), &code, "{intent}");
    }
    // payload and timeout problems are refused before I/O as well
    let err = client
        .submit(Task::new(CHAT, json!("not an object")))
        .await
        .expect_err("payload");
    assert_eq!(err.code(), &ErrorCode::ValidationError);
    let err = client
        .submit(chat_task().with_timeout_ms(120_001))
        .await
        .expect_err("timeout");
    assert_eq!(err.code(), &ErrorCode::InvalidConfig);
    let err = client.chat(vec![]).await.expect_err("empty chat");
    assert_eq!(err.code(), &ErrorCode::ValidationError);
    assert_eq!(dir.server.accepted(), 0, "no connection to the directory");
    assert_eq!(node.server.accepted(), 0, "no connection to the node");
}

#[test]
fn timeout_cap_is_enforced_at_build_time() {
    let err = Client::builder()
        .timeout(Duration::from_millis(120_001))
        .build()
        .expect_err("above the cap");
    assert_eq!(err.code(), &ErrorCode::InvalidConfig);
    assert!(err.message().contains("120000"));
    assert!(Client::builder()
        .timeout(Duration::from_millis(120_000))
        .build()
        .is_ok());
    assert_eq!(
        Client::builder()
            .timeout(Duration::ZERO)
            .build()
            .expect_err("zero")
            .code(),
        &ErrorCode::InvalidConfig
    );
    assert_eq!(
        Client::builder()
            .directory_url("ftp://nope")
            .build()
            .expect_err("url")
            .code(),
        &ErrorCode::InvalidConfig
    );
    let client = Client::new().expect("defaults");
    assert_eq!(client.timeout(), Duration::from_millis(30_000));
    assert_eq!(client.directory().base_url(), "https://iicp.network/api");
}

#[tokio::test]
async fn empty_discovery_is_no_nodes_available_with_e033() {
    let dir = fake_directory(vec![], Tickets::Off).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let err = client.submit(chat_task()).await.expect_err("no nodes");
    assert_eq!(err.code(), &ErrorCode::NoNodesAvailable);
    assert_eq!(err.spec_code(), Some(&ErrorCode::E033));
    // the directory answered 200: no HTTP status is claimed
    assert_eq!(err.status_code(), None);
    assert!(!err.to_string().contains("HTTP"), "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn keyless_nodes_are_skipped_unless_plaintext_is_allowed() {
    let node = fake_node(&node_id(1), None, vec![]).await;
    let dir = fake_directory(vec![node.entry()], Tickets::Off).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let err = client.submit(chat_task()).await.expect_err("keyless");
    assert_eq!(err.code(), &ErrorCode::CxRequired);
    assert_eq!(node.count(), 0);

    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .encryption(Encryption::AllowPlaintext)
        .build()
        .expect("client");
    let done = client.submit(chat_task()).await.expect("plaintext");
    assert!(!done.encrypted);
    assert_eq!(
        node.payloads()[0]["messages"][0]["content"],
        "PAYLOAD-MARKER-7f3a"
    );
}

#[tokio::test]
async fn tokens_never_reach_providers_or_errors() {
    const API: &str = "api-tok-SECRET-1234abcd";
    const NODE: &str = "node-tok-SECRET-5678efgh";
    // A echoes the credentials it saw in its error message; B succeeds.
    let a = fake_node(
        &node_id(1),
        key(),
        vec![Reply::Status(
            401,
            json!({"error": {"code": "unauthorized", "message": format!("token Bearer {API} rejected"), "seen": API}}),
        )],
    )
    .await;
    let b = fake_node(
        &node_id(2),
        key(),
        vec![status(503), status(503), status(503)],
    )
    .await;
    let dir = fake_directory(vec![b.entry(), a.entry()], Tickets::Off).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .api_token(API)
        .node_credentials("my-node-id", NODE)
        .build()
        .expect("client");
    assert!(!format!("{client:?}").contains(API));
    let err = client
        .submit(chat_task())
        .await
        .expect_err("401 is terminal");
    assert_eq!(err.code(), &ErrorCode::Unauthorized);
    for text in [
        err.to_string(),
        format!("{err:?}"),
        err.message().to_owned(),
    ] {
        assert!(!text.contains(API), "{text}");
        assert!(!text.contains(NODE), "{text}");
        assert!(!text.contains("PAYLOAD-MARKER"), "{text}");
    }
    if let Some(body) = err.error_body() {
        assert!(!format!("{body:?}").contains(API));
    }
    // every byte the providers received
    for node in [&a, &b] {
        let raw = node.server.raw();
        assert!(!raw.is_empty());
        assert!(!raw.contains(NODE), "node_token sent to a provider");
        assert!(!raw.contains("PAYLOAD-MARKER"), "payload sent in clear");
        for call in node.calls() {
            assert_eq!(
                call.header("authorization"),
                Some(format!("Bearer {API}").as_str())
            );
            assert_eq!(
                call.header("x-iicp-consumer-token"),
                Some(format!("consumer-token-for-{}", node.state.id).as_str())
            );
        }
    }
    // the node_token went to the directory only, with X-Node-Id
    let minted: Vec<Recorded> = dir
        .calls()
        .into_iter()
        .filter(|c| c.path.ends_with("/v1/consumer-token"))
        .collect();
    assert!(!minted.is_empty());
    for c in &minted {
        assert_eq!(
            c.header("authorization"),
            Some(format!("Bearer {NODE}").as_str())
        );
        assert_eq!(c.header("x-node-id"), Some("my-node-id"));
        assert!(!String::from_utf8_lossy(&c.body).contains("PAYLOAD-MARKER"));
    }
    // nothing task-related reaches the directory
    assert!(!dir.server.raw().contains("PAYLOAD-MARKER"));
    assert!(!dir.server.raw().contains(API));
}

#[tokio::test]
async fn without_api_token_no_authorization_header_is_sent() {
    let node = fake_node(&node_id(1), key(), vec![]).await;
    let dir = fake_directory(vec![node.entry()], Tickets::Off).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    client.submit(chat_task()).await.expect("submit");
    let call = &node.calls()[0];
    assert_eq!(call.header("authorization"), None);
    assert_eq!(call.header("x-iicp-consumer-token"), None);
    let body = call.json();
    assert!(body.get("payload").is_none(), "encrypted by default");
    assert!(body.get("auth").is_none());
    assert_eq!(body["constraints"]["timeout_ms"], 30_000);
}

#[tokio::test]
async fn discovery_is_cached_for_a_few_seconds() {
    let node = fake_node(&node_id(1), key(), vec![]).await;
    let dir = fake_directory(vec![node.entry()], Tickets::Off).await;
    let clock = Arc::new(ManualClock::starting_now());
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .route_discovery(RouteDiscovery::Legacy)
        .clock(clock.clone())
        .build()
        .expect("client");
    client.submit(chat_task()).await.expect("1");
    client.submit(chat_task()).await.expect("2");
    client
        .discover(CHAT, DiscoverOptions::default())
        .await
        .expect("3");
    assert_eq!(dir.count("/api/v1/discover"), 1, "served from the cache");
    clock.advance(Duration::from_secs(6));
    client.submit(chat_task()).await.expect("4");
    assert_eq!(dir.count("/api/v1/discover"), 2, "expired after max-age");

    let uncached = builder(&dir, Arc::new(RecordingSleeper::default()))
        .route_discovery(RouteDiscovery::Legacy)
        .discovery_cache_ttl(Duration::ZERO)
        .build()
        .expect("client");
    uncached.submit(chat_task()).await.expect("5");
    uncached.submit(chat_task()).await.expect("6");
    assert_eq!(dir.count("/api/v1/discover"), 4);
}

#[tokio::test]
async fn discover_drops_ineligible_nodes() {
    let k = CxKeyPair::generate(&mut OsRng);
    let mut unavailable = node_entry(&node_id(2), "https://n2.example.com", Some(&k), &[]);
    unavailable["available"] = json!(false);
    let mut low_score = node_entry(&node_id(3), "https://n3.example.com", Some(&k), &[]);
    low_score["score"] = json!(0.05);
    let mut no_endpoint = node_entry(&node_id(4), "https://n4.example.com", Some(&k), &[]);
    no_endpoint.as_object_mut().map(|o| o.remove("endpoint"));
    let private = node_entry(&node_id(5), "http://127.0.0.1:9484", Some(&k), &[]);
    let local_name = node_entry(&node_id(6), "http://ollama:9484", Some(&k), &[]);
    let keyless = node_entry(&node_id(7), "https://n7.example.com", None, &[]);
    let mut public_view = node_entry(&node_id(8), "https://n8.example.com", Some(&k), &[]);
    public_view.as_object_mut().map(|o| o.remove("node_id"));
    let good = node_entry(&node_id(1), "https://n1.example.com", Some(&k), &[]);
    let dir = fake_directory(
        vec![
            good,
            unavailable,
            low_score,
            no_endpoint,
            private,
            local_name,
            keyless,
            public_view,
        ],
        Tickets::Off,
    )
    .await;
    let client = Client::builder()
        .directory_url(dir.base())
        .build()
        .expect("client");
    let nodes = client
        .discover(
            CHAT,
            DiscoverOptions {
                region: Some("eu-central".into()),
                limit: Some(80),
                ..DiscoverOptions::default()
            },
        )
        .await
        .expect("discover");
    let ids: Vec<String> = nodes.iter().filter_map(|n| n.node_id.clone()).collect();
    assert_eq!(ids, vec![node_id(1), node_id(7)]);
    let q = &dir.calls()[0];
    assert!(
        q.path
            .contains("intent=urn%3Aiicp%3Aintent%3Allm%3Achat%3Av1"),
        "{}",
        q.path
    );
    assert!(q.path.contains("region=eu-central"));
    assert!(q.path.contains("limit=50"), "limit clamped: {}", q.path);
    assert!(q.header("traceparent").is_some());
    let err = client
        .discover(
            CHAT,
            DiscoverOptions {
                min_reputation: Some(1.5),
                ..DiscoverOptions::default()
            },
        )
        .await
        .expect_err("bad reputation");
    assert_eq!(err.code(), &ErrorCode::ValidationError);
}

#[tokio::test]
async fn private_endpoints_need_the_opt_in() {
    let node = fake_node(&node_id(1), key(), vec![]).await;
    let dir = fake_directory(vec![node.entry()], Tickets::Off).await;
    let client = Client::builder()
        .directory_url(dir.base())
        .sleeper(Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let err = client
        .submit(chat_task())
        .await
        .expect_err("loopback refused");
    assert_eq!(err.code(), &ErrorCode::NoNodesAvailable);
    assert_eq!(node.server.accepted(), 0);
}

#[tokio::test]
async fn ipv4_shorthand_for_loopback_is_refused_before_any_io() {
    // `127.1` is not a dotted quad to Rust, but the resolver reads it as 127.0.0.1
    // without DNS: it is classified as the address it is (`iicp_proto::endpoint`), so
    // the node is not a candidate at all. (Names whose DNS answer is private are refused
    // by the connectors' address rule: iicp-transport/tests/address_rule.rs.)
    let node = fake_node(&node_id(1), key(), vec![]).await;
    let mut entry = node.entry();
    let by_name = node.url().replace("127.0.0.1", "127.1");
    entry["endpoint"] = json!(by_name);
    let dir = fake_directory(vec![entry], Tickets::Off).await;
    let strict = Client::builder()
        .directory_url(dir.base())
        .sleeper(Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let err = strict
        .submit(chat_task())
        .await
        .expect_err("private address refused");
    assert_eq!(err.code(), &ErrorCode::NoNodesAvailable, "{err}");
    assert!(err.to_string().contains("Endpoint: 1"), "{err}");
    assert_eq!(node.server.accepted(), 0, "the refused node was dialled");
    // the same endpoint with the opt-in: reached, so the shorthand itself works
    let open = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let done = open.submit(chat_task()).await.expect("submit");
    assert_eq!(done.node_id, node_id(1));
    assert_eq!(node.server.accepted(), 1);
}

#[tokio::test]
async fn chat_returns_an_openai_completion_and_the_node_id() {
    let node = fake_node(&node_id(1), key(), vec![]).await;
    let dir = fake_directory(vec![node.entry()], Tickets::Off).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let reply = client
        .chat_with(
            vec![ChatMessage::new("user", "Hello")],
            ChatOptions {
                model: Some("llama3".into()),
                max_tokens: Some(64),
                temperature: Some(0.2),
                timeout: Some(Duration::from_secs(10)),
                ..ChatOptions::default()
            },
        )
        .await
        .expect("chat");
    assert_eq!(reply.node_id, node_id(1));
    assert_eq!(reply.text(), format!("hello from {}", node_id(1)));
    assert_eq!(reply.completion.choices[0].message.role, "assistant");
    assert_eq!(
        reply.completion.usage.as_ref().and_then(|u| u.total_tokens),
        Some(7)
    );
    assert_eq!(reply.model.as_deref(), Some("test-model"));
    let seen = &node.payloads()[0];
    assert_eq!(seen["model"], "llama3");
    assert_eq!(seen["max_tokens"], 64);
    let body = node.calls()[0].json();
    assert_eq!(body["constraints"]["qos"], "interactive");
    assert_eq!(body["constraints"]["timeout_ms"], 10_000);
    assert_eq!(body["constraints"]["model"], "llama3");
    assert!(body["constraints"].get("region").is_none());
}

#[tokio::test]
async fn chat_accepts_a_spread_ref_py_result() {
    // ref-py: {"task_id", "status": "completed", **handler_dict}
    let node = fake_node(
        &node_id(1),
        None,
        vec![Reply::Spread(json!({"content": "plain text answer"}))],
    )
    .await;
    let dir = fake_directory(vec![node.entry()], Tickets::Off).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .encryption(Encryption::AllowPlaintext)
        .build()
        .expect("client");
    let reply = client
        .chat(vec![ChatMessage::new("user", "hi")])
        .await
        .expect("chat");
    assert_eq!(reply.text(), "plain text answer");
    assert_eq!(reply.completion.id.as_deref(), Some(reply.task_id.as_str()));
}
