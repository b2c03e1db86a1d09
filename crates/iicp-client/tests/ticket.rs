//! Ticketed discovery (PROTOCOL.md §8.5): tickets signed by a `DirectoryKey`, exclusion
//! of failed nodes, refusal of unverifiable tickets, and the fallback to GET discover.

use std::sync::Arc;

use iicp_client::{ErrorCode, RouteDiscovery, Strategy};
use iicp_proto::crypto::cx::CxKeyPair;
use iicp_testkit::fake::Reply;
use iicp_testkit::fake::*;
use iicp_testkit::time::*;
use rand_core::OsRng;

fn key() -> Option<CxKeyPair> {
    Some(CxKeyPair::generate(&mut OsRng))
}

#[tokio::test]
async fn ticketed_dispatch_is_used_when_offered() {
    let a = fake_node(&node_id(1), key(), vec![]).await;
    let dir = fake_directory(vec![a.entry()], Tickets::On).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .strategy(Strategy::weighted_v1())
        .build()
        .expect("client");
    let done = client.submit(chat_task()).await.expect("submit");
    assert_eq!(done.node_id, node_id(1));
    assert_eq!(done.selection_profile, "directory_ticket_v1");
    assert_eq!(dir.count("/api/v1/dispatch/ticket"), 1);
    assert_eq!(dir.count("/api/v1/discover"), 0);
    assert_eq!(dir.count("/api/v1/directory-key"), 1);
    let req = dir
        .calls()
        .into_iter()
        .find(|c| c.path.ends_with("/dispatch/ticket"))
        .expect("ticket request");
    let body = req.json();
    assert_eq!(body["intent"], CHAT);
    assert!(body.get("payload").is_none() && body.get("messages").is_none());
    assert!(req.header("traceparent").is_some());
    // the key is cached across submits
    client.submit(chat_task()).await.expect("again");
    assert_eq!(dir.count("/api/v1/directory-key"), 1);
}

#[tokio::test]
async fn failed_ticket_nodes_are_excluded_from_the_next_ticket() {
    let a = fake_node(
        &node_id(1),
        key(),
        vec![status(503), status(503), status(503)],
    )
    .await;
    let b = fake_node(&node_id(2), key(), vec![]).await;
    let dir = fake_directory(vec![a.entry(), b.entry()], Tickets::On).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let done = client.submit(chat_task()).await.expect("submit");
    assert_eq!(done.node_id, node_id(2));
    assert_eq!((a.count(), b.count()), (3, 1));
    let tickets: Vec<_> = dir
        .calls()
        .into_iter()
        .filter(|c| c.path.ends_with("/dispatch/ticket"))
        .collect();
    assert_eq!(tickets.len(), 2);
    assert!(tickets[0].json().get("exclude_node_id_prefixes").is_none());
    assert_eq!(
        tickets[1].json()["exclude_node_id_prefixes"],
        serde_json::json!([&node_id(1)[..8]])
    );
    // the same task id and traceparent on both nodes
    assert_eq!(
        a.calls()[0].json()["task_id"],
        b.calls()[0].json()["task_id"]
    );
    assert_eq!(
        a.calls()[0].header("traceparent"),
        b.calls()[0].header("traceparent")
    );
}

#[tokio::test]
async fn no_route_available_ends_ticketed_discovery() {
    let a = fake_node(
        &node_id(1),
        key(),
        vec![status(503), status(503), status(503)],
    )
    .await;
    let dir = fake_directory(vec![a.entry()], Tickets::On).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let err = client.submit(chat_task()).await.expect_err("exhausted");
    assert_eq!(err.code(), &ErrorCode::AllNodesFailed);
    assert_eq!(dir.count("/api/v1/dispatch/ticket"), 2);
    assert_eq!(
        dir.count("/api/v1/discover"),
        0,
        "no fallback after no_route_available"
    );

    let empty = fake_directory(vec![], Tickets::On).await;
    let client = builder(&empty, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let err = client.submit(chat_task()).await.expect_err("no route");
    assert_eq!(err.code(), &ErrorCode::NoNodesAvailable);
}

#[tokio::test]
async fn unverifiable_tickets_are_refused_before_any_node_call() {
    let a = fake_node(&node_id(1), key(), vec![]).await;
    let dir = fake_directory(vec![a.entry()], Tickets::BadSignature).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let err = client.submit(chat_task()).await.expect_err("bad ticket");
    assert_eq!(err.code().as_str(), "IICP-DISPATCH-TICKET-UNVERIFIED");
    assert_eq!(a.server.accepted(), 0);
}

#[tokio::test]
async fn falls_back_to_discover_and_remembers_it() {
    let a = fake_node(&node_id(1), key(), vec![]).await;
    let dir = fake_directory(vec![a.entry()], Tickets::Off).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .build()
        .expect("client");
    let done = client.submit(chat_task()).await.expect("submit");
    assert_eq!(done.selection_profile, "deterministic");
    client.clear_discovery_cache();
    client.submit(chat_task()).await.expect("again");
    assert_eq!(dir.count("/api/v1/dispatch/ticket"), 1, "not asked again");
    assert_eq!(dir.count("/api/v1/discover"), 2);

    // `Ticketed` mode refuses a directory without tickets
    let strict = builder(&dir, Arc::new(RecordingSleeper::default()))
        .route_discovery(RouteDiscovery::Ticketed)
        .build()
        .expect("client");
    let err = strict.submit(chat_task()).await.expect_err("no tickets");
    assert_eq!(err.code().as_str(), "IICP-DISPATCH-TICKET-UNAVAILABLE");

    // `Legacy` mode never asks for tickets
    let ticketing = fake_directory(vec![a.entry()], Tickets::On).await;
    let legacy = builder(&ticketing, Arc::new(RecordingSleeper::default()))
        .route_discovery(RouteDiscovery::Legacy)
        .build()
        .expect("client");
    legacy.submit(chat_task()).await.expect("legacy");
    assert_eq!(ticketing.count("/api/v1/dispatch/ticket"), 0);
}

#[tokio::test]
async fn a_recent_tickets_route_serves_the_next_tasks_until_it_ages_or_fails() {
    let a = fake_node(&node_id(1), key(), vec![Reply::Ok, Reply::Ok]).await;
    let b = fake_node(&node_id(2), key(), vec![]).await;
    let dir = fake_directory(vec![a.entry(), b.entry()], Tickets::On).await;
    let clock = Arc::new(iicp_client::time::ManualClock::starting_now());
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .clock(clock.clone())
        .build()
        .expect("client");
    let tickets = || dir.count("/api/v1/dispatch/ticket");
    // within a second: one ticket serves every task of the query
    for _ in 0..3 {
        let done = client.submit(chat_task()).await.expect("submit");
        assert_eq!(done.node_id, node_id(1));
        assert_eq!(done.selection_profile, "directory_ticket_v1");
    }
    assert_eq!(tickets(), 1);
    assert_eq!(a.count(), 3);
    // another query (a model) asks for its own ticket
    let mut task = chat_task();
    task.route.model = Some("m".into());
    client.submit(task).await.expect("with a model");
    assert_eq!(tickets(), 2);
    // older than a second: a new ticket
    clock.advance(std::time::Duration::from_millis(1_100));
    client.submit(chat_task()).await.expect("later");
    assert_eq!(tickets(), 3);
    // the ticket's node fails: the next ticket excludes it, and the failed node's
    // ticket is not reused afterwards
    a.state
        .script
        .lock()
        .extend([status(503), status(503), status(503)]);
    let done = client.submit(chat_task()).await.expect("fails over");
    assert_eq!(done.node_id, node_id(2));
    assert_eq!(tickets(), 4);
    let done = client.submit(chat_task()).await.expect("after the failure");
    assert_eq!(tickets(), 5, "the failed node's ticket was forgotten");
    assert_eq!(done.node_id, node_id(1), "the directory's choice again");
}

#[tokio::test]
async fn tickets_are_not_reused_without_a_discovery_cache() {
    let a = fake_node(&node_id(1), key(), vec![]).await;
    let dir = fake_directory(vec![a.entry()], Tickets::On).await;
    let client = builder(&dir, Arc::new(RecordingSleeper::default()))
        .discovery_cache_ttl(std::time::Duration::ZERO)
        .build()
        .expect("client");
    for _ in 0..2 {
        client.submit(chat_task()).await.expect("submit");
    }
    assert_eq!(dir.count("/api/v1/dispatch/ticket"), 2);
}
