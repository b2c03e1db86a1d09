//! What `serve` keeps beside the node, and the commands that read it, through the real
//! binary: the single-instance lock (second instance refused, stale lock taken over,
//! `--force`, pidfile removed on SIGTERM), `--log-dir` (`events.jsonl`, `<node_id>.log`,
//! no secrets), `healthcheck` exit codes, `list`, and `credits` against a scripted
//! directory.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{directory, free_port, iicp, run, temp_home, text, Proc};
use serde_json::{json, Value};

/// `serve` with the echo model on 127.0.0.1 and a fresh port; `extra` appended.
fn serve(home: &Path, extra: &[&str]) -> std::process::Command {
    let mut cmd = iicp();
    cmd.env("IICP_HOME", home)
        .env("IICP_AUTO_DETECT_NAT", "no")
        .env_remove("IICP_FORCE")
        .env_remove("IICP_LOG_DIR")
        .args([
            "serve",
            "--backend-type",
            "echo",
            "--host",
            "127.0.0.1",
            "--port",
            &free_port().to_string(),
        ])
        .args(extra);
    cmd
}

fn pidfile(home: &Path, node_id: &str) -> PathBuf {
    home.join("run").join(format!("{node_id}.pid"))
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Polls `f` every 50 ms for up to 20 s until it returns `Some`.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn help_of_the_new_commands_and_flags() {
    for cmd in ["list", "credits", "healthcheck"] {
        let o = run(iicp().args([cmd, "--help"]));
        assert!(o.status.success(), "{cmd}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("Usage"),
            "{cmd}"
        );
    }
    let o = run(iicp().args(["credits", "--help"]));
    let help = String::from_utf8_lossy(&o.stdout);
    for env in [
        "IICP_NODE_TOKEN",
        "IICP_DIRECTORY_URL",
        "--node-id",
        "--json",
    ] {
        assert!(help.contains(env), "credits --help lacks {env}");
    }
    let o = run(iicp().args(["serve", "--help"]));
    let help = String::from_utf8_lossy(&o.stdout);
    for env in ["IICP_FORCE", "IICP_LOG_DIR", "--force", "--log-dir"] {
        assert!(help.contains(env), "serve --help lacks {env}");
    }
    let o = run(iicp().arg("--help"));
    let help = String::from_utf8_lossy(&o.stdout);
    for cmd in ["list", "credits", "healthcheck"] {
        assert!(help.contains(cmd), "--help lacks {cmd}");
    }
    // healthcheck needs --node (usage error)
    let o = run(iicp().env_remove("IICP_NODE_NAME").arg("healthcheck"));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn single_instance_lock_refuses_takes_over_stale_and_forced_and_is_released() {
    let home = temp_home("lock");
    let id = "lock-test-node";
    let pidfile = pidfile(&home, id);

    // A holds the lock
    let mut a = Proc::spawn(serve(&home, &["--skip-registration", "--node-id", id]));
    a.read_until("serving ");
    assert_eq!(read_pid(&pidfile), Some(a.child.id()));

    // a second instance of the same node is refused (exit 2, one line, no network)
    let o = run(&mut serve(&home, &["--skip-registration", "--node-id", id]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("already being served by PID {}", a.child.id()))
            && err.contains("--force"),
        "{err}"
    );
    assert_eq!(err.lines().filter(|l| l.starts_with("ERROR")).count(), 1);
    assert_eq!(read_pid(&pidfile), Some(a.child.id()), "the lock stays A's");
    // another node id is not affected
    let mut other = Proc::spawn(serve(
        &home,
        &["--skip-registration", "--node-id", "other-node"],
    ));
    other.read_until("serving ");
    other.signal("-TERM");
    assert_eq!(other.wait().0, Some(0));

    // --force takes over; A's exit then leaves B's pidfile alone
    let mut b = Proc::spawn(serve(
        &home,
        &["--skip-registration", "--node-id", id, "--force"],
    ));
    b.read_until("serving ");
    assert_eq!(read_pid(&pidfile), Some(b.child.id()));
    a.signal("-TERM");
    assert_eq!(a.wait().0, Some(0));
    assert_eq!(read_pid(&pidfile), Some(b.child.id()));
    // SIGTERM removes the pidfile
    b.signal("-TERM");
    let (code, _, err) = b.wait();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("--force: taking over the instance lock of running PID"),
        "{err}"
    );
    assert!(!pidfile.exists(), "pidfile left after SIGTERM");

    // a pidfile whose process is gone is taken over with a log line
    let mut dead = std::process::Command::new("true").spawn().expect("spawn");
    let dead_pid = dead.id();
    dead.wait().expect("wait");
    std::fs::write(&pidfile, format!("{dead_pid}\n")).expect("write");
    let mut c = Proc::spawn(serve(&home, &["--skip-registration", "--node-id", id]));
    c.read_until("serving ");
    assert_eq!(read_pid(&pidfile), Some(c.child.id()));
    c.signal("-INT");
    let (code, _, err) = c.wait();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "taking over the stale instance lock of PID {dead_pid}"
        )),
        "{err}"
    );
    assert!(!pidfile.exists(), "pidfile left after SIGINT");
    let _ = std::fs::remove_dir_all(&home);
}

fn events(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect()
}

fn names(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["event"].as_str()).collect()
}

/// `init` a saved node `name` for the directory `dir` (echo model).
fn init_node(home: &Path, name: &str, dir: &str, extra: &[&str]) -> String {
    let o = run(iicp()
        .env("IICP_HOME", home)
        .args([
            "init",
            "--yes",
            "--display-name",
            "runstate test",
            "--node",
            name,
            "--directory-url",
            dir,
            "--host",
            "127.0.0.1",
            "--port",
            &free_port().to_string(),
            "--model",
            "echo",
        ])
        .args(extra));
    assert!(o.status.success(), "{}", text(&o));
    let p: Value = serde_json::from_slice(
        &std::fs::read(home.join("nodes").join(format!("{name}.json"))).expect("profile"),
    )
    .expect("json");
    p["node_id"].as_str().expect("node_id").to_owned()
}

#[test]
fn log_dir_records_lifecycle_events_and_the_log_without_secrets() {
    let home = temp_home("logdir");
    let logs = home.join("logs");
    let (mut dir, url) = directory();
    let id = init_node(&home, "logged", &url, &[]);
    let logged = [
        "--node",
        "logged",
        "--log-dir",
        logs.to_str().expect("utf-8"),
    ];

    let mut node = Proc::spawn(serve(&home, &logged));
    let summary = node.read_until("serving ");
    assert!(summary.contains("(registered)"), "{summary}");
    // the token the node holds now (saved in its profile while serving)
    let token = eventually("the token saved in the profile", || {
        let p: Value =
            serde_json::from_slice(&std::fs::read(home.join("nodes/logged.json")).ok()?).ok()?;
        p["node_token"].as_str().map(str::to_owned)
    });
    node.signal("-TERM");
    let (code, out, err) = node.wait();
    assert_eq!(code, Some(0), "{out}\n{err}");

    let ev = events(&logs);
    let got = names(&ev);
    assert!(
        got.contains(&"serve_start") && got.contains(&"register_ok"),
        "{ev:?}"
    );
    assert_eq!(got.last(), Some(&"deregister_ok"), "{ev:?}");
    for e in &ev {
        assert_eq!(e["node_id"], id.as_str(), "{e}");
        assert!(e["ts"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
    }
    let reg = ev
        .iter()
        .find(|e| e["event"] == "register_ok")
        .expect("register_ok");
    assert_eq!(reg["directory_url"], url.as_str());
    let log = std::fs::read_to_string(logs.join(format!("{id}.log"))).expect("node log");
    assert!(log.contains("registered with the directory"), "{log}");
    let events_text = std::fs::read_to_string(logs.join("events.jsonl")).expect("events");
    for (what, text) in [("log", &log), ("events", &events_text), ("stderr", &err)] {
        assert!(
            !text.contains(&token),
            "the node token leaked into the {what}"
        );
    }

    // a second run: the directory goes away, so deregistration fails
    let mut node = Proc::spawn(serve(&home, &logged));
    node.read_until("serving ");
    let _ = dir.child.kill();
    let _ = dir.child.wait();
    node.signal("-TERM");
    assert_eq!(node.wait().0, Some(0));
    let ev = events(&logs);
    assert_eq!(names(&ev).last(), Some(&"deregister_fail"), "{ev:?}");

    // registration against a directory that is not there: register_fail, retried
    let mut node = Proc::spawn(serve(
        &home,
        &[
            "--node-id",
            "unregistered",
            "--directory-url",
            "http://127.0.0.1:1/api",
            "--log-dir",
            logs.to_str().expect("utf-8"),
        ],
    ));
    let fail = eventually("register_fail", || {
        events(&logs)
            .into_iter()
            .find(|e| e["event"] == "register_fail" && e["node_id"] == "unregistered")
    });
    assert_eq!(fail["directory_url"], "http://127.0.0.1:1/api");
    assert_eq!(fail["retryable"], true, "{fail}");
    node.signal("-KILL");
    let _ = node.wait();

    // an unusable --log-dir is a usage error before any network I/O
    let file = home.join("not-a-dir");
    std::fs::write(&file, b"x").expect("write");
    let o = run(&mut serve(
        &home,
        &[
            "--skip-registration",
            "--log-dir",
            file.to_str().expect("utf-8"),
        ],
    ));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&home);
}

fn healthcheck(home: &Path, args: &[&str]) -> (Option<i32>, String) {
    let o = run(iicp().env("IICP_HOME", home).arg("healthcheck").args(args));
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn healthcheck_and_list_follow_a_serving_node() {
    let home = temp_home("health");
    let (_dir, url) = directory();
    let id = init_node(&home, "web", &url, &[]);
    init_node(
        &home,
        "public",
        &url,
        &["--public-endpoint", "https://public.example.com"],
    );
    assert_eq!(
        healthcheck(&home, &["--node", "web"]).0,
        Some(2),
        "no snapshot"
    );

    let o = run(iicp().env("IICP_HOME", &home).arg("list"));
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("public ") && lines[0].contains("https://public.example.com"));
    assert!(
        lines[1].starts_with("web ") && lines[1].contains("(dev)"),
        "{out}"
    );
    assert!(!out.contains("serving"), "{out}");

    let mut node = Proc::spawn(serve(&home, &["--node", "web"]));
    node.read_until("serving ");
    // live and ready once the first running snapshot is written
    eventually("a healthy snapshot", || {
        (healthcheck(&home, &["--node", "web", "--ready"]).0 == Some(0)).then_some(())
    });
    let (code, out) = healthcheck(&home, &["--node", "web"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("liveness   live") && out.contains("readiness  ready"),
        "{out}"
    );
    let (code, out) = healthcheck(&home, &["--node", "web", "--json"]);
    assert_eq!(code, Some(0));
    let snap: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(snap["health_schema_version"], 1);
    assert_eq!(snap["pid"], node.child.id());
    assert_eq!(snap["external_connectivity"]["directory"], "healthy");

    let o = run(iicp().env("IICP_HOME", &home).args(["list", "--json"]));
    assert!(o.status.success(), "{}", text(&o));
    let list: Value = serde_json::from_slice(&o.stdout).expect("json");
    let web = list
        .as_array()
        .expect("array")
        .iter()
        .find(|n| n["name"] == "web")
        .expect("web");
    assert_eq!(web["node_id"], id.as_str());
    assert_eq!(web["serving_pid"], node.child.id());
    assert_eq!(web["registered"], true);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("node_token"));
    let o = run(iicp().env("IICP_HOME", &home).arg("list"));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("serving (PID {})", node.child.id())),
        "{}",
        text(&o)
    );

    // a clean stop removes the snapshot: nothing to judge (2)
    node.signal("-TERM");
    assert_eq!(node.wait().0, Some(0));
    assert_eq!(healthcheck(&home, &["--node", "web"]).0, Some(2));

    // not registered (the directory is unreachable): live, but not ready
    let mut node = Proc::spawn(serve(
        &home,
        &["--node", "web", "--directory-url", "http://127.0.0.1:1/api"],
    ));
    node.read_until("serving ");
    eventually("a running snapshot", || {
        let (_, out) = healthcheck(&home, &["--node", "web", "--json"]);
        let v: Value = serde_json::from_str(&out).ok()?;
        (v["lifecycle"] == "running").then_some(())
    });
    assert_eq!(healthcheck(&home, &["--node", "web"]).0, Some(0));
    let (code, out) = healthcheck(&home, &["--node", "web", "--ready"]);
    assert_eq!(code, Some(1), "{out}");
    // killed: the snapshot names a process that is gone (1)
    node.signal("-KILL");
    let _ = node.wait();
    let (code, _) = healthcheck(&home, &["--node", "web"]);
    assert_eq!(code, Some(1));
    let _ = std::fs::remove_dir_all(&home);
}

/// A scripted directory: answers each connection with the next `(status, body)` and
/// records the request heads.
fn scripted(replies: Vec<(u16, Value)>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/api", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for (status, body) in replies {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            log.lock().expect("lock").push(head);
            let body = body.to_string();
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.flush();
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
        }
    });
    (url, seen)
}

fn credits(home: &Path, args: &[&str]) -> std::process::Output {
    run(iicp()
        .env("IICP_HOME", home)
        .env_remove("IICP_NODE_TOKEN")
        .env_remove("IICP_NODE_ID")
        .arg("credits")
        .args(args))
}

#[test]
fn credits_fetches_the_summary_with_one_retry_and_never_prints_the_token() {
    let home = temp_home("credits");
    let token = "tok-SECRET-1234567890";
    let summary = json!({
        "node_id": "node-1", "total_earned": 12.5, "total_spent": 2.25, "balance": 10.25,
        "tx_count": 7, "reconciles": true, "tokens_per_credit": 1000
    });
    // a 503 first: retried once after the pause
    let (url, seen) = scripted(vec![
        (
            503,
            json!({"error": {"code": "unavailable", "message": "deploying"}}),
        ),
        (200, summary.clone()),
    ]);
    let o = credits(
        &home,
        &[
            "--node-id",
            "node 1",
            "--token",
            token,
            "--directory-url",
            &url,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("12.500") && out.contains("10.250"), "{out}");
    assert!(
        out.contains("reconciles") && out.contains("10250 tokens"),
        "{out}"
    );
    let heads = seen.lock().expect("lock").clone();
    assert_eq!(heads.len(), 2, "{heads:?}");
    for h in &heads {
        assert!(
            h.starts_with("GET /api/v1/credits/summary?node_id=node%201 HTTP/1.1"),
            "{h}"
        );
        assert!(
            h.to_ascii_lowercase().contains(&format!(
                "authorization: bearer {}",
                token.to_ascii_lowercase()
            )),
            "{h}"
        );
    }
    assert!(!text(&o).contains(token));

    // --json prints the directory's answer; the token may come from the environment
    let (url, _) = scripted(vec![(200, summary.clone())]);
    let o = run(iicp()
        .env("IICP_HOME", &home)
        .env("IICP_NODE_TOKEN", token)
        .args([
            "credits",
            "--json",
            "--node-id",
            "node-1",
            "--directory-url",
            &url,
        ]));
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v, summary);

    // a refusal is final (no retry): exit 1, one line, no token
    let (url, seen) = scripted(vec![(
        401,
        json!({"error": {"code": "unauthorized", "message": "bad token"}}),
    )]);
    let o = credits(
        &home,
        &[
            "--node-id",
            "node-1",
            "--token",
            token,
            "--directory-url",
            &url,
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("HTTP 401") && err.contains("bad token"),
        "{err}"
    );
    assert!(!text(&o).contains(token));
    assert_eq!(seen.lock().expect("lock").len(), 1);

    // from the saved profile: its id, token and directory; the only profile is the default
    let (url, seen) = scripted(vec![(200, summary.clone()), (200, summary.clone())]);
    let id = init_node(&home, "saved", &url, &[]);
    let path = home.join("nodes/saved.json");
    let mut profile: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("profile")).expect("json");
    profile["node_token"] = json!(token);
    std::fs::write(&path, profile.to_string()).expect("write");
    for args in [&["--node", "saved"][..], &[]] {
        let o = credits(&home, args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("credits — saved"));
        assert!(!text(&o).contains(token));
    }
    for h in seen.lock().expect("lock").iter() {
        assert!(h.contains(&format!("node_id={id} ")), "{h}");
        assert!(h.contains(token), "{h}");
    }

    // usage errors before any network I/O
    std::fs::remove_file(&path).expect("rm");
    for args in [
        &["--token", token][..],
        &["--node-id", "node-1"],
        &["--node", "missing", "--token", token],
        &[
            "--node-id",
            "n",
            "--token",
            token,
            "--directory-url",
            "ftp://x",
        ],
    ] {
        let o = credits(&home, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(!text(&o).contains(token));
    }
    let _ = std::fs::remove_dir_all(&home);
}
