//! Lifecycle over real HTTP (PROTOCOL.md §8.2–§8.6, §9.1): register, heartbeat with the
//! HMAC challenge, token rotation, deregister; discover filters, scoring, ordering,
//! expiry on an injected clock, `view=public`, and the `/api` prefix. Both stores.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use iicp_directory::ManualClock;
use iicp_proto::crypto::mac::challenge_response;
use serde_json::{json, Value};

async fn heartbeat(base: &str, node_id: &str, token: &str, extra: Value) -> Reply {
    let mut body = json!({"node_id": node_id});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    post(&format!("{base}/api/v1/heartbeat"), &body, Some(token)).await
}

#[tokio::test]
async fn register_heartbeat_rotate_deregister() {
    for backend in backends() {
        let clock = ManualClock::starting_now();
        let d = start_mesh(backend, &clock).await;
        let base = d.base.clone();

        let ack = register(
            &base,
            &register_body("http://127.0.0.1:19001", "eu-central", &["m1"]),
        )
        .await;
        for field in [
            "node_id",
            "node_token",
            "node_hmac_key",
            "proxy_token",
            "jwt_token",
            "observed_source_ip",
            "directory",
        ] {
            assert!(
                ack[field].as_str().is_some_and(|s| !s.is_empty()),
                "{backend:?}: ACK lacks {field}: {ack}"
            );
        }
        assert!(ack.get("expires_at").is_some());
        assert_eq!(ack["observed_source_ip"], "127.0.0.1");
        let node_id = ack["node_id"].as_str().unwrap().to_owned();
        let token = ack["node_token"].as_str().unwrap().to_owned();
        let key = ack["node_hmac_key"].as_str().unwrap().to_owned();
        assert_eq!(token.len(), 64);

        // heartbeat → challenge
        let r = heartbeat(
            &base,
            &node_id,
            &token,
            json!({"load": 0.25, "active_jobs": 1}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["ok"], true);
        assert_eq!(r.body["next_heartbeat_ms"], 30000);
        let challenge = r.body["challenge"].as_str().unwrap().to_owned();
        assert_eq!(challenge.len(), 32);

        // correct challenge response
        let good = challenge_response(&key, &challenge);
        let r = heartbeat(&base, &node_id, &token, json!({"challenge_response": good})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["challenge_verified"], true);
        let challenge2 = r.body["challenge"].as_str().unwrap().to_owned();
        assert_ne!(challenge, challenge2, "a fresh challenge in every PONG");

        // wrong challenge response → 401 with a clear code
        let bad = challenge_response("not-the-key", &challenge2);
        let r = heartbeat(&base, &node_id, &token, json!({"challenge_response": bad})).await;
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.code(), Some("invalid_challenge_response"));
        // the directory keeps serving; the right answer still works
        let r = heartbeat(
            &base,
            &node_id,
            &token,
            json!({"challenge_response": challenge_response(&key, &challenge2)}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);

        // JWT and X-Node-Id forms of /v1/me
        let jwt = ack["jwt_token"].as_str().unwrap();
        let r = call(Method::GET, &format!("{base}/v1/me"), None, Some(jwt)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["node_id"], node_id.as_str());
        assert_eq!(r.body["endpoint"], "http://127.0.0.1:19001");

        // re-register with current_node_token rotates the token
        let mut body = register_body("http://127.0.0.1:19001", "eu-central", &["m1"]);
        body["node_id"] = json!(node_id);
        body["current_node_token"] = json!(token);
        let ack2 = register(&base, &body).await;
        assert_eq!(ack2["node_id"], node_id.as_str());
        assert_eq!(ack2["recovered"], true);
        let token2 = ack2["node_token"].as_str().unwrap().to_owned();
        assert_ne!(token, token2);
        let r = heartbeat(&base, &node_id, &token, json!({})).await;
        assert_eq!(r.status, 401, "old token must stop working: {}", r.body);
        assert_eq!(r.code(), Some("unauthorized"));
        let r = call(Method::GET, &format!("{base}/v1/me"), None, Some(jwt)).await;
        assert_eq!(r.status, 401, "old JWT must stop working");
        let r = heartbeat(&base, &node_id, &token2, json!({})).await;
        assert_eq!(r.status, 200, "{}", r.body);

        // a secured node (cx key on record) cannot be re-registered without proof
        let mut body = register_body("http://127.0.0.1:19001", "eu-central", &["m1"]);
        body["node_id"] = json!(node_id);
        let r = post(&format!("{base}/v1/register"), &body, None).await;
        assert_eq!(r.status, 403, "{}", r.body);
        assert_eq!(r.code(), Some("IICP-E049"));
        body["current_node_token"] = json!(token);
        let r = post(&format!("{base}/v1/register"), &body, None).await;
        assert_eq!(r.status, 403, "stale current_node_token: {}", r.body);

        // deregister (DELETE with a body)
        let r = call(
            Method::DELETE,
            &format!("{base}/api/v1/register"),
            Some(&json!({"node_id": node_id})),
            Some(&token),
        )
        .await;
        assert_eq!(r.status, 401);
        let r = call(
            Method::DELETE,
            &format!("{base}/api/v1/register"),
            Some(&json!({"node_id": node_id})),
            Some(&token2),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["deregistered"], true);
        let r = heartbeat(&base, &node_id, &token2, json!({})).await;
        assert_eq!(r.status, 404);
        assert_eq!(r.code(), Some("not_found"));
        assert_eq!(r.body["error"]["legacy_code"], "IICP-E003");
        d.stop().await;
    }
}

fn ids(r: &Reply) -> Vec<String> {
    r.body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn discover_filters_scoring_expiry() {
    for backend in backends() {
        let clock = ManualClock::starting_now();
        let d = start_mesh(backend, &clock).await;
        let base = d.base.clone();

        let a = register(
            &base,
            &register_body("http://127.0.0.1:19101", "eu-central", &["llama3"]),
        )
        .await;
        let b = register(
            &base,
            &register_body("http://127.0.0.1:19102", "us-east", &["qwen"]),
        )
        .await;
        let mut custom = register_body("http://127.0.0.1:19103", "us-east", &["x"]);
        custom["capabilities"] = json!([{"intent": "urn:iicp:intent:x.acme:translate:v1", "models": ["x"], "max_tokens": 100}]);
        custom["relay_capable"] = json!(true);
        let c = register(&base, &custom).await;
        let (ida, idb, idc) = (
            a["node_id"].as_str().unwrap(),
            b["node_id"].as_str().unwrap(),
            c["node_id"].as_str().unwrap(),
        );

        // load makes b worse than a
        let r = heartbeat(
            &base,
            idb,
            b["node_token"].as_str().unwrap(),
            json!({"load": 0.9, "active_jobs": 3}),
        )
        .await;
        assert_eq!(r.status, 200);

        let url = format!("{base}/api/v1/discover?intent=urn%3Aiicp%3Aintent%3Allm%3Achat%3Av1");
        let r = get(&url).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.raw.headers.get("cache-control").unwrap(),
            "public, max-age=5, s-maxage=10, stale-while-revalidate=5"
        );
        assert_eq!(
            ids(&r),
            vec![ida.to_owned(), idb.to_owned()],
            "score-descending"
        );
        assert_eq!(r.body["count"], 2);
        let n0 = &r.body["nodes"][0];
        let scores: Vec<f64> = r.body["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["score"].as_f64().unwrap())
            .collect();
        assert!(scores.iter().all(|s| (0.1..=1.0).contains(s)));
        assert!(scores[0] > scores[1]);
        for field in [
            "endpoint",
            "transport_endpoint",
            "cx_public_key",
            "models",
            "input_modalities",
            "region",
            "score",
            "transport",
            "relay_capable",
        ] {
            assert!(
                !n0[field].is_null(),
                "{backend:?}: node entry lacks {field}: {n0}"
            );
        }
        assert_eq!(n0["transport_endpoint"], "iicp://127.0.0.1:19101");
        assert_eq!(n0["cx_public_key"]["key_id"], "cx-ab1453003c73ed6a");

        // region is a preference: us-east ranks b first but keeps a
        let r = get(&format!("{url}&region=us-east")).await;
        let got = ids(&r);
        assert_eq!(got.len(), 2, "region must not exclude");
        // limit
        let r = get(&format!("{url}&limit=1")).await;
        assert_eq!(ids(&r).len(), 1);
        // model-aware weights: qwen boosts b
        let r = get(&format!("{url}&model=qwen")).await;
        assert_eq!(ids(&r).len(), 2);
        let sb = r.body["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == idb)
            .unwrap()["score"]
            .as_f64()
            .unwrap();
        assert!(sb > scores[1], "model match raises the score");
        // min_reputation filters (default 0.5)
        let r = get(&format!("{url}&min_reputation=0.6")).await;
        assert_eq!(r.status, 200);
        assert!(ids(&r).is_empty());
        // modality filter
        let r = get(&format!("{url}&modality=image")).await;
        assert!(ids(&r).is_empty());
        // custom x. intents
        let r = get(&format!(
            "{base}/v1/discover?intent=urn:iicp:intent:x.acme:translate:v1"
        ))
        .await;
        assert_eq!(ids(&r), vec![idc.to_owned()]);
        let r = get(&format!(
            "{base}/v1/discover?intent=urn:iicp:intent:x.acme:translate:v1&relay_capable=true"
        ))
        .await;
        assert_eq!(ids(&r), vec![idc.to_owned()]);
        let r = get(&format!("{url}&relay_capable=true")).await;
        assert!(ids(&r).is_empty());

        // view=public redaction
        let r = get(&format!("{url}&view=public")).await;
        assert_eq!(r.body["data_class"], "public_presentation");
        assert_eq!(r.body["route_fields_present"], false);
        for n in r.body["nodes"].as_array().unwrap() {
            assert!(
                n.get("node_id").is_none()
                    && n.get("endpoint").is_none()
                    && n.get("transport_endpoint").is_none()
                    && n.get("cx_public_key").is_none(),
                "{n}"
            );
            assert_eq!(n["node_id_prefix"].as_str().unwrap().len(), 8);
            assert_eq!(n["key_ready"], true);
        }

        // expiry: 91 s without heartbeat → excluded; a heartbeat restores
        clock.advance(Duration::from_secs(60));
        let r = heartbeat(&base, ida, a["node_token"].as_str().unwrap(), json!({})).await;
        assert_eq!(r.status, 200);
        clock.advance(Duration::from_secs(31));
        let r = get(&url).await;
        assert_eq!(ids(&r), vec![ida.to_owned()], "b expired after 91 s");
        let r = get(&format!("{base}/v1/node/{idb}")).await;
        assert_eq!(r.body["status"], "dormant");
        let r = heartbeat(
            &base,
            idb,
            b["node_token"].as_str().unwrap(),
            json!({"available": true}),
        )
        .await;
        assert_eq!(r.status, 200);
        let r = get(&url).await;
        assert_eq!(ids(&r).len(), 2, "heartbeat restores a dormant node");
        // available=false excludes
        let r = heartbeat(
            &base,
            idb,
            b["node_token"].as_str().unwrap(),
            json!({"available": false}),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(ids(&get(&url).await), vec![ida.to_owned()]);

        // bootstrap, node detail, stats, health (also under /api)
        let r = get(&format!("{base}/api/v1/bootstrap?limit=1")).await;
        assert_eq!(r.body["count"], 1);
        let r = get(&format!("{base}/api/v1/node/{ida}")).await;
        assert_eq!(r.status, 200);
        assert!(r.body["health"]["score"].is_u64());
        assert_eq!(r.body["probation"], true);
        assert_eq!(get(&format!("{base}/v1/node/nope")).await.status, 404);
        let r = get(&format!("{base}/api/v1/stats")).await;
        assert!(r.body["mesh_health"].is_object());
        assert_eq!(r.body["server"]["active_nodes"], 2, "c expired");
        assert_eq!(r.body["server"]["registered_nodes"], 3);
        assert_eq!(get(&format!("{base}/health")).await.body["status"], "ok");
        assert_eq!(get(&format!("{base}/api/health")).await.status, 200);
        d.stop().await;
    }
}

/// Discover results are cached for up to a second by the directory clock, but a change
/// of the node set (register, deregister, availability) shows at once.
#[tokio::test]
async fn discover_cache_follows_the_node_set() {
    for backend in backends() {
        let clock = ManualClock::starting_now();
        let d = start_mesh(backend, &clock).await;
        let base = d.base.clone();
        let url = format!("{base}/api/v1/discover?intent=urn%3Aiicp%3Aintent%3Allm%3Achat%3Av1");
        let score = |r: &Reply, id: &str| {
            r.body["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["node_id"] == id)
                .map(|n| n["score"].as_f64().unwrap())
        };

        let a = register(
            &base,
            &register_body("http://127.0.0.1:19201", "eu-central", &["m"]),
        )
        .await;
        let ida = a["node_id"].as_str().unwrap().to_owned();
        let r = get(&url).await;
        assert_eq!(ids(&r), vec![ida.clone()]);
        let idle_score = score(&r, &ida).unwrap();

        // a registration shows at once
        let b = register(
            &base,
            &register_body("http://127.0.0.1:19202", "eu-central", &["m"]),
        )
        .await;
        let idb = b["node_id"].as_str().unwrap().to_owned();
        let tb = b["node_token"].as_str().unwrap().to_owned();
        let r = get(&url).await;
        assert_eq!(r.body["count"], 2, "{backend:?}: {}", r.body);

        // load only moves the score: served from the cache until it is a second old
        let r = heartbeat(
            &base,
            &ida,
            a["node_token"].as_str().unwrap(),
            json!({"load": 0.9}),
        )
        .await;
        assert_eq!(r.status, 200);
        let r = get(&url).await;
        assert_eq!(
            score(&r, &ida),
            Some(idle_score),
            "{backend:?}: cached score"
        );
        // a second later the load counts: the first request may still get the old
        // result while it is refreshed in the background, the next ones the new one
        clock.advance(Duration::from_millis(1_000));
        let mut refreshed = None;
        for _ in 0..100 {
            let r = get(&url).await;
            if score(&r, &ida).unwrap() < idle_score {
                refreshed = Some(r);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refreshed.is_some(), "{backend:?}: the load never counted");

        // unavailability shows at once
        let r = heartbeat(&base, &idb, &tb, json!({"available": false})).await;
        assert_eq!(r.status, 200);
        let r = get(&url).await;
        assert_eq!(ids(&r), vec![ida.clone()], "{backend:?}");

        // and so does a deregistration
        let r = call(
            Method::DELETE,
            &format!("{base}/api/v1/register"),
            Some(&json!({"node_id": ida})),
            Some(a["node_token"].as_str().unwrap()),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = get(&url).await;
        assert_eq!(r.body["count"], 0, "{backend:?}: {}", r.body);
        assert_eq!(r.body["nodes"], json!([]));
        d.stop().await;
    }
}

#[tokio::test]
async fn private_endpoints_need_a_private_mesh() {
    let d = start_with(
        Backend::Memory,
        iicp_directory::Directory::builder().liveness_probe(false),
        None,
    )
    .await;
    for ep in [
        "http://127.0.0.1:9484",
        "http://10.1.2.3:9484",
        "http://[::1]:9484",
        "http://localhost:9484",
        "http://2130706433:9484",
    ] {
        let r = post(
            &format!("{}/v1/register", d.base),
            &register_body(ep, "eu", &["m"]),
            None,
        )
        .await;
        assert_eq!(r.status, 422, "{ep}: {}", r.body);
        assert_eq!(r.code(), Some("IICP-E035"), "{ep}");
    }
    let r = post(
        &format!("{}/v1/register", d.base),
        &register_body("https://node.example.com", "eu", &["m"]),
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    // probe SSRF guard
    let r = get(&format!("{}/api/v1/probe?host=127.0.0.1&port=9484", d.base)).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["error"], "private_address");
    let r = get(&format!(
        "{}/api/v1/probe?host=169.254.169.254&port=8080",
        d.base
    ))
    .await;
    assert_eq!(r.status, 422);
    d.stop().await;
}

#[tokio::test]
async fn the_liveness_probe_never_dials_a_name_that_resolves_to_a_private_address() {
    // `127.1` is a host name to the endpoint checks (not an IP literal, has a dot) and
    // resolves to 127.0.0.1 without DNS: only the probe client's address rule, applied
    // to the answer it dials, can refuse it.
    let d = start_with(Backend::Memory, iicp_directory::Directory::builder(), None).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let a = std::sync::Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    let r = post(
        &format!("{}/v1/register", d.base),
        &register_body(&format!("http://127.1:{port}"), "eu", &["m"]),
        None,
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.code(), Some("IICP-E035"));
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the probe dialled a private address"
    );
    d.stop().await;
}

#[tokio::test]
async fn liveness_probe_tolerates_late_listeners() {
    // A node that registers before it listens stays unverified, is re-probed in the
    // background, and becomes verified once it answers.
    let d = start_with(
        Backend::Memory,
        iicp_directory::Directory::builder().private_mesh(true),
        None,
    )
    .await;
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = std_listener.local_addr().unwrap().port();
    drop(std_listener);
    let ack = register(
        &d.base,
        &register_body(&format!("http://127.0.0.1:{port}"), "eu", &["m"]),
    )
    .await;
    assert_eq!(ack["endpoint_verified"], false);
    let id = ack["node_id"].as_str().unwrap().to_owned();
    // still discoverable during the grace period
    let r = get(&format!("{}/v1/discover?intent={CHAT}", d.base)).await;
    assert_eq!(ids(&r), vec![id.clone()]);

    // now start listening with a tiny /iicp/health
    let router =
        iicp_transport::http::server::Router::new().route(
            http::Method::GET,
            "/iicp/health",
            |_r: iicp_transport::http::server::Request,
             _p: iicp_transport::http::server::Params| async {
                iicp_transport::http::server::json(http::StatusCode::OK, &json!({"status": "ok"}))
            },
        );
    let server = iicp_transport::http::server::HttpServer::bind(
        format!("127.0.0.1:{port}").parse().unwrap(),
    )
    .await
    .unwrap();
    let (trigger, signal) = iicp_transport::shutdown::channel();
    let task = tokio::spawn(server.serve(router, signal));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = get(&format!("{}/v1/node/{id}", d.base)).await;
        if r.body["endpoint_verified"] == true {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "endpoint never verified: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    trigger.fire();
    let _ = task.await;
    d.stop().await;
}
