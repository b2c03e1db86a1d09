//! Interop with the Python SDK (iicp-client 0.7.109) over the native transport:
//! its `IicpTcpClient` against our server, and our `NativeClient` against its node.
//!
//! The peer is installed by `scripts/peers` (which `scripts/test` runs) and found through
//! `IICP_PEER_PYTHON`. Without it these tests fail under CI and skip elsewhere.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iicp_proto::message::{Body, Call, Outcome, Prefer, Response};
use iicp_transport::listener::{Listener, ListenerConfig, Services};
use iicp_transport::native::{CallContext, CallHandler, NativeClient, NativeEndpoint};
use iicp_transport::shutdown;

fn peer_python() -> Option<PathBuf> {
    match std::env::var_os("IICP_PEER_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("CI").is_some() => {
            panic!("IICP_PEER_PYTHON is not set: run the tests through scripts/test")
        }
        None => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("skipping: IICP_PEER_PYTHON not set (scripts/test sets it)");
            }
            None
        }
    }
}

fn harness() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../conformance/peers/py_peer.py")
}

/// Kills the child process when dropped, so a failing test leaves nothing running.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn wait_for_port(port: u16, within: Duration) {
    let start = Instant::now();
    while start.elapsed() < within {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("port {port} did not open within {within:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_tcp_client_against_our_native_server() {
    let Some(py) = peer_python() else { return };
    let handler: Arc<dyn CallHandler> = Arc::new(|call: Call, _ctx: CallContext| async move {
        let payload = call
            .payload
            .as_ref()
            .and_then(|p| p.to_json(Prefer::Json).ok())
            .unwrap_or_default();
        Response::success(
            &call,
            Body::cbor(&serde_json::json!({"served_by": "iicp-rs", "echo": payload})),
        )
    });
    let mut config = ListenerConfig::default();
    config.native.session.node_id = Some("3fa85f64-5717-4562-b3fc-2c963f66afa6".into());
    let listener = Listener::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config)
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (trigger, sd) = shutdown::channel();
    let server = tokio::spawn(listener.serve(
        Services {
            http: None,
            native: Some(handler),
        },
        sd,
    ));

    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg(harness())
            .args(["tcp-client", "127.0.0.1", &port.to_string(), "3"])
            .output()
            .expect("run python peer")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python peer failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(events[0]["event"], "handshake");
    assert_eq!(
        events[0]["peer_node_id"],
        "3fa85f64-5717-4562-b3fc-2c963f66afa6"
    );
    assert_eq!(
        events[1],
        serde_json::json!({"event": "pong", "echo": "py-echo"})
    );
    let calls: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "call").collect();
    assert_eq!(calls.len(), 3);
    for (i, c) in calls.iter().enumerate() {
        assert_eq!(c["result"]["served_by"], "iicp-rs");
        assert_eq!(
            c["result"]["echo"]["messages"][0]["content"],
            format!("py native #{i}")
        );
    }
    assert_eq!(events.last().expect("last")["event"], "closed");
    trigger.fire();
    server.await.expect("join").expect("serve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_native_client_against_python_sdk_node() {
    let Some(py) = peer_python() else { return };
    // the SDK node needs a model server: our harness's stub
    let mut stub = Guard(
        Command::new(&py)
            .arg(harness())
            .args(["stub-openai", "0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("stub"),
    );
    let mut line = String::new();
    BufReader::new(stub.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("stub announces its port");
    let stub_port = serde_json::from_str::<serde_json::Value>(&line).expect("json")["port"]
        .as_u64()
        .expect("port");

    let node_port = free_port();
    let home = std::env::temp_dir().join(format!("iicp-py-home-{node_port}"));
    let node_bin = py.parent().expect("venv bin").join("iicp-node");
    let _node = Guard(
        Command::new(node_bin)
            .args([
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                &node_port.to_string(),
                "--model",
                "stub-model",
                "--skip-registration",
                "--no-auto-detect-nat",
                "--no-tunnel",
            ])
            .args(["--backend-url", &format!("http://127.0.0.1:{stub_port}")])
            .env("HOME", &home)
            .env("IICP_AUTO_UPDATE", "0")
            .env("IICP_AUTO_DETECT_NAT", "0")
            .env("IICP_TUNNEL", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python node"),
    );
    tokio::task::spawn_blocking(move || wait_for_port(node_port, Duration::from_secs(30)))
        .await
        .expect("join");

    let client = NativeClient::default();
    let ep: NativeEndpoint = format!("iicp://127.0.0.1:{node_port}")
        .parse()
        .expect("endpoint");
    let conn = client.connection(&ep).await.expect("connect");
    conn.ping(Some(b"rs".to_vec()), Duration::from_secs(5))
        .await
        .expect("pong");
    for i in 0..3 {
        let call = Call {
            protocol_version: Some(1),
            session_id: Some(format!("rs-s{i}")),
            intent: Some("urn:iicp:intent:llm:chat:v1".into()),
            payload: Some(Body::json(
                &serde_json::json!({"messages": [{"role": "user", "content": format!("from rust #{i}")}]}),
            )),
            timeout_s: Some(30),
            call_id: Some(iicp_proto::ids::uuid_v4(&mut rand_core::OsRng).to_string()),
            ..Call::default()
        };
        let resp = client
            .call(&ep, call, Duration::from_secs(30))
            .await
            .expect("call");
        let Outcome::Success(Some(body)) = resp.outcome() else {
            panic!("{resp:?}")
        };
        let v = body.to_json(Prefer::Cbor).expect("result");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            format!("STUB: from rust #{i}"),
            "{v}"
        );
    }
    let _ = std::fs::remove_dir_all(home);
}
