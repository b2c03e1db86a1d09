//! A node run by a service manager: `iicp serve` speaks the notify protocol to a real
//! Unix datagram socket (READY=1 after registration with the embedded directory, STATUS,
//! WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM); `iicp service` writes a
//! systemd unit that `systemd-analyze verify` accepts and a well-formed launchd plist,
//! calls systemctl (a stand-in that records its arguments), and says clearly when no
//! user manager is usable.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{directory, echo_on, free_port, iicp, run, temp_home, text, Proc};

/// Every datagram received until `until` holds for the ones so far, or `within` passes.
fn collect(
    sock: &UnixDatagram,
    within: Duration,
    until: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    while start.elapsed() < within && !until(&got) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

#[test]
fn serve_notifies_ready_status_watchdog_and_stopping() {
    let home = temp_home("notify");
    let sock_path = home.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    let (_dir, url) = directory();
    let port = free_port();
    let mut cmd = iicp();
    cmd.env("IICP_HOME", &home)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .args(["serve", "--directory-url", &url])
        .args(echo_on(port));
    let mut node = Proc::spawn(cmd);
    let summary = node.read_until("serving ");
    assert!(summary.contains("(registered)"), "{summary}");

    let pings = |g: &[String]| g.iter().filter(|m| m.as_str() == "WATCHDOG=1").count();
    let got = collect(&sock, Duration::from_secs(10), |g| {
        g.iter().any(|m| m.starts_with("READY=1")) && pings(g) >= 3
    });
    let ready = got
        .iter()
        .find(|m| m.starts_with("READY=1"))
        .unwrap_or_else(|| panic!("no READY=1 in {got:?}"));
    let status = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .expect("status with READY");
    assert!(
        status.contains(&format!("127.0.0.1:{port}")),
        "the status names the endpoint: {status}"
    );
    assert!(
        status.contains("directory registered"),
        "READY comes after the registration: {status}"
    );
    assert!(status.contains("recovery healthy"), "{status}");
    assert!(pings(&got) >= 2, "watchdog pings: {got:?}");

    node.signal("-TERM");
    let after = collect(&sock, Duration::from_secs(10), |g| {
        g.iter().any(|m| m.starts_with("STOPPING=1"))
    });
    let (code, out, err) = node.wait();
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        after.iter().any(|m| m.starts_with("STOPPING=1")),
        "no STOPPING=1 in {after:?}"
    );
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn a_watchdog_meant_for_another_pid_gets_no_pings() {
    let home = temp_home("notify-pid");
    let sock_path = home.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    let port = free_port();
    let mut cmd = iicp();
    cmd.env("IICP_HOME", &home)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .env("WATCHDOG_PID", "1") // not the node's pid: no pings
        .args(["serve", "--skip-registration"])
        .args(echo_on(port));
    let mut node = Proc::spawn(cmd);
    node.read_until("serving ");
    let got = collect(&sock, Duration::from_secs(2), |_| false);
    assert!(
        got.iter()
            .any(|m| m.starts_with("READY=1") && m.contains("directory none")),
        "{got:?}"
    );
    assert!(!got.iter().any(|m| m == "WATCHDOG=1"), "{got:?}");
    node.signal("-TERM");
    assert_eq!(node.wait().0, Some(0));
    let _ = std::fs::remove_dir_all(&home);
}

/// `iicp` with its own IICP_HOME, HOME and XDG_CONFIG_HOME under `root`.
fn isolated(root: &Path) -> Command {
    let mut c = iicp();
    c.env("IICP_HOME", root.join("iicp home"))
        .env("HOME", root.join("home"))
        .env("XDG_CONFIG_HOME", root.join("config"))
        .env_remove("IICP_SYSTEMCTL")
        .env_remove("IICP_LAUNCHCTL");
    c
}

fn init_node(root: &Path, name: &str) {
    let o = run(isolated(root).args(["init", "--yes", "--node", name, "--display-name", "op"]));
    assert!(o.status.success(), "{}", text(&o));
}

fn unit_file(root: &Path, name: &str) -> PathBuf {
    root.join("config/systemd/user")
        .join(format!("iicp-node-{name}.service"))
}

/// A stand-in `systemctl` that appends its arguments to `log` and exits with `code`.
fn fake_tool(root: &Path, log: &Path, code: i32) -> PathBuf {
    let path = root.join(format!("fake-systemctl-{code}"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\n[ {code} -ne 0 ] && echo 'Failed to connect to bus: No medium found' >&2\nexit {code}\n",
            log.display()
        ),
    )
    .expect("write");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// `systemd-analyze --user verify` of `unit`: `None` when the tool is missing outside
/// CI (the test then skips that check, saying so); under CI a missing tool fails.
#[allow(clippy::print_stderr)] // the line saying the check was skipped
fn systemd_verify(unit: &Path, runtime: &Path) -> Option<Output> {
    let tool = Path::new("/usr/bin/systemd-analyze");
    if !tool.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing (apt-get install systemd)"
        );
        eprintln!("skipping the systemd-analyze check: /usr/bin/systemd-analyze is missing");
        return None;
    }
    std::fs::create_dir_all(runtime).expect("mkdir");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(runtime, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    Some(
        Command::new(tool)
            .env("XDG_RUNTIME_DIR", runtime)
            .args(["--user", "verify"])
            .arg(unit)
            .output()
            .expect("systemd-analyze"),
    )
}

#[test]
fn service_install_writes_a_unit_that_systemd_accepts() {
    // a configuration root with a space and a % in its path: quoted and escaped
    let root = temp_home("svc-unit").join("with space 100%");
    init_node(&root, "n1");
    let o = run(isolated(&root).args([
        "service",
        "install",
        "--node",
        "n1",
        "--platform",
        "systemd",
        "--no-start",
    ]));
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("systemctl --user enable --now iicp-node-n1.service"),
        "{out}"
    );
    let path = unit_file(&root, "n1");
    let unit = std::fs::read_to_string(&path).expect("unit written");
    let exe = env!("CARGO_BIN_EXE_iicp");
    assert!(
        unit.contains(&format!(
            "ExecStart=\"{}\" serve --node n1",
            exe.replace('%', "%%")
        )),
        "{unit}"
    );
    assert!(unit.contains("with space 100%%"), "{unit}");
    assert!(unit.contains("Type=notify\n"), "{unit}");
    assert!(unit.contains("WatchdogSec="), "{unit}");
    assert!(
        root.join("iicp home/logs/n1").is_dir(),
        "the log directory exists"
    );
    if let Some(v) = systemd_verify(&path, &root.join("runtime")) {
        let err = String::from_utf8_lossy(&v.stderr);
        assert!(
            v.status.success(),
            "systemd-analyze verify failed:\n{err}\n{unit}"
        );
        assert!(
            !err.contains("iicp-node-n1.service"),
            "warnings about the unit:\n{err}\n{unit}"
        );
    }

    // the same unit again: up to date; a different one in the way: refused without --force
    let o = run(isolated(&root).args([
        "service",
        "install",
        "--node",
        "n1",
        "--no-start",
        "--platform",
        "systemd",
    ]));
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("up to date"));
    std::fs::write(&path, "[Service]\nExecStart=/bin/true\n").expect("write");
    let o = run(isolated(&root).args([
        "service",
        "install",
        "--node",
        "n1",
        "--no-start",
        "--platform",
        "systemd",
    ]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--force"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        "[Service]\nExecStart=/bin/true\n"
    );
    let o = run(isolated(&root).args([
        "service",
        "install",
        "--node",
        "n1",
        "--no-start",
        "--force",
        "--platform",
        "systemd",
    ]));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&path).expect("read"), unit);
    let _ = std::fs::remove_dir_all(root.parent().expect("parent"));
}

#[test]
fn service_dry_run_changes_nothing_and_names_are_checked() {
    let root = temp_home("svc-dry");
    // --dry-run renders even before `init` (with a note), and writes nothing
    let o = run(isolated(&root).args([
        "service",
        "install",
        "--node",
        "n2",
        "--dry-run",
        "--platform",
        "systemd",
    ]));
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("[Service]") && out.contains("serve --node n2"),
        "{out}"
    );
    assert!(
        out.contains("would run: systemctl --user daemon-reload"),
        "{out}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("no saved node"));
    assert!(!root.join("config").exists(), "dry run wrote something");
    // without --dry-run the profile must exist
    let o = run(isolated(&root).args([
        "service",
        "install",
        "--node",
        "n2",
        "--platform",
        "systemd",
    ]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!root.join("config").exists());
    for bad in ["../x", "Bad", "a b", "-x"] {
        let o = run(isolated(&root).args([
            "service",
            "status",
            "--platform",
            "systemd",
            "--node",
            bad,
        ]));
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", text(&o));
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn service_install_starts_through_systemctl_or_says_it_cannot() {
    let root = temp_home("svc-ctl");
    init_node(&root, "n3");
    let log = root.join("calls.log");
    // no user manager: the unit is written, the failure is clear, exit 1
    let broken = fake_tool(&root, &log, 1);
    let o = run(isolated(&root).env("IICP_SYSTEMCTL", &broken).args([
        "service",
        "install",
        "--node",
        "n3",
        "--platform",
        "systemd",
    ]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("user manager is not usable"), "{err}");
    assert!(err.contains("No medium found"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(unit_file(&root, "n3").exists());
    assert_eq!(
        std::fs::read_to_string(&log).expect("log"),
        "--user show-environment\n"
    );

    // a working manager: reload, enable --now; status, restart; uninstall
    std::fs::remove_file(&log).expect("rm");
    let ok = fake_tool(&root, &log, 0);
    let svc = |action: &str| {
        run(isolated(&root).env("IICP_SYSTEMCTL", &ok).args([
            "service",
            action,
            "--node",
            "n3",
            "--platform",
            "systemd",
        ]))
    };
    for action in ["install", "status", "restart", "uninstall"] {
        let o = svc(action);
        assert!(o.status.success(), "{action}: {}", text(&o));
    }
    let calls = std::fs::read_to_string(&log).expect("log");
    let calls: Vec<&str> = calls
        .lines()
        .filter(|l| *l != "--user show-environment")
        .collect();
    assert_eq!(
        calls,
        [
            "--user daemon-reload",
            "--user enable --now iicp-node-n3.service",
            "--user status --no-pager iicp-node-n3.service",
            "--user restart iicp-node-n3.service",
            "--user disable --now iicp-node-n3.service",
            "--user daemon-reload",
        ]
    );
    assert!(
        !unit_file(&root, "n3").exists(),
        "uninstall removes the unit"
    );
    // status of a node that is not installed: a usage error, no systemctl call
    let o = svc("status");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn launchd_plist_is_a_well_formed_property_list() {
    let root = temp_home("svc-plist");
    init_node(&root, "n4");
    let o = run(isolated(&root).args([
        "service",
        "install",
        "--node",
        "n4",
        "--platform",
        "launchd",
        "--no-start",
    ]));
    assert!(o.status.success(), "{}", text(&o));
    let path = root.join("home/Library/LaunchAgents/network.iicp.node.n4.plist");
    let xml = std::fs::read_to_string(&path).expect("plist written");
    let options = roxmltree::ParsingOptions {
        allow_dtd: true, // the plist DOCTYPE
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(&xml, options).expect("well-formed XML");
    let plist = doc.root_element();
    assert_eq!(plist.tag_name().name(), "plist");
    let dict = plist
        .children()
        .find(|n| n.has_tag_name("dict"))
        .expect("top dict");
    // key → the element after it
    let entries: Vec<(String, roxmltree::Node)> = {
        let elems: Vec<roxmltree::Node> = dict.children().filter(|n| n.is_element()).collect();
        elems
            .chunks(2)
            .map(|kv| {
                assert!(kv[0].has_tag_name("key"), "{xml}");
                (kv[0].text().unwrap_or_default().to_owned(), kv[1])
            })
            .collect()
    };
    let get = |k: &str| {
        entries
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {k} in {xml}"))
    };
    assert_eq!(get("Label").text(), Some("network.iicp.node.n4"));
    let args: Vec<&str> = get("ProgramArguments")
        .children()
        .filter(|n| n.has_tag_name("string"))
        .filter_map(|n| n.text())
        .collect();
    assert_eq!(args, [env!("CARGO_BIN_EXE_iicp"), "serve", "--node", "n4"]);
    assert!(get("RunAtLoad").has_tag_name("true"));
    assert!(get("KeepAlive").has_tag_name("dict"));
    let env: Vec<&str> = get("EnvironmentVariables")
        .children()
        .filter(|n| n.is_element())
        .filter_map(|n| n.text())
        .collect();
    let log_dir = root.join("iicp home/logs/n4");
    assert!(env.contains(&"IICP_LOG_DIR"), "{env:?}");
    assert!(env.contains(&log_dir.to_str().expect("utf-8")), "{env:?}");
    for k in ["StandardOutPath", "StandardErrorPath"] {
        let p = get(k).text().expect("path");
        assert!(p.starts_with(log_dir.to_str().expect("utf-8")), "{k}: {p}");
    }
    let _ = std::fs::remove_dir_all(&root);
}
