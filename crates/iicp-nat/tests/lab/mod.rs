//! Shared harness of the NAT lab tests (shared/testing/NAT-LAB.md), used by
//! `iicp-nat/tests/nat_lab.rs` and, through `#[path]`, by `iicp-cli/tests/nat_lab.rs`:
//! builds a lab with `scripts/nat-lab up ID` (LAN 10.77.1.2 ─ IGD 10.77.1.1/11.77.2.1
//! running miniupnpd ─ WAN 11.77.2.2, nothing connected to the host network; with
//! `--cgnat6` the WAN side is 100.77.2.0/24 and IPv6 is routed: LAN 2a0b:7701::2,
//! WAN host 2a0b:7702::2), starts
//! processes inside its namespaces, exchanges progress through files in the lab's state
//! directory, and tears everything down on drop (`scripts/nat-lab down ID`).
//!
//! Child roles are `#[ignore]`d tests of the same test binary, re-executed inside a
//! namespace (`ip netns exec NS <test binary> --exact ROLE --ignored`) with the role,
//! the state directory and an optional target in the environment.
//!
//! Skips (with a message) when not root or without `ip netns`; under `CI=true` a lab
//! that cannot be built fails instead.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]
#![allow(clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Role of a re-executed child test.
pub const ROLE: &str = "IICP_NAT_LAB_ROLE";
/// The lab's state directory.
pub const DIR: &str = "IICP_NAT_LAB_DIR";
/// A role's target (address or URL).
pub const TARGET: &str = "IICP_NAT_LAB_TARGET";
/// The LAN host's address.
pub const LAN_IP: &str = "10.77.1.2";
/// The gateway's WAN address (what UPnP mappings are reached at).
pub const WAN_IP: &str = "11.77.2.1";
/// The WAN host's address.
pub const WAN_HOST: &str = "11.77.2.2";

/// The LAN host's IPv6 address in a `--cgnat6` lab.
pub const LAN6: &str = "2a0b:7701::2";
/// The WAN host's IPv6 address in a `--cgnat6` lab.
pub const WAN6_HOST: &str = "2a0b:7702::2";

/// `scripts/nat-lab`.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/nat-lab")
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Whether this runs in CI (`CI=true` or `CI=1`).
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A lab: processes, namespaces and state, torn down on drop whatever happens.
pub struct Lab {
    /// The lab id (`scripts/nat-lab up ID`).
    pub id: String,
    /// The state directory.
    pub dir: PathBuf,
    /// Processes killed on drop.
    pub children: Vec<Child>,
}

impl Lab {
    /// Name of the namespace of `side` (`lan`, `igd`, `wan`).
    pub fn ns(&self, side: &str) -> String {
        format!("iicp-{}-{side}", self.id)
    }

    /// `ip netns exec NS program` (stdin closed).
    pub fn exec(&self, side: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(side)])
            .arg(program)
            .stdin(Stdio::null());
        cmd
    }

    /// The rules of the pinholes miniupnpd holds open (its `miniupnpd` chain on the
    /// gateway), one per line; empty when none.
    pub fn pinhole_rules(&self) -> String {
        let out = self
            .exec("igd", "nft")
            .args(["list", "chain", "inet", "filter", "miniupnpd"])
            .output()
            .expect("nft list");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("accept"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// This test binary re-executed in `side` as the ignored test `role`.
    pub fn spawn_child(&self, side: &str, role: &str, target: Option<&str>) -> Command {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = self.exec(side, exe);
        cmd.args([
            "--exact",
            role,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        .env(DIR, &self.dir)
        .stdout(Stdio::null());
        if let Some(t) = target {
            cmd.env(TARGET, t);
        }
        cmd
    }

    /// Waits for `file` (complete when it ends with a newline) in the state directory;
    /// panics when `child` exits first or after `timeout`.
    pub fn wait_for(&self, file: &str, timeout: Duration, child: &mut Child) -> String {
        wait_written(&self.dir, file, timeout, child)
    }

    /// Starts this test binary's role `role` in `side`; the lab keeps the process (it is
    /// killed on drop) for [`Lab::wait_last`] and [`Lab::finish_last`].
    pub fn start(&mut self, side: &str, role: &str) {
        let child = self
            .spawn_child(side, role, None)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {role}: {e}"));
        self.children.push(child);
    }

    /// [`Lab::wait_for`] on the process started last.
    pub fn wait_last(&mut self, file: &str, timeout: Duration) -> String {
        let child = self.children.last_mut().expect("a started child");
        wait_written(&self.dir, file, timeout, child)
    }

    /// Waits (30 s at most) until the process started last exits; asserts it succeeded.
    pub fn finish_last(&mut self) {
        let child = self.children.last_mut().expect("a started child");
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "child did not finish"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "child failed");
    }

    /// Runs this test binary's role `role` in `side` to completion; true on success.
    pub fn run_child(&self, side: &str, role: &str, target: Option<&str>) -> bool {
        self.spawn_child(side, role, target)
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new(script()).args(["down", &self.id]).status();
    }
}

/// Waits for `file` in `dir` to be complete (ending with a newline); panics when
/// `child` exits first or after `timeout`.
fn wait_written(dir: &Path, file: &str, timeout: Duration, child: &mut Child) -> String {
    let path = dir.join(file);
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(&path) {
            if s.ends_with('\n') {
                return s;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("child exited early ({status}) before writing {file}");
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {file}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes `text` and a newline to `file` in `dir`, atomically.
pub fn write(dir: &Path, file: &str, text: &str) {
    let tmp = dir.join(format!("{file}.tmp"));
    std::fs::write(&tmp, format!("{text}\n")).unwrap();
    std::fs::rename(tmp, dir.join(file)).unwrap();
}

/// Builds lab `prefix{pid}`, or `None` (skip) when this machine cannot; under CI a
/// machine that should be able to but cannot fails the test.
pub fn build_lab(prefix: &str) -> Option<Lab> {
    build_lab_with(prefix, &[])
}

/// [`build_lab`] with extra `scripts/nat-lab up` arguments (`--cgnat6`).
pub fn build_lab_with(prefix: &str, args: &[&str]) -> Option<Lab> {
    if !is_root() {
        eprintln!("SKIP NAT lab test: needs root (network namespaces)");
        return None;
    }
    let netns_ok = Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !netns_ok {
        eprintln!("SKIP NAT lab test: `ip netns` is unavailable");
        assert!(
            !ci(),
            "CI must be able to run the NAT lab (ip netns missing)"
        );
        return None;
    }
    let id = format!("{prefix}{}", std::process::id());
    let lab = Lab {
        dir: PathBuf::from(format!("/tmp/iicp-nat-lab-{id}")),
        id,
        children: Vec::new(),
    };
    let up = Command::new(script())
        .args(["up", &lab.id])
        .args(args)
        .stdout(Stdio::null())
        .status();
    if !up.is_ok_and(|s| s.success()) {
        assert!(
            !ci(),
            "CI: scripts/nat-lab up failed; the NAT lab must run in CI"
        );
        eprintln!("SKIP NAT lab test: scripts/nat-lab up failed (miniupnpd missing?)");
        return None;
    }
    Some(lab)
}

/// The state directory when this process is the child `role`, else `None`.
pub fn role_is(role: &str) -> Option<PathBuf> {
    (std::env::var(ROLE).ok().as_deref() == Some(role))
        .then(|| PathBuf::from(std::env::var(DIR).unwrap()))
}

/// Waits (async) until `path` exists.
pub async fn wait_file(path: &Path, timeout: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < timeout, "timed out waiting for {path:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Posts a task to `endpoint` until the relay answers 404 `IICP-E030` (10 s at most).
pub async fn expect_e030(endpoint: &str) {
    let http =
        iicp_transport::http::HttpClient::new(iicp_transport::http::HttpClientConfig::default())
            .unwrap();
    let url = format!("{}/v1/task", endpoint.trim_end_matches("/v1/task"));
    let task = serde_json::json!({"task_id": "lab-e030", "payload": {}});
    let start = Instant::now();
    loop {
        let reply = http.post_json(&url, &task).send().await.unwrap();
        if reply.status.as_u16() == 404 {
            assert_eq!(reply.error_body().code.as_str(), "IICP-E030");
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still {}",
            reply.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
