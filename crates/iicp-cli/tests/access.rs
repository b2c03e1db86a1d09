//! Locking a node from the command line (ADR 0008), through the real binary: `serve
//! --auth token` with the token from the environment, a flag or the saved profile
//! (`init --auth token`), the token never in output, logs or the command line; the
//! rate-limit flags reaching `/iicp/health`; `doctor` recognising the serving node on
//! its port; the binary naming itself after `argv[0]`.

mod common;

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::Command;

use common::{free_port, iicp, run, temp_home, text, Proc};
use serde_json::{json, Value};

const CHAT: &str = "urn:iicp:intent:llm:chat:v1";

/// A token no other test uses (random, so a leak check cannot pass by accident).
fn fresh_token() -> String {
    let mut b = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("tok-{hex}")
}

/// `iicp serve` of the echo model on a free loopback port, no directory, no NAT work.
fn serve_cmd(home: &Path, port: u16) -> Command {
    let mut c = iicp();
    c.env("IICP_HOME", home)
        .env_remove("IICP_NODE_TOKEN")
        .env_remove("IICP_NODE_AUTH")
        .env_remove("IICP_TASK_RATE_LIMIT")
        .env_remove("IICP_TRUST_FORWARDED_FOR")
        .args([
            "serve",
            "--backend-type",
            "echo",
            "--skip-registration",
            "--no-auto-detect-nat",
            "--skip-upnp",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ]);
    c
}

/// One HTTP/1.1 exchange on 127.0.0.1:`port`; the status and the JSON body.
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let json = resp
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

fn task(auth_token: Option<&str>) -> String {
    let id = iicp_proto::ids::TaskId::generate(&mut rand_core::OsRng).to_string();
    let mut t = json!({
        "task_id": id,
        "intent": CHAT,
        "payload": {"messages": [{"role": "user", "content": "hi"}]},
        "constraints": {"timeout_ms": 10000}
    });
    if let Some(tok) = auth_token {
        t["auth"] = json!({"node_token": tok});
    }
    t.to_string()
}

fn post(port: u16, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    http(port, "POST", "/v1/task", headers, body)
}

fn health(port: u16) -> Value {
    http(port, "GET", "/iicp/health", &[], "").1
}

/// Every file under `dir`, concatenated (lossy).
fn all_files(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).expect("dir").filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            out.push_str(&all_files(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push_str(&String::from_utf8_lossy(&b));
        }
    }
    out
}

#[test]
fn token_mode_from_the_environment_locks_http_and_never_shows_the_token() {
    let home = temp_home("auth-env");
    let logs = home.join("logs");
    let token = fresh_token();
    let port = free_port();
    let mut cmd = serve_cmd(&home, port);
    cmd.env("IICP_NODE_TOKEN", &token)
        .env("IICP_NODE_AUTH", "token")
        .arg("-v")
        .arg("--log-dir")
        .arg(&logs);
    let mut node = Proc::spawn(cmd);
    let summary = node.read_until("serving ");
    assert!(summary.contains("  auth       token"), "{summary}");

    // no credential, a wrong one, an empty one: 401 unauthorized
    let mut wrong = token.clone();
    wrong.pop();
    wrong.push('x');
    for headers in [
        &[][..],
        &[("Authorization", format!("Bearer {wrong}").as_str())],
        &[("Authorization", format!("Bearer {token}x").as_str())],
        &[("Authorization", "Bearer")],
    ] {
        let (status, body) = post(port, headers, &task(None));
        assert_eq!(status, 401, "{headers:?}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    }
    let (status, _) = post(port, &[], &task(Some(&wrong)));
    assert_eq!(status, 401);
    // the right one, as a bearer and as auth.node_token
    let bearer = format!("Bearer {token}");
    let (status, body) = post(port, &[("Authorization", &bearer)], &task(None));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "success");
    let (status, _) = post(port, &[], &task(Some(&token)));
    assert_eq!(status, 200);
    assert_eq!(health(port)["auth_mode"], "token");

    // not in the command line others can read
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", node.child.id())).expect("cmdline");
    assert!(!String::from_utf8_lossy(&cmdline).contains(&token));

    node.signal("-TERM");
    let (code, out, err) = node.wait();
    assert_eq!(code, Some(0), "{out}\n{err}");
    for (what, s) in [
        ("stdout", format!("{summary}{out}")),
        ("stderr", err.clone()),
        ("log dir", all_files(&logs)),
    ] {
        assert!(!s.contains(&token), "token in {what}");
        assert!(!s.contains(&token[..20]), "token prefix in {what}");
    }
    assert!(!err.contains("WARNING: --node-token"), "{err}");
    // the leak check above read a real log
    assert!(all_files(&logs).contains("serving"), "empty log dir");
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn token_mode_applies_to_native_calls_too() {
    use iicp_client::{Client, Transport};
    use iicp_proto::task::ChatMessage;

    let home = temp_home("auth-native");
    let (_dir, url) = common::directory();
    let token = fresh_token();
    let port = free_port();
    let mut cmd = iicp();
    cmd.env("IICP_HOME", &home)
        .env("IICP_NODE_TOKEN", &token)
        .env("IICP_AUTO_DETECT_NAT", "0")
        .args([
            "serve",
            "--backend-type",
            "echo",
            "--auth",
            "token",
            "--directory-url",
            &url,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ]);
    let mut node = Proc::spawn(cmd);
    let summary = node.read_until("serving ");
    assert!(summary.contains("(registered)"), "{summary}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let chat = |with: Option<&str>| {
        let mut b = Client::builder()
            .directory_url(url.clone())
            .allow_private_endpoints(true)
            .transport(Transport::Native);
        if let Some(t) = with {
            b = b.api_token(t.to_owned());
        }
        let client = b.build().expect("client");
        rt.block_on(client.chat(vec![ChatMessage::new("user", "over native")]))
    };
    // the node advertises token mode: a client without a token does not even try it
    let e = chat(None).expect_err("no token");
    assert_eq!(e.code().as_str(), "no_nodes_available", "{e}");
    assert!(e.to_string().contains("NoCredential: 1"), "{e}");
    let mut wrong = token.clone();
    wrong.pop();
    wrong.push('x');
    let e = chat(Some(&wrong)).expect_err("wrong token");
    assert_eq!(e.code().as_str(), "unauthorized", "{e}");
    let ok = chat(Some(&token)).expect("right token");
    assert_eq!(
        ok.completion.choices[0].message.content,
        "echo: over native"
    );
    node.signal("-TERM");
    let (code, out, err) = node.wait();
    assert_eq!(code, Some(0), "{err}");
    assert!(!format!("{summary}{out}{err}").contains(&token));
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn node_token_as_a_flag_works_but_warns() {
    let home = temp_home("auth-flag");
    let token = fresh_token();
    let port = free_port();
    let mut cmd = serve_cmd(&home, port);
    cmd.args(["--auth", "token", "--node-token", &token]);
    let mut node = Proc::spawn(cmd);
    let summary = node.read_until("serving ");
    let (status, _) = post(port, &[], &task(None));
    assert_eq!(status, 401);
    let bearer = format!("Bearer {token}");
    assert_eq!(
        post(port, &[("Authorization", &bearer)], &task(None)).0,
        200
    );
    node.signal("-TERM");
    let (code, out, err) = node.wait();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("WARNING: --node-token is visible to other users in `ps`"),
        "{err}"
    );
    assert!(!format!("{summary}{out}{err}").contains(&token));
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn access_usage_errors_exit_2_without_echoing_the_token() {
    let home = temp_home("auth-usage");
    let port = free_port();
    let secretish = "short-secret";
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--auth", "bogus"], vec![], "unknown auth mode"),
        (
            vec![],
            vec![("IICP_NODE_AUTH", "tokn")],
            "unknown auth mode",
        ),
        (vec!["--auth", "token"], vec![], "IICP_NODE_TOKEN"),
        (
            vec!["--auth", "token"],
            vec![("IICP_NODE_TOKEN", secretish)],
            "16-512 characters",
        ),
        (
            vec![],
            vec![("IICP_NODE_TOKEN", "0123456789abcdef0123")],
            "auth mode is open",
        ),
        (vec!["--auth", "consumer"], vec![], "needs a directory"),
        (vec!["--rate-limit", "x"], vec![], "--rate-limit"),
        (vec!["--rate-limit", "5/0s"], vec![], "--rate-limit"),
        (
            vec![],
            vec![("IICP_TASK_RATE_LIMIT", "5/25h")],
            "rate-limit",
        ),
    ];
    for (args, env, needle) in cases {
        let mut cmd = serve_cmd(&home, port);
        cmd.args(&args);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let o = run(&mut cmd);
        assert_eq!(o.status.code(), Some(2), "{args:?} {env:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?} {env:?}: {err}");
        assert!(!err.contains(secretish), "{err}");
    }
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn help_names_the_access_flags_and_init_refuses_bad_auth_before_writing() {
    let o = run(iicp().args(["serve", "--help"]));
    let help = String::from_utf8_lossy(&o.stdout);
    for name in [
        "--auth",
        "IICP_NODE_AUTH",
        "--node-token",
        "IICP_NODE_TOKEN",
        "--rate-limit",
        "IICP_TASK_RATE_LIMIT",
        "--trust-forwarded-for",
        "IICP_TRUST_FORWARDED_FOR",
    ] {
        assert!(help.contains(name), "serve --help lacks {name}");
    }
    let o = run(iicp().args(["init", "--help"]));
    assert!(String::from_utf8_lossy(&o.stdout).contains("--auth"));

    let home = temp_home("init-auth");
    for (args, token) in [
        (vec!["--auth", "bogus"], None),
        (vec!["--auth", "token"], Some("too-short")),
        (vec!["--auth", "open"], Some("0123456789abcdef0123")),
    ] {
        let mut c = iicp();
        c.env("IICP_HOME", &home)
            .env_remove("IICP_NODE_TOKEN")
            .args(["init", "--yes", "--display-name", "op", "--node", "edge"])
            .args(&args);
        if let Some(t) = token {
            c.env("IICP_NODE_TOKEN", t);
        }
        let o = run(&mut c);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(!text(&o).contains("too-short"), "{}", text(&o));
        assert!(!home.join("nodes").join("edge.json").exists(), "{args:?}");
        assert!(!home.join("auth").join("edge.json").exists(), "{args:?}");
    }
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn consumer_mode_on_an_unregistered_node_warns_that_it_refuses_everyone() {
    let home = temp_home("consumer-unreg");
    let port = free_port();
    let mut cmd = iicp();
    // a loopback endpoint does not register with a public directory (which is never
    // contacted: `.example` does not resolve)
    cmd.env("IICP_HOME", &home)
        .env_remove("IICP_NODE_TOKEN")
        .args([
            "serve",
            "--backend-type",
            "echo",
            "--auth",
            "consumer",
            "--directory-url",
            "http://directory.example/api",
            "--no-auto-detect-nat",
            "--skip-upnp",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ]);
    let mut node = Proc::spawn(cmd);
    let summary = node.read_until("serving ");
    assert!(summary.contains("(registration skipped)"), "{summary}");
    assert!(summary.contains("  auth       consumer"), "{summary}");
    let (status, body) = post(port, &[], &task(None));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    node.signal("-TERM");
    let (code, _, err) = node.wait();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("every task will be refused"), "{err}");
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn init_auth_token_saves_a_generated_token_that_serve_node_uses() {
    let home = temp_home("auth-profile");
    let o = run(iicp()
        .env("IICP_HOME", &home)
        .env_remove("IICP_NODE_TOKEN")
        .args([
            "init",
            "--yes",
            "--display-name",
            "op",
            "--node",
            "edge",
            "--auth",
            "token",
        ]));
    assert!(o.status.success(), "{}", text(&o));
    let path = home.join("auth").join("edge.json");
    let saved: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("auth file")).expect("json");
    assert_eq!(saved["auth"], "token");
    let token = saved["api_token"].as_str().expect("token").to_owned();
    assert_eq!(token.len(), 64);
    let out = text(&o);
    assert!(!out.contains(&token), "{out}");
    assert!(
        out.contains("generated") && out.contains(&path.display().to_string()),
        "{out}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // the other SDKs' profile file stays as they write it
    let profile: Value = serde_json::from_slice(
        &std::fs::read(home.join("nodes").join("edge.json")).expect("profile"),
    )
    .expect("json");
    assert!(profile.get("auth").is_none() && profile.get("api_token").is_none());

    let o = run(iicp().env("IICP_HOME", &home).args(["list", "--json"]));
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains(&token));
    let listed: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(listed[0]["auth"], "token", "{listed}");

    let port = free_port();
    let mut cmd = serve_cmd(&home, port);
    cmd.args(["--node", "edge"]);
    let mut node = Proc::spawn(cmd);
    let summary = node.read_until("serving ");
    assert!(summary.contains("  auth       token"), "{summary}");
    assert_eq!(post(port, &[], &task(None)).0, 401);
    let bearer = format!("Bearer {token}");
    assert_eq!(
        post(port, &[("Authorization", &bearer)], &task(None)).0,
        200
    );
    node.signal("-TERM");
    let (code, out, err) = node.wait();
    assert_eq!(code, Some(0), "{err}");
    assert!(!format!("{summary}{out}{err}").contains(&token));

    // re-init keeps the token; a token from the environment replaces it
    let o = run(iicp()
        .env("IICP_HOME", &home)
        .env_remove("IICP_NODE_TOKEN")
        .args(["init", "--yes", "--node", "edge", "--force"]));
    assert!(o.status.success(), "{}", text(&o));
    let again: Value = serde_json::from_slice(&std::fs::read(&path).expect("auth")).expect("json");
    assert_eq!(again["api_token"], token.as_str());
    let mine = fresh_token();
    let o = run(iicp()
        .env("IICP_HOME", &home)
        .env("IICP_NODE_TOKEN", &mine)
        .args(["init", "--yes", "--node", "edge", "--force"]));
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains(&mine));
    let again: Value = serde_json::from_slice(&std::fs::read(&path).expect("auth")).expect("json");
    assert_eq!(again["api_token"], mine.as_str());
    // --auth open on the command line overrides the profile (and needs no token)
    let port = free_port();
    let mut cmd = serve_cmd(&home, port);
    cmd.args(["--node", "edge", "--auth", "open"]);
    let mut node = Proc::spawn(cmd);
    let summary = node.read_until("serving ");
    assert!(summary.contains("  auth       open"), "{summary}");
    assert_eq!(post(port, &[], &task(None)).0, 200);
    node.signal("-TERM");
    assert_eq!(node.wait().0, Some(0));
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn rate_limit_flags_reach_the_node_and_its_health() {
    let home = temp_home("ratelimit");
    let port = free_port();
    let mut cmd = serve_cmd(&home, port);
    cmd.args(["--rate-limit", "2/30s", "--trust-forwarded-for"]);
    let mut node = Proc::spawn(cmd);
    let summary = node.read_until("serving ");
    assert!(
        summary.contains("rate limit 2 tasks per 30s") && summary.contains("X-Forwarded-For"),
        "{summary}"
    );
    let h = health(port);
    assert_eq!(h["task_rate_limit"]["max_requests"], 2, "{h}");
    assert_eq!(h["task_rate_limit"]["window_ms"], 30_000);
    assert_eq!(h["task_rate_limit"]["trust_forwarded_for"], true);
    let xff = |ip| [("X-Forwarded-For", ip)];
    assert_eq!(post(port, &xff("203.0.113.1"), &task(None)).0, 200);
    assert_eq!(post(port, &xff("203.0.113.1"), &task(None)).0, 200);
    let (status, body) = post(port, &xff("203.0.113.1"), &task(None));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    assert_eq!(post(port, &xff("203.0.113.2"), &task(None)).0, 200);
    node.signal("-TERM");
    assert_eq!(node.wait().0, Some(0));

    // the environment variable; 0 disables the limit
    let port = free_port();
    let mut cmd = serve_cmd(&home, port);
    cmd.env("IICP_TASK_RATE_LIMIT", "0");
    let mut node = Proc::spawn(cmd);
    let summary = node.read_until("serving ");
    assert!(summary.contains("rate limit off"), "{summary}");
    let h = health(port);
    assert_eq!(h["task_rate_limit"]["enabled"], false, "{h}");
    assert_eq!(h["task_rate_limit"]["trust_forwarded_for"], false);
    node.signal("-TERM");
    assert_eq!(node.wait().0, Some(0));
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn doctor_recognises_the_serving_node_on_its_port() {
    let home = temp_home("doctor-port");
    let o = run(iicp().env("IICP_HOME", &home).args([
        "init",
        "--yes",
        "--display-name",
        "op",
        "--node",
        "edge",
    ]));
    assert!(o.status.success(), "{}", text(&o));
    let port = free_port();
    let mut cmd = serve_cmd(&home, port);
    cmd.args(["--node", "edge"]);
    let mut node = Proc::spawn(cmd);
    let summary = node.read_until("serving ");
    let node_id = common::node_id_of(&summary);
    let doctor = |json: bool| {
        let mut c = iicp();
        c.env("IICP_HOME", &home)
            .env("IICP_AUTO_DETECT_NAT", "0")
            .env("IICP_SKIP_UPNP", "1")
            .args([
                "doctor",
                "--backend-type",
                "echo",
                "--directory-url",
                "http://127.0.0.1:1/api",
                "--port",
                &port.to_string(),
            ]);
        if json {
            c.arg("--json");
        }
        run(&mut c)
    };
    let o = doctor(false);
    let out = String::from_utf8_lossy(&o.stdout);
    let pid = node.child.id();
    assert!(
        out.contains(&format!(
            "{port} is used by the serving node edge ({node_id}) (pid {pid})"
        )),
        "{}",
        text(&o)
    );
    let o = doctor(true);
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    let port_check = v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "port")
        .expect("port check")
        .clone();
    assert_eq!(port_check["free"], false);
    assert_eq!(port_check["serving"]["pid"], pid);
    assert_eq!(port_check["serving"]["name"], "edge");
    node.signal("-TERM");
    assert_eq!(node.wait().0, Some(0));
    // once it stopped, the port is free and the serve file gone
    let o = doctor(false);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&format!("{port} is free")), "{out}");
    let left: Vec<_> = std::fs::read_dir(home.join("run"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter()
            .all(|n| !n.to_string_lossy().ends_with(".serve.json")),
        "{left:?}"
    );

    // a node of another configuration root is named by what its health says
    let elsewhere = temp_home("doctor-other");
    let mut node = Proc::spawn(serve_cmd(&elsewhere, port));
    let summary = node.read_until("serving ");
    let other_id = common::node_id_of(&summary);
    let o = doctor(false);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!(
            "{port} is used by IICP node {other_id}, not served from this configuration root"
        )),
        "{out}"
    );
    node.signal("-TERM");
    assert_eq!(node.wait().0, Some(0));
    let _ = std::fs::remove_dir_all(&elsewhere);
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn a_symlink_named_iicp_node_calls_itself_that() {
    let dir = temp_home("argv0");
    for name in ["iicp-node", "my-mesh"] {
        let link = dir.join(name);
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_iicp"), &link).expect("symlink");
        let o = run(Command::new(&link).arg("--version"));
        assert!(o.status.success(), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.starts_with(&format!("{name} ")), "{out}");
        let o = run(Command::new(&link).args(["serve", "--bogus"]));
        assert_eq!(o.status.code(), Some(2));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(&format!("Usage: {name} serve")), "{err}");
    }
    // the binary itself and the alias binary keep their names
    let o = run(iicp().arg("--version"));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("iicp "));
    let o = run(Command::new(env!("CARGO_BIN_EXE_iicp-node")).arg("--version"));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("iicp-node "));
    let _ = std::fs::remove_dir_all(&dir);
}
