//! Helpers for the binary tests: the embedded directory and `iicp serve` as child
//! processes, killed on drop.
#![allow(dead_code, unreachable_pub, clippy::print_stderr)]

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The Python interpreter named by the environment variable `var` (`scripts/peers env`
/// sets it). Under CI a missing one fails the test; elsewhere the test is skipped, with
/// a line saying so.
pub fn python_from(var: &str) -> Option<PathBuf> {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(
                p.exists(),
                "{var} names {}, which does not exist",
                p.display()
            );
            Some(p)
        }
        None if std::env::var_os("CI").is_some() => {
            panic!("{var} is not set: run the tests through scripts/test (scripts/peers env prints it)")
        }
        None => {
            eprintln!("skipping: {var} not set (scripts/peers env prints it)");
            None
        }
    }
}

pub fn iicp() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_iicp"));
    c.env_remove("IICP_OPERATOR_PASSPHRASE")
        .env_remove("IICP_DIRECTORY_URL")
        .env_remove("IICP_PORT")
        .env_remove("IICP_NODE_NAME")
        .stdin(Stdio::null());
    c
}

/// `serve`'s flags for a node on 127.0.0.1:`port` with the built-in echo model.
pub fn echo_on(port: u16) -> Vec<String> {
    [
        "--backend-type",
        "echo",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A fresh, empty IICP_HOME.
pub fn temp_home(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "iicp-cli-{tag}-{}-{}",
        std::process::id(),
        free_port()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

/// A child process killed (SIGKILL) on drop unless it already exited.
pub struct Proc {
    pub child: Child,
    pub stdout: Option<BufReader<ChildStdout>>,
    pub stderr: Option<ChildStderr>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().map(BufReader::new);
        let stderr = child.stderr.take();
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// Reads stdout lines until one contains `needle`; returns everything read.
    pub fn read_until(&mut self, needle: &str) -> String {
        let out = self.stdout.as_mut().expect("stdout");
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = out.read_line(&mut line).expect("read");
            if n == 0 {
                let mut err = String::new();
                if let Some(mut e) = self.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("process ended before {needle:?}:\n{all}\nstderr:\n{err}");
            }
            all.push_str(&line);
            if line.contains(needle) {
                return all;
            }
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok);
    }

    /// Waits for exit (15 s at most); returns the code, the rest of stdout and stderr.
    pub fn wait(&mut self) -> (Option<i32>, String, String) {
        let start = Instant::now();
        let code = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s.code();
            }
            assert!(start.elapsed() < Duration::from_secs(15), "did not exit");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut out = String::new();
        if let Some(mut o) = self.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        let mut err = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (code, out, err)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `iicp directory serve --private-mesh` on a free loopback port; returns it and its
/// base URL.
pub fn directory() -> (Proc, String) {
    let port = free_port();
    let mut cmd = iicp();
    cmd.args([
        "directory",
        "serve",
        "--private-mesh",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    let mut p = Proc::spawn(cmd);
    p.read_until("listening");
    (p, format!("http://127.0.0.1:{port}/api"))
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run")
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `iicp discover --json` against `dir` (private endpoints allowed).
pub fn discover(dir: &str, home: Option<&PathBuf>) -> Vec<serde_json::Value> {
    let mut c = iicp();
    c.args([
        "discover",
        "--json",
        "--allow-private-endpoints",
        "--directory-url",
        dir,
    ]);
    if let Some(h) = home {
        c.env("IICP_HOME", h);
    }
    let o = run(&mut c);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).expect("json")
}

/// The node id of `serve`'s summary (its first line, `IICP node <id>`).
pub fn node_id_of(summary: &str) -> String {
    summary
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("IICP node "))
        .expect("node id")
        .trim()
        .to_owned()
}
