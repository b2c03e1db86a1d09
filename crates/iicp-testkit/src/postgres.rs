//! A throwaway PostgreSQL server for tests: `initdb` into a temporary directory and
//! `postgres` on a free loopback port, with `fsync=on` (the durability tests mean it),
//! the unix socket in the same directory, and trust authentication for the `postgres`
//! superuser on 127.0.0.1 only.
//!
//! PostgreSQL refuses to run as root; as root (CI) the harness runs `initdb` and
//! `postgres` as `nobody` (uid/gid 65534, through `setpriv`) in a directory it hands to
//! that user; otherwise as the current user.
//!
//! The server is started by a small `sh` that also stops it (fast shutdown, `SIGINT`)
//! and removes the directory as soon as the test process closes its end of a pipe — on
//! [`Drop`], or when the process exits, so a server kept in a `static`
//! ([`PgServer::shared`]) does not outlive its test binary either.
//!
//! Binaries: `IICP_PG_BIN` (a directory), else the directory of `postgres` on `PATH`,
//! `/usr/local/bin`, or the newest `/usr/lib/postgresql/*/bin`. When none has both
//! `initdb` and `postgres`: [`PgServer::shared`] returns `None` (the test skips, with a
//! printed reason) outside CI, and panics under `CI` (a test that cannot run must fail
//! there; `.ci/run` installs PostgreSQL).

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long `postgres` may take to accept connections.
const START_WITHIN: Duration = Duration::from_secs(60);
/// uid and gid of `nobody`, who runs the server when the tests run as root.
const NOBODY: u32 = 65534;

/// The shell that runs the server and cleans up once its stdin closes. `$1` is the
/// directory to remove afterwards, the rest the server command.
const SUPERVISOR: &str = r#"
dir="$1"; shift
"$@" >"$dir/server.log" 2>&1 </dev/null &
pg=$!
echo "$pg" >"$dir/server.pid"
read -r _ignored || true
kill -INT "$pg" 2>/dev/null
wait "$pg"
rm -rf "$dir"
"#;

/// A running PostgreSQL server on `127.0.0.1`, stopped and its directory removed on
/// drop.
#[derive(Debug)]
pub struct PgServer {
    port: u16,
    dir: PathBuf,
    supervisor: Mutex<Option<Child>>,
    stdin: Mutex<Option<ChildStdin>>,
}

/// The directory holding both `initdb` and `postgres`, if any (see the module docs).
pub fn find_binaries() -> Option<PathBuf> {
    let has_both = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("IICP_PG_BIN").map(PathBuf::from) {
        return has_both(&dir).then_some(dir);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(dir) = on_path.into_iter().find(|d| has_both(d)) {
        return Some(dir);
    }
    let local = PathBuf::from("/usr/local/bin");
    if has_both(&local) {
        return Some(local);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_both(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

impl PgServer {
    /// One server per test binary, started on first use. `None` when the binaries are
    /// missing outside CI (after printing why the test skips).
    ///
    /// # Panics
    /// Under `CI` when the binaries are missing, and whenever the server cannot start.
    #[allow(clippy::print_stderr)]
    pub fn shared() -> Option<&'static PgServer> {
        static SERVER: OnceLock<Option<PgServer>> = OnceLock::new();
        SERVER
            .get_or_init(|| match find_binaries() {
                Some(bin) => Some(
                    PgServer::start(&bin)
                        .unwrap_or_else(|e| panic!("starting PostgreSQL failed: {e}")),
                ),
                None if std::env::var_os("CI").is_some() => panic!(
                    "PostgreSQL binaries (initdb, postgres) not found: set IICP_PG_BIN or install \
                     PostgreSQL (.ci/run does as root)"
                ),
                None => {
                    eprintln!(
                        "skipping: PostgreSQL binaries (initdb, postgres) not found \
                         (set IICP_PG_BIN or install PostgreSQL)"
                    );
                    None
                }
            })
            .as_ref()
    }

    /// Starts a server with the binaries in `bin`: a fresh cluster in a new temporary
    /// directory, a free loopback port, `fsync=on`. Waits until it accepts connections.
    ///
    /// # Errors
    /// A description (with the server log's tail) when a step fails.
    pub fn start(bin: &Path) -> Result<Self, String> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "iicp-pg-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let root = std::fs::metadata(&dir).map_err(|e| e.to_string())?.uid() == 0;
        if root {
            std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY))
                .map_err(|e| format!("handing {} to nobody: {e}", dir.display()))?;
        }
        let as_server_user = |program: PathBuf| -> Command {
            if root {
                let mut c = Command::new("setpriv");
                c.args([
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "--reset-env",
                ])
                .arg(program);
                c
            } else {
                Command::new(program)
            }
        };
        let data = dir.join("data");
        let out = as_server_user(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running initdb: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?
            .port();
        let server = as_server_user(bin.join("postgres"));
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(SUPERVISOR)
            .arg("sh")
            .arg(&dir)
            .arg(server.get_program())
            .args(server.get_args())
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&dir)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-c", "fsync=on", "-c", "max_connections=200"])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(|e| format!("starting postgres: {e}"))?;
        let stdin = child.stdin.take();
        let pg = Self {
            port,
            dir,
            supervisor: Mutex::new(Some(child)),
            stdin: Mutex::new(stdin),
        };
        pg.wait_ready(&data)?;
        Ok(pg)
    }

    /// Waits for `postmaster.pid` to say `ready` (PostgreSQL ≥ 10 writes its status
    /// there), or fails when the server exited.
    fn wait_ready(&self, data: &Path) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let ready = std::fs::read_to_string(data.join("postmaster.pid"))
                .ok()
                .and_then(|s| s.lines().nth(7).map(|l| l.trim() == "ready"))
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            let exited = self
                .supervisor
                .lock()
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || start.elapsed() > START_WITHIN {
                return Err(format!(
                    "postgres did not become ready: {}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last 2 KiB of the server log.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.join("server.log")) {
            let _ = f.read_to_string(&mut text);
        }
        let cut = text.len().saturating_sub(2048);
        let cut = (cut..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[cut..].to_owned()
    }

    /// Its TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/{database}` (superuser, trust auth).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A fresh database name for one test: `{prefix}_{pid}_{n}` (create it with
    /// `CREATE DATABASE` over [`PgServer::url`]`("postgres")`).
    pub fn database_name(prefix: &str) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let clean: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!(
            "{clean}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        )
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Closing the pipe makes the supervisor stop the server and remove the directory.
        drop(self.stdin.lock().take());
        if let Some(mut child) = self.supervisor.lock().take() {
            let _ = child.wait();
        }
    }
}
