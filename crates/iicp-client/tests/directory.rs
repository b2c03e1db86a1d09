//! `DirectoryClient` against a scripted directory: paths derived from the base URL,
//! bearer tokens, `X-Node-Id`, `DELETE` with a body, key caching, ticket outcomes and
//! 307/308 redirects (up to 3 hops).

use std::sync::Arc;

use http::{Method, StatusCode};
use iicp_client::{DirectoryClient, ErrorCode, TicketOutcome};
use iicp_proto::directory::{
    Capability, DispatchTicketRequest, HeartbeatRequest, Limits, RegisterRequest,
};
use iicp_proto::intent::Intent;
use iicp_proto::secret::Secret;
use iicp_testkit::fake::*;
use iicp_testkit::server::*;
use iicp_transport::http::client::{HttpClient, HttpClientConfig};
use iicp_transport::http::server::{json, Request, Router};
use parking_lot::Mutex;
use serde_json::json;

type Log = Arc<Mutex<Vec<Recorded>>>;

fn http() -> HttpClient {
    HttpClient::new(HttpClientConfig::default()).expect("http")
}

fn redirect(
    to: &'static str,
    code: u16,
) -> impl Fn(
    Request,
    iicp_transport::http::server::Params,
) -> std::future::Ready<iicp_transport::http::server::Response>
       + Send
       + Sync
       + 'static {
    move |_req, _p| {
        let mut resp = json(
            StatusCode::from_u16(code).unwrap_or(StatusCode::TEMPORARY_REDIRECT),
            &json!({}),
        );
        resp.headers_mut()
            .insert("location", http::HeaderValue::from_static(to));
        std::future::ready(resp)
    }
}

async fn directory(log: Log, ticket_status: u16) -> Server {
    let l1 = Arc::clone(&log);
    let l2 = Arc::clone(&log);
    let l3 = Arc::clone(&log);
    let l4 = Arc::clone(&log);
    let l5 = Arc::clone(&log);
    let l6 = Arc::clone(&log);
    let router = Router::new()
        .route(Method::POST, "/api/v1/register", move |mut req: Request, _p| {
            let log = Arc::clone(&l1);
            async move {
                let rec = record(&mut req).await;
                log.lock().push(rec);
                json(
                    StatusCode::CREATED,
                    &json!({"node_id": "n-1", "node_token": "tok-registered-secret", "jwt_token": "jwt-x", "node_hmac_key": "hmac-x"}),
                )
            }
        })
        .route(Method::DELETE, "/api/v1/register", move |mut req: Request, _p| {
            let log = Arc::clone(&l2);
            async move {
                let rec = record(&mut req).await;
                log.lock().push(rec);
                json(StatusCode::OK, &json!({"deregistered": true}))
            }
        })
        .route(Method::POST, "/api/v1/heartbeat", move |mut req: Request, _p| {
            let log = Arc::clone(&l3);
            async move {
                let rec = record(&mut req).await;
                let ok = rec.header("authorization") == Some("Bearer tok-registered-secret");
                log.lock().push(rec);
                if ok {
                    json(StatusCode::OK, &json!({"ok": true, "next_heartbeat_ms": 30000}))
                } else {
                    json(
                        StatusCode::UNAUTHORIZED,
                        &json!({"error": {"code": "unauthorized", "message": "bad token"}}),
                    )
                }
            }
        })
        .route(Method::GET, "/api/v1/directory-key", move |mut req: Request, _p| {
            let log = Arc::clone(&l4);
            async move {
                let rec = record(&mut req).await;
                log.lock().push(rec);
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"error": {"code": "not_configured", "message": "no key"}}),
                )
            }
        })
        .route(Method::POST, "/api/v1/consumer-token", move |mut req: Request, _p| {
            let log = Arc::clone(&l5);
            async move {
                let rec = record(&mut req).await;
                log.lock().push(rec);
                json(StatusCode::CREATED, &json!({"token": "ct.abc", "expires_at": 1}))
            }
        })
        .route(Method::POST, "/api/v1/dispatch/ticket", move |mut req: Request, _p| {
            let log = Arc::clone(&l6);
            async move {
                let rec = record(&mut req).await;
                log.lock().push(rec);
                let (code, body) = match ticket_status {
                    503 => (503, json!({"error": {"code": "not_configured", "message": "no key"}})),
                    404 => (404, json!({"error": {"code": "no_route_available", "message": "none"}})),
                    405 => (405, json!({"error": {"code": "method_not_allowed", "message": "x"}})),
                    other => (other, json!({"error": {"code": "internal_error", "message": "boom"}})),
                };
                json(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &body)
            }
        })
        .route(Method::POST, "/r1/api/v1/register", redirect("/api/v1/register", 307))
        .route(Method::POST, "/r2/api/v1/register", redirect("/r1/api/v1/register", 308))
        .route(Method::POST, "/r3/api/v1/register", redirect("/r2/api/v1/register", 307))
        .route(Method::POST, "/r4/api/v1/register", redirect("/r3/api/v1/register", 307));
    serve(router).await.expect("serve")
}

fn register_request() -> RegisterRequest {
    let intent: Intent = CHAT.parse().expect("intent");
    RegisterRequest::new(
        "https://node.example.com",
        "eu-central",
        vec![Capability::llm(&intent, vec!["m".into()], 1024)],
        Limits {
            max_concurrent: 2,
            tokens_per_min: 1000,
            ..Limits::default()
        },
    )
}

#[tokio::test]
async fn lifecycle_calls_use_the_base_url_and_credentials() {
    let log: Log = Arc::default();
    let server = directory(Arc::clone(&log), 404).await;
    let dir = DirectoryClient::new(&format!("{}/api/", server.url()), http()).expect("dir");
    assert_eq!(dir.base_url(), format!("{}/api", server.url()));
    assert_eq!(dir.origin(), server.url());

    let ack = dir.register(&register_request()).await.expect("register");
    assert_eq!(ack.node_id, "n-1");
    let token = ack.node_token.clone().expect("token");
    assert!(!format!("{ack:?}").contains("tok-registered-secret"));

    let hb = dir
        .heartbeat(&token, &HeartbeatRequest::new("n-1"))
        .await
        .expect("heartbeat");
    assert!(hb.ok);
    let err = dir
        .heartbeat(
            &Secret::new("wrong-token-value"),
            &HeartbeatRequest::new("n-1"),
        )
        .await
        .expect_err("401");
    assert_eq!(err.code(), &ErrorCode::Unauthorized);
    assert_eq!(err.status_code(), Some(401));
    assert!(!err.to_string().contains("wrong-token-value"));

    dir.deregister(&token, "n-1").await.expect("deregister");
    let ct = dir
        .consumer_token(&token, "n-1", "n-2", CHAT)
        .await
        .expect("consumer token");
    assert_eq!(ct.token.expose(), "ct.abc");

    let calls = log.lock().clone();
    let paths: Vec<(String, String)> = calls
        .iter()
        .map(|c| (c.method.clone(), c.path.clone()))
        .collect();
    assert_eq!(
        paths,
        vec![
            ("POST".into(), "/api/v1/register".into()),
            ("POST".into(), "/api/v1/heartbeat".into()),
            ("POST".into(), "/api/v1/heartbeat".into()),
            ("DELETE".into(), "/api/v1/register".into()),
            ("POST".into(), "/api/v1/consumer-token".into()),
        ]
    );
    assert!(calls[0].header("authorization").is_none());
    assert_eq!(calls[0].header("x-iicp-version"), Some("1.5"));
    assert_eq!(calls[3].json(), json!({"node_id": "n-1"}));
    assert_eq!(
        calls[3].header("authorization"),
        Some("Bearer tok-registered-secret")
    );
    assert_eq!(calls[4].header("x-node-id"), Some("n-1"));
    assert_eq!(
        calls[4].json(),
        json!({"target_node_id": "n-2", "intent": CHAT})
    );
}

#[tokio::test]
async fn redirects_are_followed_up_to_three_hops() {
    let log: Log = Arc::default();
    let server = directory(Arc::clone(&log), 404).await;
    let dir = DirectoryClient::new(&format!("{}/r3/api", server.url()), http()).expect("dir");
    let ack = dir.register(&register_request()).await.expect("3 hops");
    assert_eq!(ack.node_id, "n-1");
    let body = log.lock()[0].json();
    assert_eq!(
        body["endpoint"], "https://node.example.com",
        "body kept across 307/308"
    );

    let dir = DirectoryClient::new(&format!("{}/r4/api", server.url()), http()).expect("dir");
    let err = dir.register(&register_request()).await.expect_err("4 hops");
    assert!(err.message().contains("redirect"), "{err}");
}

#[tokio::test]
async fn ticket_outcomes() {
    let intent: Intent = CHAT.parse().expect("intent");
    let req = DispatchTicketRequest::new(&intent);
    for (status, expect) in [
        (404, "no_route"),
        (503, "unavailable"),
        (405, "unavailable"),
    ] {
        let log: Log = Arc::default();
        let server = directory(Arc::clone(&log), status).await;
        let dir = DirectoryClient::new(&format!("{}/api", server.url()), http()).expect("dir");
        let outcome = dir.dispatch_ticket(&req, None).await.expect("outcome");
        let got = match outcome {
            TicketOutcome::NoRoute => "no_route",
            TicketOutcome::Unavailable => "unavailable",
            TicketOutcome::Ticket(_) => "ticket",
            _ => "other",
        };
        assert_eq!(got, expect, "{status}");
    }
    let log: Log = Arc::default();
    let server = directory(Arc::clone(&log), 500).await;
    let dir = DirectoryClient::new(&format!("{}/api", server.url()), http()).expect("dir");
    let err = dir.dispatch_ticket(&req, None).await.expect_err("500");
    assert_eq!(err.status_code(), Some(500));
}

#[tokio::test]
async fn directory_key_not_configured_and_cache() {
    let log: Log = Arc::default();
    let server = directory(Arc::clone(&log), 404).await;
    let dir = DirectoryClient::new(&format!("{}/api", server.url()), http()).expect("dir");
    let err = dir.directory_key().await.expect_err("503");
    assert_eq!(err.code(), &ErrorCode::NotConfigured);

    // a configured key is fetched once
    let fake = fake_directory(vec![], Tickets::On).await;
    let dir = DirectoryClient::new(&fake.base(), http()).expect("dir");
    let k1 = dir.directory_key().await.expect("key");
    let k2 = dir.clone().directory_key().await.expect("key");
    assert_eq!(k1, k2);
    assert_eq!(k1, fake.state.key.public_key());
    assert_eq!(fake.count("/api/v1/directory-key"), 1);
}

#[test]
fn bad_base_urls_are_invalid_config() {
    for bad in [
        "",
        "iicp.network/api",
        "ftp://x/api",
        "https://user:pw@x/api",
        "https://x/api?q=1",
    ] {
        let err = DirectoryClient::new(bad, http()).expect_err(bad);
        assert_eq!(err.code(), &ErrorCode::InvalidConfig, "{bad}");
    }
}

/// The calls the node's reachability makes: probe, relay bind ticket, node detail.
#[tokio::test]
async fn probe_relay_ticket_and_node_detail() {
    let log: Log = Arc::default();
    let (l1, l2, l3) = (Arc::clone(&log), Arc::clone(&log), Arc::clone(&log));
    let router = Router::new()
        .route(Method::GET, "/api/v1/probe", move |mut req: Request, _p| {
            let log = Arc::clone(&l1);
            async move {
                let query = req.uri().query().unwrap_or_default().to_owned();
                let rec = record(&mut req).await;
                log.lock().push(rec);
                match query.as_str() {
                    "host=203.0.113.7&port=9484" => {
                        json(StatusCode::OK, &json!({"reachable": true}))
                    }
                    "host=%5B2001%3Adb8%3A%3A1%5D&port=9484" => {
                        json(StatusCode::OK, &json!({"reachable": false}))
                    }
                    _ => json(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &json!({"reachable": false, "error": "private_address"}),
                    ),
                }
            }
        })
        .route(
            Method::POST,
            "/api/v1/relay/ticket",
            move |mut req: Request, _p| {
                let log = Arc::clone(&l2);
                async move {
                    let rec = record(&mut req).await;
                    let ok = rec.header("authorization") == Some("Bearer tok-node")
                        && rec.header("x-node-id") == Some("n-1");
                    log.lock().push(rec);
                    if ok {
                        json(
                            StatusCode::CREATED,
                            &json!({"ticket": "tkt.sig", "algorithm": "ed25519"}),
                        )
                    } else {
                        json(
                            StatusCode::UNAUTHORIZED,
                            &json!({"error": {"code": "unauthorized", "message": "no"}}),
                        )
                    }
                }
            },
        )
        .route(
            Method::GET,
            "/api/v1/node/{id}",
            move |mut req: Request, p| {
                let log = Arc::clone(&l3);
                async move {
                    let rec = record(&mut req).await;
                    log.lock().push(rec);
                    let id = p.get("id").unwrap_or_default().to_owned();
                    json(
                        StatusCode::OK,
                        &json!({"node_id": id, "public_key": "ab".repeat(32)}),
                    )
                }
            },
        );
    let server = serve(router).await.expect("serve");
    let dir = DirectoryClient::new(&format!("{}/api", server.url()), http()).expect("dir");

    assert_eq!(
        dir.probe("203.0.113.7", 9484).await.expect("probe"),
        Some(true)
    );
    assert_eq!(
        dir.probe("[2001:db8::1]", 9484).await.expect("probe"),
        Some(false)
    );
    let refused = dir.probe("10.0.0.1", 9484).await.expect_err("422");
    assert_eq!(refused.status_code(), Some(422));

    let token = Secret::new("tok-node");
    let ticket = dir
        .relay_ticket(&token, "n-1", Some("relay-9"))
        .await
        .expect("ticket");
    assert_eq!(ticket.expose(), "tkt.sig");
    let err = dir
        .relay_ticket(&Secret::new("tok-other"), "n-1", None)
        .await
        .expect_err("401");
    assert_eq!(err.status_code(), Some(401));
    assert!(!err.to_string().contains("tok-other"));

    let detail = dir.node_detail("n-7").await.expect("detail");
    assert_eq!(detail["node_id"], "n-7");
    assert_eq!(detail["public_key"], "ab".repeat(32));
    let bad = dir.node_detail("../v1/register").await.expect_err("bad id");
    assert_eq!(bad.code(), &ErrorCode::InvalidConfig);

    let calls = log.lock().clone();
    let tickets: Vec<_> = calls
        .iter()
        .filter(|c| c.path == "/api/v1/relay/ticket")
        .collect();
    assert_eq!(tickets[0].json(), json!({"relay_node_id": "relay-9"}));
    assert_eq!(tickets[1].json(), json!({"relay_node_id": "*"}));
    // the bad node id never reached the server
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.path.starts_with("/api/v1/node/"))
            .count(),
        1
    );
    drop(server);
}
