//! `config effective`: the configuration `serve` would run with, from the same resolver
//! ([`super::resolve`]), each value with its source — `flag`, `env:IICP_…` (clap tells
//! which of the two gave a value), `profile` (the saved node profile or its
//! `auth/<name>.json`) or `default`. Secrets (the backend API key, the node's access
//! token, the directory's node token and HMAC key) are shown as `(redacted)`. No
//! network I/O.

use std::path::Path;

use clap::parser::ValueSource;
use iicp_node::operator::NodeProfile;
use serde_json::{json, Value};

use super::{access, resolve, Args, Origin};
use crate::cmd::common::Backend;
use crate::cmd::UsageError;

/// Shown instead of a secret.
pub(crate) const REDACTED: &str = "(redacted)";

/// One effective value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    /// The `serve` flag's name without dashes, `_` for `-`.
    pub(crate) name: &'static str,
    /// The value (`null`: none).
    pub(crate) value: Value,
    /// `flag`, `env:IICP_…`, `profile` or `default`.
    pub(crate) source: String,
}

/// The sources of given values: the parsed command line and the environment names of
/// `serve`'s flags.
struct Sources<'a> {
    matches: Option<&'a clap::ArgMatches>,
    command: clap::Command,
}

impl Sources<'_> {
    /// `flag` or `env:NAME` for a value given for clap argument `id`, else `default`.
    fn given(&self, id: &str) -> String {
        match self.matches.and_then(|m| m.value_source(id)) {
            Some(ValueSource::CommandLine) => "flag".to_owned(),
            Some(ValueSource::EnvVariable) => self.env(id),
            _ => "default".to_owned(),
        }
    }

    fn env(&self, id: &str) -> String {
        self.command
            .get_arguments()
            .find(|a| a.get_id() == id)
            .and_then(clap::Arg::get_env)
            .map_or_else(
                || "env".to_owned(),
                |e| format!("env:{}", e.to_string_lossy()),
            )
    }

    /// The source of a resolved value.
    fn of(&self, id: &str, origin: Origin) -> String {
        match origin {
            Origin::Given => match self.given(id).as_str() {
                // a value clap did not see came from an environment variable the
                // resolver reads itself
                "default" if id == "node_token" => format!("env:{}", access::TOKEN_ENV),
                "default" => "flag".to_owned(),
                other => other.to_owned(),
            },
            Origin::Profile => "profile".to_owned(),
            Origin::Default => "default".to_owned(),
        }
    }
}

fn secret(set: bool) -> Value {
    if set {
        Value::from(REDACTED)
    } else {
        Value::Null
    }
}

fn ms(d: Option<std::time::Duration>) -> Value {
    d.map_or(Value::Null, |d| {
        Value::from(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    })
}

/// Reads a profile file given by path (`--file`).
fn profile_file(path: &Path) -> anyhow::Result<NodeProfile> {
    let bytes = std::fs::read(path)
        .map_err(|e| UsageError(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        UsageError(format!(
            "{} is not a valid node profile (line {}, column {}); `iicp config validate --file` says why",
            path.display(),
            e.line(),
            e.column()
        ))
        .into()
    })
}

/// The effective configuration of `serve` with `args` (and `matches`, the parsed
/// command line, to tell flags from environment variables), the profile of `--node` or
/// of `file`.
///
/// # Errors
/// Usage errors, as `serve` reports them.
pub(crate) fn effective(
    args: &Args,
    matches: Option<&clap::ArgMatches>,
    file: Option<&Path>,
) -> anyhow::Result<Vec<Entry>> {
    let (profile, saved_auth) = match file {
        Some(_) if args.node.is_some() => {
            return Err(UsageError("give --node NAME or --file PATH, not both".into()).into())
        }
        Some(path) => (Some(profile_file(path)?), None),
        None => {
            let (home, profile) = super::load_profile(args)?;
            let auth = access::load(home.as_ref(), args.node.as_deref())?;
            (profile, auth)
        }
    };
    let cfg = resolve(args, profile.as_ref(), saved_auth.as_ref())?;
    // the same checks `serve` makes before any network I/O
    super::node_builder(args, &cfg)
        .validate()
        .map_err(crate::cmd::common::config_error)?;
    let src = Sources {
        matches,
        command: <Args as clap::Args>::augment_args(clap::Command::new("serve")),
    };
    let o = &cfg.origins;
    let resolved = |name: &'static str, value: Value| Entry {
        name,
        value,
        source: src.of(name, o.of(name)),
    };
    let flag = |name: &'static str, value: Value| Entry {
        name,
        value,
        source: src.given(name),
    };
    let (backend_url, has_key) = match &cfg.backend {
        Backend::Echo => (Value::Null, false),
        Backend::Server(spec) => (Value::from(spec.base_url.clone()), spec.api_key.is_some()),
    };
    let node_id = match o.of("node_id") {
        Origin::Default => Value::from("(a new random UUID at each start)"),
        _ => Value::from(cfg.node_id.clone()),
    };
    let directory_url = match (&cfg.directory, args.skip_registration) {
        // none: the source is that of --skip-registration
        (_, true) => Entry {
            name: "directory_url",
            value: Value::Null,
            source: src.given("skip_registration"),
        },
        (d, false) => resolved("directory_url", json!(d)),
    };
    Ok(vec![
        flag("node", json!(args.node)),
        resolved("node_id", node_id),
        flag("backend_type", Value::from(cfg.backend.label())),
        resolved("backend_url", backend_url),
        flag("backend_api_key", secret(has_key)),
        resolved("model", json!(cfg.model)),
        flag("skip_registration", Value::from(args.skip_registration)),
        directory_url,
        resolved("region", json!(cfg.region)),
        resolved("intent", Value::from(cfg.intent.clone())),
        resolved("max_concurrent", Value::from(cfg.max_concurrent)),
        resolved("port", Value::from(cfg.port)),
        resolved("host", Value::from(cfg.host.to_string())),
        resolved("public_endpoint", json!(cfg.public_endpoint)),
        resolved("auth", Value::from(cfg.access.mode.as_str())),
        resolved("node_token", secret(cfg.access.has_token())),
        flag("rate_limit", Value::from(cfg.access.describe_limit())),
        flag(
            "trust_forwarded_for",
            Value::from(args.access.trust_forwarded_for),
        ),
        flag("heartbeat_interval", ms(args.heartbeat_interval)),
        flag("directory_backoff_base", ms(args.directory_backoff_base)),
        flag("replan_interval", ms(args.replan_interval)),
        flag("model_check_interval", ms(args.model_check_interval)),
        flag(
            "auto_detect_nat",
            Value::from(super::nat::auto_detect(args)),
        ),
        flag("skip_upnp", Value::from(args.skip_upnp)),
        flag("relay_capable", Value::from(args.relay_capable)),
        flag("relay_accept_port", json!(args.relay_accept_port)),
        flag("relay_worker_endpoint", json!(args.relay_worker_endpoint)),
        flag("no_native", Value::from(args.no_native)),
        flag(
            "log_dir",
            json!(args.log_dir.as_ref().map(|d| d.display().to_string())),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{FromArgMatches as _, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: Args,
    }

    fn parse(argv: &[&str]) -> (Args, clap::ArgMatches) {
        let m = <Cli as clap::CommandFactory>::command()
            .try_get_matches_from(argv)
            .expect("parse");
        (Cli::from_arg_matches(&m).expect("args").serve, m)
    }

    #[test]
    fn flags_and_defaults_are_told_apart_and_secrets_redacted() {
        let (args, m) = parse(&[
            "serve",
            "--backend-type",
            "openai_compat",
            "--backend-url",
            "http://127.0.0.1:8080",
            "--backend-api-key",
            "sk-very-secret-key",
            "--port",
            "9500",
            "--skip-registration",
        ]);
        let entries = effective(&args, Some(&m), None).expect("effective");
        let get = |n: &str| {
            entries
                .iter()
                .find(|e| e.name == n)
                .unwrap_or_else(|| panic!("{n}"))
                .clone()
        };
        assert_eq!(get("port").value, 9500);
        assert_eq!(get("port").source, "flag");
        assert_eq!(get("backend_url").value, "http://127.0.0.1:8080/v1");
        assert_eq!(get("backend_url").source, "flag");
        assert_eq!(get("backend_api_key").value, REDACTED);
        assert_eq!(get("max_concurrent").value, 4);
        assert_eq!(get("max_concurrent").source, "default");
        assert_eq!(get("directory_url").value, Value::Null);
        assert_eq!(get("directory_url").source, "flag");
        assert_eq!(get("auth").source, "default");
        let all = format!("{entries:?}");
        assert!(!all.contains("sk-very-secret-key"), "{all}");
    }
}
