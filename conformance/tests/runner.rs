//! The `iicp-conformance` binary: its output lines, exit status and JSON report against
//! our node, against a deliberately broken scripted node, and on usage errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Output};

use http::Method;
use iicp_conformance::peers::{free_port, Scratch};
use iicp_node::{EchoModel, Node, ServeOptions};
use iicp_testkit::scripted::{Canned, ScriptedBuilder};
use serde_json::{json, Value};

/// Runs the binary with `args` (off the runtime's threads).
async fn runner(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_iicp-conformance"))
            .args(&args)
            .output()
            .expect("run iicp-conformance")
    })
    .await
    .unwrap()
}

/// `ID → PASS|FAIL|SKIP` from the output lines.
fn verdicts(out: &Output) -> BTreeMap<String, String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let label = parts.next()?;
            let id = parts.next()?;
            matches!(label, "PASS" | "FAIL" | "SKIP").then(|| (id.to_owned(), label.to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_against_our_node_passes_and_writes_the_report() {
    let port = free_port().unwrap();
    let node = Node::builder()
        .endpoint(format!("http://127.0.0.1:{port}"))
        .intent(iicp_client::CHAT_INTENT)
        .model("echo")
        .region("local")
        .build()
        .unwrap();
    let h = node
        .bind_and_serve(
            std::net::SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            EchoModel::new("echo"),
            ServeOptions::default().with_register(false),
        )
        .await
        .unwrap();
    let scratch = Scratch::new("runner-report").unwrap();
    let report = scratch.path().join("report.json");
    let out = runner(vec![
        "--node-http".into(),
        format!("http://127.0.0.1:{port}"),
        "--node-native".into(),
        format!("iicp://127.0.0.1:{port}"),
        "--json".into(),
        report.display().to_string(),
    ])
    .await;
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = verdicts(&out);
    assert!(v.len() >= 40, "{v:?}");
    assert!(v.values().all(|l| l != "FAIL"), "{v:?}");
    assert_eq!(v["NODE-TASK-02"], "PASS");
    assert_eq!(v["NATIVE-CALL-01"], "PASS");
    // no --node-token / --slow-payload / --native-timeouts: those cases skip
    for id in ["NODE-TASK-05", "QOS-ADMIT-01", "NATIVE-TMO-01"] {
        assert_eq!(v[id], "SKIP", "{id}");
    }

    let json: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(json["schema"], "iicp.conformance_result.v1");
    assert_eq!(json["target_role"], "mixed");
    assert_eq!(json["evidence_class"], "self-attested");
    assert_eq!(json["content_free"], true);
    assert!(json["fixture_digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.len(), v.len());
    assert_eq!(json["summary"]["total"], v.len());
    assert_eq!(json["summary"]["failed"], 0);
    for r in results {
        let keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "duration_ms",
                "observed_status",
                "outcome",
                "reason",
                "test_id"
            ],
            "{r}"
        );
        let expected = match v[r["test_id"].as_str().unwrap()].as_str() {
            "PASS" => json!(["pass", "passed"]),
            _ => json!(["skip", "not_applicable"]),
        };
        assert_eq!(json!([r["outcome"], r["reason"]]), expected, "{r}");
    }
    // content-free: no endpoint in the report
    assert!(!std::fs::read_to_string(&report)
        .unwrap()
        .contains(&port.to_string()));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_reports_fail_and_exits_1_against_a_broken_node() {
    let broken = ScriptedBuilder::new("broken")
        .on(
            Method::POST,
            "/v1/task",
            Canned::Json(200, json!({"status": "completed"})),
        )
        .on(
            Method::GET,
            "/iicp/health",
            Canned::Json(200, json!({"status": "fine"})),
        )
        .start()
        .await
        .unwrap();
    let out = runner(vec![
        "--node-http".into(),
        broken.url(),
        "--only".into(),
        "NODE-HEALTH-01,NODE-TASK-02,NODE-VAL-02".into(),
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert_eq!(out.status.code(), Some(1));
    let v = verdicts(&out);
    assert_eq!(v.len(), 3);
    assert!(v.values().all(|l| l == "FAIL"), "{v:?}");
    assert!(text.contains("FAIL  NODE-HEALTH-01  "), "{text}");
    assert!(
        text.contains("(status is \"fine\")"),
        "the detail follows: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_fails_every_external_client_case_for_a_harness_that_does_nothing() {
    let out = runner(vec!["--client-cmd".into(), "true".into()]).await;
    let v = verdicts(&out);
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(v.len(), 6, "{v:?}");
    assert!(v.keys().all(|id| id.starts_with("EXT-SDK-")), "{v:?}");
    assert!(v.values().all(|l| l == "FAIL"), "{v:?}");
}

#[tokio::test]
async fn usage_errors_exit_2() {
    for args in [
        vec![],
        vec!["--node-native", "http://127.0.0.1:1"],
        vec!["--client", "--only", "NO-SUCH-CASE"],
        vec!["--node-http", "http://127.0.0.1:1", "--payload", "[1]"],
        vec!["--bogus"],
    ] {
        let out = runner(args.iter().map(|s| (*s).to_owned()).collect()).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    let out = runner(vec!["--list".into()]).await;
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().count(),
        iicp_conformance::cases::all().len(),
        "one line per case"
    );
    assert!(text.contains("SDK-06-SPEC"));
}
