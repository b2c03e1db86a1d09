//! Reachability checks: the REGISTER liveness probe of `GET {endpoint}/iicp/health`
//! (PROTOCOL.md §8.2, §8.2.2), the periodic active probe of §8.9/§8.12, and the TCP
//! check behind `GET /v1/probe` (§8.9).
//!
//! Peers often register before they listen (INTEROP.md), so a failed probe at REGISTER
//! time does not reject the node: it stays unverified and the directory re-probes it in
//! the background with backoff. In production mode an endpoint whose addresses include
//! a private one is refused (the SSRF guard of `fixtures/endpoint-security-v1.json`): the
//! `/v1/probe` TCP check dials exactly the addresses it checked, and the health probe's
//! HTTP client carries the guard as its address rule, so it is applied to the answer
//! the connector dials (no DNS-rebinding window). A private-mesh directory skips it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use iicp_transport::http::client::{HttpClient, HttpClientError, Redirects};
use iicp_transport::resolve::AddressRule;

use crate::net::{is_private_ip, EndpointUrl};

/// Largest `/iicp/health` answer read.
const MAX_HEALTH_BYTES: usize = 64 * 1024;

/// Why a probe did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProbeFailure {
    /// The host name resolves to a private address (production mode only).
    PrivateAddress,
    /// DNS failed, connect failed, timeout, or a non-2xx answer.
    Unreachable,
}

/// Resolves `url`'s host (bounded by `timeout`) and applies the SSRF guard.
pub(crate) async fn resolve_checked(
    url: &EndpointUrl,
    allow_private: bool,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, ProbeFailure> {
    let addrs: Vec<SocketAddr> = match url.ip {
        Some(ip) => vec![SocketAddr::new(ip, url.port)],
        None => {
            let lookup = tokio::net::lookup_host((url.host.as_str(), url.port));
            match tokio::time::timeout(timeout, lookup).await {
                Ok(Ok(it)) => it.take(16).collect(),
                _ => return Err(ProbeFailure::Unreachable),
            }
        }
    };
    if addrs.is_empty() {
        return Err(ProbeFailure::Unreachable);
    }
    if !allow_private && addrs.iter().any(|a| is_private_ip(a.ip())) {
        return Err(ProbeFailure::PrivateAddress);
    }
    Ok(addrs)
}

/// The SSRF guard as the probe client's address rule (`None` in a private mesh).
pub(crate) fn address_rule(private_mesh: bool) -> Option<AddressRule> {
    (!private_mesh).then(|| AddressRule::new(|addrs| !addrs.iter().any(|a| is_private_ip(*a))))
}

/// `GET {endpoint}/iicp/health` with `client` (which carries the SSRF guard, see
/// [`address_rule`]); the latency in ms on a 2xx answer.
pub(crate) async fn health(
    client: &HttpClient,
    endpoint: &str,
    timeout: Duration,
) -> Result<u64, ProbeFailure> {
    let started = Instant::now();
    let target = format!("{}/iicp/health", endpoint.trim_end_matches('/'));
    let reply = client
        .get(&target)
        .timeout(timeout)
        .redirects(Redirects::None)
        .max_response_bytes(MAX_HEALTH_BYTES)
        .send()
        .await
        .map_err(|e| match e {
            HttpClientError::AddressRefused { .. } => ProbeFailure::PrivateAddress,
            _ => ProbeFailure::Unreachable,
        })?;
    if reply.is_success() {
        Ok(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX))
    } else {
        Err(ProbeFailure::Unreachable)
    }
}

/// TCP connect to the first reachable of `addrs`; latency in ms.
pub(crate) async fn tcp(addrs: &[SocketAddr], timeout: Duration) -> Option<u64> {
    let started = Instant::now();
    for addr in addrs.iter().take(4) {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        if let Ok(Ok(_stream)) =
            tokio::time::timeout(left, tokio::net::TcpStream::connect(addr)).await
        {
            return Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        }
    }
    None
}
