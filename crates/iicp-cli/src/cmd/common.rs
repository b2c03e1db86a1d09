//! What several commands share: the configuration root, the mapping of library errors
//! to exit codes, the probe HTTP client, the protocol constants, and the backend as the
//! `--backend-*` flags name it.

use std::time::Duration;

use anyhow::Context as _;
use iicp_backends::{ModelPlan, ServerSpec};
use iicp_node::handler::BoxFuture;
use iicp_node::operator::{Home, OperatorError};
use iicp_node::{
    BackendHandler, ConfigError, EchoModel, HandlerError, Task, TaskHandler, TaskOutput,
};
use iicp_transport::http::client::{HttpClient, HttpClientConfig};

use super::UsageError;

/// The chat intent.
pub(crate) use iicp_proto::constants::CHAT_INTENT as CHAT;
/// The public mesh directory.
pub(crate) use iicp_proto::constants::DEFAULT_DIRECTORY_URL as DEFAULT_DIRECTORY;

/// An HTTP client for short probes (model lists, directory health).
/// Checks that the value of `flag` is an absolute `http(s)://` URL with a host and
/// nothing else (the workspace's endpoint model, `iicp_proto::endpoint::parse_url`);
/// a usage error naming the flag otherwise.
pub(crate) fn http_url(flag: &str, url: &str) -> Result<(), UsageError> {
    iicp_proto::endpoint::parse_url(url, iicp_proto::endpoint::HTTP_SCHEMES)
        .map(|_| ())
        .map_err(|e| UsageError(format!("{flag} must be an http(s) URL ({e}), got {url:?}")))
}

pub(crate) fn probe_client() -> anyhow::Result<HttpClient> {
    let mut cfg = HttpClientConfig::default();
    cfg.request_timeout = Duration::from_secs(5);
    HttpClient::new(cfg).context("creating the HTTP client")
}

/// Seconds since the Unix epoch (0 before it).
pub(crate) fn now_unix() -> u64 {
    iicp_transport::clock::Clock::now_secs(&iicp_transport::clock::SystemClock)
}

/// The configuration root, as a usage error when it cannot be found.
pub(crate) fn home() -> anyhow::Result<Home> {
    Home::from_env().map_err(|e| UsageError(e.to_string()).into())
}

/// File problems the user must fix (permissions, bad JSON, bad names) are usage errors.
pub(crate) fn operator_error(e: OperatorError) -> anyhow::Error {
    match e {
        OperatorError::Read { .. }
        | OperatorError::Write { .. }
        | OperatorError::Directory { .. }
        | OperatorError::AtRest(_) => anyhow::Error::new(e),
        other => UsageError(other.to_string()).into(),
    }
}

/// A configuration the node builder refuses is a usage error, with the library's
/// reason and its cause (`invalid node configuration: invalid intent: …`).
pub(crate) fn config_error(e: ConfigError) -> anyhow::Error {
    let mut text = format!("invalid node configuration: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    UsageError(text).into()
}

/// What answers the tasks.
pub(crate) enum Backend {
    /// The built-in deterministic echo model (testing and demos).
    Echo,
    /// A model server.
    Server(ServerSpec),
}

impl Backend {
    /// Parses `--backend-type` / `--backend-url` / `--backend-api-key` (usage errors)
    /// the one way every command does ([`ServerSpec::resolve`]). The hidden type `echo`
    /// is the built-in echo model, for tests and demos.
    pub(crate) fn from_flags(
        backend_type: Option<&str>,
        backend_url: Option<&str>,
        api_key: Option<&str>,
    ) -> anyhow::Result<Self> {
        let ty = backend_type.filter(|t| !t.is_empty());
        if ty.is_some_and(|t| t.eq_ignore_ascii_case("echo")) {
            return Ok(Backend::Echo);
        }
        ServerSpec::resolve(ty, backend_url, api_key)
            .map(Backend::Server)
            .map_err(|e| UsageError(format!("--backend-type/--backend-url: {e}")).into())
    }

    /// `echo (built-in test model)` or `<type> <url>`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Backend::Echo => "echo (built-in test model)".to_owned(),
            Backend::Server(spec) => spec.to_string(),
        }
    }

    /// The backend label sent at registration (`echo` or the type).
    pub(crate) fn label(&self) -> String {
        match self {
            Backend::Echo => "echo".to_owned(),
            Backend::Server(spec) => spec.kind.to_string(),
        }
    }

    /// The models the backend lists (`["echo"]` for the echo model).
    pub(crate) async fn models(&self, http: &HttpClient) -> Result<Vec<String>, String> {
        match self {
            Backend::Echo => Ok(vec!["echo".to_owned()]),
            Backend::Server(spec) => spec.models(http).await.map_err(|e| e.to_string()),
        }
    }

    /// The served model (`model`, else the server's only one), what to advertise, and
    /// the task handler; a model that cannot be chosen is a usage error.
    pub(crate) async fn prepare(
        &self,
        http: &HttpClient,
        model: Option<&str>,
    ) -> anyhow::Result<(ModelPlan, Handler)> {
        match self {
            Backend::Echo => {
                let model = model.unwrap_or("echo").to_owned();
                let plan = ModelPlan {
                    models: vec![model.clone()],
                    model,
                    aliases: Vec::new(),
                    context_length: None,
                };
                Ok((plan, Handler::Echo(EchoModel::default())))
            }
            Backend::Server(spec) => {
                let ready = spec
                    .prepare(http, model)
                    .await
                    .map_err(|e| UsageError(e.to_string()))?;
                let handler = Handler::Server(BackendHandler::new(ready.backend));
                Ok((ready.plan, handler))
            }
        }
    }
}

/// The task handler of a [`Backend`].
#[derive(Clone, Debug)]
pub(crate) enum Handler {
    /// The echo model.
    Echo(EchoModel),
    /// A model server.
    Server(BackendHandler),
}

impl TaskHandler for Handler {
    fn handle(&self, task: Task) -> BoxFuture<'static, Result<TaskOutput, HandlerError>> {
        match self {
            Handler::Echo(h) => h.handle(task),
            Handler::Server(h) => h.handle(task),
        }
    }

    fn streams(&self) -> bool {
        match self {
            Handler::Echo(h) => h.streams(),
            Handler::Server(h) => h.streams(),
        }
    }

    fn handle_stream(
        &self,
        task: Task,
        chunks: iicp_node::Chunks,
    ) -> BoxFuture<'static, Result<TaskOutput, HandlerError>> {
        match self {
            Handler::Echo(h) => h.handle_stream(task, chunks),
            Handler::Server(h) => h.handle_stream(task, chunks),
        }
    }

    fn models(&self) -> Option<BoxFuture<'static, Result<Vec<String>, HandlerError>>> {
        match self {
            Handler::Echo(h) => h.models(),
            Handler::Server(h) => h.models(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iicp_backends::BackendKind;

    #[test]
    fn backend_flags() {
        let Backend::Server(spec) = Backend::from_flags(Some("anthropic"), None, None).expect("ok")
        else {
            panic!("server")
        };
        assert_eq!(spec.kind, BackendKind::Anthropic);
        assert_eq!(spec.base_url, "https://api.anthropic.com/v1");
        let Backend::Server(spec) =
            Backend::from_flags(None, Some("http://h:11434/"), None).expect("ok")
        else {
            panic!("server")
        };
        assert_eq!(spec.base_url, "http://h:11434/v1");
        assert!(matches!(
            Backend::from_flags(Some("echo"), None, None),
            Ok(Backend::Echo)
        ));
        assert!(Backend::from_flags(Some("bogus"), None, None).is_err());
        assert!(Backend::from_flags(None, Some("ftp://x"), None).is_err());
    }

    #[test]
    fn config_errors_are_usage_errors_with_their_cause() {
        let e = iicp_node::Node::builder()
            .intent("urn:iicp:intent:BAD:v1")
            .validate()
            .expect_err("bad intent");
        let e = config_error(e);
        assert!(e.downcast_ref::<UsageError>().is_some());
        let text = e.to_string();
        assert!(
            text.starts_with("invalid node configuration: invalid intent: "),
            "{text}"
        );
    }
}

/// The routing-policy flags of `chat`, `discover`, `proxy` and `dev` (PROTOCOL.md §9.4,
/// ADR 0016).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RoutingArgs {
    /// Routing profile: standard, sensitive (only a node on this machine),
    /// eu_restricted, allowed_regions_strict, strict_policy (signed manifest, no payload
    /// retention), operator_bound_policy, debug_override (plaintext allowed).
    #[arg(long, env = "IICP_ROUTING_PROFILE", default_value = "standard", value_name = "PROFILE", value_parser = parse_profile)]
    pub(crate) routing_profile: iicp_client::RoutingProfile,
    /// Regions admitted by allowed_regions_strict and eu_restricted (comma-separated;
    /// `eu` admits `eu-*`, `eea` admits `eu-*` too).
    #[arg(
        long,
        env = "IICP_ALLOWED_REGIONS",
        value_delimiter = ',',
        value_name = "REGION,…"
    )]
    pub(crate) allowed_regions: Vec<String>,
    /// allowed_regions_strict: also require a signed-valid policy manifest.
    #[arg(long, env = "IICP_REQUIRE_SIGNED_POLICY_MANIFEST", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) require_signed_policy_manifest: bool,
    /// With --require-signed-policy-manifest: the manifest's jurisdiction must be one
    /// of these (comma-separated).
    #[arg(
        long,
        env = "IICP_JURISDICTION_ALLOWLIST",
        value_delimiter = ',',
        value_name = "CODE,…"
    )]
    pub(crate) jurisdiction_allowlist: Vec<String>,
}

fn parse_profile(s: &str) -> Result<iicp_client::RoutingProfile, String> {
    s.parse()
        .map_err(|e: iicp_client::routing::UnknownProfile| e.to_string())
}

impl RoutingArgs {
    /// The policy, its parameters checked (a usage error otherwise). Prints the
    /// warning `debug_override` calls for.
    pub(crate) fn policy(&self) -> anyhow::Result<iicp_client::RoutingPolicy> {
        let policy = self.quiet_policy()?;
        if policy.profile == iicp_client::RoutingProfile::DebugOverride {
            eprintln!(
                "warning: routing profile debug_override: prompts may travel in plaintext to nodes without an IICP-CX key"
            );
        }
        Ok(policy)
    }

    /// [`RoutingArgs::policy`] without the warning.
    pub(crate) fn quiet_policy(&self) -> anyhow::Result<iicp_client::RoutingPolicy> {
        let mut policy = iicp_client::RoutingPolicy::new(self.routing_profile).allowed_regions(
            self.allowed_regions
                .iter()
                .map(|r| r.trim().to_owned())
                .filter(|r| !r.is_empty()),
        );
        if self.require_signed_policy_manifest {
            policy = policy.require_signed_policy_manifest(
                self.jurisdiction_allowlist
                    .iter()
                    .map(|j| j.trim().to_owned())
                    .filter(|j| !j.is_empty()),
            );
        } else if !self.jurisdiction_allowlist.is_empty() {
            return Err(UsageError(
                "--jurisdiction-allowlist needs --require-signed-policy-manifest".into(),
            )
            .into());
        }
        policy
            .validate()
            .map_err(|e| UsageError(format!("invalid routing policy: {e}")))?;
        Ok(policy)
    }
}
