//! The real `iicp` and `iicp-node` binaries: help, usage errors, and the directory
//! service started and stopped by signal.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn iicp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_iicp"))
}

/// Spawns `cmd` (stdout piped, stderr dropped) and reads its first line. Keep the
/// returned reader until the child has ended: its later prints need the pipe open.
fn spawn_with_banner(
    cmd: &mut Command,
) -> (
    std::process::Child,
    String,
    BufReader<std::process::ChildStdout>,
) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    stdout.read_line(&mut line).expect("banner");
    (child, line, stdout)
}

/// `GET /health` on 127.0.0.1:`port`: the raw answer.
fn get_health(port: u16) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut resp = String::new();
    stream.read_to_string(&mut resp).expect("read");
    resp
}

/// Sends SIGTERM and waits (at most 15 s) for the exit code.
fn stop_with_sigterm(child: &mut std::process::Child) -> Option<i32> {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s.code();
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[test]
fn help_of_every_command_and_version() {
    for args in [
        &["--help"][..],
        &["directory", "--help"],
        &["directory", "serve", "--help"],
        &["completion", "--help"],
    ] {
        let out = iicp().args(args).output().expect("run");
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
    let out = iicp().arg("--version").output().expect("run");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("iicp {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(env!("CARGO_BIN_EXE_iicp-node"))
        .arg("--help")
        .output()
        .expect("run");
    assert!(out.status.success());
    // env names are shown in help
    let out = iicp()
        .args(["directory", "serve", "--help"])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).contains("IICP_DIRECTORY_DB"));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["bogus"],
        &["directory", "serve", "--listen", "not-an-address"],
        &["directory", "serve", "--public-url", "ftp://x"],
        &["completion", "tcsh"],
    ] {
        let out = iicp().args(args).output().expect("run");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("panicked"),
            "{args:?}"
        );
    }
}

#[test]
fn every_url_flag_is_checked_the_same_way() {
    let isolated = std::env::temp_dir().join(format!("iicp-cli-url-{}", std::process::id()));
    for (args, flag) in [
        (
            &["directory", "serve", "--public-url", "http://h/?q"][..],
            "--public-url",
        ),
        (
            &["chat", "--directory-url", "ftp://x", "hi"],
            "--directory-url",
        ),
        (
            &["proxy", "--directory-url", "http://h h/api"],
            "--directory-url",
        ),
        (
            &["chat", "--directory-url", "http://u@h/api", "hi"],
            "--directory-url",
        ),
        (
            &[
                "credits",
                "--directory-url",
                "http://",
                "--node-id",
                "n",
                "--token",
                "t",
            ],
            "--directory-url",
        ),
        (
            &[
                "serve",
                "--directory-url",
                "iicp://h:1",
                "--backend-type",
                "echo",
            ],
            "--directory-url",
        ),
    ] {
        let out = iicp()
            .env("IICP_HOME", &isolated)
            .args(args)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!("{flag} must be an http(s) URL")),
            "{args:?}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&isolated);
}

#[test]
fn completion_scripts() {
    for shell in ["bash", "zsh", "fish"] {
        let out = iicp().args(["completion", shell]).output().expect("run");
        assert!(out.status.success(), "{shell}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("iicp"),
            "{shell}"
        );
    }
}

#[test]
fn directory_serve_answers_and_stops_on_sigterm() {
    let port = free_port();
    let db = std::env::temp_dir().join(format!("iicp-cli-dir-{port}.db"));
    let mut cmd = iicp();
    cmd.args([
        "directory",
        "serve",
        "--private-mesh",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--db",
    ])
    .arg(&db);
    let (mut child, line, _stdout) = spawn_with_banner(&mut cmd);
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    // the health endpoint answers over plain HTTP
    let resp = get_health(port);
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.contains("\"private_mesh\":true"),
        "{resp}"
    );
    assert_eq!(stop_with_sigterm(&mut child), Some(0));
    assert!(db.exists(), "SQLite database written");
    let _ = std::fs::remove_file(&db);
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
}

/// Runs `iicp ARGS`, which must succeed, and returns its stdout.
fn stdout_of_success(args: &[&str]) -> String {
    let out = iicp().args(args).output().expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn dev_once_chats_over_both_transports() {
    let stdout = stdout_of_success(&["dev", "--once", "--nodes", "3", "--prompt", "ping the mesh"]);
    assert!(stdout.contains("registered  3 node(s)"), "{stdout}");
    let chats: Vec<&str> = stdout.lines().filter(|l| l.starts_with("chat")).collect();
    assert_eq!(chats.len(), 2, "{stdout}");
    assert!(
        chats[0].contains("via HTTP") && chats[1].contains("via native"),
        "{stdout}"
    );
    for c in chats {
        assert!(
            c.contains("IICP-CX encrypted") && c.ends_with("echo: ping the mesh"),
            "{c}"
        );
        // the echo nodes stream: the time to the first token and the chunk count
        assert!(
            c.contains(", first token ") && c.contains(" chunks)"),
            "{c}"
        );
    }
    assert!(
        stdout.contains("/api"),
        "prints the directory URL: {stdout}"
    );
}

#[test]
fn dev_usage_errors() {
    let out = iicp()
        .args(["dev", "--once", "--backend-url", "http://127.0.0.1:1/v1"])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(2),
        "missing --model is a usage error"
    );
    let out = iicp()
        .args(["dev", "--once", "--nodes", "0"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let out = iicp()
        .args([
            "dev",
            "--once",
            "--backend-url",
            "http://x/v1",
            "--model",
            "m",
            "--backend-type",
            "meshllm",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn dev_runs_on_a_single_threaded_runtime() {
    let stdout = stdout_of_success(&["--worker-threads", "1", "dev", "--once", "--nodes", "1"]);
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("chat")).count(),
        2,
        "{stdout}"
    );
    let out = iicp()
        .args(["dev", "--once"])
        .env("IICP_WORKER_THREADS", "2000")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "out of range is a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("worker-threads"));
}

#[test]
fn dev_rounds_times_repeated_chats() {
    let stdout = stdout_of_success(&["dev", "--once", "--nodes", "1", "--rounds", "25"]);
    let timings: Vec<&str> = stdout.lines().filter(|l| l.starts_with("timing")).collect();
    assert_eq!(timings.len(), 2, "{stdout}");
    for (line, transport) in timings.iter().zip(["via HTTP", "via native"]) {
        assert!(
            line.contains("25 x chat()") && line.contains(transport),
            "{line}"
        );
        for field in ["p50", "p90", "p99", "max", "discovery cached"] {
            assert!(line.contains(field), "{line}");
        }
    }
}

/// The main job with a real model: llama-cpp-python's server with SmolLM2-135M behind
/// every node (needs IICP_MODEL_PYTHON / IICP_MODEL_GGUF from scripts/test).
#[test]
fn dev_once_with_a_real_model() {
    let Some((py, gguf)) = iicp_testkit::model::from_env() else {
        return;
    };
    let server = iicp_testkit::model::ModelServer::start(&py, &gguf, None);
    let port = server.port();
    let out = iicp()
        .args([
            "dev",
            "--once",
            "--nodes",
            "1",
            // no `/v1`, no `--model`: normalised and auto-selected as `serve` does
            "--backend-url",
            &format!("http://127.0.0.1:{port}"),
            "--prompt",
            "Say hello.",
        ])
        .output()
        .expect("run");
    drop(server);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // llama-cpp-python lists the model by its GGUF path: the node publishes the stem
    let stem = std::path::Path::new(&gguf)
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("stem");
    assert!(stdout.contains(&format!("model {stem}")), "{stdout}");
    assert!(
        !stdout.contains(".gguf") && !stdout.contains("/root"),
        "{stdout}"
    );
    let chats: Vec<&str> = stdout.lines().filter(|l| l.starts_with("chat")).collect();
    assert_eq!(chats.len(), 2, "{stdout}");
    for c in chats {
        let answer = c.split_once(": ").map(|x| x.1).unwrap_or_default();
        assert!(
            !answer.trim().is_empty() && !answer.contains("<no text>"),
            "{c}"
        );
        // the model's tokens streamed through the node: many chunks
        let chunks: usize = c
            .split_once(" chunks)")
            .and_then(|(head, _)| head.rsplit_once('(').map(|x| x.1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(chunks > 3, "{c}");
    }
}

#[test]
fn directory_serve_names_an_unreachable_postgresql_without_its_password() {
    let port = free_port();
    let out = iicp()
        .args([
            "directory",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            &format!("postgres://dir:hunter2-secret@127.0.0.1:{port}/iicp"),
        ])
        .output()
        .expect("run");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(!all.contains("hunter2"), "{all}");
    assert!(
        all.contains(&format!("postgres://dir:***@127.0.0.1:{port}/iicp")),
        "{all}"
    );
}

#[test]
fn directory_serve_on_postgresql_from_the_environment() {
    let Some(pg) = iicp_testkit::postgres::PgServer::shared() else {
        return;
    };
    let port = free_port();
    let mut cmd = iicp();
    cmd.args([
        "directory",
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ])
    .env("IICP_DIRECTORY_DB", pg.url("postgres"));
    let (mut child, line, _stdout) = spawn_with_banner(&mut cmd);
    assert!(
        line.contains(&format!("postgresql {}", pg.url("postgres"))),
        "{line}"
    );
    let resp = get_health(port);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(stop_with_sigterm(&mut child), Some(0));
}

#[test]
fn bench_stream_measures_the_node_and_both_floors() {
    // tiny: 4 unpaced tokens, a few tasks; the figures are not judged, only that every
    // path streamed and every pass measured something
    let stdout = stdout_of_success(&[
        "bench-stream",
        "--rounds",
        "1",
        "--cpu-tasks",
        "3",
        "--tokens",
        "4",
        "--token-delay-ms",
        "0",
        "--floor",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    let paths: Vec<(&str, u64)> = v["time_to_first_token"]
        .as_array()
        .expect("time_to_first_token")
        .iter()
        .map(|p| (p["path"].as_str().unwrap(), p["chunks"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        paths,
        [("direct", 0), ("mesh, HTTP", 4), ("mesh, native", 4)],
        "{stdout}"
    );
    let transports: Vec<&str> = v["node_cpu_per_chunk"]
        .as_array()
        .expect("node_cpu_per_chunk")
        .iter()
        .map(|t| t["transport"].as_str().unwrap())
        .collect();
    assert_eq!(transports, ["HTTP", "native"]);
    let mut passes: Vec<&serde_json::Value> =
        v["node_cpu_per_chunk"].as_array().unwrap().iter().collect();
    passes.push(&v["floor_cpu_per_chunk"]);
    passes.push(&v["tokio_floor_cpu_per_chunk"]);
    for p in passes {
        // every pass measured its thread's CPU, and reports user and system time (at
        // tick resolution, so zero is possible in a pass this short)
        assert!(
            p["cpu_us_per_many_chunk_task"].as_f64().unwrap() > 0.0,
            "{p}"
        );
        assert!(p["cpu_us_per_1_chunk_task"].as_f64().unwrap() > 0.0, "{p}");
        assert!(p["user_us_per_chunk"].is_number(), "{p}");
        assert!(p["system_us_per_chunk"].is_number(), "{p}");
    }
}
