//! `serve`: run a provider node in front of a model server, registered with a directory
//! (SEED-SDK.md §2.2–§2.4). Configuration layers: saved node profile (`--node NAME`,
//! `~/.iicp/nodes/NAME.json`) → environment → flags, then the defaults. All
//! validation happens before any network I/O (exit 2). The policy lives in the
//! libraries: the backend and its model in `iicp_backends::ServerSpec`, the port in
//! `Listener::bind_first_free`, the endpoint and the registration rule in `iicp_node`.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context as _;
use iicp_node::event::EventKind;
use iicp_node::operator::{Home, NodeAuth, NodeProfile, OperatorError, OperatorIdentity};
use iicp_node::run::Lifecycle;
use iicp_node::{Node, NodeBuilder, ServeOptions};
use iicp_proto::constants::DEFAULT_PORT;
use iicp_transport::listener::{Listener, ListenerConfig};
use iicp_transport::shutdown;
use tokio::sync::broadcast::error::RecvError;

use super::common::{
    config_error, home, operator_error, probe_client, Backend, CHAT, DEFAULT_DIRECTORY,
};
use super::runstate::{ProfileToken, RunState};
use super::UsageError;

mod access;
mod args;
mod effective;
mod nat;
mod notify;
mod policy;
mod report;

pub(crate) use access::{check_token, generate_token, given_token};
pub(crate) use args::Args;
pub(crate) use effective::effective;

/// Ports tried from `--port` when it is in use (SEED-SDK §2.4).
const PORT_TRIES: u16 = 64;

/// The operator identity for serving: `None` (anonymous, with a one-time notice) when
/// there is no key-backed identity. Never prompts; an encrypted key needs
/// `IICP_OPERATOR_PASSPHRASE`.
fn operator_identity(home: Option<&Home>) -> anyhow::Result<Option<OperatorIdentity>> {
    let pass = std::env::var(crate::prompt::PASSPHRASE_ENV)
        .ok()
        .filter(|p| !p.is_empty())
        .map(zeroize::Zeroizing::new);
    let pass = pass.as_deref().map(String::as_str);
    match home.map(|h| h.operator_identity(pass)).transpose() {
        Ok(Some(Some(identity))) => Ok(Some(identity)),
        Ok(_) => {
            report::anonymous_notice(home);
            Ok(None)
        }
        Err(OperatorError::PassphraseRequired) => Err(UsageError(format!(
            "the operator secret is encrypted: set {} (serve never prompts)",
            crate::prompt::PASSPHRASE_ENV
        ))
        .into()),
        Err(e) => Err(operator_error(e)),
    }
}

/// The configuration of one `serve`, resolved and validated.
pub(super) struct Resolved {
    pub(super) backend: Backend,
    pub(super) model: Option<String>,
    pub(super) directory: Option<String>,
    pub(super) region: Option<String>,
    pub(super) intent: String,
    pub(super) max_concurrent: u32,
    pub(super) node_id: String,
    pub(super) port: u16,
    pub(super) host: IpAddr,
    pub(super) public_endpoint: Option<String>,
    pub(super) access: access::Access,
    /// Where each value came from (`config effective`).
    pub(super) origins: Origins,
}

/// Where a resolved value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A flag or its environment variable (clap tells which).
    Given,
    /// The saved node profile (or its `auth/<name>.json`).
    Profile,
    /// The built-in default.
    Default,
}

/// The origin of each resolved value, by the name of its `serve` flag (its clap id).
#[derive(Debug, Default)]
pub(crate) struct Origins(Vec<(&'static str, Origin)>);

impl Origins {
    /// `given` (flag or environment), else `profile`; records which under `field`
    /// ([`Origin::Default`] when neither: the caller applies the default).
    pub(crate) fn pick<T>(
        &mut self,
        field: &'static str,
        given: Option<T>,
        profile: Option<T>,
    ) -> Option<T> {
        let (value, origin) = match (given, profile) {
            (Some(g), _) => (Some(g), Origin::Given),
            (None, Some(p)) => (Some(p), Origin::Profile),
            (None, None) => (None, Origin::Default),
        };
        self.0.push((field, origin));
        value
    }

    /// Where `field` came from ([`Origin::Default`] when it was not recorded).
    pub(crate) fn of(&self, field: &str) -> Origin {
        self.0
            .iter()
            .rev()
            .find(|(f, _)| *f == field)
            .map_or(Origin::Default, |(_, o)| *o)
    }
}

fn nonempty(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn http_url(flag: &str, url: Option<String>) -> anyhow::Result<Option<String>> {
    if let Some(u) = &url {
        super::common::http_url(flag, u)?;
    }
    Ok(url)
}

/// flag/env > saved profile > default; what the node builder does not check.
fn resolve(
    args: &Args,
    profile: Option<&NodeProfile>,
    saved_auth: Option<&NodeAuth>,
) -> anyhow::Result<Resolved> {
    let mut o = Origins::default();
    let p = |f: fn(&NodeProfile) -> &str| profile.and_then(|p| nonempty(Some(f(p))));
    let backend_url = o.pick(
        "backend_url",
        nonempty(args.backend_url.as_deref()),
        p(|p| &p.backend_url),
    );
    let backend = Backend::from_flags(
        args.backend_type.as_deref(),
        backend_url.as_deref(),
        args.backend_api_key.as_deref(),
    )?;
    let directory = if args.skip_registration {
        None
    } else {
        let d = o
            .pick(
                "directory_url",
                nonempty(args.directory_url.as_deref()),
                p(|p| &p.directory_url),
            )
            .unwrap_or_else(|| DEFAULT_DIRECTORY.to_owned());
        http_url("--directory-url", Some(d.trim_end_matches('/').to_owned()))?
    };
    let public_endpoint = o.pick(
        "public_endpoint",
        nonempty(args.public_endpoint.as_deref()),
        p(|p| &p.public_endpoint),
    );
    let public_endpoint = http_url("--public-endpoint", public_endpoint)?;
    let host_text = o
        .pick("host", nonempty(args.host.as_deref()), p(|p| &p.host))
        .unwrap_or_else(|| "::".to_owned());
    let port = o
        .pick("port", args.port, profile.map(|p| p.port))
        .unwrap_or(DEFAULT_PORT);
    if args.relay_capable && args.relay_accept_port.unwrap_or(9485) == port && port != 0 {
        return Err(UsageError(format!(
            "--relay-accept-port {port} collides with the node port; choose another"
        ))
        .into());
    }
    if let Some(w) = &args.relay_worker_endpoint {
        if w.rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(UsageError(format!(
                "--relay-worker-endpoint must be host:port, got {w:?}"
            ))
            .into());
        }
    }
    let access = access::Access::resolve(&args.access, saved_auth, directory.is_some(), &mut o)?;
    Ok(Resolved {
        backend,
        model: o.pick("model", nonempty(args.model.as_deref()), p(|p| &p.model)),
        directory,
        region: o.pick("region", nonempty(args.region.as_deref()), p(|p| &p.region)),
        intent: o
            .pick("intent", nonempty(args.intent.as_deref()), p(|p| &p.intent))
            .unwrap_or_else(|| CHAT.to_owned()),
        max_concurrent: o
            .pick(
                "max_concurrent",
                args.max_concurrent,
                profile.map(|p| p.max_concurrent),
            )
            .unwrap_or(4),
        node_id: o
            .pick(
                "node_id",
                nonempty(args.node_id.as_deref()),
                p(|p| &p.node_id),
            )
            .unwrap_or_else(|| iicp_proto::ids::uuid_v4(&mut rand_core::OsRng).to_string())
            .chars()
            .take(36)
            .collect(),
        port,
        host: args::parse_host(&host_text)?,
        public_endpoint,
        access,
        origins: o,
    })
}

/// The node's settings known before any network I/O (checked with
/// [`NodeBuilder::validate`]); the endpoint, the models and the directory come later.
fn node_builder(args: &Args, cfg: &Resolved) -> NodeBuilder {
    let mut b = Node::builder()
        .node_id(cfg.node_id.clone())
        .intent(cfg.intent.clone())
        .max_concurrent(cfg.max_concurrent)
        .native(!args.no_native)
        .relay_capable(args.relay_capable)
        .backend(cfg.backend.label());
    if let Some(r) = &cfg.region {
        b = b.region(r.clone());
    }
    if let Some(p) = args.relay_accept_port {
        b = b.relay_accept_port(p);
    }
    if let Some(d) = args.heartbeat_interval {
        b = b.heartbeat_interval(d);
    }
    if let Some(d) = args.directory_backoff_base {
        b = b.directory_backoff_base(d);
    }
    if let Some(d) = args.model_check_interval {
        b = b.model_check_interval(d);
    }
    cfg.access.apply(b)
}

/// Binds the port: the first free one of the next 64 (SEED-SDK §2.4), or exactly the
/// one given with a public endpoint (which names it) or port 0.
async fn bind(cfg: &Resolved) -> anyhow::Result<Listener> {
    let (host, port) = (cfg.host, cfg.port);
    let exact = cfg.public_endpoint.is_some() || port == 0;
    let tries = if exact { 1 } else { PORT_TRIES };
    let listener = Listener::bind_first_free(host, port, tries, ListenerConfig::default())
        .await
        .with_context(|| format!("binding port {port} on {host}"))?;
    let bound = listener.local_addr()?.port();
    if !exact && bound != port {
        tracing::warn!("port {port} in use — auto-incremented to first free port {bound}.");
    }
    Ok(listener)
}

/// The configuration root and, with `--node NAME`, the saved profile (a usage error
/// when there is none).
fn load_profile(args: &Args) -> anyhow::Result<(Option<Home>, Option<NodeProfile>)> {
    let home = match &args.node {
        Some(_) => Some(home()?),
        None => Home::from_env().ok(),
    };
    let profile = match (&args.node, &home) {
        (Some(name), Some(h)) => {
            Some(h.load_node(name).map_err(operator_error)?.ok_or_else(|| {
                UsageError(format!(
                    "no saved node {name:?} (expected {}); run `iicp init`",
                    h.node_path(name)
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                ))
            })?)
        }
        _ => None,
    };
    Ok((home, profile))
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    // 1. configuration (no network I/O before it is valid)
    let (home, profile) = load_profile(&args)?;
    let saved_auth = access::load(home.as_ref(), args.node.as_deref())?;
    let cfg = resolve(&args, profile.as_ref(), saved_auth.as_ref())?;
    let mut builder = node_builder(&args, &cfg);
    let manifest = args
        .policy
        .manifest(profile.as_ref().and_then(|p| p.policy_manifest.as_ref()))?;
    let declares_policy = manifest.is_some();
    if let Some(m) = manifest {
        builder = builder.policy_manifest(m);
    }
    builder.validate().map_err(config_error)?;
    let mut run = RunState::start(
        home.as_ref(),
        &cfg.node_id,
        args.force,
        args.log_dir.as_deref(),
    )?;
    let operator = operator_identity(home.as_ref())?;
    let http = probe_client()?;
    let mut manager = notify::Manager::from_env();

    // 2. the model: named, else auto-selected (SEED-SDK §2.3 step 5)
    let (plan, handler) = cfg.backend.prepare(&http, cfg.model.as_deref()).await?;
    if plan.models.len() > 1 {
        tracing::info!("advertising {} additional model(s)", plan.models.len() - 1);
    }
    for (public, _) in &plan.aliases {
        tracing::info!(model = %public, "the backend lists this model by its file path; advertised by its file name");
    }
    if let Backend::Server(spec) = &cfg.backend {
        if let Some(flavour) = spec.flavour(&http).await {
            eprintln!("backend detected: {}", flavour.as_str());
        }
    }

    // 3. the port, bound and kept
    let listener = bind(&cfg).await?;
    let addr = listener.local_addr()?;
    let port = addr.port();
    let endpoint = cfg
        .public_endpoint
        .clone()
        .unwrap_or_else(|| iicp_node::local_endpoint(addr));

    // 4. NAT: the node plans its reachability at start (iicp_node::reach)
    let reach = nat::reach_config(
        &args,
        cfg.public_endpoint.as_deref(),
        cfg.directory.as_deref(),
    );

    // 5. the node; a private endpoint registers only with a private directory
    let mut register = cfg.directory.is_some();
    if register && reach.is_none() && !iicp_node::may_register(&endpoint, cfg.directory.as_deref())
    {
        tracing::warn!(
            "endpoint {endpoint} is private and no relay is configured: registration with {} skipped (pass --public-endpoint)",
            cfg.directory.as_deref().unwrap_or_default()
        );
        register = false;
    }
    if !register {
        cfg.access.warn_without_directory();
    }
    builder = builder
        .endpoint(endpoint.clone())
        .models(plan.models.clone());
    if let Some(ctx) = plan.context_length {
        builder = builder.max_tokens(ctx);
    }
    if let (true, Some(d)) = (register, &cfg.directory) {
        builder = builder.directory_url(d.clone());
    }
    if let Some(op) = &operator {
        builder = builder.operator(op.clone());
    } else if declares_policy {
        eprintln!(
            "policy manifest: no operator identity, so it is sent unsigned (self-attested); strict routing profiles will not admit this node (`iicp init` creates an identity)"
        );
    }
    // the CX key persists with a saved profile
    let persist = home.as_ref().filter(|_| args.node.is_some());
    if let Some(h) = persist {
        builder = builder.cx_key(h.cx_key(&cfg.node_id).map_err(operator_error)?);
    }
    let node = builder.build().map_err(config_error)?;
    run.watch(&node, home.as_ref(), args.node.as_deref());
    // before serving: the first registration result must not be missed
    let mut events = node.subscribe();
    let saved_token = profile.as_ref().and_then(|p| p.node_token.clone());
    if let (true, Some(t)) = (register, saved_token.clone()) {
        node.set_node_token(t); // ownership proof for re-registration (§8.2.4)
    }
    let mut options = ServeOptions::default().with_register(register);
    if let Some(r) = reach {
        options = options.with_reach(r);
    }
    let handle = node
        .serve(listener, handler, options)
        .await
        .with_context(|| format!("serving on port {port}"))?;
    run.serving(
        home.as_ref(),
        &cfg.node_id,
        args.node.as_deref(),
        handle.local_addr(),
    );

    // a signal from here on drains, deregisters and cleans up (also during step 6)
    let (trigger, stop) = shutdown::channel();
    crate::signal::on_terminate(trigger);

    // 6. the summary at once, then the registration result when it comes: with a saved
    //    token, register now (the background loop would only heartbeat); otherwise the
    //    background loop registers at once.
    let register = register && nat::registers(&handle);
    let tier = nat::tier_line(&handle, cfg.public_endpoint.is_some());
    let endpoint = nat::advertised(&handle, &endpoint);
    let native = !args.no_native && nat::native_reachable(&handle);
    report::summary(
        &handle,
        &cfg,
        &endpoint,
        &tier,
        &plan.models,
        operator.as_ref(),
        native,
    );
    run.tick(&node, Lifecycle::Running);
    let mut shown = report::Shown::default();
    let first = if register {
        let wait = async {
            // with the saved token as ownership proof; on failure the background loop
            // heartbeats with it, and registers again when the directory lost the node
            if saved_token.is_some() {
                if let Err(e) = node.register().await {
                    tracing::warn!(error = %e, "registration failed; retrying in the background");
                }
            }
            report::first_result(&mut events, report::FIRST_RESULT_WITHIN).await
        };
        tokio::select! {
            r = wait => r,
            () = stop.cancelled() => None,
        }
    } else {
        None
    };
    report::serving(&handle, &cfg, register, first.as_ref(), &mut shown);
    manager.ready(notify::status_line(&handle, &endpoint, register));

    // 7. report the directory's answers as they change, and keep the profile's node
    //    token in step with the node's (`node_token_changed`), until a signal arrives
    let mut token = ProfileToken {
        file: persist.zip(profile.as_ref()),
        node_id: &cfg.node_id,
        saved: saved_token,
    };
    token.sync(&node); // a token issued while the summary waited
    let mut health = tokio::time::interval(Duration::from_secs(1));
    let mut watchdog = tokio::time::interval(manager.watchdog_every());
    let mut listening = true;
    loop {
        run.tick(&node, Lifecycle::Running);
        manager.status(notify::status_line(&handle, &endpoint, register));
        tokio::select! {
            () = stop.cancelled() => break,
            ev = events.recv(), if listening => match ev {
                Ok(ev) if matches!(ev.kind, EventKind::NodeTokenChanged { .. }) => token.sync(&node),
                Ok(ev) => shown.later(&ev),
                Err(RecvError::Lagged(_)) => token.sync(&node), // events lost: read it again
                Err(RecvError::Closed) => listening = false,
            },
            _ = health.tick() => {}
            _ = watchdog.tick() => manager.ping(),
        }
    }
    manager.stopping();
    run.tick(&node, Lifecycle::Stopping);
    let stopped = handle.stop().await;
    if stopped.deregistered {
        println!("deregistered {}", cfg.node_id);
        token.save(None);
    }
    run.finish().await;
    println!("stopped");
    Ok(())
}
