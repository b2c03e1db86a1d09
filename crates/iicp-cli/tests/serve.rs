//! `serve`, `chat`, `discover` and `doctor` through the real binary: help and usage
//! errors, port auto-increment, a node registered with the embedded directory answering
//! a chat from another process, and SIGTERM deregistering it.

mod common;

use common::{directory, discover, free_port, iicp, run, temp_home, text, Proc};

#[test]
fn help_of_every_command_shows_usage_and_env_names() {
    for args in [
        &["serve", "--help"][..],
        &["init", "--help"],
        &["operator", "--help"],
        &["operator", "show", "--help"],
        &["operator", "rename", "--help"],
        &["operator", "encrypt", "--help"],
        &["operator", "decrypt", "--help"],
        &["chat", "--help"],
        &["discover", "--help"],
        &["doctor", "--help"],
    ] {
        let o = run(iicp().args(args));
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("Usage"),
            "{args:?}"
        );
    }
    let o = run(iicp().args(["serve", "--help"]));
    let help = String::from_utf8_lossy(&o.stdout);
    for env in [
        "IICP_BACKEND_MODEL",
        "IICP_BACKEND_URL",
        "IICP_BACKEND_TYPE",
        "IICP_BACKEND_API_KEY",
        "IICP_DIRECTORY_URL",
        "IICP_PORT",
        "IICP_HOST",
        "IICP_PUBLIC_ENDPOINT",
        "IICP_REGION",
        "IICP_INTENT",
        "IICP_MAX_CONCURRENT",
        "IICP_NODE_ID",
        "IICP_NODE_NAME",
        "IICP_SKIP_REGISTRATION",
        "IICP_AUTO_DETECT_NAT",
        "--no-auto-detect-nat",
        "IICP_RELAY_CAPABLE",
        "IICP_RELAY_ACCEPT_PORT",
        "IICP_RELAY_WORKER_ENDPOINT",
        "IICP_DISABLE_NATIVE_TRANSPORT",
    ] {
        assert!(help.contains(env), "serve --help lacks {env}");
    }
    // the same code behind the alias binary
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_iicp-node"))
        .args(["serve", "--help"])
        .output()
        .expect("run");
    assert!(o.status.success());
}

#[test]
fn usage_errors_exit_2_before_any_network_io() {
    let home = temp_home("usage");
    for args in [
        &["serve", "--bogus"][..],
        &["serve", "--port", "70000"],
        &["serve", "--backend-type", "bogus", "--model", "m"],
        &["serve", "--backend-url", "ftp://x", "--model", "m"],
        &["serve", "--node", "missing", "--backend-type", "echo"],
        &["serve", "--node", "Bad/Name", "--backend-type", "echo"],
        &["serve", "--backend-type", "echo", "--max-concurrent", "0"],
        &[
            "serve",
            "--backend-type",
            "echo",
            "--intent",
            "urn:iicp:intent:BAD:v1",
        ],
        &[
            "serve",
            "--backend-type",
            "echo",
            "--directory-url",
            "iicp.network",
        ],
        &[
            "serve",
            "--backend-type",
            "echo",
            "--relay-capable",
            "--port",
            "9485",
        ],
        &["chat"],
        &["chat", "hi", "--transport", "carrier-pigeon"],
        &["chat", "hi", "--directory-url", "nope"],
        &["chat", "hi", "--timeout-ms", "999999"],
        &["discover", "--limit", "0"],
        &[
            "discover",
            "urn:iicp:intent:BAD:v1",
            "--directory-url",
            "http://127.0.0.1:1/api",
        ],
        &["operator"],
        &["operator", "show"],
        &["init", "--display-name", "bad\u{7}name", "--no-node"],
    ] {
        let o = run(iicp().env("IICP_HOME", &home).args(args));
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn the_node_builders_refusals_are_usage_errors_with_its_reason() {
    let home = temp_home("config");
    let long_region = "r".repeat(65);
    for (args, reason) in [
        (
            &["--max-concurrent", "257"][..],
            "max_concurrent must be 1-256",
        ),
        (
            &["--region", long_region.as_str()],
            "region must be at most 64 characters",
        ),
        (&["--intent", "urn:iicp:intent:BAD:v1"], "invalid intent: "),
    ] {
        let o = run(iicp()
            .env("IICP_HOME", &home)
            .args(["serve", "--backend-type", "echo", "--skip-registration"])
            .args(args));
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("ERROR: invalid node configuration: {reason}")),
            "{args:?}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn port_collision_auto_increments_unless_public_endpoint() {
    let home = temp_home("port");
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = blocker.local_addr().expect("addr").port();
    let mut cmd = iicp();
    cmd.env("IICP_HOME", &home).args([
        "serve",
        "--backend-type",
        "echo",
        "--skip-registration",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
    ]);
    let mut node = Proc::spawn(cmd);
    let summary = node.read_until("serving ");
    let listening = summary
        .lines()
        .find(|l| l.trim_start().starts_with("listening"))
        .expect("listening line");
    let got: u16 = listening
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .expect("port");
    assert!(got > port && got < port + 64, "{summary}");
    assert!(
        summary.contains(&format!("http://127.0.0.1:{got}")),
        "{summary}"
    );
    node.signal("-TERM");
    let (code, _, err) = node.wait();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "port {port} in use — auto-incremented to first free port {got}"
        )),
        "{err}"
    );
    // with a public endpoint the port is taken as given: the bind fails (exit 1)
    let o = run(iicp().env("IICP_HOME", &home).args([
        "serve",
        "--backend-type",
        "echo",
        "--skip-registration",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--public-endpoint",
        "https://node.example.com",
    ]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    drop(blocker);
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn serve_registers_answers_chat_and_deregisters_on_sigterm() {
    let home = temp_home("serve");
    let (_dir, url) = directory();
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
        "--region",
        "test-region",
    ]);
    let mut node = Proc::spawn(cmd);
    let summary = node.read_until("serving ");
    assert!(summary.contains("(registered)"), "{summary}");
    assert!(summary.contains("operator   anonymous"), "{summary}");
    let node_id = common::node_id_of(&summary);

    let nodes = discover(&url, Some(&home));
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["node_id"], node_id.as_str());
    assert_eq!(nodes[0]["region"], "test-region");

    // a chat from another process, over each transport
    for transport in ["http", "native", "auto"] {
        let o = run(iicp().env("IICP_HOME", &home).args([
            "chat",
            "ping",
            "the",
            "node",
            "--directory-url",
            &url,
            "--allow-private-endpoints",
            "--transport",
            transport,
        ]));
        assert!(o.status.success(), "{transport}: {}", text(&o));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "echo: ping the node"
        );
        // the echo node streams: printed as it arrived, with its first token time
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("first token after"), "{transport}: {err}");
    }
    let o = run(iicp().env("IICP_HOME", &home).args([
        "chat",
        "all at once",
        "--no-stream",
        "--directory-url",
        &url,
        "--allow-private-endpoints",
    ]));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "echo: all at once"
    );
    assert!(!String::from_utf8_lossy(&o.stderr).contains("first token"));
    let o = run(iicp().env("IICP_HOME", &home).args([
        "chat",
        "json please",
        "--json",
        "--directory-url",
        &url,
        "--allow-private-endpoints",
    ]));
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["text"], "echo: json please");
    assert_eq!(v["node_id"], node_id.as_str());
    assert_eq!(v["streamed"], true);
    assert!(v["first_token_ms"].as_u64().is_some(), "{v}");
    assert!(v["first_token_ms"].as_u64() <= v["latency_ms"].as_u64());
    // without --allow-private-endpoints the loopback node is refused (exit 1)
    let o = run(iicp()
        .env("IICP_HOME", &home)
        .args(["chat", "hi", "--directory-url", &url]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    node.signal("-TERM");
    let (code, out, err) = node.wait();
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains(&format!("deregistered {node_id}")),
        "{out}\n{err}"
    );
    assert!(discover(&url, Some(&home)).is_empty(), "still discoverable");
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn sigint_also_drains_and_deregisters() {
    let home = temp_home("sigint");
    let (_dir, url) = directory();
    let mut cmd = iicp();
    cmd.env("IICP_HOME", &home)
        .env("IICP_PORT", free_port().to_string())
        .env("IICP_DISABLE_NATIVE_TRANSPORT", "1")
        .env("IICP_AUTO_DETECT_NAT", "no")
        .args([
            "serve",
            "--backend-type",
            "echo",
            "--directory-url",
            &url,
            "--host",
            "127.0.0.1",
        ]);
    let mut node = Proc::spawn(cmd);
    let summary = node.read_until("serving ");
    assert!(!summary.contains("native iicp://"), "{summary}");
    assert_eq!(discover(&url, Some(&home)).len(), 1);
    node.signal("-INT");
    let (code, out, _) = node.wait();
    assert_eq!(code, Some(0));
    assert!(out.contains("deregistered"), "{out}");
    assert!(discover(&url, Some(&home)).is_empty());
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn doctor_reports_checks_as_json() {
    let home = temp_home("doctor");
    let (_dir, url) = directory();
    let o = run(iicp().env("IICP_HOME", &home).args([
        "doctor",
        "--json",
        "--backend-type",
        "echo",
        "--directory-url",
        &url,
        "--port",
        &free_port().to_string(),
    ]));
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["ok"], true);
    let names: Vec<&str> = v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["backend", "directory", "port", "nat", "operator"]);
    // an unreachable backend and directory fail the run (exit 1)
    let o = run(iicp().env("IICP_HOME", &home).args([
        "doctor",
        "--backend-url",
        "http://127.0.0.1:1",
        "--directory-url",
        "http://127.0.0.1:1/api",
    ]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("FAIL backend") && out.contains("FAIL directory"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&home);
}
