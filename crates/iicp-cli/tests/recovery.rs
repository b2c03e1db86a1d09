//! A node that runs unattended follows its backend: when the model server lists new
//! models, `serve` advertises them and registers again, and the embedded directory
//! then offers the node for the new model; when the model server goes away, the node's
//! recovery state (in `/iicp/health` and `healthcheck`) becomes `backend_attention`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{directory, discover, free_port, iicp, run, temp_home, text, Proc};
use serde_json::Value;

/// `GET path` on 127.0.0.1:`port`, the JSON body.
fn get_json(port: u16, path: &str) -> Value {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {raw}"))
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn models_of(node: &Value) -> Vec<String> {
    node["models"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_drifting_model_list_is_registered_again_and_a_lost_backend_needs_attention() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let stub = iicp_testkit::stub::StubModel::new("alpha", Duration::ZERO);
    let stub_srv = rt
        .block_on(iicp_testkit::server::serve(stub.router()))
        .expect("stub");
    let (_dir, url) = directory();
    let home = temp_home("drift");
    let port = free_port();
    let o = run(iicp().env("IICP_HOME", &home).args([
        "init",
        "--yes",
        "--node",
        "n1",
        "--backend-url",
        &stub_srv.url(),
        "--model",
        "alpha",
        "--directory-url",
        &url,
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
    ]));
    assert!(o.status.success(), "{}", text(&o));
    let mut cmd = iicp();
    cmd.env("IICP_HOME", &home).args([
        "serve",
        "--node",
        "n1",
        "--model-check-interval",
        "200ms",
        "--heartbeat-interval",
        "200ms",
    ]);
    let mut node = Proc::spawn(cmd);
    let summary = node.read_until("serving ");
    assert!(summary.contains("(registered)"), "{summary}");
    let listed = discover(&url, Some(&home));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(models_of(&listed[0]), ["alpha"]);
    let health = get_json(port, "/iicp/health");
    assert_eq!(health["recovery"]["state"], "healthy", "{health}");

    // the model server loads another model: the directory offers the node for it
    stub.set_listed(&["beta", "alpha"]);
    wait_for(
        "the directory to list beta",
        Duration::from_secs(15),
        || {
            discover(&url, Some(&home))
                .first()
                .is_some_and(|n| models_of(n).contains(&"beta".to_owned()))
        },
    );
    let listed = discover(&url, Some(&home));
    assert_eq!(
        models_of(&listed[0]),
        ["alpha", "beta"],
        "the served model stays first"
    );
    let o = run(iicp().env("IICP_HOME", &home).args([
        "discover",
        "--json",
        "--allow-private-endpoints",
        "--directory-url",
        &url,
        "--model",
        "beta",
    ]));
    assert!(o.status.success(), "{}", text(&o));
    let by_model: Vec<Value> = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(by_model.len(), 1, "discover --model beta: {by_model:?}");
    let health = get_json(port, "/iicp/health");
    assert_eq!(health["models"], serde_json::json!(["alpha", "beta"]));

    // the model server goes away: backend_attention, still live
    drop(stub_srv);
    wait_for("backend_attention", Duration::from_secs(15), || {
        get_json(port, "/iicp/health")["recovery"]["state"] == "backend_attention"
    });
    let health = get_json(port, "/iicp/health");
    assert_eq!(health["recovery"]["action"], "backend_attention");
    assert!(
        health["recovery"]["since"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z')),
        "{health}"
    );
    wait_for("the snapshot to follow", Duration::from_secs(10), || {
        let o = run(iicp()
            .env("IICP_HOME", &home)
            .args(["healthcheck", "--node", "n1"]));
        String::from_utf8_lossy(&o.stdout).contains("recovery   backend_attention")
    });
    let o = run(iicp()
        .env("IICP_HOME", &home)
        .args(["healthcheck", "--node", "n1", "--json"]));
    assert_eq!(o.status.code(), Some(0), "live: {}", text(&o));
    let snap: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(snap["recovery"]["state"], "backend_attention", "{snap}");

    node.signal("-TERM");
    let (code, out, err) = node.wait();
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        err.contains("the advertised models changed; registering again"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&home);
}
