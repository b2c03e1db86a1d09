//! The PostgreSQL store on a real server (`iicp_testkit::postgres`, skipped outside CI
//! without the binaries): migrations and the shared key, group commit and conditional
//! writes, durability across a SIGKILL, and several directory instances on one
//! database acting as one directory (`docs/adr/0015-postgresql-store.md`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use iicp_directory::error::StoreError;
use iicp_directory::store::{PgStore, StateWrite};
use iicp_directory::{Config, Directory, ManualClock, Store};
use iicp_proto::crypto::mac::{challenge_response, response_hash, Receipt};
use iicp_proto::crypto::sign::{sign_delegation, sign_rename, OperatorKey};
use iicp_proto::crypto::token::{
    verify_consumer_token, verify_dispatch_ticket, DirectoryPublicKey, DispatchTicketCheck,
};
use rand_core::OsRng;
use serde_json::{json, Value};

const CHILD_ENV: &str = "IICP_PG_KILL_CHILD_URL";
const PUBLIC_URL: &str = "http://directory.test";

/// A raw connection to `url` for the tests' own SQL.
async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// Settings of a directory instance in the multi-instance tests: private mesh, no
/// probes, a fast state pull and sweep, one public URL for all instances (behind one
/// reverse proxy they share it).
fn instance_config() -> Config {
    let mut c = Config::default();
    c.private_mesh = true;
    c.liveness_probe = false;
    c.sync_interval = Duration::from_millis(100);
    c.sweep_interval = Duration::from_millis(100);
    c.public_url = Some(PUBLIC_URL.into());
    c
}

/// Two instances on a fresh database, on one manual clock; `None` without PostgreSQL.
async fn two_instances(tag: &str) -> Option<(String, ManualClock, TestDir, TestDir)> {
    let url = pg_database(tag).await?;
    let clock = ManualClock::starting_now();
    let a = instance(&url, &clock).await;
    let b = instance(&url, &clock).await;
    Some((url, clock, a, b))
}

async fn instance(url: &str, clock: &ManualClock) -> TestDir {
    let store = PgStore::connect(url).await.unwrap();
    let directory = Directory::builder()
        .config(instance_config())
        .clock(clock.clone())
        .store(store)
        .build()
        .await
        .unwrap();
    serve(directory, None).await
}

fn id_token(ack: &Value) -> (String, String) {
    (
        ack["node_id"].as_str().unwrap().to_owned(),
        ack["node_token"].as_str().unwrap().to_owned(),
    )
}

async fn discovered(base: &str, id: &str) -> bool {
    let r = get(&format!("{base}/v1/discover?intent={CHAT}&limit=50")).await;
    r.body["nodes"]
        .as_array()
        .is_some_and(|n| n.iter().any(|n| n["node_id"] == id))
}

async fn heartbeat(base: &str, id: &str, token: &str, extra: Value) -> Reply {
    let mut body = json!({"node_id": id});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    post(&format!("{base}/v1/heartbeat"), &body, Some(token)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_concurrent_starts_agree_on_one_key() {
    let Some(url) = pg_database("migrate").await else {
        return;
    };
    // Four stores open the empty database at once: one migrates, all succeed.
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::connect(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for o in opens {
        stores.push(o.await.unwrap().unwrap());
    }
    for s in &stores {
        assert_eq!(s.schema_version().await.unwrap(), 2);
    }
    // Concurrent first starts with different candidate keys agree on one.
    let seeds: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let s = s.clone();
            tokio::spawn(async move { s.directory_key_seed([i as u8 + 1; 32]).await })
        })
        .collect();
    let mut agreed = Vec::new();
    for s in seeds {
        agreed.push(s.await.unwrap().unwrap());
    }
    assert!(agreed.iter().all(|s| *s == agreed[0]), "{agreed:?}");
    assert!((1..=4).any(|i| agreed[0] == [i as u8; 32]));
    // Opening again migrates nothing and keeps the key.
    let again = PgStore::connect(&url).await.unwrap();
    assert_eq!(again.schema_version().await.unwrap(), 2);
    assert_eq!(again.directory_key_seed([9; 32]).await.unwrap(), agreed[0]);
    let db = sql(&url).await;
    let versions: i64 = db
        .query_one("SELECT count(*) FROM schema_version", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(versions, 1);
    // A database newer than this build is refused.
    db.execute("UPDATE schema_version SET version = 99", &[])
        .await
        .unwrap();
    let err = PgStore::connect(&url).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::SchemaTooNew {
                found: 99,
                supported: 2
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_name_the_database_without_its_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://dir:hunter2-secret@127.0.0.1:{port}/iicp");
    let err = PgStore::connect(&url).await.unwrap_err();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        text.push_str(&format!(" / {s}"));
        source = s.source();
    }
    assert!(matches!(err, StoreError::Connect { .. }), "{err:?}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        text.contains(&format!("postgres://dir:***@127.0.0.1:{port}/iicp")),
        "{text}"
    );
    let err = PgStore::connect("postgres://dir:hunter2@127.0.0.1:notaport/x")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::BadUrl { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("hunter2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_batches_and_conditional_writes() {
    let Some(url) = pg_database("gc").await else {
        return;
    };
    let store = PgStore::connect(&url).await.unwrap();
    let mut revs = Vec::new();
    for i in 0..200 {
        revs.push(store.put_node(record(i)).await.unwrap());
    }
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "revisions grow");
    // 200 writes queued at once share few statements, and all are durable.
    let pending: Vec<_> = (0..200u64)
        .map(|i| store.put_state(format!("node-{i:04}"), state(i + 1)))
        .collect();
    let unknown = store.put_state("no-such-node".into(), state(7));
    for p in pending {
        assert!(p.await.unwrap());
    }
    assert!(!unknown.await.unwrap());
    let stats = store.group_commit_stats();
    assert_eq!(stats.writes, 201);
    assert!(stats.commits < 100, "{stats:?}");
    assert!(stats.largest_batch >= 10, "{stats:?}");

    let other = PgStore::connect(&url).await.unwrap();
    let cursor = other
        .load_nodes()
        .await
        .unwrap()
        .iter()
        .map(|n| n.rev)
        .max()
        .unwrap();
    let n = other.load_node("node-0005".into()).await.unwrap().unwrap();
    assert_eq!(n.state, state(6));
    // A write over the revision read succeeds once; a second one over the same
    // (now stale) revision is refused, and an unknown node is told apart.
    let w = other
        .put_state_at("node-0005".into(), state(50), n.rev)
        .await
        .unwrap();
    let StateWrite::Written { rev } = w else {
        panic!("{w:?}")
    };
    assert!(rev > n.rev);
    assert_eq!(
        store
            .put_state_at("node-0005".into(), state(51), n.rev)
            .await
            .unwrap(),
        StateWrite::Conflict
    );
    assert_eq!(
        store
            .put_state_at("nope".into(), state(51), n.rev)
            .await
            .unwrap(),
        StateWrite::Unknown
    );
    assert_eq!(
        store
            .load_node("node-0005".into())
            .await
            .unwrap()
            .unwrap()
            .state,
        state(50)
    );
    // The state pull lists what was written after a cursor.
    let changes = store.state_changes(cursor).await.unwrap();
    assert_eq!(changes.cursor, rev);
    assert_eq!(changes.states.len(), 1);
    assert_eq!(changes.states[0].node_id, "node-0005");
    assert!(!changes.states[0].registration_changed);
    // Deleting is reported once, and takes the state with it.
    assert!(store.delete_node("node-0005".into()).await.unwrap());
    assert!(!store.delete_node("node-0005".into()).await.unwrap());
    assert!(store.load_node("node-0005".into()).await.unwrap().is_none());
}

/// The child process of `acknowledged_writes_survive_a_kill`: writes through a PgStore
/// until killed. Without the environment variable (a normal test run) it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_test_child_process() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    kill_child_writes(Arc::new(PgStore::connect(&url).await.unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_kill() {
    let Some(url) = pg_database("kill").await else {
        return;
    };
    let acked = kill_writer_child(
        "kill_test_child_process",
        CHILD_ENV,
        std::ffi::OsStr::new(&url),
    );
    let store = PgStore::connect(&url).await.unwrap();
    assert_every_ack_stored(&store.load_nodes().await.unwrap(), acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_act_as_one_directory() {
    let Some((_url, clock, a, b)) = two_instances("two").await else {
        return;
    };
    assert_eq!(a.directory.public_key(), b.directory.public_key());

    // register via A → discover, node detail and auth by token via B within 1 s
    let ack = register(
        &a.base,
        &register_body("http://127.0.0.1:19701", "eu-central", &["m"]),
    )
    .await;
    let (id, token) = id_token(&ack);
    let took = eventually(
        "B discovers a node registered via A",
        Duration::from_secs(1),
        || discovered(&b.base, &id),
    )
    .await;
    eprintln!("registration visible at B after {took:?}");
    let r = get(&format!("{}/v1/node/{id}", b.base)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = call(
        http::Method::GET,
        &format!("{}/v1/me", b.base),
        None,
        Some(&token),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["node_id"], id.as_str());

    // heartbeat via A, challenge answered via B (B's copy is reloaded for it)
    let hmac = ack["node_hmac_key"].as_str().unwrap();
    let r = heartbeat(&a.base, &id, &token, json!({"active_jobs": 1})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut challenge = r.body["challenge"].as_str().unwrap().to_owned();
    // each answer goes to the instance that did not send the challenge
    for base in [&b.base, &a.base, &b.base] {
        let r = heartbeat(
            base,
            &id,
            &token,
            json!({"challenge_response": challenge_response(hmac, &challenge)}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["challenge_verified"], true);
        challenge = r.body["challenge"].as_str().unwrap().to_owned();
    }

    // heartbeats via A keep the node alive at B: 60 s, heartbeat via A, 60 s more
    // (120 s after registration, past the 90 s window) — B took the last_seen of A's
    // heartbeat from the state pull, or it would expire the node
    clock.advance(Duration::from_secs(60));
    let r = heartbeat(&a.base, &id, &token, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    tokio::time::sleep(Duration::from_millis(400)).await;
    clock.advance(Duration::from_secs(60));
    assert!(
        discovered(&b.base, &id).await,
        "B expired a node alive at A"
    );
    // … and a node that stops heartbeating expires at both
    clock.advance(Duration::from_secs(91));
    assert!(!discovered(&a.base, &id).await && !discovered(&b.base, &id).await);
    let r = heartbeat(&b.base, &id, &token, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually("A sees B's heartbeat", Duration::from_secs(1), || {
        discovered(&a.base, &id)
    })
    .await;

    // token rotation via A → the new token authenticates at B, the old one no longer
    let mut body = register_body("http://127.0.0.1:19701", "eu-central", &["m"]);
    body["node_id"] = json!(id);
    body["current_node_token"] = json!(token);
    let rotated = register(&a.base, &body).await;
    let (_, new_token) = id_token(&rotated);
    let r = heartbeat(&b.base, &id, &new_token, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(
        "B refuses the old token",
        Duration::from_secs(1),
        || async {
            call(
                http::Method::GET,
                &format!("{}/v1/me", b.base),
                None,
                Some(&token),
            )
            .await
            .status
                == 401
        },
    )
    .await;

    // credits recorded via A are the balance at B
    let rh = response_hash(&json!({"ok": 1}));
    let nonce = "0123456789abcdef0123456789abcdef";
    let sig = Receipt {
        task_id: "t1",
        tokens_used: 3000,
        nonce,
        response_hash: &rh,
        querying_node_id: None,
    }
    .sign(hmac);
    let award = json!({"node_id": id, "task_id": "t1", "tokens_used": 3000, "nonce": nonce, "signature": sig, "response_hash": rh});
    let r = post(
        &format!("{}/v1/credits/award", a.base),
        &award,
        Some(&new_token),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = post(
        &format!("{}/v1/credits/award", b.base),
        &award,
        Some(&new_token),
    )
    .await;
    assert_eq!(
        r.status, 409,
        "a replay through the other instance: {}",
        r.body
    );
    let r = call(
        http::Method::GET,
        &format!("{}/v1/credits/balance", b.base),
        None,
        Some(&new_token),
    )
    .await;
    assert_eq!(r.body["balance"], 3.0, "{}", r.body);

    // delete via A → gone at B within 1 s
    let r = call(
        http::Method::DELETE,
        &format!("{}/v1/register", a.base),
        Some(&json!({"node_id": id})),
        Some(&new_token),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(
        "B forgets a node deleted via A",
        Duration::from_secs(1),
        || async { get(&format!("{}/v1/node/{id}", b.base)).await.status == 404 },
    )
    .await;
    assert!(!discovered(&b.base, &id).await);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renames_and_tokens_of_one_instance_hold_at_the_other() {
    let Some((_url, clock, a, b)) = two_instances("tokens").await else {
        return;
    };
    let now = iicp_directory::Clock::now_secs(&clock);

    // A node bound to an operator (§17.2), registered via A.
    let op = OperatorKey::generate(&mut OsRng);
    let id = "5f0c8a6e-1d1e-4c3a-9b7e-0a1b2c3d4e5f";
    let mut body = register_body("http://127.0.0.1:19702", "eu-central", &["m"]);
    body["node_id"] = json!(id);
    body["operator_delegation"] =
        serde_json::to_value(sign_delegation(&op, id, now + 3600)).unwrap();
    let caller = register(&a.base, &body).await;
    let target = register(
        &a.base,
        &register_body("http://127.0.0.1:19703", "eu-central", &["m"]),
    )
    .await;
    let (target_id, _) = id_token(&target);
    let registry = format!("{}/v1/registry/nodes/{id}", b.base);
    eventually("B knows the node", Duration::from_secs(1), || async {
        get(&registry).await.status == 200
    })
    .await;
    // rename via A → the name shows at B
    let rename = sign_rename(&op, "Acme Labs", now);
    let r = post(
        &format!("{}/v1/operator/rename", a.base),
        &serde_json::to_value(&rename).unwrap(),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(
        "B shows the new operator name",
        Duration::from_secs(1),
        || async { get(&registry).await.body["operator_display_name"] == "Acme Labs" },
    )
    .await;
    // the replay through B is refused (the name is in the database)
    let r = post(
        &format!("{}/v1/operator/rename", b.base),
        &serde_json::to_value(&rename).unwrap(),
        None,
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);

    // a dispatch ticket and a consumer token issued by A verify with B's key
    let key = get(&format!("{}/v1/directory-key", b.base)).await;
    let pk = DirectoryPublicKey::from_hex(key.body["public_key"].as_str().unwrap()).unwrap();
    let r = post(
        &format!("{}/v1/dispatch/ticket", a.base),
        &json!({"intent": CHAT, "qos": "interactive", "limit": 10}),
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let routed = r.body["node_id"].as_str().unwrap();
    verify_dispatch_ticket(
        &pk,
        r.body["ticket"].as_str().unwrap(),
        &DispatchTicketCheck {
            issuer: PUBLIC_URL,
            node_id: routed,
            intent: CHAT,
            policy_manifest_sha256: None,
        },
        now,
    )
    .unwrap();
    let r = post(
        &format!("{}/v1/consumer-token", a.base),
        &json!({"target_node_id": target_id, "intent": CHAT}),
        caller["node_token"].as_str(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let claims = verify_consumer_token(
        &pk,
        r.body["token"].as_str().unwrap(),
        &target_id,
        CHAT,
        now,
    )
    .unwrap();
    assert_eq!(claims.sub, id);
    // the JWT issued by A authenticates at B
    let jwt = caller["jwt_token"].as_str().unwrap();
    let r = call(
        http::Method::GET,
        &format!("{}/v1/me", b.base),
        None,
        Some(jwt),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeps_run_on_one_instance_and_move_when_it_goes() {
    let Some((url, clock, a, b)) = two_instances("sweep").await else {
        return;
    };
    let one = || a.directory.is_sweeper() as u8 + b.directory.is_sweeper() as u8 == 1;
    eventually("one sweeper", Duration::from_secs(3), || async { one() }).await;
    // stays one for a while
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(one(), "exactly one instance sweeps");
    }
    let (sweeper, other) = if a.directory.is_sweeper() {
        (a, b)
    } else {
        (b, a)
    };
    let ack = register(
        &other.base,
        &register_body("http://127.0.0.1:19704", "eu-central", &["m"]),
    )
    .await;
    let (id, _) = id_token(&ack);
    // the sweeper instance goes away: its lease session ends, the other takes over
    let directory = sweeper.directory.clone();
    sweeper.stop().await;
    drop(directory);
    let took = eventually(
        "the other instance takes the sweep over",
        Duration::from_secs(5),
        || async { other.directory.is_sweeper() },
    )
    .await;
    eprintln!("sweep lease moved after {took:?}");
    // and it sweeps: past the 7-day retention the dormant node is deleted
    clock.advance(Duration::from_secs(8 * 24 * 3600));
    eventually(
        "the new sweeper removes the dormant node",
        Duration::from_secs(3),
        || async { get(&format!("{}/v1/node/{id}", other.base)).await.status == 404 },
    )
    .await;
    let db = sql(&url).await;
    let left: i64 = db
        .query_one("SELECT count(*) FROM nodes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects_after_its_backend_is_terminated() {
    let Some(url) = pg_database("listen").await else {
        return;
    };
    let clock = ManualClock::starting_now();
    let mut config = instance_config();
    // only the announcements and the resync after the reconnect may carry the change
    config.sync_interval = Duration::from_secs(3600);
    let store = PgStore::connect(&url).await.unwrap();
    let b = serve(
        Directory::builder()
            .config(config)
            .clock(clock.clone())
            .store(store)
            .build()
            .await
            .unwrap(),
        None,
    )
    .await;
    let a = instance(&url, &clock).await;
    let db = sql(&url).await;
    let terminate = || async {
        db.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = 'iicp-directory-listener' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .len()
    };
    assert_eq!(terminate().await, 2, "both instances listen");
    // Registers a node via A and waits until B discovers it.
    let register_seen_at_b = |port: u16, what: &'static str, within: Duration| {
        let (a, b) = (a.base.clone(), b.base.clone());
        async move {
            let ack = register(
                &a,
                &register_body(&format!("http://127.0.0.1:{port}"), "eu-central", &["m"]),
            )
            .await;
            let (id, _) = id_token(&ack);
            eventually(what, within, || discovered(&b, &id)).await;
        }
    };
    // registered while B's listener is down: B learns it from the resync after reconnecting
    register_seen_at_b(
        19705,
        "B resyncs after reconnecting",
        Duration::from_secs(5),
    )
    .await;
    // and the reconnected listener delivers later changes
    register_seen_at_b(
        19706,
        "B hears of a registration after the reconnect",
        Duration::from_secs(1),
    )
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_instance_loses_no_acknowledged_heartbeat() {
    let Some((url, _clock, a, b)) = two_instances("drop").await else {
        return;
    };
    let mut nodes = Vec::new();
    for i in 0..20u16 {
        let ack = register(
            &a.base,
            &register_body(
                &format!("http://127.0.0.1:{}", 19800 + i),
                "eu-central",
                &["m"],
            ),
        )
        .await;
        nodes.push(id_token(&ack));
    }
    // 20 nodes heartbeat 5 times each through A, all at once; then A goes away.
    let base = Arc::new(a.base.clone());
    let mut tasks = Vec::new();
    for (id, token) in nodes {
        let base = Arc::clone(&base);
        tasks.push(tokio::spawn(async move {
            let mut last = String::new();
            for k in 1..=5u32 {
                let r = heartbeat(&base, &id, &token, json!({"active_jobs": k})).await;
                assert_eq!(r.status, 200, "{}", r.body);
                last = r.body["challenge"].as_str().unwrap().to_owned();
            }
            (id, token, last)
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.push(t.await.unwrap());
    }
    let directory = a.directory.clone();
    a.stop().await;
    drop(directory);
    // Every acknowledged heartbeat is in the database, and B serves it: the last
    // challenge A sent is the one B verifies.
    let store = PgStore::connect(&url).await.unwrap();
    for (id, token, challenge) in &acked {
        let n = store.load_node(id.clone()).await.unwrap().unwrap();
        assert_eq!(n.state.active_jobs, 5, "{id}");
        assert_eq!(
            n.state.challenge.as_deref(),
            Some(challenge.as_str()),
            "{id}"
        );
        let hmac = n.credentials.hmac_key.expose().to_owned();
        let r = heartbeat(
            &b.base,
            id,
            token,
            json!({"challenge_response": challenge_response(&hmac, challenge)}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["challenge_verified"], true);
    }
    b.stop().await;
}
