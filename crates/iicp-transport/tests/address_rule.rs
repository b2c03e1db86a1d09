//! The address rule of the HTTP and native clients (`iicp_transport::resolve`): a
//! refused host is never dialled — not as an IP literal, not as a name that resolves to
//! a refused address (`localhost`, `127.1`: glibc resolves both locally) — and an
//! admitted one is reached as before.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use iicp_proto::message::{Body, Call, Outcome, Prefer, Response};
use iicp_transport::http::client::{HttpClient, HttpClientConfig, HttpClientError};
use iicp_transport::http::server::{json, Params, Request, Router};
use iicp_transport::listener::{Listener, ListenerConfig, Services};
use iicp_transport::native::{
    CallContext, CallHandler, NativeClient, NativeClientConfig, NativeEndpoint, NativeError,
};
use iicp_transport::resolve::AddressRule;
use iicp_transport::shutdown::{self, Trigger};
use tokio::net::TcpListener;

/// Refuses loopback addresses (the stand-in for "private" here).
fn no_loopback() -> AddressRule {
    AddressRule::new(|addrs: &[IpAddr]| addrs.iter().all(|a| !a.is_loopback()))
}

/// A TCP listener that only counts the connections it accepts.
async fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (port, accepted)
}

/// HTTP and native on one port: `GET /ok` and an echo CALL handler.
async fn server() -> (SocketAddr, Trigger) {
    let router = Router::new().route(Method::GET, "/ok", |_r: Request, _p: Params| async move {
        json(StatusCode::OK, &serde_json::json!({"ok": true}))
    });
    let handler: Arc<dyn CallHandler> = Arc::new(|call: Call, _ctx: CallContext| async move {
        Response::success(&call, Body::json(&serde_json::json!({"echo": true})))
    });
    let listener = Listener::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        ListenerConfig::default(),
    )
    .await
    .unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(listener.serve(
        Services {
            http: Some(Arc::new(router)),
            native: Some(handler),
        },
        shutdown,
    ));
    (addr, trigger)
}

fn call() -> Call {
    Call {
        protocol_version: Some(1),
        session_id: Some("s".into()),
        intent: Some("urn:iicp:intent:llm:chat:v1".into()),
        payload: Some(Body::json(&serde_json::json!({"q": 1}))),
        timeout_s: Some(5),
        call_id: Some("c1".into()),
        ..Call::default()
    }
}

#[tokio::test]
async fn http_refuses_before_dialling_literals_and_names() {
    let (port, accepted) = counting_listener().await;
    let mut config = HttpClientConfig::default();
    config.address_rule = Some(no_loopback());
    let client = HttpClient::new(config).unwrap();
    for host in ["127.0.0.1", "[::1]", "localhost", "127.1"] {
        let url = format!("http://{host}:{port}/v1/task?token=secret");
        let err = client.get(&url).send().await.unwrap_err();
        assert!(
            matches!(err, HttpClientError::AddressRefused { .. }),
            "{host}: {err:?}"
        );
        assert!(!err.is_retryable(), "{host}");
        // the redacted URL, never the query
        assert!(!err.to_string().contains("secret"), "{err}");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "a refused host was dialled"
    );
}

#[tokio::test]
async fn http_with_a_derived_rule_keeps_its_settings_and_admits_what_the_rule_admits() {
    let (addr, _t) = server().await;
    let base = HttpClient::new(HttpClientConfig::default()).unwrap();
    // `127.1` reaches the server by name without a rule …
    let url = format!("http://127.1:{}/ok", addr.port());
    let reply = base.get(&url).send().await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    // … a rule that admits loopback lets it through …
    let open = base
        .with_address_rule(AddressRule::new(|_: &[IpAddr]| true))
        .unwrap();
    assert_eq!(open.get(&url).send().await.unwrap().status, StatusCode::OK);
    // … and the refusing rule stops it, on a pool of its own
    let strict = base.with_address_rule(no_loopback()).unwrap();
    let err = strict.get(&url).send().await.unwrap_err();
    assert!(
        matches!(err, HttpClientError::AddressRefused { .. }),
        "{err:?}"
    );
    assert_eq!(base.get(&url).send().await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn native_refuses_before_dialling_literals_and_names() {
    let (port, accepted) = counting_listener().await;
    let client = NativeClient::new(NativeClientConfig {
        address_rule: Some(no_loopback()),
        ..NativeClientConfig::default()
    });
    for host in ["127.0.0.1", "[::1]", "localhost", "127.1"] {
        let ep: NativeEndpoint = format!("iicp://{host}:{port}").parse().unwrap();
        let err = client
            .call(&ep, call(), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(
            matches!(err, NativeError::AddressRefused(_)),
            "{host}: {err:?}"
        );
        assert!(err.is_connect());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "a refused host was dialled"
    );
}

#[tokio::test]
async fn native_names_resolve_and_connect_without_a_refusing_rule() {
    let (addr, _t) = server().await;
    let base = NativeClient::default();
    let ep: NativeEndpoint = format!("iicp://127.1:{}", addr.port()).parse().unwrap();
    let resp = base
        .call(&ep, call(), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(resp.outcome(), Outcome::Success(Some(_))));
    let strict = base.with_address_rule(no_loopback());
    let err = strict
        .call(&ep, call(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, NativeError::AddressRefused(_)), "{err:?}");
    // the base pool is untouched by its strict sibling
    let again = base
        .call(&ep, call(), Duration::from_secs(5))
        .await
        .unwrap();
    let Outcome::Success(Some(body)) = again.outcome() else {
        panic!("no result")
    };
    assert_eq!(body.to_json(Prefer::Json).unwrap()["echo"], true);
}
