//! Runtime state of a serving process under `<home>/run` (SEED-SDK.md §2.3 step 6,
//! §2.5 `healthcheck`, §4.1):
//!
//! * [`InstanceLock`]: the single-instance lock `run/<node_id>.pid`. Two processes
//!   serving one node id would rotate each other's directory token; the second is
//!   refused while the first lives. A pidfile whose process is gone is taken over (with
//!   a log line), `force` takes over a live one, and the file is removed when the lock
//!   is dropped. Creation is exclusive (`O_EXCL`), so two starters never both win a
//!   free lock. I/O errors fail open: the lock must never keep a node from starting.
//! * [`HealthWriter`] / [`read_health`]: the runtime-health snapshot
//!   `run/<node name>/health-v1.json` in the Python SDK's schema (version 1), rewritten
//!   every few seconds by the serving process and read by `healthcheck` (for example a
//!   Docker `HEALTHCHECK`), so either SDK's checker reads either SDK's snapshot.
//!
//! Process liveness is read from `/proc` on Linux (a zombie or a reused pid running
//! something that is not an IICP node counts as gone) and with `kill -0` on other Unix
//! systems; elsewhere a recorded process is assumed alive.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::operator::{
    create_private_dir, node_file_stem, write_private_atomic, Home, OperatorError,
};
use crate::Node;

/// Schema version of the health snapshot (`health_schema_version`).
pub const HEALTH_SCHEMA_VERSION: u64 = 1;
/// How often the serving process should rewrite its snapshot.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// A snapshot older than this says the process stopped making progress.
pub const RUNTIME_STALE_AFTER: Duration = Duration::from_secs(30);

/// `<home>/run`.
pub fn run_dir(home: &Home) -> PathBuf {
    home.root().join("run")
}

/// `<home>/run/<node_id>.pid`.
pub fn pidfile_path(home: &Home, node_id: &str) -> PathBuf {
    run_dir(home).join(format!("{}.pid", node_file_stem(node_id)))
}

/// Another live process serves the node.
#[derive(Debug, thiserror::Error)]
#[error(
    "node {node_id} is already being served by PID {pid} ({}); stop that process, choose another node, or pass --force to take over",
    path.display()
)]
pub struct LockHeld {
    /// The node id.
    pub node_id: String,
    /// The process holding the lock.
    pub pid: u32,
    /// The pidfile.
    pub path: PathBuf,
}

/// How the lock was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Acquired {
    /// The lock was free.
    Free,
    /// A pidfile of a process that is gone (or unreadable) was replaced.
    Stale {
        /// The recorded process, when the file named one.
        pid: Option<u32>,
    },
    /// `force` took over the lock of a live process.
    Forced {
        /// The process that held it.
        pid: u32,
    },
    /// The pidfile could not be written: running without a lock (fail-open).
    Unlocked,
}

/// The single-instance lock of one node id; released (the pidfile removed, if it still
/// names this process) on drop.
#[derive(Debug)]
pub struct InstanceLock {
    path: Option<PathBuf>,
    pid: u32,
    acquired: Acquired,
}

impl InstanceLock {
    /// Takes the lock `<home>/run/<node_id>.pid` for this process.
    ///
    /// # Errors
    /// [`LockHeld`] when another live process holds it and `force` is false.
    pub fn acquire(home: &Home, node_id: &str, force: bool) -> Result<Self, LockHeld> {
        Self::acquire_at(pidfile_path(home, node_id), node_id, force)
    }

    fn acquire_at(path: PathBuf, node_id: &str, force: bool) -> Result<Self, LockHeld> {
        let pid = std::process::id();
        let unlocked = |e: std::io::Error| {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the instance lock; continuing without it");
            Self {
                path: None,
                pid,
                acquired: Acquired::Unlocked,
            }
        };
        if let Some(dir) = path.parent() {
            if let Err(e) = create_private_dir(dir) {
                return Ok(unlocked(e));
            }
        }
        let mut acquired = Acquired::Free;
        // a few rounds: another starter may replace a stale file between our read and
        // our create; exclusive creation decides who wins
        for _ in 0..3 {
            match create_exclusive(&path, pid) {
                Ok(()) => {
                    return Ok(Self {
                        path: Some(path),
                        pid,
                        acquired,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Ok(unlocked(e)),
            }
            match read_pid(&path) {
                Some(other) if other != pid && pid_alive(other) => {
                    if !force {
                        return Err(LockHeld {
                            node_id: node_id.to_owned(),
                            pid: other,
                            path,
                        });
                    }
                    tracing::warn!("--force: taking over the instance lock of running PID {other}");
                    acquired = Acquired::Forced { pid: other };
                }
                other => {
                    let was = other.map(|p| format!(" of PID {p}")).unwrap_or_default();
                    tracing::warn!(
                        "taking over the stale instance lock{was} at {} (its process is gone)",
                        path.display()
                    );
                    acquired = Acquired::Stale { pid: other };
                }
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Ok(unlocked(e)),
            }
        }
        Ok(unlocked(std::io::Error::other(
            "the pidfile kept changing while taking it over",
        )))
    }

    /// How the lock was obtained.
    pub fn acquired(&self) -> Acquired {
        self.acquired
    }

    /// The pidfile, unless running without a lock.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        let Some(path) = &self.path else { return };
        // a --force takeover by another process leaves its pid here: keep its file
        if read_pid(path) == Some(self.pid) {
            let _ = fs::remove_file(path);
        }
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The live process holding the instance lock of `node_id`, if any.
pub fn lock_holder(home: &Home, node_id: &str) -> Option<u32> {
    read_pid(&pidfile_path(home, node_id)).filter(|p| pid_alive(*p))
}

fn create_exclusive(path: &Path, pid: u32) -> std::io::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    let written = f.write_all(format!("{pid}\n").as_bytes());
    if let Err(e) = written {
        drop(f);
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// Whether process `pid` runs (see the module docs for how it is decided).
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        let proc_dir = Path::new("/proc").join(pid.to_string());
        let Ok(stat) = fs::read_to_string(proc_dir.join("stat")) else {
            return false;
        };
        // state is the first field after the parenthesised command name
        let zombie = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false);
        if zombie {
            return false;
        }
        // a pid reused by an unrelated program (e.g. after a reboot) does not hold the lock
        match fs::read(proc_dir.join("cmdline")) {
            Ok(cmd) if !cmd.is_empty() => String::from_utf8_lossy(&cmd)
                .to_ascii_lowercase()
                .contains("iicp"),
            _ => true,
        }
    }
    #[cfg(all(unix, not(target_os = "linux")))]
    {
        std::process::Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
    #[cfg(not(unix))]
    {
        true
    }
}

/// `<home>/run/<name>/health-v1.json`, the snapshot of saved node `name`.
///
/// # Errors
/// [`OperatorError::NodeName`] for an invalid node name.
pub fn health_path(home: &Home, name: &str) -> Result<PathBuf, OperatorError> {
    home.node_path(name)?; // validates the name
    Ok(run_dir(home).join(name).join("health-v1.json"))
}

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Lifecycle {
    /// Starting (not serving yet).
    Starting,
    /// Serving.
    Running,
    /// Draining and deregistering.
    Stopping,
}

impl Lifecycle {
    fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Starting => "starting",
            Lifecycle::Running => "running",
            Lifecycle::Stopping => "stopping",
        }
    }
}

/// Writes the runtime-health snapshot of a serving node; the file is removed on drop.
#[derive(Debug)]
pub struct HealthWriter {
    path: PathBuf,
    epoch: String,
    sequence: u64,
    register: bool,
    last: Option<(std::time::Instant, Value)>,
}

impl HealthWriter {
    /// A writer for saved node `name`. `register`: whether the node is meant to be
    /// registered with a directory (readiness then requires a registration).
    ///
    /// # Errors
    /// [`OperatorError::NodeName`] for an invalid node name.
    pub fn new(home: &Home, name: &str, register: bool) -> Result<Self, OperatorError> {
        Ok(Self {
            path: health_path(home, name)?,
            epoch: iicp_proto::ids::uuid_v4(&mut rand_core::OsRng).to_string(),
            sequence: 0,
            register,
            last: None,
        })
    }

    /// The snapshot file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The snapshot of `node` now (the next sequence number).
    pub fn snapshot(&self, node: &Node, lifecycle: Lifecycle) -> Value {
        let sequence = self.sequence + 1;
        let shared = &node.shared;
        let draining = shared.draining.load(Ordering::Relaxed);
        let lifecycle = if draining {
            Lifecycle::Stopping
        } else {
            lifecycle
        };
        let capacity = shared.active_jobs() < shared.cfg.max_concurrent && !draining;
        let status = shared.directory_status();
        let directory = match (self.register, status.registered) {
            (false, _) => "not_applicable",
            // registered, but the breaker opened: the directory is out of reach
            (true, true) if status.breaker_open_until_unix_ms.is_some() => "unavailable",
            (true, true) => "healthy",
            (true, false) => "unavailable",
        };
        let serving = if lifecycle == Lifecycle::Starting {
            "unknown"
        } else {
            "healthy"
        };
        let (liveness, readiness, reasons) = classify(lifecycle, capacity, directory);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        json!({
            "health_schema_version": HEALTH_SCHEMA_VERSION,
            "process_epoch": self.epoch,
            "pid": std::process::id(),
            "sequence": sequence,
            "emitted_at": crate::event::iso8601_millis(now),
            "lifecycle": lifecycle.as_str(),
            "liveness": liveness,
            "readiness": readiness,
            "reason_codes": reasons,
            "progress": {
                "runtime": {
                    "sequence": sequence,
                    "age_ms": 0,
                    "stale_after_ms": RUNTIME_STALE_AFTER.as_millis() as u64,
                    "required": true,
                },
                "supervisor": {
                    "sequence": 0,
                    "age_ms": 0,
                    "stale_after_ms": 120_000,
                    "required": false,
                },
            },
            "subsystems": {"provider": serving, "routing": serving, "tunnel": "not_applicable"},
            "external_connectivity": {"directory": directory, "dns": "unknown", "internet": "unknown"},
            "node_id": shared.node_id(),
            "active_jobs": shared.active_jobs(),
            "max_concurrent": shared.cfg.max_concurrent,
            "directory": self.register.then(|| directory_json(node, &status)),
            "recovery": node.recovery().to_json(),
        })
    }

    /// Writes the snapshot atomically (mode 0600).
    ///
    /// # Errors
    /// Any I/O error.
    pub fn write(&mut self, node: &Node, lifecycle: Lifecycle) -> std::io::Result<()> {
        let snap = self.snapshot(node, lifecycle);
        self.store(&snap)
    }

    /// Writes the snapshot when [`HEALTH_INTERVAL`] passed since the last write or the
    /// liveness, readiness or reasons changed; returns whether it wrote.
    ///
    /// # Errors
    /// Any I/O error.
    pub fn update(&mut self, node: &Node, lifecycle: Lifecycle) -> std::io::Result<bool> {
        let snap = self.snapshot(node, lifecycle);
        let due = match &self.last {
            None => true,
            Some((at, state)) => at.elapsed() >= HEALTH_INTERVAL || *state != health_state(&snap),
        };
        if due {
            self.store(&snap)?;
        }
        Ok(due)
    }

    fn store(&mut self, snap: &Value) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(snap).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        write_private_atomic(&self.path, &bytes)?;
        self.sequence += 1;
        self.last = Some((std::time::Instant::now(), health_state(snap)));
        Ok(())
    }
}

impl Drop for HealthWriter {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        if let Some(dir) = self.path.parent() {
            let _ = fs::remove_dir(dir); // only when empty
        }
    }
}

/// The `directory` object of the snapshot (an addition to the Python SDK's schema,
/// which readers of version 1 ignore): the registration state, the failures in a row,
/// the circuit breaker, and the last failure with the directory's code and message.
fn directory_json(node: &Node, status: &crate::DirectoryStatus) -> Value {
    let iso = |ms: u64| crate::event::iso8601_millis(Duration::from_millis(ms));
    let last_error = status.last_error.as_ref().map(|e| {
        json!({
            "operation": e.operation,
            "status": e.status,
            "code": e.code,
            "message": e.message,
            "error": e.error,
            "at": iso(e.at_unix_ms),
        })
    });
    json!({
        "url": node.config().directory_url,
        "state": status.state(),
        "registered": status.registered,
        "consecutive_failures": status.consecutive_failures,
        "breaker_open_until": status.breaker_open_until_unix_ms.map(iso),
        "last_success_at": status.last_success_unix_ms.map(iso),
        "last_error": last_error,
    })
}

/// What makes a snapshot worth writing before its interval is up: a change of
/// lifecycle, liveness, readiness, reasons, or of the directory's state or last error.
fn health_state(snap: &Value) -> Value {
    json!([
        snap["lifecycle"],
        snap["liveness"],
        snap["readiness"],
        snap["reason_codes"],
        snap["directory"]["state"],
        snap["directory"]["last_error"]["error"],
        snap["recovery"]["state"],
    ])
}

/// (liveness, readiness, reason codes) as the Python SDK classifies them.
fn classify(
    lifecycle: Lifecycle,
    capacity: bool,
    directory: &str,
) -> (&'static str, &'static str, Vec<&'static str>) {
    match lifecycle {
        Lifecycle::Starting => ("starting", "not_ready", vec!["STARTING"]),
        Lifecycle::Stopping => ("live", "not_ready", vec!["STOPPING"]),
        Lifecycle::Running => {
            let mut reasons = Vec::new();
            if !capacity {
                reasons.push("NO_CAPACITY");
            }
            if directory == "unavailable" {
                reasons.push("DIRECTORY_UNAVAILABLE");
            }
            let readiness = if !capacity {
                "not_ready"
            } else if reasons.is_empty() {
                "ready"
            } else {
                "degraded"
            };
            ("live", readiness, reasons)
        }
    }
}

/// What `healthcheck` concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Live (or, when readiness was asked for, ready).
    Healthy,
    /// Stale, gone, not live, or (when readiness was asked for) not ready.
    Unhealthy(String),
    /// No usable snapshot.
    Indeterminate(String),
}

/// A snapshot as read back.
#[derive(Debug, Clone)]
pub struct HealthReport {
    /// The snapshot.
    pub snapshot: Value,
    /// Time since it was written (file modification time).
    pub age: Duration,
}

impl HealthReport {
    /// Liveness, or readiness when `ready`: stale snapshots and snapshots of a process
    /// that is gone are unhealthy.
    pub fn verdict(&self, ready: bool) -> Verdict {
        let s = &self.snapshot;
        let stale_after = s
            .pointer("/progress/runtime/stale_after_ms")
            .and_then(Value::as_u64)
            .map(Duration::from_millis);
        let Some(stale_after) = stale_after else {
            return Verdict::Indeterminate(
                "the snapshot has no progress.runtime.stale_after_ms".into(),
            );
        };
        if self.age > stale_after {
            return Verdict::Unhealthy(format!(
                "the snapshot is stale ({}s old)",
                self.age.as_secs()
            ));
        }
        let pid = s.get("pid").and_then(Value::as_u64);
        if let Some(pid) = pid.and_then(|p| u32::try_from(p).ok()) {
            if !pid_alive(pid) {
                return Verdict::Unhealthy(format!("process {pid} is gone"));
            }
        }
        // the node's own verdict: it cannot recover by itself (an addition to the
        // Python SDK's schema; its snapshots have no `recovery`)
        if s.pointer("/recovery/state").and_then(Value::as_str) == Some("restart_recommended") {
            let why = s
                .pointer("/recovery/reason")
                .and_then(Value::as_str)
                .unwrap_or("");
            return Verdict::Unhealthy(format!("restart recommended: {why}"));
        }
        let field = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or("");
        if ready {
            return match field("readiness") {
                "ready" => Verdict::Healthy,
                other => Verdict::Unhealthy(format!("not ready ({})", reasons(s, other))),
            };
        }
        match field("liveness") {
            "live" => Verdict::Healthy,
            "not_live" => Verdict::Unhealthy(format!("not live ({})", reasons(s, "not_live"))),
            other => Verdict::Indeterminate(format!("liveness {other:?}")),
        }
    }
}

fn reasons(s: &Value, fallback: &str) -> String {
    let codes: Vec<&str> = s
        .get("reason_codes")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if codes.is_empty() {
        fallback.to_owned()
    } else {
        codes.join(", ")
    }
}

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HealthError {
    /// An invalid node name.
    #[error(transparent)]
    Name(#[from] OperatorError),
    /// No snapshot: the node is not serving (or was not started with this name).
    #[error("no runtime-health snapshot at {}: is `serve --node NAME` running?", .0.display())]
    Missing(PathBuf),
    /// The file is unreadable or not a snapshot.
    #[error("invalid runtime-health snapshot at {}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Reads the snapshot of saved node `name`.
///
/// # Errors
/// [`HealthError`].
pub fn read_health(home: &Home, name: &str) -> Result<HealthReport, HealthError> {
    let path = health_path(home, name)?;
    let invalid = |reason: String| HealthError::Invalid {
        path: path.clone(),
        reason,
    };
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(HealthError::Missing(path))
        }
        Err(e) => return Err(invalid(e.to_string())),
    };
    let snapshot: Value = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(format!("not JSON (line {})", e.line())))?;
    if snapshot
        .get("health_schema_version")
        .and_then(Value::as_u64)
        != Some(HEALTH_SCHEMA_VERSION)
    {
        return Err(invalid("unknown health_schema_version".into()));
    }
    let modified = fs::metadata(&path)
        .and_then(|m| m.modified())
        .map_err(|e| invalid(e.to_string()))?;
    let age = SystemTime::now()
        .duration_since(modified)
        .map_err(|_| invalid("the snapshot is from the future (clock moved back)".into()))?;
    Ok(HealthReport { snapshot, age })
}

#[cfg(test)]
mod tests {
    use iicp_proto::error::ErrorCode;
    use iicp_proto::secret::Secret;

    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("iicp-run-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn lock_refuses_live_takes_over_stale_and_forced() {
        let home = Home::new(temp("lock"));
        let a = InstanceLock::acquire(&home, "n1", false).expect("free");
        assert_eq!(a.acquired(), Acquired::Free);
        let path = pidfile_path(&home, "n1");
        assert_eq!(
            fs::read_to_string(&path).expect("pidfile").trim(),
            std::process::id().to_string()
        );
        // (a live holder is refused: the CLI tests run two real processes)
        drop(a);
        assert!(!path.exists(), "released on drop");
        fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        fs::write(&path, "999999999\n").expect("write");
        let b = InstanceLock::acquire(&home, "n1", false).expect("stale");
        assert_eq!(
            b.acquired(),
            Acquired::Stale {
                pid: Some(999_999_999)
            }
        );
        drop(b);
        fs::write(&path, "garbage").expect("write");
        let c = InstanceLock::acquire(&home, "n1", false).expect("unreadable");
        assert_eq!(c.acquired(), Acquired::Stale { pid: None });
        // another process took over with --force: dropping ours keeps its file
        fs::write(&path, "999999999\n").expect("write");
        drop(c);
        assert!(path.exists());
        let _ = fs::remove_dir_all(home.root());
    }

    #[test]
    fn odd_node_ids_are_hex_encoded() {
        let home = Home::new("/h");
        assert_eq!(
            pidfile_path(&home, "abc-1"),
            PathBuf::from("/h/run/abc-1.pid")
        );
        assert_eq!(
            pidfile_path(&home, "../x"),
            PathBuf::from("/h/run/2e2e2f78.pid")
        );
        assert!(health_path(&home, "Bad/Name").is_err());
    }

    #[test]
    fn the_snapshot_shows_the_directory_and_its_breaker() {
        let node = Node::builder()
            .endpoint("http://127.0.0.1:9484")
            .intent("urn:iicp:intent:llm:chat:v1")
            .directory_url("http://127.0.0.1:1/api")
            .build()
            .expect("node");
        let home = Home::new(temp("snap"));
        let w = HealthWriter::new(&home, "n1", true).expect("writer");
        let e = crate::DirectoryError::status("register", 403, Some(ErrorCode::E050))
            .with_message("endpoint change requires current_node_token");
        node.shared.directory_failed(&e);
        let s = w.snapshot(&node, Lifecycle::Running);
        let d = &s["directory"];
        assert_eq!(d["url"], "http://127.0.0.1:1/api");
        assert_eq!(d["state"], "refused");
        assert_eq!(d["consecutive_failures"], 1);
        assert_eq!(d["last_error"]["code"], "IICP-E050");
        assert_eq!(
            d["last_error"]["message"],
            "endpoint change requires current_node_token"
        );
        assert_eq!(s["readiness"], "degraded");
        // registered, but the breaker is open: the directory is out of reach
        node.set_node_token(Secret::new("tok-1"));
        node.shared.set_breaker(Some(1));
        let s = w.snapshot(&node, Lifecycle::Running);
        assert_eq!(s["directory"]["state"], "breaker_open");
        assert_eq!(s["external_connectivity"]["directory"], "unavailable");
        assert_eq!(s["reason_codes"], json!(["DIRECTORY_UNAVAILABLE"]));
        // a success closes it
        node.shared.directory_ok();
        let s = w.snapshot(&node, Lifecycle::Running);
        assert_eq!(s["directory"]["state"], "registered");
        assert_eq!(s["readiness"], "ready");
        assert_eq!(s["recovery"]["state"], "healthy");
        // a dead listener: the snapshot and the verdict say restart
        node.shared
            .recovery
            .listener_dead
            .store(true, Ordering::Relaxed);
        let s = w.snapshot(&node, Lifecycle::Running);
        assert_eq!(s["recovery"]["state"], "restart_recommended");
        assert_eq!(s["recovery"]["action"], "restart_self");
        let report = HealthReport {
            snapshot: s,
            age: Duration::ZERO,
        };
        assert!(
            matches!(report.verdict(false), Verdict::Unhealthy(ref why) if why.starts_with("restart recommended")),
            "{:?}",
            report.verdict(false)
        );
        // a node that does not register has no directory object
        let w = HealthWriter::new(&home, "n2", false).expect("writer");
        assert!(w.snapshot(&node, Lifecycle::Running)["directory"].is_null());
        drop(w);
        let _ = fs::remove_dir_all(home.root());
    }

    #[test]
    fn classification() {
        assert_eq!(
            classify(Lifecycle::Running, true, "healthy"),
            ("live", "ready", vec![])
        );
        assert_eq!(
            classify(Lifecycle::Running, true, "unavailable"),
            ("live", "degraded", vec!["DIRECTORY_UNAVAILABLE"])
        );
        assert_eq!(
            classify(Lifecycle::Running, false, "not_applicable").1,
            "not_ready"
        );
        assert_eq!(classify(Lifecycle::Starting, true, "healthy").0, "starting");
        assert_eq!(
            crate::event::iso8601_millis(Duration::from_millis(1_500)),
            "1970-01-01T00:00:01.500Z"
        );
    }
}
