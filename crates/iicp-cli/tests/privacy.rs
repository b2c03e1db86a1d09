//! Routing profiles and signed policy manifests end to end through the real binaries
//! (PROTOCOL.md §9.4, §17.4, ADR 0016): three `iicp serve` nodes declare their data
//! handling with flags — one signed by an operator in the EU with no payload retention,
//! one anonymous (unsigned) in the US, one signed in another EU region that keeps
//! payloads transiently — register with `iicp directory serve`, and `iicp discover` /
//! `iicp chat` under each profile admit exactly the nodes the profile allows and refuse
//! the rest with the rule and the count, before any prompt is sent.

mod common;

use std::path::{Path, PathBuf};

use common::{directory, free_port, iicp, run, temp_home, text, Proc};
use serde_json::Value;

struct Node {
    proc: Proc,
    home: PathBuf,
    id: String,
}

fn operator(home: &Path, name: &str) {
    let o = run(iicp()
        .env("IICP_HOME", home)
        .args(["init", "--no-node", "--display-name", name]));
    assert!(o.status.success(), "{}", text(&o));
}

fn serve(home: &Path, dir: &str, region: &str, extra: &[&str]) -> Node {
    let port = free_port();
    let mut cmd = iicp();
    cmd.env("IICP_HOME", home)
        .args([
            "serve",
            "--backend-type",
            "echo",
            "--directory-url",
            dir,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--region",
            region,
        ])
        .args(extra);
    let mut proc = Proc::spawn(cmd);
    let summary = proc.read_until("serving ");
    assert!(summary.contains("(registered)"), "{summary}");
    let id = common::node_id_of(&summary);
    Node {
        proc,
        home: home.to_owned(),
        id,
    }
}

/// `iicp discover --json` under a profile: the admitted node ids and stderr.
fn admitted(dir: &str, profile: &[&str]) -> (Vec<String>, String) {
    let o = run(iicp()
        .args([
            "discover",
            "--json",
            "--allow-private-endpoints",
            "--directory-url",
            dir,
        ])
        .args(profile));
    assert!(o.status.success(), "{}", text(&o));
    let nodes: Vec<Value> = serde_json::from_slice(&o.stdout).expect("json");
    let mut ids: Vec<String> = nodes
        .iter()
        .filter_map(|n| n["node_id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    (ids, String::from_utf8_lossy(&o.stderr).into_owned())
}

fn sorted(ids: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

#[test]
fn profiles_admit_and_refuse_nodes_by_their_signed_manifests() {
    let (_dir, url) = directory();
    let (ha, hb, hc) = (
        temp_home("privacy-a"),
        temp_home("privacy-b"),
        temp_home("privacy-c"),
    );
    operator(&ha, "Operator A");
    operator(&hc, "Operator C");
    let a = serve(
        &ha,
        &url,
        "eu-central",
        &[
            "--retention",
            "none",
            "--logs-days",
            "0",
            "--jurisdiction",
            "DE",
            "--training-use",
            "none",
        ],
    );
    let b = serve(
        &hb,
        &url,
        "us-east",
        &["--retention", "none", "--jurisdiction", "US"],
    );
    let c = serve(
        &hc,
        &url,
        "eu-west",
        &["--retention", "transient", "--jurisdiction", "FR"],
    );
    let (a_id, b_id, c_id) = (a.id.as_str(), b.id.as_str(), c.id.as_str());

    // what the directory serves: A and C signed by their operators, B self-attested
    let nodes = common::discover(&url, None);
    let manifest = |id: &str| {
        nodes
            .iter()
            .find(|n| n["node_id"] == id)
            .map(|n| n["node_policy_manifest"].clone())
            .expect("listed")
    };
    assert_eq!(manifest(a_id)["verification"]["status"], "signed_valid");
    assert_eq!(manifest(a_id)["manifest_identity_level"], "operator_bound");
    assert_eq!(manifest(a_id)["retention"]["task_payload"], "none");
    assert_eq!(manifest(a_id)["jurisdiction"], "DE");
    assert_eq!(manifest(b_id)["verification"]["status"], "self_attested");
    assert_eq!(manifest(c_id)["manifest_identity_level"], "operator_bound");

    let cases: Vec<(Vec<&str>, Vec<&str>, &[&str])> = vec![
        (vec![], vec![a_id, b_id, c_id], &[]),
        (
            vec!["--routing-profile", "sensitive"],
            vec![a_id, b_id, c_id],
            &[],
        ),
        (
            vec!["--routing-profile", "strict_policy"],
            vec![a_id],
            &[
                "policy_manifest_not_signed: 1",
                "payload_retention_not_none: 1",
            ],
        ),
        (
            vec!["--routing-profile", "operator-bound-policy"],
            vec![a_id, c_id],
            &["manifest_identity_level_too_low: 1"],
        ),
        (
            vec!["--routing-profile", "eu_restricted"],
            vec![a_id, c_id],
            &["region_not_allowed: 1"],
        ),
        (
            vec![
                "--routing-profile",
                "allowed_regions_strict",
                "--allowed-regions",
                "eu-west,us-east",
                "--require-signed-policy-manifest",
                "--jurisdiction-allowlist",
                "FR",
            ],
            vec![c_id],
            &["region_not_allowed: 1", "policy_manifest_not_signed: 1"],
        ),
    ];
    for (flags, expect, reasons) in &cases {
        let (ids, err) = admitted(&url, flags);
        assert_eq!(ids, sorted(expect), "{flags:?}: {err}");
        for r in *reasons {
            assert!(err.contains(r), "{flags:?}: {r} not in {err}");
        }
    }

    // chat follows the same rules: strict_policy reaches A only, every time
    for _ in 0..3 {
        let o = run(iicp().args([
            "chat",
            "private words",
            "--json",
            "--allow-private-endpoints",
            "--directory-url",
            &url,
            "--routing-profile",
            "strict_policy",
        ]));
        assert!(o.status.success(), "{}", text(&o));
        let v: Value = serde_json::from_slice(&o.stdout).expect("json");
        assert_eq!(v["node_id"], a_id, "{v}");
    }

    // a profile no node satisfies refuses before anything is sent, naming rule and count
    let o = run(iicp().args([
        "chat",
        "never sent",
        "--allow-private-endpoints",
        "--directory-url",
        &url,
        "--routing-profile",
        "allowed_regions_strict",
        "--allowed-regions",
        "ap-south",
    ]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("IICP-POLICY-ROUTING"), "{err}");
    assert!(err.contains("region_not_allowed: 3"), "{err}");
    assert!(err.contains("no prompt was sent"), "{err}");

    // bad profiles and parameters are usage errors (exit 2) before any I/O
    for flags in [
        vec!["--routing-profile", "paranoid"],
        vec!["--routing-profile", "allowed_regions_strict"],
        vec![
            "--routing-profile",
            "strict_policy",
            "--allowed-regions",
            "eu",
        ],
        vec!["--jurisdiction-allowlist", "DE"],
    ] {
        let o = run(iicp()
            .args(["chat", "x", "--directory-url", "http://127.0.0.1:9/api"])
            .args(&flags));
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {}", text(&o));
    }
    let o = run(iicp().env("IICP_ROUTING_PROFILE", "debug_override").args([
        "discover",
        "--json",
        "--allow-private-endpoints",
        "--directory-url",
        &url,
    ]));
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("warning: routing profile debug_override"));

    // a malformed manifest flag set is refused before serving
    let bad = temp_home("privacy-bad");
    let file = bad.join("manifest.json");
    std::fs::create_dir_all(&bad).expect("mkdir");
    std::fs::write(&file, r#"{"training_use": "sometimes"}"#).expect("write");
    let o = run(iicp().env("IICP_HOME", &bad).args([
        "serve",
        "--backend-type",
        "echo",
        "--skip-registration",
        "--port",
        "0",
        "--policy-manifest",
        file.to_str().expect("utf-8"),
    ]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/training_use"),
        "{}",
        text(&o)
    );

    for n in [a, b, c] {
        let Node { mut proc, home, .. } = n;
        proc.signal("-TERM");
        let _ = proc.wait();
        let _ = std::fs::remove_dir_all(home);
    }
    let _ = std::fs::remove_dir_all(bad);
}

/// A saved profile's `policy_manifest` is validated by `iicp config validate` (with the
/// member's pointer) and declared by `iicp serve --node`, signed, with flags on top.
#[test]
fn a_saved_profile_declares_its_policy_manifest() {
    let (_dir, url) = directory();
    let home = temp_home("privacy-profile");
    let port = free_port();
    let o = run(iicp().env("IICP_HOME", &home).args([
        "init",
        "--yes",
        "--node",
        "p1",
        "--display-name",
        "Profile Operator",
        "--directory-url",
        &url,
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--region",
        "eu-north",
    ]));
    assert!(o.status.success(), "{}", text(&o));
    let path = home.join("nodes").join("p1.json");
    let mut profile: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("profile")).expect("json");

    profile["policy_manifest"] = serde_json::json!({"training_use": "sometimes"});
    std::fs::write(&path, profile.to_string()).expect("write");
    let o = run(iicp()
        .env("IICP_HOME", &home)
        .args(["config", "validate", "--node", "p1"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("/policy_manifest") && out.contains("/training_use"),
        "{out}"
    );

    profile["policy_manifest"] = serde_json::json!({
        "jurisdiction": "SE", "training_use": "none", "retention": {"task_payload": "transient"}
    });
    std::fs::write(&path, profile.to_string()).expect("write");
    let o = run(iicp()
        .env("IICP_HOME", &home)
        .args(["config", "validate", "--node", "p1"]));
    assert!(o.status.success(), "{}", text(&o));

    // the flag overrides the profile's retention; the rest is the profile's
    let mut cmd = iicp();
    cmd.env("IICP_HOME", &home).args([
        "serve",
        "--node",
        "p1",
        "--backend-type",
        "echo",
        "--retention",
        "none",
    ]);
    let mut node = Proc::spawn(cmd);
    let summary = node.read_until("serving ");
    assert!(summary.contains("(registered)"), "{summary}");
    let nodes = common::discover(&url, None);
    let m = &nodes[0]["node_policy_manifest"];
    assert_eq!(m["verification"]["status"], "signed_valid", "{m}");
    assert_eq!(m["manifest_identity_level"], "operator_bound", "{m}");
    assert_eq!(m["jurisdiction"], "SE");
    assert_eq!(m["training_use"], "none");
    assert_eq!(m["retention"]["task_payload"], "none");
    let (ids, _) = admitted(&url, &["--routing-profile", "strict_policy"]);
    assert_eq!(
        ids,
        vec![nodes[0]["node_id"].as_str().expect("id").to_owned()]
    );
    node.signal("-TERM");
    let _ = node.wait();
    let _ = std::fs::remove_dir_all(home);
}

/// `iicp operator rotate` and `revoke` reach the directory's key lifecycle registry: a
/// manifest signed with the old key is served as rotated (operator_bound_policy refuses
/// it) until the node registers again with the new key; after a revocation the node's
/// manifest is refused at registration.
#[test]
fn rotated_and_revoked_operator_keys_are_refused() {
    let (_dir, url) = directory();
    let home = temp_home("privacy-rotate");
    operator(&home, "Rotating Operator");
    let flags = ["--retention", "none", "--jurisdiction", "DE"];
    let a = serve(&home, &url, "eu-central", &flags);
    let (ids, _) = admitted(&url, &["--routing-profile", "operator_bound_policy"]);
    assert_eq!(ids, vec![a.id.clone()]);

    let o =
        run(iicp()
            .env("IICP_HOME", &home)
            .args(["operator", "rotate", "--directory-url", &url]));
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("rotated (epoch 1)"),
        "{}",
        text(&o)
    );
    let (ids, err) = admitted(&url, &["--routing-profile", "operator_bound_policy"]);
    assert!(ids.is_empty(), "{ids:?}");
    assert!(
        err.contains("policy_manifest_revoked_or_rotated: 1"),
        "{err}"
    );
    let nodes = common::discover(&url, None);
    assert_eq!(
        nodes[0]["node_policy_manifest"]["manifest_identity_level"],
        "rotated"
    );

    // the node registers again with the new key
    let Node { mut proc, .. } = a;
    proc.signal("-TERM");
    let _ = proc.wait();
    let b = serve(&home, &url, "eu-central", &flags);
    let (ids, _) = admitted(&url, &["--routing-profile", "operator_bound_policy"]);
    assert_eq!(ids, vec![b.id.clone()]);

    // revocation is confirmed, then permanent: the node's manifest is refused
    let o =
        run(iicp()
            .env("IICP_HOME", &home)
            .args(["operator", "revoke", "--directory-url", &url]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = run(iicp().env("IICP_HOME", &home).args([
        "operator",
        "revoke",
        "--directory-url",
        &url,
        "--yes",
        "--reason",
        "compromise",
    ]));
    assert!(o.status.success(), "{}", text(&o));
    let nodes = common::discover(&url, None);
    let m = &nodes[0]["node_policy_manifest"];
    assert_eq!(m["verification"]["status"], "signed_revoked", "{m}");
    assert_eq!(m["revocation_reason_class"], "compromise");
    let Node { mut proc, .. } = b;
    proc.signal("-TERM");
    let _ = proc.wait();
    let port = free_port();
    let mut cmd = iicp();
    cmd.env("IICP_HOME", &home).args([
        "serve",
        "--backend-type",
        "echo",
        "--directory-url",
        &url,
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--retention",
        "none",
    ]);
    let mut c = Proc::spawn(cmd);
    let out = c.read_until("signed_revoked");
    assert!(out.contains("policy_manifest"), "{out}");
    c.signal("-TERM");
    let _ = c.wait();
    assert!(common::discover(&url, None).is_empty());
    let _ = std::fs::remove_dir_all(home);
}
