//! Operator identity: the store (format, 0600, atomic writes that survive being killed,
//! refusal of readable keys), files written by the Python SDK 0.7.109 (plain and
//! encrypted), delegation in every REGISTER and its renewal before expiry, and — with
//! `IICP_PEER_PYTHON` — files and delegations checked by the Python SDK itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iicp_node::clock::ManualClock;
use iicp_node::directory::{DirectoryApi, DirectoryError};
use iicp_node::handler::BoxFuture;
use iicp_node::operator::{write_private_atomic, Home, NodeProfile, OperatorError, OperatorFile};
use iicp_node::{Node, ServeOptions};
use iicp_proto::crypto::sign::{verify_delegation_for_node, Delegation};
use iicp_proto::crypto::token::DirectoryPublicKey;
use iicp_proto::directory::{HeartbeatRequest, HeartbeatResponse, RegisterAck, RegisterRequest};
use iicp_proto::secret::Secret;
use serde_json::{json, Value};

const NOW: u64 = 1_893_456_000;
const PY_PASSPHRASE: &str = "correct horse battery staple";

fn temp_home(tag: &str) -> Home {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "iicp-node-op-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    Home::new(dir)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Installs a fixture as `operator.json` (git does not keep its 0600 mode).
fn install(home: &Home, name: &str) {
    let bytes = std::fs::read(fixture(name)).expect("fixture");
    write_private_atomic(&home.operator_path(), &bytes).expect("write");
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).expect("meta").permissions().mode() & 0o777
}

#[test]
fn init_writes_the_sdk_format_with_mode_0600_and_never_overwrites() {
    let home = temp_home("init");
    assert!(home.load_operator().expect("load").is_none());
    assert!(matches!(
        home.require_operator(),
        Err(OperatorError::NotFound(_))
    ));
    let f = home
        .init_operator("Ops", "ops@example.org", NOW, false)
        .expect("init");
    let text = std::fs::read_to_string(home.operator_path()).expect("read");
    assert!(
        text.starts_with("{\n  \"operator_id\": ") && text.ends_with("}\n"),
        "{text}"
    );
    let v: Value = serde_json::from_str(&text).expect("json");
    let keys: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = [
        "contact",
        "created_at",
        "display_name",
        "operator_id",
        "operator_integrity_hash",
        "operator_secret",
    ];
    expected.sort_unstable();
    assert_eq!(keys, expected);
    assert_eq!(v["created_at"], "2030-01-01T00:00:00Z");
    #[cfg(unix)]
    assert_eq!(mode(&home.operator_path()), 0o600);

    assert!(matches!(
        home.init_operator("Other", "", NOW, false),
        Err(OperatorError::AlreadyExists(_))
    ));
    assert_eq!(
        home.require_operator().expect("load").operator_id,
        f.operator_id
    );
    let g = home.init_operator("Other", "", NOW, true).expect("forced");
    assert_ne!(g.operator_id, f.operator_id);
    let _ = std::fs::remove_dir_all(home.root());
}

#[cfg(unix)]
#[test]
fn readable_keys_are_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let home = temp_home("perm");
    home.init_operator("Ops", "", NOW, false).expect("init");
    for bad in [0o640, 0o604, 0o644] {
        std::fs::set_permissions(home.operator_path(), std::fs::Permissions::from_mode(bad))
            .expect("chmod");
        let err = home.load_operator().expect_err("refused");
        assert!(
            matches!(err, OperatorError::InsecurePermissions { mode, .. } if mode == bad),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
    std::fs::set_permissions(home.operator_path(), std::fs::Permissions::from_mode(0o600))
        .expect("chmod");
    home.load_operator().expect("ok").expect("present");
    let _ = std::fs::remove_dir_all(home.root());
}

#[test]
fn python_sdk_files_load_plain_and_encrypted() {
    let plain_home = temp_home("py-plain");
    install(&plain_home, "python-0.7.109-operator.json");
    let plain = plain_home.require_operator().expect("load");
    assert!(plain.is_key_backed() && !plain.is_encrypted());
    assert_eq!(plain.operator_integrity_hash, plain.integrity_hash());
    let id = plain.unlock(None).expect("unlock");
    assert_eq!(id.operator_id(), plain.operator_id);
    assert_eq!(id.display_name(), "Python Operator");

    let enc_home = temp_home("py-enc");
    install(&enc_home, "python-0.7.109-operator-encrypted.json");
    let mut enc = enc_home.require_operator().expect("load");
    assert!(enc.is_encrypted());
    assert!(matches!(
        enc.unlock(None),
        Err(OperatorError::PassphraseRequired)
    ));
    assert!(matches!(
        enc.unlock(Some("nope")),
        Err(OperatorError::AtRest(_))
    ));
    let unlocked = enc.unlock(Some(PY_PASSPHRASE)).expect("unlock");
    assert_eq!(unlocked.operator_id(), plain.operator_id);
    // decrypting gives back exactly the Python SDK's plain seed
    enc.decrypt(PY_PASSPHRASE).expect("decrypt");
    assert_eq!(enc.operator_secret.expose(), plain.operator_secret.expose());
    // and what we write re-reads identically
    enc_home.save_operator(&plain).expect("save");
    let again = enc_home.require_operator().expect("load");
    assert_eq!(
        std::fs::read_to_string(enc_home.operator_path()).expect("read"),
        std::fs::read_to_string(fixture("python-0.7.109-operator.json")).expect("read")
    );
    assert_eq!(again.operator_id, plain.operator_id);
    let _ = std::fs::remove_dir_all(plain_home.root());
    let _ = std::fs::remove_dir_all(enc_home.root());
}

#[test]
fn encrypt_and_wrong_passphrase_leave_consistent_files() {
    let home = temp_home("enc");
    let mut f = home.init_operator("Ops", "", NOW, false).expect("init");
    let id = f.operator_id.clone();
    f.encrypt("pw").expect("encrypt");
    home.save_operator(&f).expect("save");
    let sealed = std::fs::read(home.operator_path()).expect("read");
    let mut g = home.require_operator().expect("load");
    assert!(g.decrypt("wrong").is_err());
    assert_eq!(std::fs::read(home.operator_path()).expect("read"), sealed);
    g.decrypt("pw").expect("decrypt");
    assert_eq!(g.unlock(None).expect("unlock").operator_id(), id);
    let _ = std::fs::remove_dir_all(home.root());
}

#[test]
fn node_profiles_and_cx_keys_persist() {
    let home = temp_home("profile");
    let mut p = NodeProfile::new("edge-1", "op", NOW);
    p.node_token = Some(Secret::new("tok-123"));
    home.save_node(&p).expect("save");
    let back = home.load_node("edge-1").expect("load").expect("present");
    assert_eq!(back.node_id, p.node_id);
    assert_eq!(
        back.node_token.as_ref().map(Secret::expose),
        Some("tok-123")
    );
    assert!(!format!("{back:?}").contains("tok-123"));
    #[cfg(unix)]
    assert_eq!(mode(&home.node_path("edge-1").expect("path")), 0o600);
    assert!(home.load_node("nope").expect("load").is_none());
    assert!(matches!(
        home.load_node("../x"),
        Err(OperatorError::NodeName(_))
    ));
    // exactly the members the Python SDK's loader accepts
    let v: Value =
        serde_json::from_slice(&std::fs::read(home.node_path("edge-1").expect("p")).expect("r"))
            .expect("json");
    assert_eq!(v.as_object().expect("obj").len(), 18);

    let key = iicp_proto::crypto::cx::CxKeyPair::generate(&mut rand_core::OsRng);
    home.save_cx_key(&p.node_id, &key).expect("save");
    let k2 = home
        .load_cx_key(&p.node_id)
        .expect("load")
        .expect("present");
    assert_eq!(k2.public_key(), key.public_key());
    assert!(home.load_cx_key("other").expect("load").is_none());
    // load or create: the saved key, else a new one that is kept
    assert_eq!(
        home.cx_key(&p.node_id).expect("saved").public_key(),
        key.public_key()
    );
    let fresh = home.cx_key("other").expect("created");
    assert_eq!(
        home.cx_key("other").expect("kept").public_key(),
        fresh.public_key()
    );
    #[cfg(unix)]
    assert_eq!(mode(&home.cx_key_path("other")), 0o600);
    let _ = std::fs::remove_dir_all(home.root());
}

/// Child half of the crash test: rewrites `operator.json` as fast as it can until killed.
#[test]
fn crash_writer_child() {
    let Some(dir) = std::env::var_os("IICP_CRASH_WRITER_HOME") else {
        return;
    };
    let home = Home::new(PathBuf::from(dir));
    let mut i = 0u64;
    loop {
        let f = OperatorFile::generate(&format!("writer {i}"), &"c".repeat(4096), NOW + i)
            .expect("gen");
        home.save_operator(&f).expect("save");
        i += 1;
    }
}

#[test]
fn killed_writes_never_leave_a_truncated_key() {
    let home = temp_home("crash");
    home.init_operator("first", "", NOW, false).expect("init");
    let exe = std::env::current_exe().expect("exe");
    for round in 0..12u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_writer_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("IICP_CRASH_WRITER_HOME", home.root())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(40 + round * 17));
        child.kill().expect("kill");
        let _ = child.wait();
        let f = home
            .require_operator()
            .expect("a complete file after SIGKILL");
        let id = f.unlock(None).expect("a whole key");
        assert_eq!(id.operator_id(), f.operator_id);
    }
    let _ = std::fs::remove_dir_all(home.root());
}

// ---------------------------------------------------------------------------
// Delegation at REGISTER
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct FakeDirectory {
    registers: Mutex<Vec<RegisterRequest>>,
}

impl DirectoryApi for FakeDirectory {
    fn register(
        &self,
        req: &RegisterRequest,
    ) -> BoxFuture<'static, Result<RegisterAck, DirectoryError>> {
        let mut regs = self.registers.lock().expect("lock");
        regs.push(req.clone());
        let ack: RegisterAck = serde_json::from_value(json!({
            "node_id": req.node_id.clone().unwrap_or_default(),
            "node_token": format!("tok-{}", regs.len()),
            "node_hmac_key": "k",
        }))
        .expect("ack");
        Box::pin(async move { Ok(ack) })
    }

    fn heartbeat(
        &self,
        _token: &Secret,
        _req: &HeartbeatRequest,
    ) -> BoxFuture<'static, Result<HeartbeatResponse, DirectoryError>> {
        let pong: HeartbeatResponse =
            serde_json::from_value(json!({"ok": true, "next_heartbeat_ms": 20})).expect("pong");
        Box::pin(async move { Ok(pong) })
    }

    fn deregister(
        &self,
        _token: &Secret,
        _node_id: &str,
    ) -> BoxFuture<'static, Result<(), DirectoryError>> {
        Box::pin(async { Ok(()) })
    }

    fn directory_key(
        &self,
    ) -> BoxFuture<'static, Result<Option<DirectoryPublicKey>, DirectoryError>> {
        Box::pin(async { Ok(None) })
    }
}

fn delegation_of(req: &RegisterRequest) -> Delegation {
    serde_json::from_value(req.operator_delegation.clone().expect("delegation")).expect("shape")
}

#[test]
fn every_register_carries_a_verifiable_delegation() {
    let f = OperatorFile::generate("Ops", "", NOW).expect("gen");
    let id = f.unlock(None).expect("unlock");
    let clock = Arc::new(ManualClock::at(NOW));
    let node = Node::builder()
        .endpoint("https://node.example.com")
        .intent("urn:iicp:intent:llm:chat:v1")
        .operator(id.clone())
        .clock(clock)
        .build()
        .expect("build");
    let node_id = node
        .node_id()
        .expect("a node id is generated for the delegation");
    let req = node.registration_request();
    let d = delegation_of(&req);
    assert_eq!(d.not_after, NOW + 3600);
    verify_delegation_for_node(&d, &node_id, NOW).expect("verifies");
    assert_eq!(req.operator_display_name.as_deref(), Some("Ops"));
    assert_eq!(
        req.operator_created_at.as_deref(),
        Some(f.created_at.as_str())
    );
    assert_eq!(
        req.operator_integrity_hash.as_deref(),
        Some(f.operator_integrity_hash.as_str())
    );
    // Debug output never shows the key
    let seed = f.operator_secret.expose().to_owned();
    assert!(!format!("{node:?}").contains(&seed));
    assert!(!format!("{:?}", node.config()).contains(&seed));

    let anon = Node::builder()
        .endpoint("https://node.example.com")
        .intent("urn:iicp:intent:llm:chat:v1")
        .build()
        .expect("build");
    let req = anon.registration_request();
    assert!(req.operator_delegation.is_none() && req.operator_integrity_hash.is_none());
}

#[tokio::test]
async fn delegation_is_renewed_before_it_expires() {
    let f = OperatorFile::generate("Ops", "", NOW).expect("gen");
    let id = f
        .unlock(None)
        .expect("unlock")
        .with_delegation_ttl(Duration::from_secs(10));
    let clock = Arc::new(ManualClock::at(NOW));
    let dir = Arc::new(FakeDirectory::default());
    let node = Node::builder()
        .endpoint("http://127.0.0.1:9484")
        .intent("urn:iicp:intent:llm:chat:v1")
        .operator(id)
        .directory(dir.clone())
        .directory_url("http://127.0.0.1:1/api")
        .heartbeat_interval(Duration::from_millis(20))
        .clock(clock.clone())
        .build()
        .expect("build");
    let handle = node
        .bind_and_serve(
            std::net::SocketAddr::new("127.0.0.1".parse().expect("ip"), 0),
            |_t: iicp_node::Task| async move {
                Ok::<_, iicp_node::HandlerError>(json!({"choices": []}))
            },
            ServeOptions::default(),
        )
        .await
        .expect("serve");
    let count = || dir.registers.lock().expect("lock").len();
    let wait_for = |n: usize| async move {
        for _ in 0..200 {
            if count() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("expected {n} registrations, saw {}", count());
    };
    wait_for(1).await;
    // heartbeats only while the delegation is fresh
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(count(), 1);
    // 8 s later (last fifth of the 10 s TTL) the node registers again with a new one
    clock.advance(Duration::from_secs(8));
    wait_for(2).await;
    let regs = dir.registers.lock().expect("lock").clone();
    let (d1, d2) = (delegation_of(&regs[0]), delegation_of(&regs[1]));
    assert_eq!(d1.not_after, NOW + 10);
    assert_eq!(d2.not_after, NOW + 18);
    assert_eq!(d2.node_id, d1.node_id);
    assert!(
        regs[1].current_node_token.is_some(),
        "re-registration proves ownership"
    );
    handle.stop().await;
}

// ---------------------------------------------------------------------------
// The Python SDK itself (IICP_PEER_PYTHON)
// ---------------------------------------------------------------------------

#[allow(clippy::print_stderr)]
fn peer_python() -> Option<PathBuf> {
    match std::env::var_os("IICP_PEER_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("CI").is_some() => {
            panic!("IICP_PEER_PYTHON is not set: run the tests through scripts/test")
        }
        None => {
            eprintln!("skipping: IICP_PEER_PYTHON not set (scripts/test sets it)");
            None
        }
    }
}

fn python(py: &Path, home: &Home, script: &str) -> String {
    let out = Command::new(py)
        .args(["-c", script])
        .env("IICP_HOME", home.root())
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn python_sdk_reads_our_files_and_verifies_our_delegation() {
    let Some(py) = peer_python() else { return };
    let home = temp_home("py-live");
    let mut f = home
        .init_operator("Rust Operator", "rs@example.org", NOW, false)
        .expect("init");
    let id = f.unlock(None).expect("unlock");
    let d = id.delegate("node-from-rust", 4_000_000_000);
    let script = format!(
        r#"
import json
from iicp_client import identity, delegation
op = identity.load_operator()
key = op.signing_key()
assert delegation.operator_pub_b64(key) == op.operator_id
tok = json.loads('{}')
assert delegation.verify_delegation(tok, "node-from-rust", now=1893456000)
assert not delegation.verify_delegation(tok, "other-node", now=1893456000)
print(op.operator_id, op.display_name)
"#,
        serde_json::to_string(&d).expect("json")
    );
    assert_eq!(
        python(&py, &home, &script),
        format!("{} Rust Operator", f.operator_id)
    );

    // encrypted by us, opened by Python
    f.encrypt("rust passphrase").expect("encrypt");
    home.save_operator(&f).expect("save");
    let script = r#"
from iicp_client import identity, delegation
op = identity.load_operator()
assert op.is_encrypted()
print(delegation.operator_pub_b64(op.signing_key("rust passphrase")))
"#;
    assert_eq!(python(&py, &home, script), f.operator_id);

    // created and encrypted by Python now, opened by us
    let script = r#"
from iicp_client import identity
op = identity.OperatorIdentity.generate(display_name="Live Python", contact="")
identity.save_operator(op.encrypt_at_rest("py pass"))
print(op.operator_id)
"#;
    let py_id = python(&py, &home, script);
    let g = home.require_operator().expect("load");
    assert_eq!(g.operator_id, py_id);
    assert_eq!(
        g.unlock(Some("py pass")).expect("unlock").operator_id(),
        py_id
    );
    let _ = std::fs::remove_dir_all(home.root());
}
