//! The per-IP task limit behind a reverse proxy (ADR 0008): keyed by the connection's
//! address unless `trust_forwarded_for`, then by the client the proxies report in
//! `X-Forwarded-For` / `Forwarded`; a limit of 0 disables it; `/iicp/health` reports it.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use iicp_node::RateLimit;
use iicp_transport::http::client::HttpClient;

fn limit(n: u32) -> RateLimit {
    RateLimit {
        max_requests: n,
        window: Duration::from_secs(60),
    }
}

/// `POST /v1/task` with the given extra headers; the HTTP status.
async fn post_with(c: &HttpClient, addr: SocketAddr, headers: &[(&str, &str)]) -> u16 {
    let mut req = c.post_json(url(addr, "/v1/task"), &task_body(&uuid(), "x"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("send").status.as_u16()
}

#[tokio::test]
async fn forwarded_for_is_ignored_unless_trusted() {
    let echo = Echo::default();
    let node = builder().rate_limit(limit(2)).build().expect("node");
    let h = serve(&node, echo.handler()).await;
    let (c, addr) = (http(), h.local_addr());
    // each request claims another client: all of them count against 127.0.0.1
    for (i, ip) in ["203.0.113.1", "203.0.113.2"].iter().enumerate() {
        assert_eq!(
            post_with(&c, addr, &[("x-forwarded-for", ip)]).await,
            200,
            "{i}"
        );
    }
    assert_eq!(
        post_with(&c, addr, &[("x-forwarded-for", "203.0.113.3")]).await,
        429
    );
    assert_eq!(
        post_with(&c, addr, &[("forwarded", "for=203.0.113.4")]).await,
        429
    );
    assert_eq!(echo.count(), 2);
    h.stop().await;
}

#[tokio::test]
async fn trusted_forwarded_for_keys_by_the_client() {
    let echo = Echo::default();
    let node = builder()
        .rate_limit(limit(2))
        .trust_forwarded_for(true)
        .build()
        .expect("node");
    let h = serve(&node, echo.handler()).await;
    let (c, addr) = (http(), h.local_addr());
    let xff = |v: &'static str| [("x-forwarded-for", v)];
    assert_eq!(post_with(&c, addr, &xff("203.0.113.1")).await, 200);
    // an internal proxy hop on the right is skipped
    assert_eq!(
        post_with(&c, addr, &xff("203.0.113.1, 10.0.0.2")).await,
        200
    );
    assert_eq!(post_with(&c, addr, &xff("203.0.113.1")).await, 429);
    // a caller cannot escape by prepending an address of its choice
    assert_eq!(
        post_with(&c, addr, &xff("198.51.100.77, 203.0.113.1")).await,
        429
    );
    // another client behind the same proxy has its own budget
    assert_eq!(post_with(&c, addr, &xff("203.0.113.2")).await, 200);
    // RFC 7239 Forwarded when there is no X-Forwarded-For
    assert_eq!(
        post_with(
            &c,
            addr,
            &[("forwarded", "for=\"[2001:db8::9]:4711\";proto=https")]
        )
        .await,
        200
    );
    assert_eq!(
        post_with(&c, addr, &[("forwarded", "for=203.0.113.1")]).await,
        429
    );
    // without a header: the proxy's own address
    assert_eq!(post_with(&c, addr, &[]).await, 200);
    assert_eq!(post_with(&c, addr, &[]).await, 200);
    assert_eq!(post_with(&c, addr, &[]).await, 429);
    assert_eq!(echo.count(), 6);
    h.stop().await;
}

#[tokio::test]
async fn limit_zero_disables_and_health_reports_the_limit() {
    let echo = Echo::default();
    let node = builder().rate_limit(limit(0)).build().expect("node");
    let h = serve(&node, echo.handler()).await;
    let (c, addr) = (http(), h.local_addr());
    for _ in 0..30 {
        assert_eq!(
            post_with(&c, addr, &[("origin", "https://a.example")]).await,
            200
        );
    }
    let health = c
        .get(url(addr, "/iicp/health"))
        .send()
        .await
        .expect("health");
    let v = json_of(&health);
    assert_eq!(v["task_rate_limit"]["enabled"], false, "{v}");
    assert_eq!(v["task_rate_limit"]["max_requests"], 0);
    assert_eq!(v["task_rate_limit"]["trust_forwarded_for"], false);
    h.stop().await;

    let node = builder()
        .rate_limit(RateLimit {
            max_requests: 7,
            window: Duration::from_secs(90),
        })
        .trust_forwarded_for(true)
        .build()
        .expect("node");
    let h = serve(&node, echo.handler()).await;
    let health = c
        .get(url(h.local_addr(), "/iicp/health"))
        .send()
        .await
        .expect("health");
    let v = json_of(&health);
    assert_eq!(v["task_rate_limit"]["enabled"], true, "{v}");
    assert_eq!(v["task_rate_limit"]["max_requests"], 7);
    assert_eq!(v["task_rate_limit"]["window_ms"], 90_000);
    assert_eq!(v["task_rate_limit"]["trust_forwarded_for"], true);
    // the default is the reference nodes' 120 per 60 s
    let d = builder().build().expect("node");
    assert_eq!(d.config().rate_limit, limit(120));
    assert!(!d.config().trust_forwarded_for);
    h.stop().await;
}
