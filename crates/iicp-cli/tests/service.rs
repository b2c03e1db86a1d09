//! A node run by a service manager: `iicp serve` speaks the notify protocol to a real
//! Unix datagram socket (READY=1 after registration with the embedded directory, STATUS,
//! WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM).

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{directory, free_port, iicp, temp_home, Proc};

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
        .args([
            "serve",
            "--backend-type",
            "echo",
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
        .args([
            "serve",
            "--backend-type",
            "echo",
            "--skip-registration",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ]);
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
