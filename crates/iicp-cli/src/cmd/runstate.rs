//! What `serve` keeps beside the node (SEED-SDK.md §2.2–§2.5): the single-instance
//! lock `~/.iicp/run/<node_id>.pid`, the `--log-dir` files (`<node_id>.log`, a copy of
//! the log, and `events.jsonl`, one lifecycle event a line) and, for a saved node, the
//! runtime-health snapshot that `healthcheck` reads, and `run/<node_id>.serve.json`
//! (pid, node id, profile name, listening address) by which `doctor` recognises the
//! port of a serving node. All of it is released when the value is dropped: the
//! pidfile, the snapshot and the serve file are removed. [`ProfileToken`] keeps the node
//! token in the saved profile equal to the node's (told by `node_token_changed`).

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use iicp_node::event::{EventKind, NodeEvent};
use iicp_node::operator::{Home, NodeProfile};
use iicp_node::run::{pid_alive, pidfile_path, run_dir, HealthWriter, InstanceLock, Lifecycle};
use iicp_node::Node;
use iicp_proto::secret::Secret;
use serde_json::{json, Value};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::UsageError;

/// The run-time files of one `serve`.
pub(crate) struct RunState {
    _lock: Option<InstanceLock>,
    events: Option<EventLog>,
    writer: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    health: Option<HealthWriter>,
    serving: Option<ServeFile>,
}

/// `run/<node_id>.serve.json`, removed on drop.
struct ServeFile(PathBuf);

impl Drop for ServeFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A node served by a live process, from its serve file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServingNode {
    pub(crate) pid: u32,
    pub(crate) node_id: String,
    pub(crate) name: Option<String>,
    pub(crate) port: u16,
}

/// The node token saved in a node profile (`--node NAME`), kept equal to the node's.
pub(crate) struct ProfileToken<'a> {
    pub(crate) file: Option<(&'a Home, &'a NodeProfile)>,
    pub(crate) node_id: &'a str,
    pub(crate) saved: Option<Secret>,
}

impl ProfileToken<'_> {
    /// Saves the node's token when it differs from the saved one.
    pub(crate) fn sync(&mut self, node: &Node) {
        let now = node.node_token();
        if now != self.saved {
            self.save(now);
        }
    }

    /// Saves `token` (`None`: none held) in the profile, when serving one.
    pub(crate) fn save(&mut self, token: Option<Secret>) {
        self.saved.clone_from(&token);
        let Some((home, profile)) = self.file else {
            return;
        };
        let mut p = profile.clone();
        p.node_id = self.node_id.to_owned();
        p.node_token = token;
        if let Err(e) = home.save_node(&p) {
            tracing::warn!(error = %e, "could not save the node profile");
        }
    }
}

/// The live serving node listening on `port`, if this configuration root has one.
pub(crate) fn serving_on(home: &Home, port: u16) -> Option<ServingNode> {
    let entries = std::fs::read_dir(run_dir(home)).ok()?;
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".serve.json"))
        .take(1024)
        .filter_map(|e| {
            // small files only: this is our own record, not arbitrary input
            let meta = e.metadata().ok()?;
            if meta.len() > 4096 {
                return None;
            }
            let v: Value = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            Some(ServingNode {
                pid: u32::try_from(v["pid"].as_u64()?).ok()?,
                node_id: v["node_id"].as_str()?.to_owned(),
                name: v["name"].as_str().map(str::to_owned),
                port: u16::try_from(v["port"].as_u64()?).ok()?,
            })
        })
        .find(|n| n.port == port && pid_alive(n.pid))
}

/// `events.jsonl`, appended to.
struct EventLog {
    path: PathBuf,
    file: File,
}

impl EventLog {
    fn append(&mut self, line: &Value) {
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        if let Err(e) = self.file.write_all(&bytes) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot append to the event log");
        }
    }

    fn received(&mut self, r: Result<NodeEvent, RecvError>) -> bool {
        match r {
            Ok(ev) => self.append(&event_line(&ev)),
            Err(RecvError::Lagged(n)) => self.append(&lost(n)),
            Err(RecvError::Closed) => return false,
        }
        true
    }

    /// Writes events as they come until `done` fires, then what is still queued.
    async fn follow(
        mut self,
        mut rx: broadcast::Receiver<NodeEvent>,
        mut done: oneshot::Receiver<()>,
    ) {
        loop {
            tokio::select! {
                r = rx.recv() => if !self.received(r) { return },
                _ = &mut done => break,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(ev) => self.append(&event_line(&ev)),
                Err(TryRecvError::Lagged(n)) => self.append(&lost(n)),
                Err(_) => return,
            }
        }
    }
}

impl RunState {
    /// Takes the instance lock (a live holder is a usage error unless `force`) and
    /// opens the `--log-dir` files. No network I/O.
    pub(crate) fn start(
        home: Option<&Home>,
        node_id: &str,
        force: bool,
        log_dir: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let lock = match home {
            Some(h) => Some(
                InstanceLock::acquire(h, node_id, force).map_err(|e| UsageError(e.to_string()))?,
            ),
            None => None,
        };
        let events = match log_dir {
            Some(dir) => Some(open_log_dir(dir, node_id)?),
            None => None,
        };
        Ok(Self {
            _lock: lock,
            events,
            writer: None,
            health: None,
            serving: None,
        })
    }

    /// Writes `node`'s lifecycle events as they happen and, for saved node `name`, its
    /// health snapshot. Call before the node serves.
    pub(crate) fn watch(&mut self, node: &Node, home: Option<&Home>, name: Option<&str>) {
        if let Some(log) = self.events.take() {
            let (tx, done) = oneshot::channel();
            let task = tokio::spawn(log.follow(node.subscribe(), done));
            self.writer = Some((tx, task));
        }
        if let (Some(h), Some(n)) = (home, name) {
            let register = node.config().directory_url.is_some();
            match HealthWriter::new(h, n, register) {
                Ok(w) => self.health = Some(w),
                Err(e) => tracing::warn!(error = %e, "no runtime-health snapshot"),
            }
        }
        self.tick(node, Lifecycle::Starting);
    }

    /// Records that this process serves `node_id` (saved node `name`) on `addr`, for
    /// `doctor`. Best effort: a failure is logged.
    pub(crate) fn serving(
        &mut self,
        home: Option<&Home>,
        node_id: &str,
        name: Option<&str>,
        addr: std::net::SocketAddr,
    ) {
        let Some(h) = home else { return };
        let path = pidfile_path(h, node_id).with_extension("serve.json");
        let line = json!({
            "pid": std::process::id(),
            "node_id": node_id,
            "name": name,
            "listen": addr.to_string(),
            "port": addr.port(),
        });
        match iicp_node::operator::write_private_atomic(&path, line.to_string().as_bytes()) {
            Ok(()) => self.serving = Some(ServeFile(path)),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot write the serve file")
            }
        }
    }

    /// Writes the health snapshot when it changed or is due.
    pub(crate) fn tick(&mut self, node: &Node, lifecycle: Lifecycle) {
        if let Some(w) = &mut self.health {
            if let Err(e) = w.update(node, lifecycle) {
                tracing::warn!(path = %w.path().display(), error = %e, "cannot write the runtime-health snapshot");
            }
        }
    }

    /// After the node stopped: the last events (the deregistration was announced before
    /// `stop` returned) are written, then the lock and the snapshot are released.
    pub(crate) async fn finish(mut self) {
        if let Some((tx, task)) = self.writer.take() {
            let _ = tx.send(());
            let _ = task.await;
        }
    }
}

/// The line recording that `n` events were lost (the writer fell behind).
fn lost(n: u64) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    json!({"ts": iicp_node::event::iso8601_millis(now), "event": "events_lost", "count": n})
}

/// One `events.jsonl` line: `ts`, `event`, `node_id`, a human `details` string and the
/// event's fields. Nothing secret is in an event.
fn event_line(ev: &NodeEvent) -> Value {
    let mut v = json!({
        "ts": ev.timestamp(),
        "event": ev.kind.name(),
        "node_id": ev.node_id,
    });
    let (details, fields) = match &ev.kind {
        EventKind::Registered {
            directory_url,
            endpoint,
            operated,
        } => (
            format!(
                "registered {endpoint} with {}",
                directory_url.as_deref().unwrap_or("the directory")
            ),
            json!({"directory_url": directory_url, "endpoint": endpoint, "operated": operated}),
        ),
        EventKind::RegisterFailed {
            directory_url,
            status,
            retryable,
            error,
            code,
            message,
        } => (
            error.clone(),
            json!({"directory_url": directory_url, "status": status, "retryable": retryable, "error": error, "code": code, "message": message}),
        ),
        EventKind::DirectoryUnavailable {
            directory_url,
            failures,
            retry_in,
            error,
        } => (
            format!(
                "{failures} directory calls failed in a row; none for {}s",
                retry_in.as_secs()
            ),
            json!({"directory_url": directory_url, "failures": failures, "retry_in_ms": retry_in.as_millis() as u64, "error": error}),
        ),
        EventKind::DirectoryRecovered {
            directory_url,
            after_failures,
        } => (
            format!("directory reachable again after {after_failures} failures"),
            json!({"directory_url": directory_url, "after_failures": after_failures}),
        ),
        EventKind::Serving {
            addr,
            endpoint,
            native,
        } => (
            format!("serving on {addr} as {endpoint}"),
            json!({"listen": addr.to_string(), "endpoint": endpoint, "native": native}),
        ),
        EventKind::NodeTokenChanged { held } => (
            if *held {
                "node token issued".to_owned()
            } else {
                "node token cleared".to_owned()
            },
            json!({"held": held}),
        ),
        EventKind::Deregistered { directory_url } => (
            format!(
                "deregistered from {}",
                directory_url.as_deref().unwrap_or("the directory")
            ),
            json!({"directory_url": directory_url}),
        ),
        EventKind::DeregisterFailed {
            directory_url,
            status,
            error,
        } => (
            error.clone(),
            json!({"directory_url": directory_url, "status": status, "error": error}),
        ),
        _ => (String::new(), json!({})),
    };
    if let (Some(obj), Some(extra)) = (v.as_object_mut(), fields.as_object()) {
        obj.insert("details".into(), Value::String(details));
        for (k, val) in extra {
            obj.insert(k.clone(), val.clone());
        }
    }
    v
}

/// Creates `dir`, appends the log to `<node_id>.log` and opens `events.jsonl`.
fn open_log_dir(dir: &Path, node_id: &str) -> anyhow::Result<EventLog> {
    let usage = |what: &Path, e: std::io::Error| {
        anyhow::Error::new(UsageError(format!(
            "--log-dir: cannot write {}: {e}",
            what.display()
        )))
    };
    std::fs::create_dir_all(dir).map_err(|e| usage(dir, e))?;
    let open = |p: &Path| {
        let mut o = OpenOptions::new();
        o.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            o.mode(0o600);
        }
        o.open(p).map_err(|e| usage(p, e))
    };
    let safe: String = node_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let log = dir.join(format!("{safe}.log"));
    crate::logfile::attach(open(&log)?);
    let events = dir.join("events.jsonl");
    let file = open(&events)?;
    tracing::info!(log = %log.display(), events = %events.display(), "logging to --log-dir");
    Ok(EventLog { path: events, file })
}
