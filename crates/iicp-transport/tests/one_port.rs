//! HTTP and the native transport on one port, at the same time (PROTOCOL.md §1.2).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use iicp_proto::frame::{Decoded, Frame, MAX_PAYLOAD};
use iicp_proto::message::{Body, Call, Channel, Init, Message, Outcome, Prefer, Response};
use iicp_transport::http::server::{json, Params, Request};
use iicp_transport::http::{HttpClient, HttpClientConfig, Router};
use iicp_transport::listener::{Listener, ListenerConfig, Services};
use iicp_transport::native::{CallContext, CallHandler, NativeClient, NativeEndpoint};
use iicp_transport::shutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn services() -> Services {
    let router = Router::new().route(
        Method::GET,
        "/iicp/health",
        |_req: Request, _p: Params| async move {
            json(
                http::StatusCode::OK,
                &serde_json::json!({"status": "ok", "via": "http"}),
            )
        },
    );
    let native: Arc<dyn CallHandler> = Arc::new(|call: Call, _ctx: CallContext| async move {
        let v = call
            .payload
            .as_ref()
            .and_then(|p| p.to_json(Prefer::Json).ok())
            .unwrap_or_default();
        Response::success(
            &call,
            Body::cbor(&serde_json::json!({"via": "native", "echo": v})),
        )
    });
    Services {
        http: Some(Arc::new(router)),
        native: Some(native),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_native_concurrently_on_one_port() {
    let listener = Listener::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        ListenerConfig::default(),
    )
    .await
    .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (trigger, sd) = shutdown::channel();
    let server = tokio::spawn(listener.serve(services(), sd));

    let http = HttpClient::new(HttpClientConfig::default()).expect("client");
    let native = NativeClient::default();
    let ep: NativeEndpoint = format!("iicp://{addr}").parse().expect("ep");
    let mut joins = Vec::new();
    for i in 0..30 {
        let (http, native, ep) = (http.clone(), native.clone(), ep.clone());
        joins.push(tokio::spawn(async move {
            let reply = http
                .get(format!("http://{addr}/iicp/health"))
                .send()
                .await
                .expect("http");
            assert_eq!(
                reply.json::<serde_json::Value>().expect("json")["via"],
                "http"
            );
            let call = Call {
                session_id: Some("s".into()),
                call_id: Some(format!("c{i}")),
                payload: Some(Body::json(&serde_json::json!({"i": i}))),
                ..Call::default()
            };
            let resp = native
                .call(&ep, call, Duration::from_secs(5))
                .await
                .expect("native");
            let Outcome::Success(Some(b)) = resp.outcome() else {
                panic!()
            };
            assert_eq!(b.to_json(Prefer::Cbor).expect("json")["echo"]["i"], i);
        }));
    }
    for j in joins {
        j.await.expect("join");
    }
    trigger.fire();
    server.await.expect("join").expect("serve");
}

#[tokio::test]
async fn first_bytes_one_at_a_time_for_both_protocols() {
    let listener = Listener::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        ListenerConfig::default(),
    )
    .await
    .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (trigger, sd) = shutdown::channel();
    let server = tokio::spawn(listener.serve(services(), sd));

    // native, dribbled byte by byte
    let mut wire = Message::Init(Init::v1()).to_frame().expect("init");
    Message::Call(Call {
        call_id: Some("d".into()),
        payload: Some(Body::json(&serde_json::json!({"slow": true}))),
        ..Call::default()
    })
    .encode(&mut wire)
    .expect("call");
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    for b in &wire {
        sock.write_all(&[*b]).await.expect("write");
        sock.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let mut responses = Vec::new();
    while responses.is_empty() {
        let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert!(n > 0, "server closed early");
        got.extend_from_slice(&buf[..n]);
        let mut at = 0;
        while let Ok(Decoded::Complete { frame, consumed }) = Frame::decode(&got[at..], MAX_PAYLOAD)
        {
            if let Message::Response(r) =
                Message::decode(&frame.header, frame.payload, Channel::Task).expect("decode")
            {
                responses.push(r);
            }
            at += consumed;
        }
    }
    let Outcome::Success(Some(b)) = responses[0].outcome() else {
        panic!()
    };
    assert_eq!(b.to_json(Prefer::Cbor).expect("json")["echo"]["slow"], true);

    // HTTP, dribbled byte by byte (starts with a byte that is not 'I')
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    for b in b"GET /iicp/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" {
        sock.write_all(&[*b]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), sock.read_to_string(&mut text))
        .await
        .expect("in time")
        .expect("read");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"via\":\"http\""), "{text}");

    // "II" then something else is HTTP (and gets an HTTP error, not a native CLOSE)
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    sock.write_all(b"IIXX / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut text = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut text)).await;
    assert!(
        text.starts_with(b"HTTP/1.1 4"),
        "{}",
        String::from_utf8_lossy(&text)
    );

    trigger.fire();
    server.await.expect("join").expect("serve");
}

#[tokio::test]
async fn iicpsec_and_https_share_the_tls_port() {
    // a self-signed certificate for "localhost", trusted explicitly by both clients
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let cert_der = cert.cert.der().to_vec();
    let key_der =
        rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).expect("key");
    let server_tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![rustls::pki_types::CertificateDer::from(cert_der.clone())],
        key_der,
    )
    .expect("server config");
    let config = ListenerConfig {
        tls: Some(Arc::new(server_tls)),
        ..ListenerConfig::default()
    };
    let listener = Listener::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config)
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (trigger, sd) = shutdown::channel();
    let server = tokio::spawn(listener.serve(services(), sd));

    let native = NativeClient::new(iicp_transport::native::NativeClientConfig {
        extra_roots: vec![cert_der.clone()],
        ..Default::default()
    });
    let ep: NativeEndpoint = format!("iicpsec://localhost:{port}").parse().expect("ep");
    let call = Call {
        call_id: Some("tls".into()),
        payload: Some(Body::json(&serde_json::json!({"secure": 1}))),
        ..Call::default()
    };
    let resp = native
        .call(&ep, call, Duration::from_secs(5))
        .await
        .expect("iicpsec call");
    let Outcome::Success(Some(b)) = resp.outcome() else {
        panic!()
    };
    assert_eq!(b.to_json(Prefer::Cbor).expect("json")["echo"]["secure"], 1);

    let mut cfg = HttpClientConfig::default();
    cfg.extra_root_certificates = vec![cert_der];
    let http = HttpClient::new(cfg).expect("client");
    let reply = http
        .get(format!("https://localhost:{port}/iicp/health"))
        .send()
        .await
        .expect("https");
    assert_eq!(
        reply.json::<serde_json::Value>().expect("json")["via"],
        "http"
    );
    // plaintext still works on the same port
    let reply = http
        .get(format!("http://127.0.0.1:{port}/iicp/health"))
        .send()
        .await
        .expect("http");
    assert!(reply.is_success());

    trigger.fire();
    server.await.expect("join").expect("serve");
}

#[tokio::test]
async fn dual_stack_listener_accepts_ipv4_and_ipv6() {
    let listener = Listener::bind_dual_stack(0, ListenerConfig::default()).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (trigger, sd) = shutdown::channel();
    let server = tokio::spawn(listener.serve(services(), sd));
    let http = HttpClient::new(HttpClientConfig::default()).expect("client");
    for host in ["127.0.0.1", "[::1]"] {
        let reply = http
            .get(format!("http://{host}:{port}/iicp/health"))
            .send()
            .await
            .expect(host);
        assert!(reply.is_success(), "{host}");
        let ep: NativeEndpoint = format!("iicp://{host}:{port}").parse().expect("ep");
        let call = Call {
            call_id: Some(host.into()),
            payload: Some(Body::json(&serde_json::json!({"host": host}))),
            ..Call::default()
        };
        let resp = NativeClient::default()
            .call(&ep, call, Duration::from_secs(5))
            .await
            .expect("native");
        assert!(
            matches!(resp.outcome(), Outcome::Success(Some(_))),
            "{host}"
        );
    }
    trigger.fire();
    server.await.expect("join").expect("serve");
}

/// A handler that learns its node id after the port is bound (as a node whose id the
/// directory assigns): each new connection's ACK announces the id it holds then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_announces_the_handler_node_id_of_the_moment() {
    struct Late(Arc<std::sync::Mutex<Option<String>>>);
    impl CallHandler for Late {
        fn handle(
            &self,
            call: Call,
            _ctx: CallContext,
        ) -> iicp_transport::native::BoxFuture<'static, Response> {
            Box::pin(async move { Response::success(&call, Body::cbor(&serde_json::json!({}))) })
        }
        fn node_id(&self) -> Option<String> {
            self.0.lock().expect("lock").clone()
        }
    }
    async fn ack_node_id(addr: SocketAddr) -> Option<String> {
        let mut sock = TcpStream::connect(addr).await.expect("connect");
        let init = Message::Init(Init::v1()).to_frame().expect("init");
        sock.write_all(&init).await.expect("write");
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1024];
        loop {
            if let Ok(Decoded::Complete { frame, .. }) = Frame::decode(&got, MAX_PAYLOAD) {
                match Message::decode(&frame.header, frame.payload, Channel::Task).expect("ack") {
                    Message::Ack(ack) => return ack.node_id,
                    other => panic!("{other:?}"),
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf))
                .await
                .expect("in time")
                .expect("read");
            assert!(n > 0, "closed before ACK");
            got.extend_from_slice(&buf[..n]);
        }
    }

    let id = Arc::new(std::sync::Mutex::new(None));
    let mut config = ListenerConfig::default();
    config.native.session.node_id = Some("configured".into());
    let listener = Listener::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config)
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (trigger, sd) = shutdown::channel();
    let services = Services {
        http: None,
        native: Some(Arc::new(Late(Arc::clone(&id)))),
    };
    let server = tokio::spawn(listener.serve(services, sd));

    assert_eq!(ack_node_id(addr).await.as_deref(), Some("configured"));
    *id.lock().expect("lock") = Some("assigned-later".into());
    assert_eq!(ack_node_id(addr).await.as_deref(), Some("assigned-later"));
    trigger.fire();
    server.await.expect("join").expect("serve");
}
