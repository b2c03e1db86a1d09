//! Errors that tell the truth and directory data that is not trusted blindly (issue 17
//! §1): retryability after a run of transient failures, `Retry-After` from nodes and
//! from the directory, out-of-range and duplicate discovery entries, `limit`, IPv4
//! shorthand endpoints refused before any I/O, and messages that keep the cause.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use iicp_client::time::ManualClock;
use iicp_client::{DiscoverOptions, ErrorCode, RouteDiscovery};
use iicp_proto::crypto::cx::CxKeyPair;
use iicp_testkit::fake::*;
use iicp_testkit::server::*;
use iicp_testkit::time::*;
use iicp_transport::http::server::{json, Request, Router};
use rand_core::OsRng;
use serde_json::{json as j, Value};

fn key() -> Option<CxKeyPair> {
    Some(CxKeyPair::generate(&mut OsRng))
}

fn service_unavailable_as(code: &str) -> Reply {
    Reply::Status(
        503,
        j!({"error": {"code": code, "message": "model server is restarting"}}),
    )
}

async fn mesh(scripts: Vec<Vec<Reply>>) -> (FakeDirectory, Vec<FakeNode>) {
    let mut nodes = Vec::new();
    for (i, script) in scripts.into_iter().enumerate() {
        nodes.push(fake_node(&node_id(i as u32 + 1), key(), script).await);
    }
    let dir = fake_directory(nodes.iter().map(FakeNode::entry).collect(), Tickets::Off).await;
    (dir, nodes)
}

#[tokio::test]
async fn an_exhausted_run_of_transient_failures_is_retryable() {
    for code in [
        "backend_error",
        "service_unavailable",
        "temporarily_unavailable",
    ] {
        // one node, always 503: three POSTs
        let (dir, nodes) = mesh(vec![vec![service_unavailable_as(code); 3]]).await;
        let client = builder(&dir, Arc::new(RecordingSleeper::default()))
            .build()
            .expect("client");
        let err = client.submit(chat_task()).await.expect_err("all 503");
        assert_eq!(nodes[0].count(), 3, "{code}");
        assert_eq!(err.code(), &ErrorCode::AllNodesFailed, "{code}");
        assert!(err.is_retryable(), "{code}: {err}");
        let last = err.last_node_error().expect("last");
        assert!(last.is_retryable(), "{code}: the loop retried it, so it is");
        assert!(!err.is_timeout());
    }
    // three nodes, all 503: nine POSTs
    let (dir, nodes) = mesh(vec![vec![service_unavailable_as("backend_error"); 3]; 3]).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let err = client.submit(chat_task()).await.expect_err("all 503");
    assert_eq!(nodes.iter().map(FakeNode::count).sum::<usize>(), 9);
    assert!(err.is_retryable(), "{err}");
}

#[tokio::test]
async fn a_run_with_a_final_failure_is_not_retryable_and_504_is_a_timeout() {
    // a node switch, then a node whose 504 ends the run: retryable, and a timeout
    let (dir, _nodes) = mesh(vec![vec![capacity_exceeded()], vec![status(504)]]).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let err = client.submit(chat_task()).await.expect_err("fails");
    assert_eq!(err.code(), &ErrorCode::AllNodesFailed);
    assert!(err.is_timeout(), "a provider 504 ends the run: {err}");
    assert!(err.is_retryable());
    // a protocol violation on one node makes the run not worth repeating
    let (dir, _nodes) = mesh(vec![vec![Reply::WrongTaskId], vec![status(503); 3]]).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let err = client.submit(chat_task()).await.expect_err("fails");
    assert_eq!(err.code(), &ErrorCode::AllNodesFailed);
    assert!(!err.is_retryable(), "{err}");
}

#[tokio::test]
async fn a_nodes_retry_after_is_honoured_when_it_fits_the_budget() {
    let busy = |after: &'static str| {
        Reply::Headed(
            503,
            j!({"error": {"code": "temporarily_unavailable", "message": "busy"}}),
            vec![("retry-after", after)],
        )
    };
    let (dir, nodes) = mesh(vec![vec![busy("2")], vec![]]).await;
    let sleeper = Arc::new(RecordingSleeper::default());
    let client = builder(&dir, sleeper.clone()).build().expect("client");
    let done = client.submit(chat_task()).await.expect("submit");
    assert_eq!(done.node_id, node_id(1), "same node after the wait");
    assert_eq!(sleeper.sleeps(), vec![Duration::from_secs(2)]);
    assert_eq!(nodes[0].count(), 2);
    // a wait longer than the task's budget: the next node, at once
    let (dir, nodes) = mesh(vec![vec![busy("120")], vec![]]).await;
    let sleeper = Arc::new(RecordingSleeper::default());
    let client = builder(&dir, sleeper.clone()).build().expect("client");
    let done = client
        .submit(chat_task().with_timeout_ms(5_000))
        .await
        .expect("submit");
    assert_eq!(done.node_id, node_id(2));
    assert!(sleeper.sleeps().is_empty(), "{:?}", sleeper.sleeps());
    assert_eq!(
        nodes.iter().map(FakeNode::count).collect::<Vec<_>>(),
        [1, 1]
    );
}

/// A directory that answers 503 with `Retry-After: 5`, counting requests.
async fn busy_directory() -> (Server, Arc<std::sync::atomic::AtomicUsize>) {
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = Arc::clone(&hits);
    let router = Router::new()
        .route(Method::GET, "/v1/discover", move |_req: Request, _p| {
            let h = Arc::clone(&h);
            async move {
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut r = json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &j!({"error": {"code": "temporarily_unavailable", "message": "maintenance"}}),
                );
                r.headers_mut()
                    .insert("retry-after", http::HeaderValue::from_static("5"));
                r
            }
        })
        .nest_alias("/api");
    (serve(router).await.expect("serve"), hits)
}

#[tokio::test]
async fn a_directory_retry_after_is_remembered_across_calls() {
    let (server, hits) = busy_directory().await;
    let clock = Arc::new(ManualClock::starting_now());
    let client = iicp_client::Client::builder()
        .directory_url(format!("{}/api", server.url()))
        .allow_private_endpoints(true)
        .route_discovery(RouteDiscovery::Legacy)
        .clock(clock.clone())
        .sleeper(Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let first = client.submit(chat_task()).await.expect_err("503");
    assert_eq!(first.status_code(), Some(503));
    assert_eq!(first.retry_after(), Some(Duration::from_secs(5)));
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    clock.advance(Duration::from_secs(2));
    for _ in 0..3 {
        let again = client.submit(chat_task()).await.expect_err("fails fast");
        assert!(again.is_retryable(), "{again}");
        assert_eq!(again.retry_after(), Some(Duration::from_secs(3)));
        let listed = client
            .discover(CHAT, DiscoverOptions::default())
            .await
            .expect_err("fails fast");
        assert_eq!(listed.code(), again.code());
    }
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "no request while the directory's Retry-After runs"
    );
    clock.advance(Duration::from_secs(4));
    client.submit(chat_task()).await.expect_err("503 again");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn out_of_range_and_duplicate_entries_are_dropped_and_limit_applies() {
    let good = fake_node(&node_id(1), key(), vec![]).await;
    let greedy = fake_node(&node_id(2), key(), vec![]).await;
    let mut too_high = greedy.entry();
    too_high["score"] = j!(1.7);
    let mut bad_rep = good.entry();
    bad_rep["node_id"] = j!(node_id(3));
    bad_rep["reputation_score"] = j!(-0.2);
    let mut negative_load = good.entry();
    negative_load["node_id"] = j!(node_id(4));
    negative_load["load"] = j!(-1);
    let duplicate = {
        let mut d = good.entry();
        d["score"] = j!(0.95);
        d
    };
    let dir = fake_directory(
        vec![too_high, good.entry(), bad_rep, negative_load, duplicate],
        Tickets::Off,
    )
    .await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .route_discovery(RouteDiscovery::Legacy)
        .build()
        .expect("client");
    let listed = client
        .discover(CHAT, DiscoverOptions::default())
        .await
        .expect("discover");
    let ids: Vec<_> = listed.iter().map(|n| n.node_id.clone().unwrap()).collect();
    assert_eq!(ids, vec![node_id(1)], "only the sane first entry is kept");
    let done = client.submit(chat_task()).await.expect("submit");
    assert_eq!(done.node_id, node_id(1));
    assert_eq!(greedy.count(), 0, "the score-1.7 node never got the task");

    // limit: 3 of 7
    let mut nodes = Vec::new();
    let mut entries: Vec<Value> = Vec::new();
    for i in 10..17 {
        let n = fake_node(&node_id(i), key(), vec![]).await;
        entries.push(n.entry());
        nodes.push(n);
    }
    let dir = fake_directory(entries, Tickets::Off).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let opts = DiscoverOptions {
        limit: Some(3),
        ..DiscoverOptions::default()
    };
    assert_eq!(
        client.discover(CHAT, opts).await.expect("discover").len(),
        3
    );
    assert_eq!(
        client
            .discover(CHAT, DiscoverOptions::default())
            .await
            .expect("discover")
            .len(),
        7
    );
}

#[tokio::test]
async fn ipv4_shorthand_endpoints_are_refused_before_any_io() {
    let node = fake_node(&node_id(1), key(), vec![]).await;
    let port = node.url().rsplit(':').next().unwrap().to_owned();
    let mut entries = Vec::new();
    for (i, host) in [
        "127.1",
        "2130706433",
        "0x7f.1",
        "0177.0.0.1",
        "[::ffff:127.0.0.1]",
        "127.0.1",
    ]
    .iter()
    .enumerate()
    {
        let mut e = node.entry();
        e["node_id"] = j!(node_id(20 + i as u32));
        e["endpoint"] = j!(format!("http://{host}:{port}"));
        entries.push(e);
    }
    let dir = fake_directory(entries, Tickets::Off).await;
    let client = iicp_client::Client::builder()
        .directory_url(dir.base())
        .route_discovery(RouteDiscovery::Legacy)
        .sleeper(Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    assert!(client
        .discover(CHAT, DiscoverOptions::default())
        .await
        .expect("discover")
        .is_empty());
    let err = client.submit(chat_task()).await.expect_err("refused");
    assert_eq!(err.code(), &ErrorCode::NoNodesAvailable, "{err}");
    assert!(err.to_string().contains("Endpoint: 6"), "{err}");
    assert_eq!(err.status_code(), None, "the directory answered 200: {err}");
    assert!(!err.to_string().contains("HTTP 503"), "{err}");
    assert_eq!(node.count(), 0, "nothing was dialled");
}

#[tokio::test]
async fn all_nodes_failed_names_the_last_cause_and_redirects_have_their_own_code() {
    // a node that redirects to another origin
    let target = fake_node(&node_id(9), key(), vec![]).await;
    let location: &'static str = Box::leak(format!("{}/v1/task", target.url()).into_boxed_str());
    let (dir, _nodes) = mesh(vec![vec![Reply::Headed(
        307,
        j!({}),
        vec![("location", location)],
    )]])
    .await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let err = client
        .submit(chat_task())
        .await
        .expect_err("refused redirect");
    let last = err.last_node_error().map(|e| e.code().clone());
    let text = err.to_string();
    assert!(
        err.code() == &ErrorCode::RedirectRefused || last == Some(ErrorCode::RedirectRefused),
        "{err:?}"
    );
    assert!(
        text.contains("redirect"),
        "the cause is in the message: {text}"
    );
    assert_eq!(target.count(), 0);
}

#[tokio::test]
async fn the_builder_sets_retries_user_agent_headers_and_the_directory_timeout() {
    use iicp_client::{ErrorKind, RetryPolicy};
    // one attempt per node, no back-off sleep
    let (dir, nodes) = mesh(vec![vec![status(503)], vec![]]).await;
    let sleeper = Arc::new(RecordingSleeper::default());
    let client = builder(&dir, sleeper.clone())
        .retry(RetryPolicy {
            attempts_per_node: 1,
            ..RetryPolicy::default()
        })
        .user_agent("my-app/2.1")
        .header("x-tenant", "acme")
        .build()
        .expect("client");
    let done = client.submit(chat_task()).await.expect("submit");
    assert_eq!(done.node_id, node_id(2));
    assert_eq!(
        nodes.iter().map(FakeNode::count).collect::<Vec<_>>(),
        [1, 1]
    );
    assert!(sleeper.sleeps().is_empty());
    for call in dir.calls().iter().chain(nodes[1].calls().iter()) {
        assert_eq!(
            call.header("user-agent"),
            Some("my-app/2.1"),
            "{}",
            call.path
        );
        assert_eq!(call.header("x-tenant"), Some("acme"), "{}", call.path);
    }
    // the cap bounds the doubling
    let (dir, _nodes) = mesh(vec![vec![status(503); 4], vec![]]).await;
    let sleeper = Arc::new(RecordingSleeper::default());
    let client = builder(&dir, sleeper.clone())
        .retry(RetryPolicy {
            attempts_per_node: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(250),
        })
        .build()
        .expect("client");
    client.submit(chat_task()).await.expect("submit");
    assert_eq!(
        sleeper.sleeps(),
        [100, 200, 250, 250].map(Duration::from_millis).to_vec()
    );
    // bad settings are configuration errors, matched by kind
    for bad in [
        iicp_client::Client::builder().retry(RetryPolicy {
            attempts_per_node: 0,
            ..RetryPolicy::default()
        }),
        iicp_client::Client::builder().header("bad header", "x"),
        iicp_client::Client::builder().header("x-ok", "line\nbreak"),
        iicp_client::Client::builder().directory_timeout(Duration::ZERO),
    ] {
        let err = bad.build().expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert_eq!(err.code(), &ErrorCode::InvalidConfig);
    }
}

#[tokio::test]
async fn a_slow_directory_is_cut_at_the_directory_timeout() {
    let router = Router::new()
        .route(Method::GET, "/v1/discover", |_req: Request, _p| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            json(StatusCode::OK, &j!({"nodes": []}))
        })
        .nest_alias("/api");
    let server = serve(router).await.expect("serve");
    let client = iicp_client::Client::builder()
        .directory_url(format!("{}/api", server.url()))
        .route_discovery(RouteDiscovery::Legacy)
        .directory_timeout(Duration::from_millis(200))
        .build()
        .expect("client");
    let started = std::time::Instant::now();
    let err = client
        .discover(CHAT, DiscoverOptions::default())
        .await
        .expect_err("timeout");
    assert!(err.is_timeout(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "not cut at 200 ms"
    );
}

#[tokio::test]
async fn a_pinned_task_goes_to_its_node_or_nowhere() {
    let (dir, nodes) = mesh(vec![vec![], vec![], vec![]]).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let pin = iicp_client::ChatOptions {
        node_id: Some(node_id(3)),
        ..Default::default()
    };
    for _ in 0..3 {
        let r = client
            .chat_with(
                vec![iicp_client::ChatMessage::new("user", "hi")],
                pin.clone(),
            )
            .await
            .expect("chat");
        assert_eq!(r.node_id, node_id(3));
        // text() borrows the content string
        assert!(matches!(r.text(), std::borrow::Cow::Borrowed(_)));
        assert_eq!(r.text(), format!("hello from {}", node_id(3)));
    }
    assert_eq!(
        nodes.iter().map(FakeNode::count).collect::<Vec<_>>(),
        [0, 0, 3]
    );
    let listed = client
        .discover(
            CHAT,
            DiscoverOptions {
                node_id: Some(node_id(2)),
                ..DiscoverOptions::default()
            },
        )
        .await
        .expect("discover");
    assert_eq!(listed.len(), 1);
    let gone = iicp_client::ChatOptions {
        node_id: Some(node_id(42)),
        ..Default::default()
    };
    let err = client
        .chat_with(vec![iicp_client::ChatMessage::new("user", "hi")], gone)
        .await
        .expect_err("not listed");
    assert_eq!(err.code(), &ErrorCode::NoNodesAvailable);
}
