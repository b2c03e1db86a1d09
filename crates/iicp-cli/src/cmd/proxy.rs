//! `proxy`: the mesh as a local OpenAI-compatible endpoint (`iicp_proxy::Proxy`), on
//! port 9483 by default, until SIGINT or SIGTERM.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::Context as _;
use iicp_client::{Client, Encryption, Qos};
use iicp_proxy::Proxy;
use iicp_transport::listener::{Listener, ListenerConfig};
use iicp_transport::shutdown;

use super::chat::TransportArg;
use super::common::DEFAULT_DIRECTORY;
use super::UsageError;

/// Ports tried from the default port when it is taken (an explicit `--port` is exact).
const PORT_TRIES: u16 = 64;

/// Arguments of `proxy`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Address to listen on (an IP address or `localhost`); anything but loopback needs
    /// --api-key or --allow-remote.
    #[arg(long, env = "IICP_PROXY_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on [default: 9483, or the next free one]; given explicitly, exactly
    /// this port (0: any free port).
    #[arg(long, env = "IICP_PROXY_PORT")]
    port: Option<u16>,
    /// Directory base URL.
    #[arg(long, env = "IICP_DIRECTORY_URL", default_value = DEFAULT_DIRECTORY, value_name = "URL")]
    directory_url: String,
    /// Preferred region of the nodes (a preference, not an exclusion).
    #[arg(long, env = "IICP_PROXY_PREFERRED_REGION")]
    region: Option<String>,
    /// Directory token of this consumer.
    #[arg(long, env = "IICP_NODE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Require this key from local applications (`Authorization: Bearer <key>` or
    /// `x-api-key: <key>`).
    #[arg(long, env = "IICP_PROXY_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Listen on a non-loopback address without --api-key (anyone who can reach the
    /// port can use the mesh through it).
    #[arg(long)]
    allow_remote: bool,
    /// QoS class of the chats: realtime, interactive, batch, best-effort.
    #[arg(long, env = "IICP_PROXY_QOS", default_value = "interactive", value_parser = parse_qos)]
    qos: Qos,
    /// Minimum node reputation, 0–1.
    #[arg(long, env = "IICP_PROXY_MIN_REPUTATION")]
    min_reputation: Option<f64>,
    /// Transport to the nodes.
    #[arg(long, value_enum, default_value_t = TransportArg::Auto)]
    transport: TransportArg,
    /// Also use nodes without an IICP-CX key, sending them plaintext (unsafe outside a
    /// private mesh).
    #[arg(long, env = "IICP_CX_ALLOW_PLAINTEXT", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    allow_plaintext: bool,
    /// Accept loopback and private node endpoints (a private mesh).
    #[arg(long, env = "IICP_ALLOW_PRIVATE_ENDPOINTS", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    allow_private_endpoints: bool,
    #[command(flatten)]
    routing: super::common::RoutingArgs,
    /// Deadline of one request in ms (at most 120000); past it, 504.
    #[arg(long, env = "IICP_PROXY_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=120_000))]
    timeout_ms: u64,
    /// Largest request body in bytes; larger → 413.
    #[arg(long, env = "IICP_PROXY_MAX_BODY_BYTES", default_value_t = iicp_proxy::DEFAULT_MAX_BODY_BYTES as u64, value_parser = clap::value_parser!(u64).range(1..=(64 * 1024 * 1024)))]
    max_body_bytes: u64,
}

fn parse_qos(s: &str) -> Result<Qos, String> {
    Qos::parse(s).ok_or_else(|| "expected realtime, interactive, batch or best-effort".to_owned())
}

/// The address to bind: an IP literal or `localhost`.
fn host_ip(host: &str) -> anyhow::Result<IpAddr> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    host.trim_matches(|c| c == '[' || c == ']')
        .parse()
        .map_err(|_| {
            UsageError(format!(
                "--host must be an IP address or localhost, got {host:?}"
            ))
            .into()
        })
}

/// Refuses a non-loopback bind without an API key unless `--allow-remote`.
fn check_exposure(ip: IpAddr, api_key: bool, allow_remote: bool) -> anyhow::Result<()> {
    if ip.is_loopback() || api_key || allow_remote {
        return Ok(());
    }
    Err(UsageError(format!(
        "refusing to listen on {ip} without --api-key: anyone who reaches it could use the mesh \
         through this proxy (add --api-key KEY, or --allow-remote to accept that)"
    ))
    .into())
}

/// The proxy of these arguments (usage errors before any I/O).
fn build(args: &Args) -> anyhow::Result<Proxy> {
    super::common::http_url("--directory-url", &args.directory_url)?;
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut client = Client::builder()
        .directory_url(args.directory_url.clone())
        .allow_private_endpoints(args.allow_private_endpoints)
        .routing_policy(args.routing.policy()?)
        .transport(args.transport.into())
        .encryption(if args.allow_plaintext {
            Encryption::AllowPlaintext
        } else {
            Encryption::Required
        })
        .timeout(timeout);
    if let Some(t) = args.token.as_deref().filter(|t| !t.is_empty()) {
        client = client.api_token(t);
    }
    let client = client
        .build()
        .map_err(|e| UsageError(format!("invalid client configuration: {e}")))?;
    let mut proxy = Proxy::builder()
        .client(client)
        .timeout(timeout)
        .qos(args.qos)
        .max_body_bytes(usize::try_from(args.max_body_bytes).unwrap_or(usize::MAX));
    if let Some(key) = args.api_key.as_deref().filter(|k| !k.is_empty()) {
        proxy = proxy.api_key(key);
    }
    if let Some(r) = args.region.as_deref().filter(|r| !r.is_empty()) {
        proxy = proxy.region(r);
    }
    if let Some(m) = args.min_reputation {
        proxy = proxy.min_reputation(m);
    }
    proxy.build().map_err(|e| UsageError(e.to_string()).into())
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let ip = host_ip(&args.host)?;
    let has_key = args.api_key.as_deref().is_some_and(|k| !k.is_empty());
    check_exposure(ip, has_key, args.allow_remote)?;
    let proxy = build(&args)?;
    let (start, tries) = match args.port {
        Some(p) => (p, 1),
        None => (iicp_proxy::DEFAULT_PORT, PORT_TRIES),
    };
    let listener = Listener::bind_first_free(ip, start, tries, ListenerConfig::default())
        .await
        .with_context(|| format!("binding port {start} on {ip}"))?;
    let bound = listener.local_addr()?;
    if args.port.is_none() && bound.port() != start {
        tracing::warn!(
            "port {start} in use — using the first free port {}",
            bound.port()
        );
    }
    let (trigger, sd) = shutdown::channel();
    crate::signal::on_terminate(trigger);
    let url = format!("http://{bound}");
    println!(
        "IICP proxy listening on {url} (directory {})",
        args.directory_url
    );
    println!("  OpenAI:    OPENAI_BASE_URL={url}/v1");
    println!(
        "  try:       curl -s {url}/v1/chat/completions -H 'Content-Type: application/json'{} -d '{{\"model\":\"iicp\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'",
        if has_key { " -H \"Authorization: Bearer $IICP_PROXY_API_KEY\"" } else { "" }
    );
    proxy.serve(listener, sd).await.context("serving")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            host_ip("localhost").expect("ok"),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(host_ip("[::1]").expect("ok").to_string(), "::1");
        assert!(host_ip("example.com").is_err());
    }

    #[test]
    fn remote_needs_a_key_or_consent() {
        let any: IpAddr = "0.0.0.0".parse().expect("ip");
        let e = check_exposure(any, false, false).expect_err("refused");
        assert!(e.downcast_ref::<UsageError>().is_some());
        assert!(check_exposure(any, true, false).is_ok());
        assert!(check_exposure(any, false, true).is_ok());
        assert!(check_exposure(IpAddr::V4(Ipv4Addr::LOCALHOST), false, false).is_ok());
    }
}
