//! `serve` and the directory's answers, through the real binary against a scripted
//! directory in this process: the summary's `listening` line comes at once, before the
//! directory answers; a 403 `IICP-E050` refusal is shown with its code and message on
//! stdout and in `healthcheck --json`; a later acceptance is announced; the heartbeat
//! and backoff flags take effect and refuse bad values (exit 2).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{free_port, iicp, run, temp_home, text};
use serde_json::{json, Value};

const E050_MESSAGE: &str = "endpoint change requires current_node_token";

/// How the scripted directory answers REGISTER.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Keep the request until the mode changes, then answer per the new mode.
    Hold,
    /// 403 `IICP-E050`.
    Refuse,
    /// 201 with a node token.
    Accept,
}

#[derive(Debug)]
struct State {
    mode: Mode,
    registers: usize,
    answered: usize,
    heartbeats: usize,
    deregisters: usize,
}

/// A directory on 127.0.0.1:0 answering from [`State`]; one thread per connection,
/// every answer `Connection: close`. The listener thread ends with the test process.
#[derive(Clone)]
struct Directory {
    state: Arc<(Mutex<State>, Condvar)>,
    url: String,
}

impl Directory {
    fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/api", listener.local_addr().expect("addr"));
        let dir = Self {
            state: Arc::new((
                Mutex::new(State {
                    mode,
                    registers: 0,
                    answered: 0,
                    heartbeats: 0,
                    deregisters: 0,
                }),
                Condvar::new(),
            )),
            url,
        };
        let d = dir.clone();
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let d = d.clone();
                thread::spawn(move || d.answer(conn));
            }
        });
        dir
    }

    fn set(&self, mode: Mode) {
        let (m, cv) = &*self.state;
        m.lock().expect("lock").mode = mode;
        cv.notify_all();
    }

    fn with<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.0.lock().expect("lock"))
    }

    fn answer(&self, mut conn: TcpStream) {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
        let Some((method, path, body)) = read_request(&mut conn) else {
            return;
        };
        let (status, body) = match (method.as_str(), path.as_str()) {
            ("POST", "/api/v1/register") => self.register(&body),
            ("POST", "/api/v1/heartbeat") => {
                self.state.0.lock().expect("lock").heartbeats += 1;
                (200, json!({"ok": true}))
            }
            ("DELETE", "/api/v1/register") => {
                self.state.0.lock().expect("lock").deregisters += 1;
                (200, json!({"deregistered": true}))
            }
            _ => (
                404,
                json!({"error": {"code": "not_found", "message": "no such route"}}),
            ),
        };
        let body = body.to_string();
        let reason = match status {
            200 => "OK",
            201 => "Created",
            403 => "Forbidden",
            _ => "Not Found",
        };
        let _ = write!(
            conn,
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    }

    fn register(&self, req: &Value) -> (u16, Value) {
        let (m, cv) = &*self.state;
        let mut st = m.lock().expect("lock");
        st.registers += 1;
        while st.mode == Mode::Hold {
            st = cv.wait(st).expect("wait");
        }
        st.answered += 1;
        match st.mode {
            Mode::Accept => (
                201,
                json!({"node_id": req["node_id"], "node_token": format!("tok-{}", st.answered)}),
            ),
            _ => (
                403,
                json!({"error": {"code": "IICP-E050", "message": E050_MESSAGE}}),
            ),
        }
    }
}

/// Reads one request (head and `content-length` body); returns its method, path and
/// JSON body (`null` when there is none).
fn read_request(conn: &mut TcpStream) -> Option<(String, String, Value)> {
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0u8; length.min(1 << 20)];
    reader.read_exact(&mut body).ok()?;
    Some((
        method,
        path,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    ))
}

/// `iicp serve` with its stdout lines arriving on a channel; killed on drop.
struct Serve {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Serve {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line from now on containing `needle` (60 s at most).
    fn line_with(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let mut err = String::new();
                    if let Some(mut e) = self.child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    panic!(
                        "no line with {needle:?}; stdout so far:\n{}\nstderr:\n{err}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    /// SIGTERM, then the exit code (15 s at most) and stderr (the log).
    fn terminate(&mut self) -> (Option<i32>, String) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok);
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return (s.code(), err);
            }
            assert!(start.elapsed() < Duration::from_secs(15), "did not exit");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn init_node(home: &Path, name: &str, dir: &str) {
    let o = run(iicp().env("IICP_HOME", home).args([
        "init",
        "--yes",
        "--display-name",
        "directory answers",
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
    ]));
    assert!(o.status.success(), "{}", text(&o));
}

/// `healthcheck --json` until `cond` holds for its snapshot (20 s at most).
fn health_until(home: &Path, name: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < Duration::from_secs(20) {
        let o = run(iicp()
            .env("IICP_HOME", home)
            .args(["healthcheck", "--node", name, "--json"]));
        if let Ok(v) = serde_json::from_slice::<Value>(&o.stdout) {
            if cond(&v) {
                return v;
            }
            last = v;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("healthcheck never showed {what}; last snapshot:\n{last:#}");
}

#[test]
fn listening_comes_at_once_and_the_directory_refusal_is_shown_with_its_code_and_message() {
    let home = temp_home("dir-answers");
    let dir = Directory::start(Mode::Hold);
    init_node(&home, "answers", &dir.url);
    let logs = home.join("logs");
    let mut cmd = iicp();
    cmd.env("IICP_HOME", &home)
        .env("IICP_AUTO_DETECT_NAT", "no")
        .env("IICP_HEARTBEAT_INTERVAL", "200ms")
        .env("IICP_LOG_DIR", &logs)
        .args([
            "serve",
            "--node",
            "answers",
            "--backend-type",
            "echo",
            // the default: five refusals (and the 30 s breaker) take about 15 s, the test
            // accepts the registration long before
            "--directory-backoff-base",
            "1s",
        ]);
    let mut node = Serve::spawn(cmd);

    // the summary does not wait for the directory: at `listening` the directory has not
    // answered, and has had no reason to be asked twice
    node.line_with("listening");
    let (registers, answered) = dir.with(|s| (s.registers, s.answered));
    assert_eq!(answered, 0);
    assert!(
        registers <= 1,
        "{registers} registrations before `listening`"
    );

    // the refusal, with the directory's code and message
    dir.set(Mode::Refuse);
    let line = node.line_with("IICP-E050");
    assert!(line.contains("directory"), "{line}");
    assert!(
        line.contains("registration refused: HTTP 403 IICP-E050"),
        "{line}"
    );
    assert!(line.contains(E050_MESSAGE), "{line}");
    node.line_with("serving ");
    let snap = health_until(&home, "answers", "the refusal", |v| {
        v["directory"]["last_error"]["code"] == "IICP-E050"
    });
    let d = &snap["directory"];
    assert_eq!(d["state"], "refused", "{snap:#}");
    assert_eq!(d["registered"], false);
    assert_eq!(d["url"], dir.url.as_str());
    assert_eq!(d["last_error"]["operation"], "register");
    assert_eq!(d["last_error"]["status"], 403);
    assert_eq!(d["last_error"]["message"], E050_MESSAGE);
    assert!(d["consecutive_failures"].as_u64() >= Some(1), "{snap:#}");
    assert_eq!(snap["external_connectivity"]["directory"], "unavailable");
    let o = run(iicp()
        .env("IICP_HOME", &home)
        .args(["healthcheck", "--node", "answers"]));
    assert!(o.status.success(), "live: {}", text(&o));
    let human = String::from_utf8_lossy(&o.stdout);
    assert!(
        human.contains(&format!(
            "directory  refused (HTTP 403 IICP-E050: {E050_MESSAGE})"
        )),
        "{human}"
    );
    assert!(
        snap["reason_codes"]
            .as_array()
            .is_some_and(|r| r.iter().any(|c| c == "DIRECTORY_UNAVAILABLE")),
        "{snap:#}"
    );

    // accepted on a later attempt: announced with the node id, heartbeats follow at the
    // configured 200 ms
    dir.set(Mode::Accept);
    let line = node.line_with("registered with");
    let node_id = snap["node_id"].as_str().expect("node id");
    assert_eq!(
        line,
        format!("registered with {} as node {node_id}", dir.url)
    );
    let snap = health_until(&home, "answers", "the registration", |v| {
        v["directory"]["state"] == "registered"
    });
    assert_eq!(snap["directory"]["consecutive_failures"], 0, "{snap:#}");
    let start = Instant::now();
    while dir.with(|s| s.heartbeats) < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no heartbeats at the configured interval"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let (code, log) = node.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(dir.with(|s| s.deregisters), 1);
    // the log names the directory's code and message too, never the node token
    let refusal = log
        .lines()
        .find(|l| l.contains("registration failed"))
        .unwrap_or_else(|| panic!("no registration failure logged:\n{log}"));
    assert!(
        refusal.contains("IICP-E050") && refusal.contains(E050_MESSAGE),
        "{refusal}"
    );
    assert!(!log.contains("tok-1"), "the node token leaked into the log");
    // and events.jsonl carries them as fields
    let events = std::fs::read_to_string(logs.join("events.jsonl")).expect("events");
    let fail: Value = events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "register_fail")
        .unwrap_or_else(|| panic!("no register_fail event:\n{events}"));
    assert_eq!(fail["status"], 403, "{fail}");
    assert_eq!(fail["code"], "IICP-E050", "{fail}");
    assert_eq!(fail["message"], E050_MESSAGE, "{fail}");
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn a_registration_answered_at_once_is_in_the_summary() {
    let home = temp_home("dir-first");
    let dir = Directory::start(Mode::Refuse);
    let mut cmd = iicp();
    cmd.env("IICP_HOME", &home)
        .env("IICP_AUTO_DETECT_NAT", "no")
        .args([
            "serve",
            "--backend-type",
            "echo",
            "--host",
            "127.0.0.1",
            "--port",
            &free_port().to_string(),
            "--directory-url",
            &dir.url,
        ]);
    let mut node = Serve::spawn(cmd);
    let line = node.line_with("  directory  ");
    assert_eq!(
        line.trim(),
        format!(
            "directory  {} (registration refused: HTTP 403 IICP-E050: {E050_MESSAGE}; retrying in the background)",
            dir.url
        )
    );
    node.line_with("serving ");
    assert_eq!(node.terminate().0, Some(0));
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn heartbeat_and_backoff_flags_are_documented_and_validated() {
    let o = run(iicp().args(["serve", "--help"]));
    let help = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "--heartbeat-interval",
        "IICP_HEARTBEAT_INTERVAL",
        "--directory-backoff-base",
        "IICP_DIRECTORY_BACKOFF_BASE",
    ] {
        assert!(help.contains(needle), "serve --help lacks {needle}");
    }
    let home = temp_home("dir-flags");
    // (flags, environment) a serve must refuse
    let flag = |f: &'static str, v: &'static str| (vec![f, v], None);
    let bad = [
        flag("--heartbeat-interval", "50ms"),
        flag("--heartbeat-interval", "61s"),
        flag("--heartbeat-interval", "abc"),
        flag("--heartbeat-interval", "5h"),
        flag("--directory-backoff-base", "5ms"),
        flag("--directory-backoff-base", "2m"),
        (vec![], Some(("IICP_HEARTBEAT_INTERVAL", "0s"))),
    ];
    for (args, env) in bad {
        let mut c = iicp();
        c.env("IICP_HOME", &home)
            .args(["serve", "--backend-type", "echo", "--skip-registration"])
            .args(&args);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let o = run(&mut c);
        assert_eq!(o.status.code(), Some(2), "{args:?} {env:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("out of range")
                || err.contains("not a duration")
                || err.contains("use ms, s or m"),
            "{args:?}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&home);
}
