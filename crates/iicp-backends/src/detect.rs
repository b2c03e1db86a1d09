//! Finding out what answers at a backend URL: the model list and the server flavour
//! (SEED-SDK.md §2.3 steps 5 and 10).

use std::time::Duration;

use iicp_proto::secret::Secret;
use iicp_transport::http::HttpClient;
use serde_json::Value;

use crate::{status_error, transport_error, BackendError};

/// What kind of OpenAI-compatible server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Flavour {
    /// Ollama (answers `/api/version`).
    Ollama,
    /// LM Studio (an Express server).
    LmStudio,
    /// vLLM (a uvicorn server).
    Vllm,
    /// llama.cpp's server.
    LlamaCpp,
    /// Something else that speaks the dialect.
    Custom,
}

impl Flavour {
    /// The label the CLI prints (`backend detected: <label>`).
    pub fn as_str(self) -> &'static str {
        match self {
            Flavour::Ollama => "ollama",
            Flavour::LmStudio => "lmstudio",
            Flavour::Vllm => "vllm",
            Flavour::LlamaCpp => "llamacpp",
            Flavour::Custom => "custom",
        }
    }
}

/// The server root: the base URL without a trailing `/v1`.
pub(crate) fn root_of(base: &str) -> &str {
    let b = base.trim_end_matches('/');
    b.strip_suffix("/v1").unwrap_or(b)
}

fn get(
    client: &HttpClient,
    url: String,
    key: Option<&Secret>,
    timeout: Duration,
) -> iicp_transport::http::client::RequestBuilder {
    let mut req = client.get(url).timeout(timeout);
    if let Some(k) = key {
        req = req.bearer(k.clone());
    }
    req
}

/// Probes `{base}/models` headers, then Ollama's `/api/version`.
pub async fn detect_flavour(client: &HttpClient, base_url: &str, key: Option<&Secret>) -> Flavour {
    let base = base_url.trim_end_matches('/');
    let t = Duration::from_millis(2500);
    if let Ok(reply) = get(client, format!("{base}/models"), key, t).send().await {
        let header = |name: &str| {
            reply
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_ascii_lowercase()
        };
        let (powered, server) = (header("x-powered-by"), header("server"));
        if powered.contains("express") {
            return Flavour::LmStudio;
        }
        if server.contains("vllm") || server.contains("uvicorn") {
            return Flavour::Vllm;
        }
        if server.contains("llama.cpp") || server.contains("llama-server") {
            return Flavour::LlamaCpp;
        }
    }
    match get(client, format!("{}/api/version", root_of(base)), key, t)
        .send()
        .await
    {
        Ok(r) if r.is_success() => Flavour::Ollama,
        _ => Flavour::Custom,
    }
}

/// The models a server offers: Ollama's `/api/tags` names, else `/v1/models` ids.
pub async fn list_models(
    client: &HttpClient,
    base_url: &str,
    key: Option<&Secret>,
) -> Result<Vec<String>, BackendError> {
    let base = base_url.trim_end_matches('/');
    let t = Duration::from_secs(3);
    if let Ok(reply) = get(client, format!("{}/api/tags", root_of(base)), key, t)
        .send()
        .await
    {
        if reply.is_success() {
            if let Ok(v) = reply.json::<Value>() {
                let names = names(&v, "models", &["name", "model"]);
                if !names.is_empty() {
                    return Ok(names);
                }
            }
        }
    }
    let reply = get(client, format!("{base}/models"), key, t)
        .send()
        .await
        .map_err(|e| transport_error(&e))?;
    if !reply.is_success() {
        return Err(status_error(reply.status.as_u16(), &reply.body));
    }
    let v: Value = reply
        .json()
        .map_err(|_| BackendError::unavailable("model list is not JSON"))?;
    Ok(names(&v, "data", &["id", "name"]))
}

fn names(v: &Value, list: &str, keys: &[&str]) -> Vec<String> {
    v.get(list)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|m| {
                    keys.iter()
                        .find_map(|k| m.get(*k).and_then(Value::as_str))
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots() {
        assert_eq!(root_of("http://h:11434/v1"), "http://h:11434");
        assert_eq!(root_of("http://h:11434/v1/"), "http://h:11434");
        assert_eq!(root_of("http://h:1"), "http://h:1");
    }
}
