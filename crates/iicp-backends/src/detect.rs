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
    /// vLLM (a uvicorn server whose models are `owned_by: "vllm"`).
    Vllm,
    /// llama.cpp's server (`llama-server`).
    LlamaCpp,
    /// llama-cpp-python's server (uvicorn too, models `owned_by: "me"`).
    LlamaCppPython,
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
            Flavour::LlamaCppPython => "llama-cpp-python",
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

/// Probes `{base}/models` (its headers and body), then Ollama's `/api/version`.
///
/// | answer of `GET {base}/models` | flavour |
/// |---|---|
/// | `X-Powered-By: Express` | LM Studio |
/// | `Server: llama.cpp` / `llama-server`, or models with llama.cpp's `meta` | llama.cpp |
/// | models `owned_by: "vllm"` or with `max_model_len`, or `Server: vllm` | vLLM |
/// | `Server: uvicorn` and models `owned_by: "me"` with `permissions` | llama-cpp-python |
/// | `Server: uvicorn` otherwise | vLLM when `{root}/version` answers, else custom |
/// | anything else | Ollama when `{root}/api/version` answers, else custom |
pub async fn detect_flavour(client: &HttpClient, base_url: &str, key: Option<&Secret>) -> Flavour {
    let base = base_url.trim_end_matches('/');
    let t = Duration::from_millis(2500);
    let root = root_of(base);
    if let Ok(reply) = get(client, format!("{base}/models"), key, t).send().await {
        let header = |name: &str| {
            reply
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_ascii_lowercase()
        };
        let body: Value = reply.json().unwrap_or(Value::Null);
        match flavour_of(&header("server"), &header("x-powered-by"), &body) {
            Some(f) => return f,
            None if header("server").contains("uvicorn") => {
                // a uvicorn server that did not say more: vLLM has `/version`
                return match get(client, format!("{root}/version"), key, t).send().await {
                    Ok(r) if r.is_success() => Flavour::Vllm,
                    _ => Flavour::Custom,
                };
            }
            None => {}
        }
    }
    match get(client, format!("{root}/api/version"), key, t)
        .send()
        .await
    {
        Ok(r) if r.is_success() => Flavour::Ollama,
        _ => Flavour::Custom,
    }
}

/// The flavour that the `/models` answer alone tells (see [`detect_flavour`]).
pub fn flavour_of(server: &str, powered_by: &str, models: &Value) -> Option<Flavour> {
    let server = server.to_ascii_lowercase();
    if powered_by.to_ascii_lowercase().contains("express") {
        return Some(Flavour::LmStudio);
    }
    let items: &[Value] = models
        .get("data")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let owned_by = |who: &str| {
        items
            .iter()
            .any(|m| m.get("owned_by").and_then(Value::as_str) == Some(who))
    };
    if server.contains("llama.cpp")
        || server.contains("llama-server")
        || items.iter().any(|m| {
            m.get("meta")
                .is_some_and(|meta| meta.get("n_ctx_train").is_some())
        })
    {
        return Some(Flavour::LlamaCpp);
    }
    if server.contains("vllm")
        || owned_by("vllm")
        || items.iter().any(|m| m.get("max_model_len").is_some())
    {
        return Some(Flavour::Vllm);
    }
    if server.contains("uvicorn")
        && owned_by("me")
        && items.iter().all(|m| m.get("permissions").is_some())
    {
        return Some(Flavour::LlamaCppPython);
    }
    None
}

/// The context window of `model` as the server reports it: vLLM's `max_model_len`,
/// llama.cpp's `meta.n_ctx_train` in `/models`, or its `/props`
/// `default_generation_settings.n_ctx`; `None` when the server does not say
/// (Ollama, llama-cpp-python, most others).
pub async fn context_length(
    client: &HttpClient,
    base_url: &str,
    key: Option<&Secret>,
    model: &str,
) -> Option<u32> {
    let base = base_url.trim_end_matches('/');
    let t = Duration::from_secs(3);
    let as_u32 = |v: Option<&Value>| {
        v.and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
    };
    if let Ok(reply) = get(client, format!("{base}/models"), key, t).send().await {
        if let Ok(v) = reply.json::<Value>() {
            let items = v.get("data").and_then(Value::as_array);
            let entry = items.and_then(|items| {
                items
                    .iter()
                    .find(|m| m.get("id").and_then(Value::as_str) == Some(model))
                    .or_else(|| (items.len() == 1).then(|| &items[0]))
            });
            if let Some(e) = entry {
                let n = as_u32(e.get("max_model_len"))
                    .or_else(|| as_u32(e.pointer("/meta/n_ctx")))
                    .or_else(|| as_u32(e.pointer("/meta/n_ctx_train")))
                    .or_else(|| as_u32(e.get("context_length")));
                if n.is_some() {
                    return n;
                }
            }
        }
    }
    let reply = get(client, format!("{}/props", root_of(base)), key, t)
        .send()
        .await
        .ok()?;
    if !reply.is_success() {
        return None;
    }
    let v: Value = reply.json().ok()?;
    as_u32(v.pointer("/default_generation_settings/n_ctx"))
        .or_else(|| as_u32(v.pointer("/default_generation_settings/params/n_ctx")))
}

/// Which model a node serves and what it advertises ([`plan_models`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelPlan {
    /// The model tasks without one are run on, by its public name.
    pub model: String,
    /// Every model to advertise (public names), the served one first.
    pub models: Vec<String>,
    /// Public names and the server's ids, for [`crate::BackendConfig::model_aliases`].
    pub aliases: Vec<(String, String)>,
    /// The served model's context window, when the server reports it.
    pub context_length: Option<u32>,
}

/// Why no model could be chosen ([`plan_models`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelChoiceError {
    /// No model was named and the server lists none.
    #[error("--model is required: the backend lists no model")]
    NoneListed,
    /// No model was named and the server lists several.
    #[error("--model is required: the backend lists several ({})", .0.join(", "))]
    Several(Vec<String>),
    /// No model was named and the list could not be read.
    #[error("--model is required (the backend's model list is unavailable: {0})")]
    Unavailable(BackendError),
}

/// Chooses the served model (the `requested` one, else the server's only model),
/// gives every listed model its public name ([`crate::public_model_name`]: no GGUF path
/// is advertised) and reads the served model's context window.
pub async fn plan_models(
    client: &HttpClient,
    base_url: &str,
    key: Option<&Secret>,
    requested: Option<&str>,
) -> Result<ModelPlan, ModelChoiceError> {
    let listed = list_models(client, base_url, key).await;
    let upstream = match (requested, &listed) {
        (Some(m), Ok(all)) => {
            // the operator may name a listed model by its public name
            all.iter()
                .find(|id| id.as_str() == m || crate::public_model_name(id) == m)
                .cloned()
                .unwrap_or_else(|| m.to_owned())
        }
        (Some(m), Err(_)) => m.to_owned(),
        (None, Ok(all)) if all.len() == 1 => all[0].clone(),
        (None, Ok(all)) if all.is_empty() => return Err(ModelChoiceError::NoneListed),
        (None, Ok(all)) => {
            return Err(ModelChoiceError::Several(
                all.iter().map(|m| crate::public_model_name(m)).collect(),
            ))
        }
        (None, Err(e)) => return Err(ModelChoiceError::Unavailable(e.clone())),
    };
    let mut ids = vec![upstream.clone()];
    if let Ok(all) = &listed {
        ids.extend(all.iter().filter(|m| **m != upstream).cloned());
    }
    let mut aliases = Vec::new();
    let mut models = Vec::new();
    for id in &ids {
        let public = crate::public_model_name(id);
        if public != *id {
            aliases.push((public.clone(), id.clone()));
        }
        if !models.contains(&public) {
            models.push(public);
        }
    }
    let context_length = context_length(client, base_url, key, &upstream).await;
    Ok(ModelPlan {
        model: crate::public_model_name(&upstream),
        models,
        aliases,
        context_length,
    })
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
    use serde_json::json;

    #[test]
    fn flavours_from_recorded_answers() {
        // llama-cpp-python 0.3.36, recorded from the real server (scripts/peers)
        let lcp = json!({"object":"list","data":[{"id":"/root/.cache/x/SmolLM2-135M-Instruct.Q4_1.gguf","object":"model","owned_by":"me","permissions":[]}]});
        assert_eq!(
            flavour_of("uvicorn", "", &lcp),
            Some(Flavour::LlamaCppPython)
        );
        // vLLM (documented shape, tests/data/vllm-models.json)
        let vllm = json!({"object":"list","data":[{"id":"Qwen/Qwen2.5-0.5B-Instruct","object":"model","owned_by":"vllm","root":"Qwen/Qwen2.5-0.5B-Instruct","max_model_len":32768}]});
        assert_eq!(flavour_of("uvicorn", "", &vllm), Some(Flavour::Vllm));
        // llama.cpp's llama-server
        let server = json!({"object":"list","data":[{"id":"/models/q.gguf","object":"model","owned_by":"llamacpp","meta":{"n_ctx_train":32768,"n_params":494032768}}]});
        assert_eq!(flavour_of("", "", &server), Some(Flavour::LlamaCpp));
        assert_eq!(
            flavour_of("llama.cpp", "", &json!({})),
            Some(Flavour::LlamaCpp)
        );
        assert_eq!(
            flavour_of("", "Express", &json!({"data": []})),
            Some(Flavour::LmStudio)
        );
        // a bare uvicorn, or nothing said: the caller probes further
        assert_eq!(flavour_of("uvicorn", "", &json!({"data": []})), None);
        assert_eq!(flavour_of("", "", &json!({"data": [{"id": "m"}]})), None);
    }

    #[test]
    fn roots() {
        assert_eq!(root_of("http://h:11434/v1"), "http://h:11434");
        assert_eq!(root_of("http://h:11434/v1/"), "http://h:11434");
        assert_eq!(root_of("http://h:1"), "http://h:1");
    }
}
