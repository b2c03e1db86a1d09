//! The public black-box conformance runner (`iicp-conformance==0.3.0`, installed by
//! `scripts/peers`) against our directory on loopback, for both stores: profiles
//! `directory-public-v1` (10 cases), `directory-lifecycle-v1` (6) and
//! `directory-dispatch-v1` (5) must all pass — for the memory, SQLite and PostgreSQL
//! stores, and for two directory instances sharing one PostgreSQL database (the runner
//! against one, the node it dispatches to registered through the other). Needs
//! `IICP_PEER_PYTHON` (fails under CI without it, skips elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use iicp_directory::{Directory, PgStore};
use serde_json::Value;

const PROFILES: [(&str, u64); 3] = [
    ("directory-public-v1", 10),
    ("directory-lifecycle-v1", 6),
    ("directory-dispatch-v1", 5),
];

fn runner(py: &Path) -> PathBuf {
    py.parent().expect("venv bin dir").join("iicp-conformance")
}

async fn run_profile(
    runner: PathBuf,
    target: String,
    profile: &'static str,
    out: PathBuf,
) -> Value {
    let out2 = out.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&runner)
            .args([
                "run",
                "--target",
                &target,
                "--profile",
                profile,
                "--timeout",
                "10",
                "--output",
            ])
            .arg(&out2)
            .output()
            .expect("run iicp-conformance")
    })
    .await
    .unwrap();
    let text = std::fs::read_to_string(&out).unwrap_or_else(|_| {
        panic!(
            "{profile}: no report; stdout: {} stderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    serde_json::from_str(&text).unwrap()
}

/// Runs the three profiles against `target`; the chat node DIR-DISPATCH-01 needs is
/// registered through `register_via` (another instance of the same directory, or the
/// target itself) and must be discoverable at `target` first. One summary line per
/// profile.
async fn run_profiles(label: &str, runner: &Path, target: &str, register_via: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let reports = TempDir::new("conformance");
    for (profile, expected) in PROFILES {
        if profile == "directory-dispatch-v1" {
            // DIR-DISPATCH-01 needs one eligible chat node.
            let ack = register(
                register_via,
                &register_body("https://node.example.com", "eu-central", &["fixture-model"]),
            )
            .await;
            let id = ack["node_id"].as_str().unwrap().to_owned();
            eventually(
                "the runner's target knows the chat node",
                Duration::from_secs(2),
                || async { get(&format!("{target}/v1/node/{id}")).await.status == 200 },
            )
            .await;
        }
        let report = run_profile(
            runner.to_path_buf(),
            target.to_owned(),
            profile,
            reports.0.join(format!("{profile}.json")),
        )
        .await;
        let summary = &report["summary"];
        let failed: Vec<String> = report["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["outcome"] != "pass")
            .map(|r| {
                format!(
                    "{} ({}, HTTP {})",
                    r["test_id"], r["reason"], r["observed_status"]
                )
            })
            .collect();
        assert_eq!(summary["total"], expected, "{label} {profile}: {report}");
        assert!(
            failed.is_empty(),
            "{label} {profile}: failed cases: {failed:?}"
        );
        assert_eq!(summary["passed"], expected);
        lines.push(format!(
            "{label} {profile}: {}/{}",
            summary["passed"], summary["total"]
        ));
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_conformance_runner_passes() {
    let Some(py) = peer_python() else { return };
    let runner = runner(&py);
    assert!(
        runner.exists(),
        "{} missing: run scripts/peers install",
        runner.display()
    );
    let mut lines = Vec::new();
    for backend in backends() {
        // A production-mode directory (no private endpoints) with liveness probing on.
        let d = start_with(backend, Directory::builder(), None).await;
        let label = format!("{backend:?}");
        lines.extend(run_profiles(&label, &runner, &d.base, &d.base).await);
        d.stop().await;
    }
    // Two instances on one PostgreSQL database: the runner talks to B only, and the chat
    // node of DIR-DISPATCH-01 is registered through A, so B routes to a node it learnt
    // of from the database.
    if let Some(url) = pg_database("conformance").await {
        let start = || async {
            let store = PgStore::connect(&url).await.unwrap();
            serve(
                Directory::builder().store(store).build().await.unwrap(),
                None,
            )
            .await
        };
        let (a, b) = (start().await, start().await);
        lines.extend(run_profiles("Postgres, two instances", &runner, &b.base, &a.base).await);
        a.stop().await;
        b.stop().await;
    }
    eprintln!("conformance: {}", lines.join("; "));
}
