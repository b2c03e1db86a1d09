//! The flags of `serve` and their value parsers (durations like `30s`, `500ms`).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::cmd::UsageError;

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Saved node profile to load (~/.iicp/nodes/NAME.json, created by `init`).
    #[arg(long, env = "IICP_NODE_NAME", value_name = "NAME")]
    pub(super) node: Option<String>,
    /// Model to serve (auto-selected when the backend lists exactly one).
    #[arg(long, env = "IICP_BACKEND_MODEL", value_name = "NAME")]
    pub(super) model: Option<String>,
    /// Model server URL [default: http://localhost:11434; anthropic: https://api.anthropic.com].
    #[arg(long, env = "IICP_BACKEND_URL", value_name = "URL")]
    pub(super) backend_url: Option<String>,
    /// Backend type: openai_compat, vllm, llamacpp, anthropic [default: openai_compat].
    #[arg(long, env = "IICP_BACKEND_TYPE", value_name = "TYPE")]
    pub(super) backend_type: Option<String>,
    /// API key of the backend (Bearer; `x-api-key` for anthropic).
    #[arg(
        long,
        env = "IICP_BACKEND_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub(super) backend_api_key: Option<String>,
    /// Externally reachable URL of this node (disables port auto-increment).
    #[arg(long, env = "IICP_PUBLIC_ENDPOINT", value_name = "URL")]
    pub(super) public_endpoint: Option<String>,
    /// Directory base URL [default: https://iicp.network/api].
    #[arg(long, env = "IICP_DIRECTORY_URL", value_name = "URL")]
    pub(super) directory_url: Option<String>,
    /// Heartbeat interval until the directory sets one, 100ms-60s (e.g. 30s, 500ms) [default: 30s].
    #[arg(long, env = "IICP_HEARTBEAT_INTERVAL", value_name = "DURATION", value_parser = heartbeat_interval)]
    pub(super) heartbeat_interval: Option<Duration>,
    /// First retry delay after a failed directory call, doubling to 60s; 10ms-60s [default: 1s].
    #[arg(long, env = "IICP_DIRECTORY_BACKOFF_BASE", value_name = "DURATION", value_parser = backoff_base)]
    pub(super) directory_backoff_base: Option<Duration>,
    /// How often the backend's model list is read: a changed list is advertised and
    /// registered again; a failed read shows as backend_attention; 0 never, else 100ms-1h [default: 60s].
    #[arg(long, env = "IICP_MODEL_CHECK_INTERVAL", value_name = "DURATION", value_parser = model_check_interval)]
    pub(super) model_check_interval: Option<Duration>,
    /// Region (registered as `unknown` when empty).
    #[arg(long, env = "IICP_REGION")]
    pub(super) region: Option<String>,
    /// Intent served [default: urn:iicp:intent:llm:chat:v1].
    #[arg(long, env = "IICP_INTENT", value_name = "URN")]
    pub(super) intent: Option<String>,
    /// Concurrent tasks, 1-256 [default: 4].
    #[arg(long, env = "IICP_MAX_CONCURRENT", value_name = "N")]
    pub(super) max_concurrent: Option<u32>,
    /// Node id [default: the saved profile's, else a random UUID].
    #[arg(long, env = "IICP_NODE_ID", value_name = "ID")]
    pub(super) node_id: Option<String>,
    /// Port; the first free one of the next 64 is taken unless --public-endpoint is set [default: 9484].
    #[arg(long, env = "IICP_PORT", value_name = "N")]
    pub(super) port: Option<u16>,
    /// Address to bind [default: :: (dual stack)].
    #[arg(long, env = "IICP_HOST", value_name = "HOST")]
    pub(super) host: Option<String>,
    /// Serve without registering with a directory (no heartbeat).
    #[arg(long, env = "IICP_SKIP_REGISTRATION", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub(super) skip_registration: bool,
    /// Detect NAT reachability at startup (the default).
    #[arg(long, env = "IICP_AUTO_DETECT_NAT", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub(super) auto_detect_nat: bool,
    /// Do not detect NAT reachability (overrides --auto-detect-nat and the environment).
    #[arg(long)]
    pub(super) no_auto_detect_nat: bool,
    /// Offer relay service to nodes behind CGNAT (advertised at registration).
    #[arg(long, env = "IICP_RELAY_CAPABLE", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub(super) relay_capable: bool,
    /// TCP port of the relay accept server [default: 9485].
    #[arg(long, env = "IICP_RELAY_ACCEPT_PORT", value_name = "N")]
    pub(super) relay_accept_port: Option<u16>,
    /// Relay host:port to reach this node through (disables relay auto-election).
    #[arg(long, env = "IICP_RELAY_WORKER_ENDPOINT", value_name = "HOST:PORT")]
    pub(super) relay_worker_endpoint: Option<String>,
    /// How often the route is checked and planned again when it broke or could be better (a relay that appeared, a lost mapping), e.g. 5m; 0 never [default: 5m].
    #[arg(long, env = "IICP_REPLAN_INTERVAL", value_name = "DURATION", value_parser = replan_interval)]
    pub(super) replan_interval: Option<Duration>,
    /// Do not try UPnP port mapping or IPv6 pinholes during NAT detection.
    #[arg(long, env = "IICP_SKIP_UPNP", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub(super) skip_upnp: bool,
    /// Do not serve the native IICP transport on the HTTP port.
    #[arg(long, env = "IICP_DISABLE_NATIVE_TRANSPORT", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub(super) no_native: bool,
    /// Take over the single-instance lock (~/.iicp/run/<node_id>.pid) of a running process.
    #[arg(long, env = "IICP_FORCE", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub(super) force: bool,
    /// Also log to DIR/<node_id>.log, and lifecycle events to DIR/events.jsonl.
    #[arg(long, env = "IICP_LOG_DIR", value_name = "DIR")]
    pub(super) log_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub(super) access: super::access::AccessArgs,
    #[command(flatten)]
    pub(super) policy: super::policy::PolicyArgs,
}

fn replan_interval(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    duration_within(text, Duration::from_secs(1), Duration::from_secs(24 * 3600))
}

/// A duration of whole milliseconds, seconds or minutes (`500ms`, `30s`, `2m`; a bare
/// number is seconds) within `min..=max`.
fn duration_within(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s or 500ms"))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("{text:?}: use ms, s or m")),
    };
    if d < min || d > max {
        return Err(format!(
            "{text:?} is out of range ({}-{})",
            fmt_duration(min),
            fmt_duration(max)
        ));
    }
    Ok(d)
}

fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn model_check_interval(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    duration_within(text, Duration::from_millis(100), Duration::from_secs(3600))
}

fn heartbeat_interval(text: &str) -> Result<Duration, String> {
    duration_within(text, Duration::from_millis(100), Duration::from_secs(60))
}

fn backoff_base(text: &str) -> Result<Duration, String> {
    duration_within(text, Duration::from_millis(10), Duration::from_secs(60))
}

/// `--host`: an IP address (`localhost` and empty are IPv4).
pub(super) fn parse_host(host: &str) -> anyhow::Result<IpAddr> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    match h {
        "" | "0.0.0.0" => Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        "localhost" => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        _ => h
            .parse()
            .map_err(|_| UsageError(format!("--host must be an IP address, got {host:?}")).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        assert_eq!(heartbeat_interval("500ms"), Ok(ms(500)));
        assert_eq!(heartbeat_interval(" 30s "), Ok(ms(30_000)));
        assert_eq!(heartbeat_interval("45"), Ok(ms(45_000)));
        assert_eq!(heartbeat_interval("1m"), Ok(ms(60_000)));
        assert_eq!(backoff_base("10ms"), Ok(ms(10)));
        for bad in ["99ms", "2m", "-1s", "1.5s", "s", "", "10 parsecs"] {
            assert!(heartbeat_interval(bad).is_err(), "{bad}");
        }
        assert_eq!(
            backoff_base("9ms"),
            Err("\"9ms\" is out of range (10ms-60s)".to_owned())
        );
    }
}
