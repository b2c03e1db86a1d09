//! The public black-box conformance runner (`iicp-conformance==0.3.0`, installed by
//! `scripts/peers`) against our directory on loopback, for both stores: profiles
//! `directory-public-v1` (10 cases), `directory-lifecycle-v1` (6) and
//! `directory-dispatch-v1` (5) must all pass. Needs `IICP_PEER_PYTHON` (fails under CI
//! without it, skips elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use iicp_directory::Directory;
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
        let reports = TempDir::new("conformance");
        for (profile, expected) in PROFILES {
            if profile == "directory-dispatch-v1" {
                // DIR-DISPATCH-01 needs one eligible chat node.
                register(
                    &d.base,
                    &register_body("https://node.example.com", "eu-central", &["fixture-model"]),
                )
                .await;
            }
            let report = run_profile(
                runner.clone(),
                d.base.clone(),
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
            assert_eq!(
                summary["total"], expected,
                "{backend:?} {profile}: {report}"
            );
            assert!(
                failed.is_empty(),
                "{backend:?} {profile}: failed cases: {failed:?}"
            );
            assert_eq!(summary["passed"], expected);
            lines.push(format!(
                "{backend:?} {profile}: {}/{}",
                summary["passed"], summary["total"]
            ));
        }
        d.stop().await;
    }
    eprintln!("conformance: {}", lines.join("; "));
}
