//! Integration tests of the HTTP client against local servers: JSON round trips,
//! pooling, timeouts, body caps, redirect policy, credential hygiene and TLS with a
//! private root.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, LOCATION, USER_AGENT};
use http::{HeaderValue, Method, StatusCode};
use hyper::body::{Body, Frame};
use iicp_transport::http::client::{HttpClient, HttpClientConfig, HttpClientError, Redirects};
use iicp_transport::http::server::{
    json, read_body, serve_connection, HttpError, HttpServer, HttpServerConfig, Params, Request,
    Response, ResponseBody, Router,
};
use iicp_transport::shutdown::{self, Shutdown, Trigger};
use serde_json::{json as j, Value};
use tokio::net::TcpListener;

// ---------------------------------------------------------------- helpers ----------

async fn start(router: Router) -> (SocketAddr, Trigger) {
    let server = HttpServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(server.serve(router, shutdown));
    (addr, trigger)
}

fn client() -> HttpClient {
    HttpClient::new(HttpClientConfig::default()).unwrap()
}

fn redirect(status: StatusCode, location: &str) -> Response {
    let mut r = json(status, &j!({"redirect": location}));
    r.headers_mut()
        .insert(LOCATION, HeaderValue::from_str(location).unwrap());
    r
}

/// Echoes method, body and selected headers.
async fn echo(mut req: Request, _p: Params) -> Result<Response, HttpError> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let info = j!({
        "method": req.method().as_str(),
        "authorization": header("authorization"),
        "user_agent": header("user-agent"),
        "x_test": header("x-test"),
        "content_type": header("content-type"),
    });
    let body = read_body(&mut req, 1 << 20).await?;
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    };
    Ok(json(StatusCode::OK, &j!({"info": info, "body": body})))
}

/// A chunked body of `chunks` × `size` bytes without a length.
struct Chunks {
    left: usize,
    size: usize,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; self.size])))))
    }
}

fn app() -> Router {
    Router::new()
        .route(Method::POST, "/echo", echo)
        .route(Method::GET, "/echo", echo)
        .route(Method::DELETE, "/v1/register", echo)
        .route(
            Method::GET,
            "/big/{n}",
            |_r: Request, p: Params| async move {
                let n: usize = p.get("n").unwrap().parse().unwrap();
                let mut r = Response::new(ResponseBody::from(vec![b'x'; n]));
                *r.status_mut() = StatusCode::OK;
                r
            },
        )
        .route(
            Method::GET,
            "/stream/{chunks}",
            |_r: Request, p: Params| async move {
                let left: usize = p.get("chunks").unwrap().parse().unwrap();
                Response::new(ResponseBody::streaming(Chunks { left, size: 4096 }))
            },
        )
        .route(Method::GET, "/never", |_r: Request, _p: Params| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            json(StatusCode::OK, &j!({}))
        })
        .route(Method::POST, "/r307", |_r: Request, _p: Params| async {
            redirect(StatusCode::TEMPORARY_REDIRECT, "/echo")
        })
        .route(Method::POST, "/r308", |_r: Request, _p: Params| async {
            redirect(StatusCode::PERMANENT_REDIRECT, "r307")
        })
        .route(Method::GET, "/r302", |_r: Request, _p: Params| async {
            redirect(StatusCode::FOUND, "/echo")
        })
        .route(
            Method::GET,
            "/loop/{n}",
            |_r: Request, p: Params| async move {
                let n: u32 = p.get("n").unwrap().parse().unwrap();
                redirect(StatusCode::TEMPORARY_REDIRECT, &format!("/loop/{}", n + 1))
            },
        )
        .route(Method::GET, "/cycle/a", |_r: Request, _p: Params| async {
            redirect(StatusCode::TEMPORARY_REDIRECT, "/cycle/b")
        })
        .route(Method::GET, "/cycle/b", |_r: Request, _p: Params| async {
            redirect(StatusCode::TEMPORARY_REDIRECT, "/cycle/a?again=1")
        })
        .route(Method::GET, "/cycle/a2", |_r: Request, _p: Params| async {
            redirect(StatusCode::TEMPORARY_REDIRECT, "/cycle/b2")
        })
        .route(Method::GET, "/cycle/b2", |_r: Request, _p: Params| async {
            redirect(StatusCode::TEMPORARY_REDIRECT, "/cycle/a2")
        })
        .route(Method::GET, "/busy", |_r: Request, _p: Params| async {
            HttpError::new(StatusCode::TOO_MANY_REQUESTS, "capacity_exceeded", "busy")
                .with_retry_after(Duration::from_secs(1))
        })
}

// ------------------------------------------------------------------ tests ----------

#[tokio::test]
async fn json_round_trip_with_headers_and_bearer() {
    let (addr, _t) = start(app()).await;
    let c = client();
    let reply = c
        .post_json(
            format!("http://{addr}/echo"),
            &j!({"task_id": "t1", "n": [1, 2]}),
        )
        .header("x-test", "yes")
        .bearer("tok-secret-123")
        .send()
        .await
        .unwrap();
    assert!(reply.is_success());
    let v: Value = reply.json().unwrap();
    assert_eq!(v["body"], j!({"task_id": "t1", "n": [1, 2]}));
    assert_eq!(v["info"]["method"], "POST");
    assert_eq!(v["info"]["x_test"], "yes");
    assert_eq!(v["info"]["content_type"], "application/json");
    assert_eq!(v["info"]["authorization"], "Bearer tok-secret-123");
    assert!(v["info"]["user_agent"]
        .as_str()
        .unwrap()
        .starts_with("iicp-rs/"));

    let reply = c
        .delete_json(format!("http://{addr}/v1/register"), &j!({"node_id": "n1"}))
        .send()
        .await
        .unwrap();
    let v: Value = reply.json().unwrap();
    assert_eq!(v["info"]["method"], "DELETE");
    assert_eq!(v["body"], j!({"node_id": "n1"}));
    assert_eq!(v["info"]["authorization"], Value::Null);

    let reply = c
        .get(format!("http://{addr}/echo"))
        .header(USER_AGENT, "custom/1")
        .send()
        .await
        .unwrap();
    let v: Value = reply.json().unwrap();
    assert_eq!(v["info"]["user_agent"], "custom/1");
    assert_eq!(v["body"], Value::Null);

    // wrong JSON shape: typed error naming no body content
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Wrong {
        missing: u32,
    }
    let err = reply.json::<Wrong>().unwrap_err();
    assert!(matches!(err, HttpClientError::Json { .. }));
}

#[tokio::test]
async fn bearer_never_in_debug_or_errors() {
    let c = client();
    let builder = c
        .get("http://127.0.0.1:9/x?token=query-secret")
        .bearer("tok-secret-123")
        .header(AUTHORIZATION, "Bearer other-secret");
    let debug = format!("{builder:?}");
    assert!(!debug.contains("tok-secret-123"), "{debug}");
    assert!(!debug.contains("other-secret"), "{debug}");
    assert!(!debug.contains("query-secret"), "{debug}");

    // a closed port: connect error; the URL in it has no query string
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = c
        .get(format!("http://127.0.0.1:{port}/x?token=query-secret"))
        .bearer("tok-secret-123")
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert!(err.is_retryable());
    assert!(!err.is_timeout());
    let mut text = format!("{err} {err:?}");
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        text.push_str(&format!(" {s} {s:?}"));
        source = s.source();
    }
    assert!(!text.contains("tok-secret-123"), "{text}");
    assert!(!text.contains("query-secret"), "{text}");
    assert!(
        text.contains(&format!("http://127.0.0.1:{port}/x")),
        "{text}"
    );
}

#[tokio::test]
async fn invalid_urls_and_headers() {
    let c = client();
    for url in [
        "ftp://host/x",
        "/relative",
        "http://user:pw-secret@host/x",
        "not a url?token=q-secret",
    ] {
        let err = c.get(url).send().await.unwrap_err();
        assert!(
            matches!(err, HttpClientError::InvalidUrl { .. }),
            "{url}: {err:?}"
        );
        let text = err.to_string();
        assert!(
            !text.contains("pw-secret") && !text.contains("q-secret"),
            "{text}"
        );
    }
    let err = c
        .get("http://127.0.0.1:9/")
        .header("x-bad", "line\nbreak")
        .send()
        .await
        .unwrap_err();
    assert!(matches!(err, HttpClientError::InvalidHeader { ref name } if name == "x-bad"));
}

#[tokio::test]
async fn timeout_when_the_server_never_answers() {
    // A listener that accepts and then stays silent.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (s, _) = listener.accept().await.unwrap();
            held.push(s);
        }
    });
    let started = std::time::Instant::now();
    let err = client()
        .get(format!("http://{addr}/x?token=abc"))
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(err.is_retryable());
    assert!(!err.is_connect());
    assert!(!err.to_string().contains("token"));
    assert!(started.elapsed() < Duration::from_secs(3));
    silent.abort();

    // a handler that never finishes, via the config default
    let (addr, _t) = start(app()).await;
    let mut config = HttpClientConfig::default();
    config.request_timeout = Duration::from_millis(200);
    let err = HttpClient::new(config)
        .unwrap()
        .get(format!("http://{addr}/never"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
}

#[tokio::test]
async fn response_body_cap() {
    let (addr, _t) = start(app()).await;
    let mut config = HttpClientConfig::default();
    config.max_response_bytes = 16 * 1024;
    let c = HttpClient::new(config).unwrap();

    let ok = c
        .get(format!("http://{addr}/big/16384"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.body.len(), 16 * 1024);

    // declared by Content-Length
    let err = c
        .get(format!("http://{addr}/big/16385"))
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(err, HttpClientError::BodyTooLarge { limit: 16384, .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable());

    // chunked, no length: cut while streaming
    let ok = c
        .get(format!("http://{addr}/stream/4"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.body.len(), 4 * 4096);
    let err = c
        .get(format!("http://{addr}/stream/64"))
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(err, HttpClientError::BodyTooLarge { .. }),
        "{err:?}"
    );

    // per-request override
    let err = c
        .get(format!("http://{addr}/big/100"))
        .max_response_bytes(99)
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        HttpClientError::BodyTooLarge { limit: 99, .. }
    ));
}

#[tokio::test]
async fn redirects_follow_307_308_only_when_asked() {
    let (addr, _t) = start(app()).await;
    let c = client();
    let body = j!({"keep": "me"});

    // default: not followed
    let reply = c
        .post_json(format!("http://{addr}/r307"), &body)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::TEMPORARY_REDIRECT);

    // followed, method and body kept; 308 → relative 307 → /echo
    for path in ["/r307", "/r308"] {
        let reply = c
            .post_json(format!("http://{addr}{path}"), &body)
            .bearer("tok")
            .redirects(Redirects::follow(3))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        let v: Value = reply.json().unwrap();
        assert_eq!(v["info"]["method"], "POST");
        assert_eq!(v["body"], body);
        assert_eq!(
            v["info"]["authorization"], "Bearer tok",
            "same origin keeps credentials"
        );
        assert!(reply.url().ends_with("/echo"));
    }

    // 302 is never followed
    let reply = c
        .get(format!("http://{addr}/r302"))
        .redirects(Redirects::follow(3))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::FOUND);

    // hop limit: 3 redirects followed, the 4th is an error
    let err = c
        .get(format!("http://{addr}/loop/0"))
        .redirects(Redirects::follow(3))
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(err, HttpClientError::TooManyRedirects { max_hops: 3, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("/loop/3"), "{err}");

    // loop detection (a → b → a) before the hop limit
    let err = c
        .get(format!("http://{addr}/cycle/a2"))
        .redirects(Redirects::follow(10))
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(err, HttpClientError::RedirectLoop { .. }),
        "{err:?}"
    );
    // a different query is a different URL: no loop, but the hop limit applies
    let err = c
        .get(format!("http://{addr}/cycle/a"))
        .redirects(Redirects::follow(2))
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(err, HttpClientError::TooManyRedirects { .. }),
        "{err:?}"
    );

    // client-wide policy
    let mut config = HttpClientConfig::default();
    config.redirects = Redirects::follow(3);
    let reply = HttpClient::new(config)
        .unwrap()
        .post_json(format!("http://{addr}/r307"), &body)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn cross_origin_redirects() {
    let (other, _t1) = start(app()).await;
    let target = format!("http://{other}/echo");
    let router = Router::new().route(Method::POST, "/away", move |_r: Request, _p: Params| {
        let target = target.clone();
        async move { redirect(StatusCode::TEMPORARY_REDIRECT, &target) }
    });
    let (addr, _t2) = start(router).await;
    let c = client();

    let err = c
        .post_json(format!("http://{addr}/away"), &j!({"x": 1}))
        .redirects(Redirects::follow_same_origin(3))
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(err, HttpClientError::RedirectRefused { .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable());

    let reply = c
        .post_json(format!("http://{addr}/away"), &j!({"x": 1}))
        .bearer("tok-secret")
        .header("x-iicp-consumer-token", "ct-secret")
        .header("x-test", "kept")
        .redirects(Redirects::follow(3))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let v: Value = reply.json().unwrap();
    assert_eq!(v["body"], j!({"x": 1}));
    assert_eq!(
        v["info"]["authorization"],
        Value::Null,
        "credentials dropped cross-origin"
    );
    assert_eq!(v["info"]["x_test"], "kept");
}

#[tokio::test]
async fn error_for_status_parses_the_error_body() {
    let (addr, _t) = start(app()).await;
    let reply = client()
        .get(format!("http://{addr}/busy"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.headers["retry-after"], "1");
    let err = reply.error_for_status().unwrap_err();
    assert_eq!(err.status(), Some(429));
    assert!(err.is_retryable());
    match err {
        HttpClientError::Status { error, .. } => {
            assert_eq!(error.code.as_str(), "capacity_exceeded");
            assert_eq!(error.retry_after_ms, Some(1000));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn pooled_connections_are_reused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let router = Arc::new(app());
    let accept_loop = tokio::spawn(async move {
        let config = HttpServerConfig::default();
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            let router = Arc::clone(&router);
            let config = config.clone();
            tokio::spawn(async move {
                serve_connection(stream, peer, router, &config, Shutdown::new()).await;
            });
        }
    });
    let c = client();
    for i in 0..5 {
        let reply = c
            .post_json(format!("http://{addr}/echo"), &j!({"i": i}))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.json::<Value>().unwrap()["body"]["i"], i);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    accept_loop.abort();
}

// -------------------------------------------------------------------- TLS ----------

async fn start_tls(router: Router) -> (u16, Vec<u8>, tokio::task::JoinHandle<()>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_der = certified.cert.der().to_vec();
    let key_der = certified.signing_key.serialize_der();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(cert_der.clone())],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key_der.into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = Arc::new(router);
    let task = tokio::spawn(async move {
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let router = Arc::clone(&router);
            tokio::spawn(async move {
                // a client that rejects the certificate fails the handshake: ignore
                if let Ok(stream) = acceptor.accept(tcp).await {
                    let config = HttpServerConfig::default();
                    serve_connection(stream, peer, router, &config, Shutdown::new()).await;
                }
            });
        }
    });
    (port, cert_der, task)
}

#[tokio::test]
async fn tls_with_a_private_root() {
    let (port, cert_der, server) = start_tls(app()).await;
    let url = format!("https://localhost:{port}/echo");

    // not trusted by default
    let err = client().get(&url).send().await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    let mut config = HttpClientConfig::default();
    config.extra_root_certificates = vec![cert_der];
    let c = HttpClient::new(config).unwrap();
    let reply = c
        .post_json(&url, &j!({"over": "tls"}))
        .bearer("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let v: Value = reply.json().unwrap();
    assert_eq!(v["body"], j!({"over": "tls"}));
    assert_eq!(v["info"]["authorization"], "Bearer tok");

    #[cfg(debug_assertions)]
    {
        let mut config = HttpClientConfig::default();
        config.danger_accept_invalid_certs = true;
        let reply = HttpClient::new(config)
            .unwrap()
            .get(&url)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
    }
    server.abort();
}

#[tokio::test]
async fn bad_extra_root_is_a_config_error() {
    let mut config = HttpClientConfig::default();
    config.extra_root_certificates = vec![b"not a certificate".to_vec()];
    let err = HttpClient::new(config).unwrap_err();
    assert!(matches!(err, HttpClientError::Config { .. }), "{err:?}");
}

/// A streamed body's timeout is an idle timeout: a body whose chunks keep coming may
/// last longer than it, and a pause longer than it ends the read with a timeout.
#[tokio::test]
async fn a_streamed_body_times_out_only_when_idle() {
    let router = Router::new().route(Method::GET, "/trickle", |_req: Request, _p: Params| async {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        tokio::spawn(async move {
            for i in 0..5 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if tx.send(Bytes::from(format!("chunk {i}\n"))).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let _ = tx.send(Bytes::from_static(b"too late\n")).await;
        });
        Response::new(ResponseBody::channel(rx))
    });
    let (addr, _t) = start(router).await;
    let started = std::time::Instant::now();
    let mut stream = client()
        .get(format!("http://{addr}/trickle"))
        .timeout(Duration::from_millis(300))
        .send_streaming()
        .await
        .unwrap();
    let mut got = Vec::new();
    let err = loop {
        match stream.chunk().await {
            Ok(Some(c)) => got.extend_from_slice(&c),
            Ok(None) => panic!("the body ended"),
            Err(e) => break e,
        }
    };
    assert_eq!(
        String::from_utf8_lossy(&got),
        "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n"
    );
    assert!(err.is_timeout(), "{err:?}");
    // five chunks 100 ms apart outlived the 300 ms timeout; the pause did not
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(700), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(2000), "{elapsed:?}");
}
