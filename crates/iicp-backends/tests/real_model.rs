//! A real model server: llama-cpp-python's OpenAI-compatible server with the
//! SmolLM2-135M chat model (both from PyPI, installed by `scripts/peers`), answering
//! through the `openai_compat` and `llamacpp` adapters, buffered and streamed.
//!
//! Needs `IICP_MODEL_PYTHON` and `IICP_MODEL_GGUF` (set by `scripts/test`); without them
//! the test fails under CI and skips elsewhere.

use std::time::{Duration, Instant};

use iicp_backends::{build, BackendConfig, BackendKind, CHAT_INTENT};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_answers_through_both_openai_dialect_adapters() {
    let Some((py, gguf)) = iicp_testkit::model::from_env() else {
        return;
    };
    let server = iicp_testkit::model::ModelServer::start(&py, &gguf, Some("smollm2"));
    let port = server.port();
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
        let result = out.result.to_value();
        let content = result["choices"][0]["message"]["content"]
            .as_str()
            .expect("content");
        assert!(!content.trim().is_empty(), "{kind}: empty answer");
        assert!(
            out.tokens_used.is_some_and(|t| t > 0),
            "{kind}: usage {:?}",
            result["usage"]
        );
        assert_eq!(result["object"], "chat.completion");
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
