//! A real model server: llama-cpp-python's OpenAI-compatible server with the
//! SmolLM2-135M chat model (both from PyPI, installed by `scripts/peers`), answering
//! through the `openai_compat` and `llamacpp` adapters, buffered and streamed.
//!
//! Needs `IICP_MODEL_PYTHON` and `IICP_MODEL_GGUF` (set by `scripts/test`); without them
//! the test fails under CI and skips elsewhere.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use iicp_backends::{build, BackendConfig, BackendKind, CHAT_INTENT};
use serde_json::json;

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn model_env() -> Option<(String, String)> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_answers_through_both_openai_dialect_adapters() {
    let Some((py, gguf)) = model_env() else {
        return;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let _server = Guard(
        Command::new(py)
            .args([
                "-m",
                "llama_cpp.server",
                "--model",
                &gguf,
                "--model_alias",
                "smollm2",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--n_ctx",
                "2048",
                "--n_threads",
                "2",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start llama_cpp.server"),
    );
    let base = format!("http://127.0.0.1:{port}/v1");
    let mut cfg = BackendConfig::new(BackendKind::OpenAiCompat);
    cfg.base_url = Some(base.clone());
    cfg.model = Some("smollm2".into());
    let backend = build(cfg.clone()).expect("build");
    // wait until the model is loaded and the server lists it
    let start = Instant::now();
    loop {
        if let Ok(models) = backend.models().await {
            assert!(models.iter().any(|m| m == "smollm2"), "{models:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "model server did not come up"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let payload = json!({"messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Say hello."}], "max_tokens": 16, "temperature": 0.0});
    for kind in [BackendKind::OpenAiCompat, BackendKind::LlamaCpp] {
        let backend = build(BackendConfig {
            kind,
            ..cfg.clone()
        })
        .expect("build");
        let out = backend
            .execute(
                CHAT_INTENT,
                &payload,
                Some(tokio::time::Instant::now() + Duration::from_secs(120)),
            )
            .await
            .expect("real completion");
        let content = out.result["choices"][0]["message"]["content"]
            .as_str()
            .expect("content");
        assert!(!content.trim().is_empty(), "{kind}: empty answer");
        assert!(
            out.tokens_used.is_some_and(|t| t > 0),
            "{kind}: usage {:?}",
            out.result["usage"]
        );
        assert_eq!(out.result["object"], "chat.completion");
    }
    let text = backend
        .chat_stream(
            &payload,
            Some(tokio::time::Instant::now() + Duration::from_secs(120)),
        )
        .await
        .expect("stream")
        .collect_text()
        .await
        .expect("text");
    assert!(!text.trim().is_empty(), "streamed answer is empty");
}
