//! `iicp proxy` driven by the official client libraries against a real local mesh
//! (issue 20): `iicp dev` (embedded directory, echo-model nodes) and `iicp proxy` run as
//! the real binaries; `tests/proxy/openai_client.py` (the `openai` package) and
//! `tests/proxy/anthropic_client.py` (`anthropic`) and `tests/proxy/ollama_client.py`
//! (`ollama`, through `OLLAMA_HOST`) send plain and streamed chats, list
//! models, ask for an unknown model, pass an image, use a wrong key; the error cases run
//! against an empty directory (no nodes) and a mesh whose model server is slower than
//! the proxy's deadline (timeout). Streaming is real: against a paced model server (20
//! tokens 50 ms apart, `iicp_testkit::stub::StubModel::paced`, behind `iicp dev`'s node)
//! each library sees the chunks arrive as they are generated; a reader that hangs up
//! stops the model server; a full proxy answers 429; an oversized body 413.
//!
//! Needs `IICP_CLIENTS_PYTHON` (`eval "$(scripts/peers env)"`): fails under CI without
//! it, skips elsewhere.
#![allow(clippy::print_stderr)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{directory, iicp, Proc};
use serde_json::{json, Value};

const PYTHON_VAR: &str = "IICP_CLIENTS_PYTHON";
const KEY: &str = "sk-proxy-test-key";

fn python() -> Option<PathBuf> {
    common::python_from(PYTHON_VAR)
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/proxy")
        .join(name)
}

/// Runs a client script case; returns its one JSON line.
fn client(python: &Path, name: &str, case: &str, base: &str, key: &str, model: &str) -> Value {
    let o = Command::new(python)
        .arg(script(name))
        .args([case, base, key, model])
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .expect("python");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{name} {case}: exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{case}: {e}: {stdout}"))
}

/// `iicp dev` with `nodes` echo nodes (or a model server); returns it, the directory
/// URL it printed and the URL of the proxy it started.
fn dev_mesh(nodes: u16, backend: Option<&str>) -> (Proc, String, String) {
    let mut cmd = iicp();
    cmd.args(["dev", "--proxy-port", "0", "--nodes", &nodes.to_string()]);
    if let Some(url) = backend {
        cmd.args(["--backend-url", url]);
    }
    let mut p = Proc::spawn(cmd);
    let out = p.read_until("serving until Ctrl-C");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {name} line in {out}"))
            .to_owned()
    };
    let (dir, proxy) = (field("directory"), field("proxy"));
    assert!(out.contains("try         curl -s "), "{out}");
    (p, dir, proxy)
}

/// `iicp proxy` on a free port for `dir`; returns it and its base URL.
fn proxy(dir: &str, extra: &[&str]) -> (Proc, String) {
    let mut cmd = iicp();
    cmd.args([
        "proxy",
        "--port",
        "0",
        "--directory-url",
        dir,
        "--allow-private-endpoints",
    ])
    .args(extra)
    .env_remove("IICP_PROXY_API_KEY")
    .env_remove("IICP_PROXY_PORT")
    .env_remove("IICP_PROXY_HOST");
    let mut p = Proc::spawn(cmd);
    let out = p.read_until("listening on");
    let url = out
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .expect("url")
        .to_owned();
    (p, url)
}

#[test]
fn client_libraries_against_a_real_mesh() {
    let Some(py) = python() else { return };
    let (_mesh, dir, dev_proxy) = dev_mesh(2, None);
    // `iicp dev` runs a proxy of its own (no key)
    let v = client(
        &py,
        "openai_client.py",
        "chat",
        &dev_proxy,
        "unused",
        "iicp",
    );
    assert_eq!(v["text"], "echo: hello proxy", "{v}");

    let (mut px, base) = proxy(&dir, &["--api-key", KEY]);
    let run = |case: &str, key: &str, model: &str| {
        client(&py, "openai_client.py", case, &base, key, model)
    };

    // plain chat: the echo node answered the prompt, with the proxy's headers
    let v = run("chat", KEY, "iicp");
    assert_eq!(v["text"], "echo: hello proxy", "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["finish"], "stop");
    assert_eq!(v["model"], "echo");
    assert!(v["total_tokens"].as_u64().is_some_and(|t| t > 0), "{v}");
    let h = &v["headers"];
    assert_eq!(h["server"], "iicp-proxy");
    assert_eq!(h["x-iicp-generated-by-ai"], "true");
    assert!(
        h["x-iicp-node-id"].as_str().is_some_and(|n| !n.is_empty()),
        "{h}"
    );
    assert_eq!(h["x-iicp-trace-id"].as_str().map(str::len), Some(32), "{h}");

    // the model by name
    let v = run("chat", KEY, "echo");
    assert_eq!(v["text"], "echo: hello proxy", "{v}");

    // streamed, with usage: role first, the text word by word, one finish, usage last
    let v = run("stream", KEY, "iicp");
    assert_eq!(v["text"], "echo: hello proxy", "{v}");
    // role, three words, finish, usage
    assert!(v["chunks"].as_u64().is_some_and(|n| n >= 6), "{v}");
    assert_eq!(v["roles"], serde_json::json!(["assistant"]));
    assert_eq!(v["finish"], serde_json::json!(["stop"]));
    assert_eq!(v["usage"].as_array().map(Vec::len), Some(1), "{v}");
    let v = run("stream_plain", KEY, "iicp");
    assert_eq!(v["text"], "echo: hello proxy", "{v}");
    assert_eq!(v["usage"], serde_json::json!([]), "{v}");

    // an image part travels to the node (the echo model answers its text part)
    let v = run("image", KEY, "iicp");
    assert_eq!(v["text"], "echo: describe", "{v}");

    // the mesh's models, not a fake one
    let v = run("models", KEY, "iicp");
    assert_eq!(v["ids"], serde_json::json!(["echo"]), "{v}");
    assert_eq!(v["retrieved"], "echo");
    assert_eq!(v["owned_by"], "iicp-mesh");
    // an unknown model on /v1/models/{id}
    let v = run("retrieve", KEY, "no-such-model");
    assert_eq!(
        (v["error"].as_str(), v["status"].as_u64()),
        (Some("NotFoundError"), Some(404)),
        "{v}"
    );
    assert_eq!(v["code"], "model_not_found");

    // unknown model: 404 in OpenAI's shape
    let v = run("chat", KEY, "no-such-model");
    assert_eq!(v["error"], "NotFoundError", "{v}");
    assert_eq!(v["status"], 404);
    assert_eq!(v["code"], "model_not_found");
    assert_eq!(v["server"], "iicp-proxy");

    // wrong key: 401, and the key is not echoed
    let v = run("chat", "sk-wrong", "iicp");
    assert_eq!(v["error"], "AuthenticationError", "{v}");
    assert_eq!(v["status"], 401);
    assert_eq!(v["code"], "unauthorized");
    assert!(!v.to_string().contains("sk-wrong"));

    // the anthropic package: a message, the streamed event sequence, an image block,
    // the model list, an unknown model, a wrong key
    let run = |case: &str, key: &str, model: &str| {
        client(&py, "anthropic_client.py", case, &base, key, model)
    };
    let v = run("message", KEY, "iicp");
    assert_eq!(v["text"], "echo: hello proxy", "{v}");
    assert_eq!(
        (v["type"].as_str(), v["role"].as_str()),
        (Some("message"), Some("assistant"))
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["model"], "echo");
    assert!(v["output_tokens"].as_u64().is_some_and(|t| t > 0), "{v}");
    assert_eq!(v["headers"]["server"], "iicp-proxy");
    assert_eq!(v["headers"]["x-iicp-generated-by-ai"], "true");
    let v = run("stream", KEY, "echo");
    assert_eq!(v["text"], "echo: hello proxy", "{v}");
    assert_eq!(v["stop_reason"], "end_turn");
    let events: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(events.first(), Some(&"message_start"), "{events:?}");
    assert_eq!(events.last(), Some(&"message_stop"), "{events:?}");
    let deltas = events
        .iter()
        .filter(|e| **e == "content_block_delta")
        .count();
    assert!(deltas >= 3, "one text_delta per word: {events:?}");
    for needed in [
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
    ] {
        assert!(events.contains(&needed), "{needed} missing: {events:?}");
    }
    let v = run("image", KEY, "iicp");
    assert_eq!(v["text"], "echo: describe", "{v}");
    let v = run("models", KEY, "iicp");
    assert_eq!(v["ids"], serde_json::json!(["echo"]), "{v}");
    let v = run("message", KEY, "no-such-model");
    assert_eq!(
        (v["error"].as_str(), v["status"].as_u64()),
        (Some("NotFoundError"), Some(404)),
        "{v}"
    );
    assert_eq!(v["type"], "not_found_error");
    assert_eq!(v["code"], "model_not_found");
    let v = run("message", "sk-wrong", "iicp");
    assert_eq!(
        (v["error"].as_str(), v["status"].as_u64()),
        (Some("AuthenticationError"), Some(401)),
        "{v}"
    );
    assert_eq!(v["type"], "authentication_error");

    // the ollama package (host from OLLAMA_HOST, as users set it): chat, NDJSON
    // streaming by default, generate, an image, tags/show/version, an unknown model
    let ollama = |case: &str, key: &str, model: &str| {
        let o = Command::new(&py)
            .arg(script("ollama_client.py"))
            .args([case, "env", key, model])
            .env("OLLAMA_HOST", &base)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .output()
            .expect("python");
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "ollama {case}: {stdout}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_str::<Value>(stdout.trim())
            .unwrap_or_else(|e| panic!("{case}: {e}: {stdout}"))
    };
    let v = ollama("chat", KEY, "echo");
    assert_eq!(v["text"], "echo: hello proxy", "{v}");
    assert_eq!(
        (v["role"].as_str(), v["done"].as_bool()),
        (Some("assistant"), Some(true))
    );
    assert_eq!(v["done_reason"], "stop");
    let v = ollama("stream", KEY, "iicp");
    assert_eq!(v["text"], "echo: hello proxy", "{v}");
    // a line per word, then the final one
    assert_eq!(
        v["done"],
        serde_json::json!([false, false, false, true]),
        "{v}"
    );
    let v = ollama("generate", KEY, "echo");
    assert_eq!(v["text"], "echo: hello generate", "{v}");
    assert_eq!(v["streamed"], "echo: hello generate", "{v}");
    let v = ollama("image", KEY, "iicp");
    assert_eq!(v["text"], "echo: describe", "{v}");
    let v = ollama("models", KEY, "iicp");
    assert_eq!(v["names"], serde_json::json!(["echo"]), "{v}");
    assert_eq!(v["show_details"], true);
    assert!(v["version"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    let v = ollama("show", KEY, "no-such-model");
    assert_eq!(
        (v["error"].as_str(), v["status"].as_u64()),
        (Some("ResponseError"), Some(404)),
        "{v}"
    );
    let v = ollama("chat", KEY, "no-such-model");
    assert_eq!(
        (v["error"].as_str(), v["status"].as_u64()),
        (Some("ResponseError"), Some(404)),
        "{v}"
    );
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("model_not_found")),
        "{v}"
    );
    let v = ollama("chat", "sk-wrong", "iicp");
    assert_eq!(v["status"], 401, "{v}");

    px.signal("-TERM");
    let (code, _, stderr) = px.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !stderr.contains(KEY),
        "the API key leaked into the log: {stderr}"
    );

    // a body over the proxy's cap: 413 in each library
    let (_px3, small) = proxy(&dir, &["--max-body-bytes", "2048"]);
    let v = client(&py, "openai_client.py", "too_large", &small, "k", "iicp");
    assert_eq!(v["status"], 413, "{v}");
    assert_eq!(v["code"], "payload_too_large", "{v}");
    let v = client(&py, "anthropic_client.py", "too_large", &small, "k", "iicp");
    assert_eq!(v["status"], 413, "{v}");
    assert_eq!(v["type"], "request_too_large", "{v}");

    // a routing profile no node of this mesh satisfies (its nodes are in region
    // `local`): 403 in each library, with the rule and the count, and no node asked
    let (_px4, eu) = proxy(&dir, &["--routing-profile", "eu_restricted"]);
    let v = client(&py, "openai_client.py", "chat", &eu, "k", "iicp");
    assert_eq!(
        (v["error"].as_str(), v["status"].as_u64()),
        (Some("PermissionDeniedError"), Some(403)),
        "{v}"
    );
    assert_eq!(v["code"], "IICP-POLICY-ROUTING", "{v}");
    assert_eq!(v["type"], "permission_error", "{v}");
    let v = client(&py, "anthropic_client.py", "message", &eu, "k", "iicp");
    assert_eq!(
        (v["error"].as_str(), v["status"].as_u64()),
        (Some("PermissionDeniedError"), Some(403)),
        "{v}"
    );
    assert_eq!(v["type"], "permission_error", "{v}");
    let v = client(&py, "ollama_client.py", "chat", &eu, "k", "iicp");
    assert_eq!(v["status"], 403, "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("region_not_allowed: 2")),
        "{v}"
    );
}

/// Waits up to 10 s for `what`.
fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "timed out waiting: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Arrival times (s) of a `timed` case's content chunks, checked: the text is the
/// model's 20 tokens, and they came as generated — the last well after the first (the
/// stub spaces them 50 ms apart, 950 ms first to last), not all at once at the end.
fn assert_streamed(case: &str, v: &Value) {
    let want: String = (0..20).map(|i| format!("t{i} ")).collect();
    assert_eq!(v["text"], want.as_str(), "{case}: {v}");
    let at: Vec<f64> = v["at"]
        .as_array()
        .expect("times")
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    assert!(at.len() >= 10, "{case}: chunks {at:?}");
    let (first, last) = (at[0], at[at.len() - 1]);
    assert!(
        last - first >= 0.5,
        "{case}: the first chunk came only {:.3} s before the last (buffered?): {at:?}",
        last - first
    );
}

#[test]
fn streams_arrive_as_the_model_generates() {
    let Some(py) = python() else { return };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let stub = iicp_testkit::stub::StubModel::paced("paced", 20, Duration::from_millis(50));
    let stub_srv = rt
        .block_on(iicp_testkit::server::serve(stub.router()))
        .expect("stub");
    let (_mesh, dir, base) = dev_mesh(1, Some(&stub_srv.url()));

    // each library sees the tokens as the model server generates them
    let v = client(&py, "openai_client.py", "timed", &base, "k", "paced");
    assert_streamed("openai", &v);
    let v = client(&py, "anthropic_client.py", "timed", &base, "k", "paced");
    assert_streamed("anthropic", &v);
    let o = Command::new(&py)
        .arg(script("ollama_client.py"))
        .args(["timed", &base, "k", "paced"])
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .expect("python");
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    assert_streamed("ollama", &v);

    // a reader that hangs up after three chunks: the node cancels, the model server
    // sees its reader go and stops generating
    let (disconnects, chunks) = (stub.disconnects(), stub.streamed_chunks());
    let v = client(&py, "openai_client.py", "cancel", &base, "k", "paced");
    assert_eq!(v["read"], 3, "{v}");
    wait_for("the model server saw the hang-up", || {
        stub.disconnects() > disconnects
    });
    let generated = stub.streamed_chunks() - chunks;
    assert!(generated < 20, "generation went on: {generated} chunks");

    // the proxy's only slot held by a stream: a second chat gets 429 and Retry-After
    let proxy = iicp_proxy::Proxy::builder()
        .directory_url(dir.as_str())
        .allow_private_endpoints(true)
        .max_concurrent(1)
        .build()
        .expect("proxy");
    let listener = rt
        .block_on(iicp_transport::listener::Listener::bind(
            "127.0.0.1:0".parse().expect("addr"),
            iicp_transport::listener::ListenerConfig::default(),
        ))
        .expect("bind");
    let one = format!("http://{}", listener.local_addr().expect("addr"));
    let (trigger, stop) = iicp_transport::shutdown::channel();
    rt.spawn(async move { proxy.serve(listener, stop).await });
    let v = client(&py, "openai_client.py", "busy", &one, "k", "paced");
    assert_eq!(
        (v["error"].as_str(), v["status"].as_u64()),
        (Some("RateLimitError"), Some(429)),
        "{v}"
    );
    assert_eq!(v["code"], "capacity_exceeded");
    assert!(v["retry_after"].as_str().is_some(), "{v}");
    trigger.fire();
}

#[test]
fn client_libraries_see_mesh_errors() {
    let Some(py) = python() else { return };

    // no nodes: 502 carrying IICP-E033
    let (_dir, empty) = directory();
    let (_px, base) = proxy(&empty, &[]);
    let v = client(&py, "openai_client.py", "chat", &base, "any", "iicp");
    assert_eq!(v["error"], "InternalServerError", "{v}");
    assert_eq!(v["status"], 502);
    assert_eq!(v["code"], "IICP-E033");
    assert_eq!(v["type"], "api_error");
    let v = client(&py, "anthropic_client.py", "message", &base, "any", "iicp");
    assert_eq!(
        (v["error"].as_str(), v["status"].as_u64()),
        (Some("InternalServerError"), Some(502)),
        "{v}"
    );
    assert_eq!(v["code"], "IICP-E033");
    let o = Command::new(&py)
        .arg(script("ollama_client.py"))
        .args(["chat", &base, "any", "iicp"])
        .output()
        .expect("python");
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["status"], 502, "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("IICP-E033: ")),
        "{v}"
    );

    // a model server slower than the proxy's deadline: 504
    let mut stub_cmd = iicp();
    stub_cmd.args(["stub-model", "--port", "0", "--delay-ms", "5000"]);
    let mut stub = Proc::spawn(stub_cmd);
    let line = stub.read_until("stub model server on");
    let stub_url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("stub url")
        .to_owned();
    // `iicp dev` sends its own first chats (5 s each) before it serves
    let (_mesh, dir, _) = dev_mesh(1, Some(&stub_url));
    let (_px2, base) = proxy(&dir, &["--timeout-ms", "1500"]);
    let v = client(&py, "openai_client.py", "chat", &base, "any", "iicp");
    assert_eq!(v["status"], 504, "{v}");
    assert_eq!(v["code"], "task_timeout");
    assert_eq!(v["type"], "timeout_error");
}

/// A tool call round trip in each library: the model server (the stub) calls the
/// caller's tool, the node and the proxy carry the call back in each surface's shape
/// (OpenAI `tool_calls`, also streamed as deltas; Anthropic `tool_use` blocks; Ollama
/// `tool_calls` with object arguments), the caller answers with the tool's result, and
/// the model's reply to it comes back.
#[test]
fn tool_calls_round_trip_in_each_library() {
    let Some(py) = python() else { return };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let stub = iicp_testkit::stub::StubModel::new("tooly", Duration::ZERO);
    let stub_srv = rt
        .block_on(iicp_testkit::server::serve(stub.router()))
        .expect("stub");
    let (_mesh, _dir, base) = dev_mesh(1, Some(&stub_srv.url()));
    let query = json!({"query": "weather in Berlin"});

    for case in ["tools", "tools_stream"] {
        let v = client(&py, "openai_client.py", case, &base, "k", "tooly");
        assert_eq!(v["finish"], "tool_calls", "{case}: {v}");
        assert_eq!(v["calls"][0]["id"], "call_stub_0", "{case}: {v}");
        assert_eq!(v["calls"][0]["name"], "lookup", "{case}: {v}");
        let args: Value = serde_json::from_str(v["calls"][0]["arguments"].as_str().unwrap_or(""))
            .expect("arguments are JSON");
        assert_eq!(args, query, "{case}: {v}");
        assert_eq!(v["text"], "tool said: sunny, 21 C", "{case}: {v}");
    }
    let v = client(&py, "anthropic_client.py", "tools", &base, "k", "tooly");
    assert_eq!(v["stop_reason"], "tool_use", "{v}");
    assert_eq!(v["uses"][0]["name"], "lookup", "{v}");
    assert_eq!(v["uses"][0]["input"], query, "{v}");
    assert_eq!(v["text"], "tool said: sunny, 21 C", "{v}");
    let o = Command::new(&py)
        .arg(script("ollama_client.py"))
        .args(["tools", &base, "k", "tooly"])
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .expect("ollama client");
    let v: Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", common::text(&o)));
    assert_eq!(v["calls"][0]["name"], "lookup", "{v}");
    assert_eq!(v["calls"][0]["arguments"], query, "{v}");
    assert_eq!(v["text"], "tool said: sunny, 21 C", "{v}");
}

#[test]
fn proxy_refuses_a_remote_bind_without_a_key() {
    let o = iicp()
        .args(["proxy", "--host", "0.0.0.0", "--port", "0"])
        .env_remove("IICP_PROXY_API_KEY")
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2), "{}", common::text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--api-key"));
    // the alias binary runs the same command
    let o = Command::new(env!("CARGO_BIN_EXE_iicp-node"))
        .args(["proxy", "--help"])
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", common::text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("--allow-remote"));
}

/// The real SmolLM2 model (llama-cpp-python's server) behind the mesh, asked through
/// the proxy by each client library (needs IICP_MODEL_PYTHON / IICP_MODEL_GGUF too).
#[test]
fn client_libraries_with_a_real_model() {
    let Some(py) = python() else { return };
    let Some((model_py, gguf)) = iicp_testkit::model::from_env() else {
        eprintln!("skipping: IICP_MODEL_PYTHON / IICP_MODEL_GGUF not set");
        return;
    };
    let server = iicp_testkit::model::ModelServer::start(&model_py, &gguf, None);
    let port = server.port();
    let (_mesh, _dir, base) = dev_mesh(1, Some(&format!("http://127.0.0.1:{port}")));
    let stem = Path::new(&gguf)
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("stem")
        .to_owned();

    let v = client(&py, "openai_client.py", "models", &base, "k", "iicp");
    assert_eq!(v["ids"], serde_json::json!([stem]), "{v}");
    for (script, case) in [
        ("openai_client.py", "chat"),
        ("openai_client.py", "stream"),
        ("anthropic_client.py", "message"),
        ("ollama_client.py", "chat"),
    ] {
        let v = client(&py, script, case, &base, "k", &stem);
        let text = v["text"].as_str().unwrap_or_default();
        assert!(!text.trim().is_empty(), "{script} {case}: {v}");
        assert!(v.get("error").is_none(), "{script} {case}: {v}");
    }
}

/// A Python SDK node (iicp-client 0.7.109, `conformance/peers/py_peer.py`, in front of
/// its OpenAI stub) is the only node of the mesh: the proxy is a consumer like any
/// other, so the openai client gets the Python node's answer (needs IICP_PEER_PYTHON).
#[test]
fn a_python_sdk_node_behind_the_proxy() {
    let Some(py) = python() else { return };
    let peer = match std::env::var_os("IICP_PEER_PYTHON").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None if std::env::var_os("CI").is_some() => {
            panic!("IICP_PEER_PYTHON is not set: run the tests through scripts/test")
        }
        None => {
            eprintln!("skipping: IICP_PEER_PYTHON not set");
            return;
        }
    };
    let scratch = common::temp_home("proxy-py-node");
    let py_peer =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../conformance/peers/py_peer.py");
    let peer_cmd = || {
        let mut c = Command::new(&peer);
        c.arg(&py_peer)
            .env("HOME", &scratch)
            .env("IICP_AUTO_UPDATE", "0")
            .env("IICP_AUTO_DETECT_NAT", "0")
            .env("IICP_TUNNEL", "0")
            .env("NO_COLOR", "1");
        c
    };
    let (_dir_proc, dir) = directory();
    let mut stub = Proc::spawn({
        let mut c = peer_cmd();
        c.args(["stub-openai", "0"]);
        c
    });
    let line = stub.read_until("listening");
    let stub_port = line
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .find_map(|v| v["port"].as_u64())
        .expect("stub port");
    let port = common::free_port().to_string();
    let endpoint = format!("http://127.0.0.1:{port}");
    let _node = Proc::spawn({
        let mut c = peer_cmd();
        c.args(["node", "serve", "--host", "127.0.0.1", "--port", &port])
            .args(["--public-endpoint", &endpoint, "--directory-url", &dir])
            .args(["--backend-url", &format!("http://127.0.0.1:{stub_port}")])
            .args(["--model", "stub-model", "--region", "local"])
            .args(["--no-auto-detect-nat", "--no-tunnel"]);
        c
    });
    let start = std::time::Instant::now();
    while !common::discover(&dir, None)
        .iter()
        .any(|n| n["endpoint"] == endpoint.as_str())
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "the Python node did not register"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (_px, base) = proxy(&dir, &[]);
    let v = client(&py, "openai_client.py", "chat", &base, "k", "stub-model");
    assert_eq!(v["text"], "STUB: hello proxy", "{v}");
    assert_eq!(v["model"], "stub-model", "{v}");
    let v = client(&py, "openai_client.py", "stream", &base, "k", "iicp");
    assert_eq!(v["text"], "STUB: hello proxy", "{v}");
    let v = client(&py, "openai_client.py", "models", &base, "k", "iicp");
    assert_eq!(v["ids"], serde_json::json!(["stub-model"]), "{v}");
    let _ = std::fs::remove_dir_all(&scratch);
}
