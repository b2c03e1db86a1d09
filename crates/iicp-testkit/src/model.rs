//! The real model server of the tests: llama-cpp-python's OpenAI-compatible server with
//! the SmolLM2-135M chat model, both installed by `scripts/peers` (which exports
//! `IICP_MODEL_PYTHON` and `IICP_MODEL_GGUF`; `scripts/test` does that).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the model may take to load.
const START_WITHIN: Duration = Duration::from_secs(120);

/// The interpreter and model file from the environment. Without them: `None` outside
/// CI (the caller skips), a panic under `CI` (a test that cannot run must fail there).
pub fn from_env() -> Option<(String, String)> {
    match (
        std::env::var("IICP_MODEL_PYTHON"),
        std::env::var("IICP_MODEL_GGUF"),
    ) {
        (Ok(py), Ok(gguf)) => Some((py, gguf)),
        _ if std::env::var_os("CI").is_some() => panic!(
            "IICP_MODEL_PYTHON / IICP_MODEL_GGUF not set: run the tests through scripts/test"
        ),
        _ => None,
    }
}

/// A running model server on `127.0.0.1`, killed on drop.
#[derive(Debug)]
pub struct ModelServer {
    child: Child,
    port: u16,
}

impl ModelServer {
    /// Starts `python -m llama_cpp.server` with `gguf` (listed as `alias` when given, else
    /// by its path) on a free loopback port, two threads, a 2048-token context, and
    /// waits until it accepts connections. Its long load log is not kept (a full pipe
    /// would stall it).
    ///
    /// # Panics
    /// When it cannot be started or does not listen within two minutes.
    pub fn start(python: &str, gguf: &str, alias: Option<&str>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut cmd = Command::new(python);
        cmd.args(["-m", "llama_cpp.server", "--model", gguf]);
        if let Some(a) = alias {
            cmd.args(["--model_alias", a]);
        }
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--n_ctx", "2048", "--n_threads", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("start llama_cpp.server");
        let server = Self { child, port };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < START_WITHIN,
                "the model server did not start"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` (the server answers under `/v1`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
