//! `config schema|validate|effective`: the node profile's JSON schema, a field-level
//! check of a profile file, and the configuration `serve` would run with and where each
//! value comes from. None of them does network I/O.
//!
//! * `schema` prints the draft 2020-12 schema of `nodes/<name>.json`
//!   ([`iicp_node::operator::schema::profile_schema`], from the profile's own table).
//! * `validate --node NAME | --file PATH` lists each problem with its JSON pointer
//!   (unknown member, wrong type, out-of-range port, bad URL or intent); exit 0 valid,
//!   2 invalid or unreadable.
//! * `effective [--node NAME | --file PATH] [serve flags]` resolves like `serve`
//!   (flag > env > profile > default, the same code) and prints each value with its
//!   source; secrets are redacted. A configuration `serve` would refuse exits 2.
//!
//! `--json` prints machine output on stdout.

use std::path::{Path, PathBuf};

use iicp_node::operator::schema::{profile_schema, validate_profile, FieldIssue};
use serde_json::{json, Value};

use super::common::{home, operator_error};
use super::{Exit, UsageError};
use crate::EXIT_USAGE;

/// Arguments of `config`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Print the JSON schema (draft 2020-12) of a saved node profile.
    Schema,
    /// Check a node profile field by field (exit 0 valid, 2 invalid).
    Validate(ValidateArgs),
    /// Print the configuration `serve` would run with and where each value comes from
    /// (flag, env:IICP_…, profile, default); secrets are redacted.
    Effective(Box<EffectiveArgs>),
}

/// Which profile.
#[derive(Debug, clap::Args)]
struct ValidateArgs {
    /// Saved node name (~/.iicp/nodes/NAME.json).
    #[arg(
        long,
        env = "IICP_NODE_NAME",
        value_name = "NAME",
        conflicts_with = "file"
    )]
    node: Option<String>,
    /// A profile file anywhere.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Machine output: {"valid", "path", "errors": [{"pointer", "message"}]}.
    #[arg(long)]
    json: bool,
}

/// `effective`: `serve`'s flags, and a profile file instead of `--node`.
#[derive(Debug, clap::Args)]
struct EffectiveArgs {
    /// A profile file anywhere (instead of --node NAME).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Machine output: an array of {"name", "value", "source"}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    serve: super::serve::Args,
}

/// Runs `config`; `matches` are the parsed `config` subcommand's (for `effective`'s
/// sources).
pub(crate) fn run(args: Args, matches: Option<&clap::ArgMatches>) -> anyhow::Result<()> {
    match args.action {
        Action::Schema => {
            println!("{}", serde_json::to_string_pretty(&profile_schema())?);
            Ok(())
        }
        Action::Validate(a) => validate(&a),
        Action::Effective(a) => {
            let m = matches.and_then(|m| m.subcommand_matches("effective"));
            effective(&a, m)
        }
    }
}

/// The file to check and the name its `name` member must have.
fn target(a: &ValidateArgs) -> anyhow::Result<(PathBuf, Option<String>)> {
    match (&a.node, &a.file) {
        (_, Some(f)) => Ok((f.clone(), None)),
        (Some(n), None) => {
            let path = home()?.node_path(n).map_err(operator_error)?;
            Ok((path, Some(n.clone())))
        }
        (None, None) => Err(UsageError("give --node NAME or --file PATH".into()).into()),
    }
}

/// The problems of the profile at `path` (`name`: the name it must carry).
fn check(path: &Path, name: Option<&str>) -> Result<Vec<FieldIssue>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let doc: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return Ok(vec![FieldIssue {
                pointer: String::new(),
                message: format!(
                    "not JSON: line {}, column {} ({:?})",
                    e.line(),
                    e.column(),
                    e.classify()
                ),
            }])
        }
    };
    Ok(validate_profile(&doc, name))
}

fn validate(a: &ValidateArgs) -> anyhow::Result<()> {
    let (path, name) = target(a)?;
    let issues = match check(&path, name.as_deref()) {
        Ok(i) => i,
        Err(e) if a.json => {
            println!(
                "{}",
                json!({"valid": false, "path": path.display().to_string(), "errors": [{"pointer": "", "message": e}]})
            );
            return Err(Exit(EXIT_USAGE).into());
        }
        Err(e) => return Err(UsageError(e).into()),
    };
    if a.json {
        let errors: Vec<Value> = issues
            .iter()
            .map(|i| json!({"pointer": i.pointer, "message": i.message}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "valid": issues.is_empty(),
                "path": path.display().to_string(),
                "errors": errors,
            }))?
        );
    } else if issues.is_empty() {
        println!("{}: valid", path.display());
    } else {
        eprintln!("{}: {} problem(s)", path.display(), issues.len());
        for i in &issues {
            eprintln!("  {i}");
        }
    }
    if issues.is_empty() {
        Ok(())
    } else {
        Err(Exit(EXIT_USAGE).into())
    }
}

fn effective(a: &EffectiveArgs, matches: Option<&clap::ArgMatches>) -> anyhow::Result<()> {
    let entries = super::serve::effective(&a.serve, matches, a.file.as_deref())?;
    if a.json {
        let out: Vec<Value> = entries
            .iter()
            .map(|e| json!({"name": e.name, "value": e.value, "source": e.source}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let width = entries.iter().map(|e| e.name.len()).max().unwrap_or(0);
    for e in &entries {
        let value = match &e.value {
            Value::String(s) => s.clone(),
            Value::Null => "-".to_owned(),
            other => other.to_string(),
        };
        println!("{:width$}  {value}  ({})", e.name, e.source);
    }
    Ok(())
}
