//! The node policy manifest flags of `serve` (PROTOCOL.md §17.4, ADR 0016): a
//! data-handling declaration from a JSON file and/or flags, validated before any I/O.
//! The node signs it with the operator key at every REGISTER.

use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::cmd::UsageError;

/// `retention.task_payload` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
#[clap(rename_all = "snake_case")]
pub(crate) enum Retention {
    /// Task payloads are not kept after the answer.
    None,
    /// Kept only while the task runs (caches, queues).
    Transient,
    /// The operator's own terms decide.
    ProviderDefined,
}

/// `training_use` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
#[clap(rename_all = "snake_case")]
pub(crate) enum TrainingUse {
    /// Never used for training.
    None,
    /// Only with the caller's opt-in.
    OptIn,
    /// The operator's own terms decide.
    ProviderDefined,
}

/// The manifest flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PolicyArgs {
    /// Policy manifest file (a JSON object: retention, training_use, jurisdiction,
    /// subprocessors, …); the flags below override its members.
    #[arg(long, env = "IICP_POLICY_MANIFEST", value_name = "FILE")]
    pub(crate) policy_manifest: Option<PathBuf>,
    /// Declared retention of task payloads.
    #[arg(
        long,
        env = "IICP_POLICY_RETENTION",
        value_enum,
        value_name = "RETENTION"
    )]
    pub(crate) retention: Option<Retention>,
    /// Declared days logs are kept.
    #[arg(long, env = "IICP_POLICY_LOGS_DAYS", value_name = "DAYS")]
    pub(crate) logs_days: Option<u32>,
    /// Declared jurisdiction (e.g. DE).
    #[arg(long, env = "IICP_POLICY_JURISDICTION", value_name = "CODE")]
    pub(crate) jurisdiction: Option<String>,
    /// Declared use of task data for training.
    #[arg(long, env = "IICP_POLICY_TRAINING_USE", value_enum, value_name = "USE")]
    pub(crate) training_use: Option<TrainingUse>,
}

fn name<T: clap::ValueEnum>(v: T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_owned())
        .unwrap_or_default()
}

impl PolicyArgs {
    /// The manifest to declare: `--policy-manifest FILE`, else the profile's
    /// (`saved`), with the flags' members on top; `None` when there is none. A file that
    /// is not a JSON object, or a result that is malformed, is a usage error naming the
    /// member.
    pub(crate) fn manifest(
        &self,
        saved: Option<&Map<String, Value>>,
    ) -> anyhow::Result<Option<Map<String, Value>>> {
        let flags = self.retention.is_some()
            || self.logs_days.is_some()
            || self.jurisdiction.is_some()
            || self.training_use.is_some();
        let mut m = match &self.policy_manifest {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    UsageError(format!(
                        "cannot read the policy manifest {}: {e}",
                        path.display()
                    ))
                })?;
                match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(m)) => m,
                    Ok(_) => {
                        return Err(UsageError(format!(
                            "the policy manifest {} is not a JSON object",
                            path.display()
                        ))
                        .into())
                    }
                    Err(e) => {
                        return Err(UsageError(format!(
                            "the policy manifest {} is not valid JSON: {e}",
                            path.display()
                        ))
                        .into())
                    }
                }
            }
            None if saved.is_some() => saved.cloned().unwrap_or_default(),
            None if flags => {
                let mut m = Map::new();
                // a remote executor reads the prompts it runs (dir §3.4)
                m.insert("remote_executor_can_read_prompt".into(), true.into());
                m
            }
            None => return Ok(None),
        };
        // a file's own signature is replaced when the node signs
        m.remove("signature");
        if self.retention.is_some() || self.logs_days.is_some() {
            let retention = m
                .entry("retention")
                .or_insert_with(|| Value::Object(Map::new()));
            if !retention.is_object() {
                *retention = Value::Object(Map::new());
            }
            if let Some(r) = self.retention {
                retention["task_payload"] = name(r).into();
            }
            if let Some(d) = self.logs_days {
                retention["logs_days"] = d.into();
            }
        }
        if let Some(j) = self.jurisdiction.as_deref().map(str::trim) {
            m.insert("jurisdiction".into(), j.into());
        }
        if let Some(t) = self.training_use {
            m.insert("training_use".into(), name(t).into());
        }
        iicp_proto::crypto::manifest::validate(&Value::Object(m.clone()))
            .map_err(|e| UsageError(format!("invalid policy manifest: {e}")))?;
        Ok(Some(m))
    }
}
