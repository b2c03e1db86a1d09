//! `iicp config schema|validate|effective` through the binary: the schema names every
//! member of a profile `init` wrote and that profile validates; a broken profile gets
//! one error per field with its JSON pointer and exit 2; `effective` tells flags,
//! environment, profile and defaults apart, redacts secrets and refuses what `serve`
//! would refuse.

mod common;

use std::path::Path;

use common::{iicp, run, temp_home, text};
use serde_json::Value;

fn init(home: &Path, name: &str) {
    let o = run(iicp()
        .env("IICP_HOME", home)
        .args(["init", "--yes", "--node", name, "--region", "eu-west"]));
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn the_schema_covers_a_real_profile_which_validates() {
    let home = temp_home("cfg-schema");
    init(&home, "n1");
    let o = run(iicp().env("IICP_HOME", &home).args(["config", "schema"]));
    assert!(o.status.success(), "{}", text(&o));
    let schema: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    let file: Value = serde_json::from_slice(
        &std::fs::read(home.join("nodes/n1.json")).expect("profile written by init"),
    )
    .expect("json");
    let props = schema["properties"].as_object().expect("properties");
    for key in file.as_object().expect("object").keys() {
        assert!(props.contains_key(key), "{key} is not in the schema");
    }
    let o = run(iicp()
        .env("IICP_HOME", &home)
        .args(["config", "validate", "--node", "n1"]));
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("valid"));
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn validate_reports_each_field_with_its_pointer_and_exits_2() {
    let home = temp_home("cfg-validate");
    init(&home, "n1");
    let path = home.join("nodes/n1.json");
    let mut p: Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    p["port"] = Value::from(70_000);
    p["directory_url"] = Value::from("iicp.network/api");
    p["max_concurrent"] = Value::from("four");
    p["node_token"] = Value::from(7);
    p["colour"] = Value::from("blue");
    let bad = home.join("bad profile.json");
    std::fs::write(&bad, serde_json::to_vec(&p).expect("json")).expect("write");
    let o = run(iicp()
        .env("IICP_HOME", &home)
        .arg("config")
        .arg("validate")
        .arg("--file")
        .arg(&bad)
        .arg("--json"));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["valid"], false);
    let errors = v["errors"].as_array().expect("errors");
    let at = |ptr: &str| {
        errors
            .iter()
            .find(|e| e["pointer"] == ptr)
            .and_then(|e| e["message"].as_str())
            .unwrap_or_else(|| panic!("no error at {ptr}: {v}"))
            .to_owned()
    };
    assert_eq!(at("/port"), "70000 is out of range 0-65535");
    assert!(at("/directory_url").contains("http(s) URL"));
    assert_eq!(at("/max_concurrent"), "expected an integer, got a string");
    assert_eq!(at("/node_token"), "expected a string, got a number");
    assert!(at("/colour").starts_with("unknown field"));
    assert_eq!(errors.len(), 5, "{v}");
    // the text form names the pointers on stderr
    let o = run(iicp()
        .env("IICP_HOME", &home)
        .arg("config")
        .arg("validate")
        .arg("--file")
        .arg(&bad));
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/port: 70000 is out of range"), "{err}");
    // not JSON at all, and a file that is not there
    std::fs::write(&bad, "{\"port\": ").expect("write");
    let o = run(iicp().arg("config").arg("validate").arg("--file").arg(&bad));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not JSON"));
    let o = run(iicp()
        .env("IICP_HOME", &home)
        .args(["config", "validate", "--node", "missing"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn effective_names_each_source_and_redacts_secrets() {
    let home = temp_home("cfg-effective");
    init(&home, "n1");
    let o = run(iicp()
        .env("IICP_HOME", &home)
        .env("IICP_BACKEND_API_KEY", "sk-never-show-this-0001")
        .env("IICP_NODE_TOKEN", "node-token-never-shown-0002")
        .env("IICP_MAX_CONCURRENT", "9")
        .args([
            "config",
            "effective",
            "--json",
            "--node",
            "n1",
            "--port",
            "9600",
            "--auth",
            "token",
        ]));
    assert!(o.status.success(), "{}", text(&o));
    let all = String::from_utf8_lossy(&o.stdout);
    assert!(!all.contains("never-show"), "{all}");
    assert!(!all.contains("never-shown"), "{all}");
    let entries: Vec<Value> = serde_json::from_slice(&o.stdout).expect("json");
    let get = |n: &str| {
        entries
            .iter()
            .find(|e| e["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("no {n}: {all}"))
    };
    let pair = |n: &str| {
        let e = get(n);
        (
            e["value"].clone(),
            e["source"].as_str().unwrap_or("").to_owned(),
        )
    };
    assert_eq!(pair("port"), (Value::from(9600), "flag".to_owned()));
    assert_eq!(
        pair("max_concurrent"),
        (Value::from(9), "env:IICP_MAX_CONCURRENT".to_owned())
    );
    assert_eq!(
        pair("region"),
        (Value::from("eu-west"), "profile".to_owned())
    );
    assert_eq!(pair("public_endpoint"), (Value::Null, "default".to_owned()));
    assert_eq!(
        pair("backend_api_key"),
        (
            Value::from("(redacted)"),
            "env:IICP_BACKEND_API_KEY".to_owned()
        )
    );
    assert_eq!(
        pair("node_token"),
        (Value::from("(redacted)"), "env:IICP_NODE_TOKEN".to_owned())
    );
    assert_eq!(pair("auth"), (Value::from("token"), "flag".to_owned()));
    let profile_id =
        serde_json::from_slice::<Value>(&std::fs::read(home.join("nodes/n1.json")).expect("read"))
            .expect("json")["node_id"]
            .clone();
    assert_eq!(pair("node_id"), (profile_id, "profile".to_owned()));

    // what serve refuses, effective refuses (exit 2), before any network I/O
    for bad in [
        &["--backend-type", "bogus"][..],
        &["--port", "70000"],
        &["--max-concurrent", "0"],
        &["--directory-url", "ftp://x"],
    ] {
        let o = run(iicp()
            .env("IICP_HOME", &home)
            .args(["config", "effective", "--node", "n1"])
            .args(bad));
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", text(&o));
    }
    let _ = std::fs::remove_dir_all(&home);
}
