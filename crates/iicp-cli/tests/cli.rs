//! The real `iicp` and `iicp-node` binaries: help, usage errors, and the directory
//! service started and stopped by signal.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn iicp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_iicp"))
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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let db = std::env::temp_dir().join(format!("iicp-cli-dir-{port}.db"));
    let mut child = iicp()
        .args([
            "directory",
            "serve",
            "--private-mesh",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--db",
        ])
        .arg(&db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    stdout.read_line(&mut line).expect("banner");
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    // the health endpoint answers over plain HTTP
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    use std::io::{Read as _, Write as _};
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut resp = String::new();
    stream.read_to_string(&mut resp).expect("read");
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.contains("\"private_mesh\":true"),
        "{resp}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let start = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s.code();
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0));
    assert!(db.exists(), "SQLite database written");
    let _ = std::fs::remove_file(&db);
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
}
