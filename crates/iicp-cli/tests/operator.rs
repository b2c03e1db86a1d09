//! Operator identity through the real binary, with `IICP_HOME` in a temp dir: `init`
//! by flags, a node served under the identity (the embedded directory binds it), a
//! signed `operator rename`, and the `encrypt` / `decrypt` round trip.

mod common;

use std::io::Write as _;
use std::process::Stdio;

use common::{directory, discover, free_port, iicp, run, temp_home, text, Proc};

fn operator_json(home: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(home.join("operator.json")).expect("read")).expect("json")
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).expect("meta").permissions().mode() & 0o777
}

#[test]
fn init_serve_rename_encrypt_decrypt_round_trip() {
    let home = temp_home("operator");
    let (_dir, url) = directory();
    let port = free_port();

    // init by flags (stdin is not a terminal)
    let o = run(iicp().env("IICP_HOME", &home).args([
        "init",
        "--display-name",
        "Test Operator",
        "--contact",
        "ops@example.org",
        "--node",
        "n1",
        "--directory-url",
        &url,
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
    ]));
    assert!(o.status.success(), "{}", text(&o));
    let op = operator_json(&home);
    let operator_id = op["operator_id"].as_str().expect("id").to_owned();
    assert_eq!(op["display_name"], "Test Operator");
    assert_eq!(op["operator_secret"].as_str().map(str::len), Some(44));
    #[cfg(unix)]
    {
        assert_eq!(mode(&home.join("operator.json")), 0o600);
        assert_eq!(mode(&home.join("nodes/n1.json")), 0o600);
    }
    // never printed
    let secret = op["operator_secret"].as_str().expect("secret").to_owned();
    assert!(!String::from_utf8_lossy(&o.stdout).contains(&secret));

    // init again: the key is kept, the existing node profile is not overwritten
    let o = run(iicp()
        .env("IICP_HOME", &home)
        .args(["init", "--node", "n1"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o =
        run(iicp()
            .env("IICP_HOME", &home)
            .args(["init", "--no-node", "--display-name", "Other"]));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(operator_json(&home)["operator_id"], operator_id.as_str());

    // operator show never prints the secret
    let o = run(iicp()
        .env("IICP_HOME", &home)
        .args(["operator", "show", "--json"]));
    assert!(o.status.success(), "{}", text(&o));
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(shown["operator_id"], operator_id.as_str());
    assert_eq!(shown["encrypted"], false);
    assert!(!String::from_utf8_lossy(&o.stdout).contains(&secret));

    // serve --node: the directory binds the node to the operator
    let mut cmd = iicp();
    cmd.env("IICP_HOME", &home)
        .args(["serve", "--node", "n1", "--backend-type", "echo"]);
    let mut node = Proc::spawn(cmd);
    let summary = node.read_until("serving ");
    assert!(summary.contains("\"Test Operator\""), "{summary}");
    assert!(summary.contains(&format!("127.0.0.1:{port}")), "{summary}");
    let nodes = discover(&url, Some(&home));
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["operator_display_name"], "Test Operator");
    assert!(
        nodes[0]["operator_fingerprint"].is_string(),
        "{:?}",
        nodes[0]
    );
    let profile: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join("nodes/n1.json")).expect("read"))
            .expect("json");
    assert_eq!(nodes[0]["node_id"], profile["node_id"]);

    // signed rename through the directory
    let o = run(iicp().env("IICP_HOME", &home).args([
        "operator",
        "rename",
        "Renamed Operator",
        "--directory-url",
        &url,
    ]));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(operator_json(&home)["display_name"], "Renamed Operator");
    assert_eq!(
        discover(&url, Some(&home))[0]["operator_display_name"],
        "Renamed Operator"
    );
    let o = run(iicp().env("IICP_HOME", &home).args([
        "operator",
        "rename",
        "  ",
        "--directory-url",
        &url,
    ]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // the node token was persisted while serving; SIGTERM deregisters and clears it
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join("nodes/n1.json")).expect("read"))
            .expect("json");
    assert!(saved["node_token"].is_string(), "token persisted");
    node.signal("-TERM");
    let (code, out, err) = node.wait();
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(discover(&url, Some(&home)).is_empty());

    // encrypt (passphrase from the environment)
    let o = run(iicp()
        .env("IICP_HOME", &home)
        .env("IICP_OPERATOR_PASSPHRASE", "correct horse")
        .args(["operator", "encrypt"]));
    assert!(o.status.success(), "{}", text(&o));
    let enc = operator_json(&home);
    assert_eq!(enc["operator_secret"], "");
    assert_eq!(enc["operator_secret_enc"]["kdf"], "pbkdf2-hmac-sha256");
    assert_eq!(enc["operator_secret_enc"]["iter"], 600_000);
    assert_eq!(enc["operator_id"], operator_id.as_str());
    let sealed = std::fs::read(home.join("operator.json")).expect("read");

    // serve never prompts: an encrypted key without the passphrase is a usage error
    let o = run(iicp().env("IICP_HOME", &home).args([
        "serve",
        "--node",
        "n1",
        "--backend-type",
        "echo",
    ]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // decrypt with a wrong passphrase (read from non-terminal stdin): error, file unchanged
    let mut child = iicp()
        .env("IICP_HOME", &home)
        .args(["operator", "decrypt"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"wrong horse\n")
        .expect("write");
    let o = child.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("wrong passphrase"),
        "{}",
        text(&o)
    );
    assert!(!String::from_utf8_lossy(&o.stderr).contains("wrong horse"));
    assert_eq!(
        std::fs::read(home.join("operator.json")).expect("read"),
        sealed
    );

    // and the right one
    let o = run(iicp()
        .env("IICP_HOME", &home)
        .env("IICP_OPERATOR_PASSPHRASE", "correct horse")
        .args(["operator", "decrypt"]));
    assert!(o.status.success(), "{}", text(&o));
    let plain = operator_json(&home);
    assert_eq!(plain["operator_secret"], secret.as_str());
    assert!(plain.get("operator_secret_enc").is_none());

    // a group-readable key is refused with a clear error
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let path = home.join("operator.json");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let o = run(iicp().env("IICP_HOME", &home).args(["operator", "show"]));
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains("readable by other users"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn anonymous_serve_prints_the_notice_once() {
    let home = temp_home("anon");
    for expect_notice in [true, false] {
        let mut cmd = iicp();
        cmd.env("IICP_HOME", &home)
            .env("IICP_SKIP_REGISTRATION", "true")
            .args([
                "serve",
                "--backend-type",
                "echo",
                "--host",
                "127.0.0.1",
                "--port",
                &free_port().to_string(),
            ]);
        let mut node = Proc::spawn(cmd);
        node.read_until("serving ");
        node.signal("-TERM");
        let (code, _, err) = node.wait();
        assert_eq!(code, Some(0));
        assert_eq!(
            err.contains("NOTICE: no operator identity"),
            expect_notice,
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&home);
}
