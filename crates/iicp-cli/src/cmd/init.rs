//! `init`: create the operator identity (`~/.iicp/operator.json`) and a saved node
//! profile (`~/.iicp/nodes/NAME.json`, with who may call it in `~/.iicp/auth/NAME.json`)
//! — interactively with defaults when standard input is a terminal, fully by flags
//! otherwise (SEED-SDK.md §2.5, §4.1; ADR 0008 for the auth settings).

use anyhow::bail;
use iicp_node::operator::{valid_display_name, Home, NodeAuth, NodeProfile};
use iicp_node::AuthMode;
use iicp_proto::secret::Secret;

use super::common::{home, now_unix, operator_error, CHAT, DEFAULT_DIRECTORY};
use super::serve::{check_token, generate_token, given_token};
use super::UsageError;
use crate::prompt;

/// Arguments of `init`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Public display name of the operator (1-64 characters).
    #[arg(long, value_name = "NAME")]
    display_name: Option<String>,
    /// Private contact of the operator (kept on this machine, never sent).
    #[arg(long)]
    contact: Option<String>,
    /// Replace an existing operator identity with a new key (the old key is lost).
    #[arg(long)]
    new_operator_key: bool,
    /// Name of the saved node profile.
    #[arg(long, default_value = "default", value_name = "NAME")]
    node: String,
    /// Only the operator identity, no node profile.
    #[arg(long)]
    no_node: bool,
    /// Overwrite an existing node profile of the same name.
    #[arg(long)]
    force: bool,
    /// Never ask; take flags and defaults (the default when stdin is not a terminal).
    #[arg(long, short = 'y')]
    yes: bool,
    /// Model server URL.
    #[arg(long, default_value = "http://localhost:11434", value_name = "URL")]
    backend_url: String,
    /// Model (empty: auto-selected at `serve` when the backend lists exactly one).
    #[arg(long, default_value = "")]
    model: String,
    /// Directory base URL.
    #[arg(long, default_value = DEFAULT_DIRECTORY, value_name = "URL")]
    directory_url: String,
    /// Region.
    #[arg(long, default_value = "unknown")]
    region: String,
    /// Intent served.
    #[arg(long, default_value = CHAT, value_name = "URN")]
    intent: String,
    /// Port.
    #[arg(long, default_value_t = 9484)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    /// Externally reachable URL (blank: none).
    #[arg(long, default_value = "", value_name = "URL")]
    public_endpoint: String,
    /// Who may call the node: open, token or consumer [default: the node's saved mode,
    /// else open].
    #[arg(long, value_name = "MODE", value_parser = parse_auth)]
    auth: Option<AuthMode>,
    /// The token callers present in token mode [default: IICP_NODE_TOKEN, else the
    /// node's saved token, else a generated one]. A flag is visible in `ps`: prefer
    /// IICP_NODE_TOKEN.
    #[arg(long, value_name = "TOKEN", value_parser = parse_secret)]
    node_token: Option<Secret>,
}

fn parse_auth(s: &str) -> Result<AuthMode, String> {
    s.parse()
        .map_err(|e: iicp_node::UnknownAuthMode| e.to_string())
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret::new(s))
}

/// The node's auth settings to save (`None`: open, nothing saved before) and whether
/// the token was generated here. Validated before anything is written.
fn node_auth(home: &Home, args: &Args, ask: bool) -> anyhow::Result<Option<(NodeAuth, bool)>> {
    let previous = home.load_node_auth(&args.node).map_err(operator_error)?;
    let mut mode = args
        .auth
        .or_else(|| previous.as_ref().map(|p| p.mode))
        .unwrap_or_default();
    if ask {
        let answer = prompt::ask(
            "Who may call the node (open, token, consumer)",
            mode.as_str(),
        )?;
        mode = parse_auth(&answer).map_err(UsageError)?;
    }
    let given = given_token(args.node_token.as_ref(), mode)?;
    if mode == AuthMode::Open {
        return Ok(previous.map(|_| {
            (
                NodeAuth {
                    mode,
                    api_token: None,
                },
                false,
            )
        }));
    }
    let kept = given.or_else(|| previous.and_then(|p| p.api_token));
    let (token, generated) = match kept {
        Some(t) => (Some(t), false),
        None if mode == AuthMode::Token => (Some(generate_token()), true),
        None => (None, false),
    };
    if let Some(t) = &token {
        check_token(t.expose()).map_err(UsageError)?;
    }
    Ok(Some((
        NodeAuth {
            mode,
            api_token: token,
        },
        generated,
    )))
}

pub(crate) fn run(mut args: Args) -> anyhow::Result<()> {
    let home = home()?;
    let ask = !args.yes && prompt::interactive();
    println!("configuration directory: {}", home.root().display());

    // operator identity
    let existing = home.load_operator().map_err(operator_error)?;
    let operator_id = match existing {
        Some(op) if !args.new_operator_key => {
            println!(
                "operator identity exists: {} ({})",
                op.operator_id,
                if op.display_name.is_empty() {
                    "no display name"
                } else {
                    &op.display_name
                }
            );
            op.operator_id
        }
        _ => {
            let mut name = args.display_name.clone().unwrap_or_default();
            let mut contact = args.contact.clone().unwrap_or_default();
            if ask {
                name = prompt::ask("Operator display name (public)", &name)?;
                contact = prompt::ask("Contact (private, stays on this machine)", &contact)?;
            }
            let name = name.trim().to_owned();
            if !name.is_empty() && !valid_display_name(&name) {
                return Err(UsageError(
                    "--display-name must be 1-64 characters without control characters".into(),
                )
                .into());
            }
            let op = home
                .init_operator(&name, contact.trim(), now_unix(), args.new_operator_key)
                .map_err(operator_error)?;
            println!(
                "created operator identity {} ({})",
                op.operator_id,
                home.operator_path().display()
            );
            op.operator_id
        }
    };
    if args.no_node {
        return Ok(());
    }

    // node profile
    if ask {
        args.node = prompt::ask("Node name", &args.node)?;
    }
    let path = home.node_path(&args.node).map_err(operator_error)?;
    let previous = home.load_node(&args.node).map_err(operator_error)?;
    if previous.is_some() && !args.force {
        if !ask {
            return Err(UsageError(format!(
                "node profile {} exists (pass --force to overwrite it)",
                path.display()
            ))
            .into());
        }
        if !prompt::confirm(&format!("Node {:?} exists. Overwrite?", args.node))? {
            bail!("kept the existing node profile {}", path.display());
        }
    }
    if ask {
        args.backend_url = prompt::ask("Backend URL", &args.backend_url)?;
        args.model = prompt::ask("Model (blank: the backend's only model)", &args.model)?;
        args.directory_url = prompt::ask("Directory URL", &args.directory_url)?;
        args.region = prompt::ask("Region", &args.region)?;
        args.intent = prompt::ask("Intent", &args.intent)?;
        let port = prompt::ask("Port", &args.port.to_string())?;
        args.port = port
            .parse()
            .map_err(|_| UsageError(format!("port must be 0-65535, got {port:?}")))?;
        args.host = prompt::ask("Bind host", &args.host)?;
        args.public_endpoint = prompt::ask("Public endpoint (blank: none)", &args.public_endpoint)?;
    }
    iicp_proto::intent::Intent::new(args.intent.as_str())
        .map_err(|e| UsageError(format!("--intent {:?}: {e}", args.intent)))?;
    let auth = node_auth(&home, &args, ask)?;
    let mut profile = NodeProfile::new(args.node.clone(), operator_id, now_unix());
    if let Some(prev) = previous {
        // keep the node's identity (and its directory record) across re-init
        profile.node_id = prev.node_id;
        profile.node_token = prev.node_token;
        profile.node_hmac_key = prev.node_hmac_key;
    }
    profile.backend_url = args.backend_url;
    profile.model = args.model;
    profile.directory_url = args.directory_url;
    profile.region = args.region;
    profile.intent = args.intent;
    profile.port = args.port;
    profile.host = args.host;
    profile.public_endpoint = args.public_endpoint;
    let saved = home.save_node(&profile).map_err(operator_error)?;
    println!(
        "saved node {:?} ({}) as {}",
        profile.name,
        profile.node_id,
        saved.display()
    );
    if let Some((auth, generated)) = auth {
        let path = home
            .save_node_auth(&profile.name, &auth)
            .map_err(operator_error)?;
        let token = match (&auth.api_token, generated) {
            (None, _) => String::new(),
            (Some(_), true) => {
                "; a new node token was generated and saved there (mode 0600): give it to \
                 your callers, who send it as `Authorization: Bearer <token>`"
                    .to_owned()
            }
            (Some(_), false) => "; the node token is saved there (mode 0600)".to_owned(),
        };
        println!("auth {} saved as {}{token}", auth.mode, path.display());
    }
    println!("Run: iicp serve --node {}", profile.name);
    Ok(())
}
