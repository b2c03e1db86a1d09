//! `operator show|rename|encrypt|decrypt`: the operator identity in
//! `~/.iicp/operator.json` (PROTOCOL.md §17; SEED-SDK.md §2.5, §4).

use anyhow::Context as _;
use iicp_node::operator::{self, valid_display_name, OperatorFile};
use serde_json::json;

use super::common::{home, now_unix, operator_error, probe_client, DEFAULT_DIRECTORY};
use super::UsageError;
use crate::prompt;

/// Arguments of `operator`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Show the operator identity (never the secret).
    Show {
        /// Machine-readable JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Change the public display name, signed by the operator key.
    Rename {
        /// The new display name (1-64 characters).
        name: String,
        /// Directory base URL.
        #[arg(long, env = "IICP_DIRECTORY_URL", default_value = DEFAULT_DIRECTORY, value_name = "URL")]
        directory_url: String,
    },
    /// Replace the operator key with a new one, announced to the directory (signed by
    /// both keys); manifests signed with the old key are then served as rotated.
    Rotate {
        /// Directory base URL.
        #[arg(long, env = "IICP_DIRECTORY_URL", default_value = DEFAULT_DIRECTORY, value_name = "URL")]
        directory_url: String,
    },
    /// Revoke the operator key at the directory (permanent: nothing it signed is trusted
    /// any more); `--yes` confirms.
    Revoke {
        /// Directory base URL.
        #[arg(long, env = "IICP_DIRECTORY_URL", default_value = DEFAULT_DIRECTORY, value_name = "URL")]
        directory_url: String,
        /// Why: operator_request, compromise, superseded or policy_violation.
        #[arg(long, default_value = "operator_request", value_parser = ["operator_request", "compromise", "superseded", "policy_violation"])]
        reason: String,
        /// Confirm the revocation.
        #[arg(long)]
        yes: bool,
    },
    /// Encrypt the operator secret at rest (passphrase from IICP_OPERATOR_PASSPHRASE or a prompt).
    Encrypt,
    /// Remove the at-rest encryption of the operator secret.
    Decrypt,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let home = home()?;
    let mut file = home.require_operator().map_err(operator_error)?;
    match args.command {
        Sub::Show { json } => show(&home, &file, json),
        Sub::Rename {
            name,
            directory_url,
        } => {
            let name = name.trim().to_owned();
            if !valid_display_name(&name) {
                return Err(UsageError(
                    "display name must be 1-64 characters without control characters".into(),
                )
                .into());
            }
            let (identity, _) = unlock(&file)?;
            let http = probe_client()?;
            let ack = operator::rename(&http, &directory_url, &identity, &name, now_unix())
                .await
                .map_err(operator_error)?;
            file.display_name = ack.display_name.clone();
            home.save_operator(&file).map_err(operator_error)?;
            println!(
                "display name is now {:?}{}",
                ack.display_name,
                ack.nodes_updated
                    .map(|n| format!(" ({n} registered node(s) updated)"))
                    .unwrap_or_default()
            );
            Ok(())
        }
        Sub::Rotate { directory_url } => {
            super::common::http_url("--directory-url", &directory_url)?;
            let (identity, pass) = unlock(&file)?;
            let successor = iicp_proto::crypto::sign::OperatorKey::generate(&mut rand_core::OsRng);
            let http = probe_client()?;
            let ack =
                operator::rotate_key(&http, &directory_url, &identity, &successor, now_unix())
                    .await
                    .map_err(operator_error)?;
            let old = file.operator_id.clone();
            file.replace_key(&successor, pass.as_deref().map(String::as_str), now_unix())
                .map_err(operator_error)?;
            home.save_operator(&file).map_err(operator_error)?;
            println!(
                "operator key rotated (epoch {}): {old} -> {}",
                ack.get("rotation_epoch")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0),
                file.operator_id
            );
            println!("restart serving nodes so that they register with the new key");
            Ok(())
        }
        Sub::Revoke {
            directory_url,
            reason,
            yes,
        } => {
            super::common::http_url("--directory-url", &directory_url)?;
            if !yes {
                return Err(UsageError(
                    "revoking the operator key is permanent: pass --yes to confirm".into(),
                )
                .into());
            }
            let (identity, _) = unlock(&file)?;
            let http = probe_client()?;
            operator::revoke_key(&http, &directory_url, &identity, &reason, now_unix())
                .await
                .map_err(operator_error)?;
            println!(
                "operator key {} revoked ({reason}); create a new identity with `iicp init --force`",
                file.operator_id
            );
            Ok(())
        }
        Sub::Encrypt => {
            if file.is_encrypted() {
                return Err(UsageError("the operator secret is already encrypted".into()).into());
            }
            let pass = prompt::passphrase(true)?;
            file.encrypt(&pass).map_err(operator_error)?;
            home.save_operator(&file).map_err(operator_error)?;
            println!(
                "operator secret encrypted ({})",
                home.operator_path().display()
            );
            Ok(())
        }
        Sub::Decrypt => {
            if !file.is_encrypted() {
                return Err(UsageError("the operator secret is not encrypted".into()).into());
            }
            let pass = prompt::passphrase(false)?;
            if let Err(e) = file.decrypt(&pass) {
                return Err(operator_error(e))
                    .context(format!("{} is unchanged", home.operator_path().display()));
            }
            home.save_operator(&file).map_err(operator_error)?;
            println!(
                "operator secret decrypted ({})",
                home.operator_path().display()
            );
            Ok(())
        }
    }
}

/// The operator key, asking for the passphrase when it is sealed; the passphrase is
/// returned for re-sealing.
fn unlock(
    file: &OperatorFile,
) -> anyhow::Result<(
    operator::OperatorIdentity,
    Option<zeroize::Zeroizing<String>>,
)> {
    let pass = if file.is_encrypted() {
        Some(prompt::passphrase(false)?)
    } else {
        None
    };
    let identity = file
        .unlock(pass.as_deref().map(String::as_str))
        .map_err(operator_error)?;
    Ok((identity, pass))
}

fn show(
    home: &iicp_node::operator::Home,
    file: &OperatorFile,
    as_json: bool,
) -> anyhow::Result<()> {
    let info = json!({
        "operator_id": file.operator_id,
        "display_name": file.display_name,
        "contact": file.contact,
        "created_at": file.created_at,
        "operator_integrity_hash": file.integrity_hash(),
        "key_backed": file.is_key_backed(),
        "encrypted": file.is_encrypted(),
        "path": home.operator_path(),
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        println!("operator_id     {}", file.operator_id);
        println!("display_name    {}", file.display_name);
        println!("contact         {} (private)", file.contact);
        println!("created_at      {}", file.created_at);
        println!("integrity_hash  {}", file.integrity_hash());
        println!(
            "key             {}",
            match (file.is_key_backed(), file.is_encrypted()) {
                (false, _) => "none (legacy keyless identity)",
                (true, true) => "Ed25519, encrypted at rest",
                (true, false) => "Ed25519, not encrypted (`iicp operator encrypt`)",
            }
        );
        println!("file            {}", home.operator_path().display());
    }
    Ok(())
}
