//! A model server as an operator names it (`--backend-type`, `--backend-url`,
//! `--backend-api-key`, `--model`), and what a node needs from it: the served model
//! chosen, the models to advertise, and the adapter (SEED-SDK.md §2.3 steps 5, 10, 13).
//! One reading for every command, so `serve`, `dev` and `doctor` agree.

use std::fmt;
use std::sync::Arc;

use iicp_proto::secret::Secret;
use iicp_transport::http::HttpClient;

use crate::{
    build, detect_flavour, list_models, plan_models, resolve_endpoint, Backend, BackendConfig,
    BackendError, BackendKind, BuildError, EndpointError, Flavour, ModelChoiceError, ModelPlan,
};

/// A model server: its dialect, its base URL (`…/v1`) and its API key.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// The dialect.
    pub kind: BackendKind,
    /// The base URL, ending in the API version.
    pub base_url: String,
    /// The API key (bearer; `x-api-key` for Anthropic).
    pub api_key: Option<Secret>,
}

/// What [`ServerSpec::prepare`] found and built.
#[derive(Clone)]
pub struct Prepared {
    /// The model served, the models advertised, their aliases and the context window.
    pub plan: ModelPlan,
    /// The adapter, serving the planned model by default.
    pub backend: Arc<dyn Backend>,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("plan", &self.plan)
            .field("kind", &self.backend.kind())
            .finish()
    }
}

/// Why [`ServerSpec::prepare`] failed: both are the operator's to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// No model was named and none could be chosen.
    #[error(transparent)]
    Model(#[from] ModelChoiceError),
    /// The adapter could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
}

impl ServerSpec {
    /// Reads the type, URL and key as every command does ([`resolve_endpoint`]: an unset
    /// type is `openai_compat`, or `anthropic` for a URL at `api.anthropic.com`; an
    /// unset URL is the kind's default; `/v1` is added). An empty key is no key.
    ///
    /// # Errors
    /// An unknown type or a URL that is not `http(s)`.
    pub fn resolve(
        backend_type: Option<&str>,
        url: Option<&str>,
        api_key: Option<&str>,
    ) -> Result<Self, EndpointError> {
        let (kind, base_url) = resolve_endpoint(backend_type, url)?;
        Ok(Self {
            kind,
            base_url,
            api_key: api_key.filter(|k| !k.is_empty()).map(Secret::new),
        })
    }

    /// The models the server lists.
    ///
    /// # Errors
    /// The server is unreachable or refused.
    pub async fn models(&self, http: &HttpClient) -> Result<Vec<String>, BackendError> {
        list_models(http, &self.base_url, self.api_key.as_ref()).await
    }

    /// What kind of OpenAI-compatible server answers; `None` for the other dialects,
    /// which need no detection.
    pub async fn flavour(&self, http: &HttpClient) -> Option<Flavour> {
        if self.kind != BackendKind::OpenAiCompat {
            return None;
        }
        Some(detect_flavour(http, &self.base_url, self.api_key.as_ref()).await)
    }

    /// Chooses the served model (`model`, else the server's only one; [`plan_models`])
    /// and builds the adapter that serves it, with the public names of GGUF paths.
    ///
    /// # Errors
    /// [`SetupError::Model`] when no model is named and the server lists none, several,
    /// or cannot be asked; [`SetupError::Build`].
    pub async fn prepare(
        &self,
        http: &HttpClient,
        model: Option<&str>,
    ) -> Result<Prepared, SetupError> {
        let plan = plan_models(http, &self.base_url, self.api_key.as_ref(), model).await?;
        let mut config = BackendConfig::new(self.kind);
        config.base_url = Some(self.base_url.clone());
        config.model = Some(plan.model.clone());
        config.api_key.clone_from(&self.api_key);
        config.model_aliases.clone_from(&plan.aliases);
        let backend = build(config)?;
        Ok(Prepared { plan, backend })
    }
}

impl fmt::Display for ServerSpec {
    /// `<type> <base URL>` (never the key).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.base_url)
    }
}

impl fmt::Debug for ServerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerSpec")
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_read_type_url_and_key_once() {
        let s = ServerSpec::resolve(Some("anthropic"), None, Some("sk-ant-secret")).expect("ok");
        assert_eq!(
            (s.kind, s.base_url.as_str()),
            (BackendKind::Anthropic, "https://api.anthropic.com/v1")
        );
        assert_eq!(s.to_string(), "anthropic https://api.anthropic.com/v1");
        assert!(!format!("{s:?}").contains("sk-ant"));
        // the URL alone says anthropic; a pasted server root gets /v1
        let s = ServerSpec::resolve(None, Some("https://api.anthropic.com"), None).expect("ok");
        assert_eq!(s.kind, BackendKind::Anthropic);
        let s = ServerSpec::resolve(None, Some("http://h:11434/"), Some("")).expect("ok");
        assert_eq!(
            (s.kind, s.base_url.as_str(), s.api_key),
            (BackendKind::OpenAiCompat, "http://h:11434/v1", None)
        );
        assert!(ServerSpec::resolve(Some("bogus"), None, None).is_err());
        assert!(ServerSpec::resolve(None, Some("ftp://x"), None).is_err());
    }
}
