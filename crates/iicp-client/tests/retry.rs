//! The retry rules of DESIGN §4.9 against scripted nodes: exact attempt counts, the
//! back-off envelope, node switch, no retry on other 4xx / 502, the circuit breaker,
//! one task id and one traceparent per logical submit.

use std::sync::Arc;
use std::time::Duration;

use iicp_client::time::ManualClock;
use iicp_client::{Error, ErrorCode, RouteDiscovery};
use iicp_proto::crypto::cx::CxKeyPair;
use iicp_testkit::fake::*;
use iicp_testkit::server::*;
use iicp_testkit::time::*;
use rand_core::OsRng;

fn key() -> Option<CxKeyPair> {
    Some(CxKeyPair::generate(&mut OsRng))
}

async fn mesh(scripts: Vec<Vec<Reply>>) -> (FakeDirectory, Vec<FakeNode>) {
    let mut nodes = Vec::new();
    for (i, script) in scripts.into_iter().enumerate() {
        nodes.push(fake_node(&node_id(i as u32 + 1), key(), script).await);
    }
    let dir = fake_directory(nodes.iter().map(FakeNode::entry).collect(), Tickets::Off).await;
    (dir, nodes)
}

fn counts(nodes: &[FakeNode]) -> Vec<usize> {
    nodes.iter().map(FakeNode::count).collect()
}

#[tokio::test]
async fn retries_503_three_times_then_switches_node() {
    let (dir, nodes) = mesh(vec![vec![status(503), status(503), status(503)], vec![]]).await;
    let sleeper = Arc::new(RecordingSleeper::default());
    let client = builder(&dir, sleeper.clone()).build().expect("client");
    let done = client.submit(chat_task()).await.expect("submit");
    assert_eq!(done.node_id, node_id(2));
    assert_eq!(done.attempts, 4);
    assert_eq!(counts(&nodes), vec![3, 1]);
    // 200 ms × 2^n with r = 0.5 (no jitter); no sleep after the third failure
    assert_eq!(
        sleeper.sleeps(),
        vec![Duration::from_millis(200), Duration::from_millis(400)]
    );
}

#[tokio::test]
async fn retries_429_on_the_same_node_until_it_succeeds() {
    let (dir, nodes) = mesh(vec![vec![status(429), status(429)], vec![]]).await;
    let sleeper = Arc::new(RecordingSleeper::default());
    let client = builder(&dir, sleeper.clone()).build().expect("client");
    let done = client.submit(chat_task()).await.expect("submit");
    assert_eq!(done.node_id, node_id(1));
    assert_eq!(done.attempts, 3);
    assert_eq!(counts(&nodes), vec![3, 0]);
    assert_eq!(sleeper.sleeps().len(), 2);
}

#[tokio::test]
async fn backoff_stays_within_twenty_percent() {
    for (r, lo, hi) in [(0.0, 160, 320), (0.999_999, 240, 480)] {
        let (dir, _nodes) = mesh(vec![vec![status(503), status(503), status(503)], vec![]]).await;
        let sleeper = Arc::new(RecordingSleeper::default());
        let client = builder(&dir, sleeper.clone())
            .random(Arc::new(FixedRandom(r)))
            .build()
            .expect("client");
        client.submit(chat_task()).await.expect("submit");
        let s = sleeper.sleeps();
        assert_eq!(s.len(), 2);
        assert!(s[0].as_millis().abs_diff(lo) <= 1, "{s:?}");
        assert!(s[1].as_millis().abs_diff(hi) <= 1, "{s:?}");
    }
    for n in 0..4u32 {
        for i in 0..=20 {
            let d = iicp_client::backoff(n, f64::from(i) / 20.0).as_secs_f64();
            let base = 0.2 * f64::from(1u32 << n);
            assert!(
                d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9,
                "n={n} d={d}"
            );
        }
    }
}

#[tokio::test]
async fn capacity_exceeded_switches_node_at_once() {
    for reply in [capacity_exceeded(), e021_429()] {
        let (dir, nodes) = mesh(vec![vec![reply], vec![]]).await;
        let sleeper = Arc::new(RecordingSleeper::default());
        let client = builder(&dir, sleeper.clone()).build().expect("client");
        let done = client.submit(chat_task()).await.expect("submit");
        assert_eq!(done.node_id, node_id(2));
        assert_eq!(done.attempts, 2);
        assert_eq!(counts(&nodes), vec![1, 1]);
        assert!(
            sleeper.sleeps().is_empty(),
            "no back-off on capacity_exceeded"
        );
    }
}

#[tokio::test]
async fn no_retry_on_502_or_other_4xx() {
    for (code, expected) in [
        (502, ErrorCode::BackendError),
        (400, ErrorCode::ValidationError),
        (401, ErrorCode::Unauthorized),
    ] {
        let (dir, nodes) = mesh(vec![vec![status(code)], vec![]]).await;
        let sleeper = Arc::new(RecordingSleeper::default());
        let client = builder(&dir, sleeper.clone()).build().expect("client");
        let err = client.submit(chat_task()).await.expect_err("must fail");
        assert_eq!(err.code(), &expected, "{code}");
        assert_eq!(err.status_code(), Some(code));
        assert_eq!(err.node_id(), Some(node_id(1).as_str()));
        assert_eq!(
            counts(&nodes),
            vec![1, 0],
            "{code}: no retry, no other node"
        );
        assert!(sleeper.sleeps().is_empty());
    }
}

#[tokio::test]
async fn timeout_moves_to_the_next_node() {
    let (dir, nodes) = mesh(vec![vec![Reply::Sleep(Duration::from_secs(5))], vec![]]).await;
    let sleeper = Arc::new(RecordingSleeper::default());
    let client = builder(&dir, sleeper.clone()).build().expect("client");
    let started = std::time::Instant::now();
    let done = client
        .submit(chat_task().with_timeout_ms(300))
        .await
        .expect("submit");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(done.node_id, node_id(2));
    assert_eq!(counts(&nodes), vec![1, 1]);
    assert!(sleeper.sleeps().is_empty());
}

#[tokio::test]
async fn connection_refused_moves_to_the_next_node() {
    // a port that was bound and released: nothing listens there
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let dead_url = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let good = fake_node(&node_id(2), key(), vec![]).await;
    let dead_key = CxKeyPair::generate(&mut OsRng);
    let dir = fake_directory(
        vec![
            node_entry(&node_id(1), &dead_url, Some(&dead_key), &[]),
            good.entry(),
        ],
        Tickets::Off,
    )
    .await;
    let sleeper = Arc::new(RecordingSleeper::default());
    let client = builder(&dir, sleeper.clone()).build().expect("client");
    let done = client.submit(chat_task()).await.expect("submit");
    assert_eq!(done.node_id, node_id(2));
    assert_eq!(done.attempts, 2);
    assert!(sleeper.sleeps().is_empty());
}

#[tokio::test]
async fn all_nodes_failed_after_three_candidates() {
    let fail3 = || vec![status(503), status(503), status(503)];
    let (dir, nodes) = mesh(vec![fail3(), fail3(), fail3(), vec![]]).await;
    let sleeper = Arc::new(RecordingSleeper::default());
    let client = builder(&dir, sleeper.clone()).build().expect("client");
    let err = client.submit(chat_task()).await.expect_err("must fail");
    assert_eq!(err.code(), &ErrorCode::AllNodesFailed);
    assert_eq!(counts(&nodes), vec![3, 3, 3, 0], "at most 3 candidates");
    assert_eq!(sleeper.sleeps().len(), 6);
    let last = err.last_node_error().expect("last node error kept");
    assert_eq!(last.code(), &ErrorCode::TemporarilyUnavailable);
    assert_eq!(last.status_code(), Some(503));
    assert_eq!(last.node_id(), Some(node_id(3).as_str()));
    assert!(std::error::Error::source(&err).is_some());
    // every node failed transiently (503): trying again later may succeed
    assert!(err.is_retryable());
    assert!(last.is_retryable());
}

#[tokio::test]
async fn wrong_task_id_is_a_node_failure() {
    let (dir, nodes) = mesh(vec![vec![Reply::WrongTaskId], vec![]]).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let done = client.submit(chat_task()).await.expect("submit");
    assert_eq!(done.node_id, node_id(2));
    assert_eq!(counts(&nodes), vec![1, 1]);
}

#[tokio::test]
async fn one_task_id_and_one_traceparent_across_attempts() {
    let (dir, nodes) = mesh(vec![
        vec![status(503), status(503), status(503)],
        vec![status(429)],
    ])
    .await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let done = client.submit(chat_task()).await.expect("submit");
    let calls: Vec<Recorded> = nodes.iter().flat_map(FakeNode::calls).collect();
    assert_eq!(calls.len(), 5);
    let tp = calls[0]
        .header("traceparent")
        .expect("traceparent")
        .to_owned();
    let task_id = calls[0].json()["task_id"]
        .as_str()
        .expect("task_id")
        .to_owned();
    // W3C format: 00-<32 hex>-<16 hex>-01
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1].len(), 32);
    assert_eq!(parts[2].len(), 16);
    assert_eq!(parts[3], "01");
    assert!(tp
        .chars()
        .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)));
    assert!(iicp_proto::ids::TaskId::parse(&task_id).is_ok(), "UUID v4");
    for c in &calls {
        assert_eq!(c.header("traceparent"), Some(tp.as_str()));
        assert_eq!(c.json()["task_id"], task_id.as_str());
        assert_eq!(c.json()["trace"]["trace_id"], parts[1]);
        assert_eq!(c.header("x-iicp-version"), Some("1.5"));
        assert_eq!(c.header("x-iicp-trace-id"), Some(parts[1]));
    }
    assert_eq!(done.task_id.as_str(), task_id);
    assert_eq!(done.traceparent.to_string(), tp);
    // a second logical submit gets new ids
    let again = client.submit(chat_task()).await.expect("submit");
    assert_ne!(again.task_id.as_str(), task_id);
    assert_ne!(again.traceparent.to_string(), tp);
}

#[tokio::test]
async fn circuit_breaker_opens_after_five_failures_for_thirty_seconds() {
    let always_503: Vec<Reply> = (0..50).map(|_| status(503)).collect();
    let (dir, nodes) = mesh(vec![always_503, vec![]]).await;
    let clock = Arc::new(ManualClock::starting_now());
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .clock(clock.clone())
        .route_discovery(RouteDiscovery::Legacy)
        .build()
        .expect("client");
    // submit 1: three 503s on A (3 failures), B answers
    client.submit(chat_task()).await.expect("submit 1");
    assert_eq!(counts(&nodes), vec![3, 1]);
    // submit 2: two more 503s open A's breaker (5), the third attempt is not sent
    client.submit(chat_task()).await.expect("submit 2");
    assert_eq!(counts(&nodes), vec![5, 2]);
    // submit 3: A is skipped entirely
    client.submit(chat_task()).await.expect("submit 3");
    assert_eq!(counts(&nodes), vec![5, 3]);
    clock.advance(Duration::from_secs(29));
    client.submit(chat_task()).await.expect("submit 4");
    assert_eq!(counts(&nodes), vec![5, 4], "still open at 29 s");
    // after 30 s one probe goes to A; it fails and the breaker reopens
    clock.advance(Duration::from_secs(1));
    client.submit(chat_task()).await.expect("submit 5");
    assert_eq!(counts(&nodes), vec![6, 5], "exactly one probe");
    client.submit(chat_task()).await.expect("submit 6");
    assert_eq!(counts(&nodes), vec![6, 6], "reopened");
}

#[tokio::test]
async fn half_open_probe_success_closes_the_breaker() {
    let mut script: Vec<Reply> = (0..5).map(|_| status(503)).collect();
    script.push(Reply::Ok);
    let (dir, nodes) = mesh(vec![script, vec![]]).await;
    let clock = Arc::new(ManualClock::starting_now());
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .clock(clock.clone())
        .build()
        .expect("client");
    client.submit(chat_task()).await.expect("1");
    client.submit(chat_task()).await.expect("2");
    assert_eq!(counts(&nodes)[0], 5);
    clock.advance(Duration::from_secs(30));
    let done = client.submit(chat_task()).await.expect("probe");
    assert_eq!(done.node_id, node_id(1));
    let done = client.submit(chat_task()).await.expect("closed");
    assert_eq!(done.node_id, node_id(1));
    assert_eq!(counts(&nodes)[0], 7);
}

#[allow(dead_code)]
fn _assert_error_is_send_sync(e: Error) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}
