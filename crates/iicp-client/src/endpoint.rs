//! Provider endpoint (SSRF) policy (PROTOCOL.md §9.3, `endpoint-security-v1.json`,
//! DESIGN §4.12).
//!
//! Unless private endpoints are explicitly allowed, a provider endpoint must name a
//! public host: IP literals and every resolved address must be globally routable
//! (loopback, RFC 1918, link-local, CGNAT, documentation, benchmarking, multicast,
//! reserved, unique-local and IPv4-mapped private addresses are refused), a mix of
//! public and private answers is refused, and names such as `localhost`, bare
//! single-label hosts and the special-use suffixes `.local`, `.localhost`, `.internal`,
//! `.lan`, `.home.arpa`, `.test`, `.example`, `.invalid` are refused before resolution.
//!
//! Redirects on provider calls are followed only within the same origin (307/308, at
//! most 3).
//!
//! Where the check happens: names and IP literals are checked without I/O before a
//! node is tried ([`EndpointPolicy::check_url`]); resolved addresses are checked by the
//! connectors of the client's provider HTTP and native pools, on the very answer they
//! dial ([`EndpointPolicy::address_rule`], `iicp_transport::resolve`), so a DNS answer
//! that changes between a check and the connection (rebinding) cannot slip through.

use std::net::IpAddr;

use iicp_proto::endpoint;

use iicp_transport::resolve::AddressRule;

/// Why an endpoint was refused (code `IICP-ENDPOINT-REFUSED`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointRefusal {
    /// Not an `http(s)://` / `iicp(sec)://` URL with a host.
    #[error("provider endpoint is not a valid URL")]
    Malformed,
    /// The host is a local or special-use name.
    #[error("provider endpoint host is a local or special-use name")]
    LocalName,
    /// An address is not globally routable.
    #[error("provider endpoint address is not globally routable")]
    PrivateAddress,
    /// Public and private addresses were mixed in one answer.
    #[error("provider endpoint resolves to both public and private addresses")]
    MixedAnswer,
    /// The name did not resolve.
    #[error("provider endpoint host did not resolve")]
    Unresolvable,
}

/// The endpoint policy. `Default` refuses private endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    allow_private: bool,
}

impl EndpointPolicy {
    /// A policy; `allow_private` admits loopback and private endpoints (dev meshes).
    pub fn new(allow_private: bool) -> Self {
        Self { allow_private }
    }

    /// Whether private endpoints are allowed.
    pub fn allows_private(&self) -> bool {
        self.allow_private
    }

    /// The policy as an address rule for the transport's connectors (`None` when
    /// private endpoints are allowed: then every address is).
    pub fn address_rule(&self) -> Option<AddressRule> {
        if self.allow_private {
            return None;
        }
        let policy = *self;
        Some(AddressRule::new(move |addrs| {
            policy.check_addresses(addrs).is_ok()
        }))
    }

    /// Checks a set of resolved addresses: all must be global (any mix refused).
    pub fn check_addresses(&self, addrs: &[IpAddr]) -> Result<(), EndpointRefusal> {
        if addrs.is_empty() {
            return Err(EndpointRefusal::Unresolvable);
        }
        if self.allow_private {
            return Ok(());
        }
        let private = addrs
            .iter()
            .filter(|a| !endpoint::classify_ip(**a).is_global())
            .count();
        match private {
            0 => Ok(()),
            n if n == addrs.len() => Err(EndpointRefusal::PrivateAddress),
            _ => Err(EndpointRefusal::MixedAnswer),
        }
    }

    /// Checks a host (name or IP literal, IPv6 with or without brackets) without
    /// resolving it.
    pub fn check_host(&self, host: &str) -> Result<(), EndpointRefusal> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(EndpointRefusal::Malformed);
        }
        // every literal form the resolver takes without a lookup (`127.1`,
        // `2130706433`, `0x7f.1`, …) is an address, not a name
        if let Some(ip) = endpoint::ip_literal(host) {
            return self.check_addresses(&[ip]);
        }
        if !self.allow_private && !endpoint::classify_name(host).is_global() {
            return Err(EndpointRefusal::LocalName);
        }
        Ok(())
    }

    /// Checks the host of an endpoint URL (`http`, `https`, `iicp`, `iicpsec`).
    pub fn check_url(&self, url: &str) -> Result<(), EndpointRefusal> {
        let (host, _) = host_port(url).ok_or(EndpointRefusal::Malformed)?;
        self.check_host(&host)
    }

    /// [`EndpointPolicy::check_url`], then, for a host name, resolves it and checks
    /// every address. (A pre-flight check for callers; the client itself relies on its
    /// connectors' [`address_rule`](EndpointPolicy::address_rule) instead, which sees
    /// the answer actually dialled.)
    pub async fn check_resolved(&self, url: &str) -> Result<(), EndpointRefusal> {
        let (host, port) = host_port(url).ok_or(EndpointRefusal::Malformed)?;
        self.check_host(&host)?;
        if self.allow_private || endpoint::ip_literal(&host).is_some() {
            return Ok(());
        }
        let addrs: Vec<IpAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|_| EndpointRefusal::Unresolvable)?
            .map(|sa| sa.ip())
            .take(64)
            .collect();
        self.check_addresses(&addrs)
    }
}

/// Host (IPv6 without brackets, lowercase) and port of an endpoint URL
/// (`http`, `https`, `iicp`, `iicpsec`).
pub(crate) fn host_port(url: &str) -> Option<(String, u16)> {
    endpoint::parse_url(url, endpoint::ENDPOINT_SCHEMES)
        .ok()
        .map(|u| (u.host, u.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let p = EndpointPolicy::default();
        assert_eq!(p.check_url("https://node.example.com"), Ok(()));
        assert_eq!(
            p.check_url("http://127.0.0.1:9484"),
            Err(EndpointRefusal::PrivateAddress)
        );
        assert_eq!(
            p.check_url("iicp://[::1]:9484"),
            Err(EndpointRefusal::PrivateAddress)
        );
        assert_eq!(
            p.check_url("http://ollama:11434"),
            Err(EndpointRefusal::LocalName)
        );
        assert_eq!(p.check_url("nope"), Err(EndpointRefusal::Malformed));
        assert_eq!(
            EndpointPolicy::new(true).check_url("http://127.0.0.1:1"),
            Ok(())
        );
        assert_eq!(
            host_port("http://[2001:db8::1]:80/x"),
            Some(("2001:db8::1".to_owned(), 80))
        );
        assert_eq!(
            p.check_url("http://[2001:db8::1]:80"),
            Err(EndpointRefusal::PrivateAddress)
        );
        assert_eq!(p.check_url("http://[2606:4700::1111]:80"), Ok(()));
        assert_eq!(
            p.check_url("http://127.1"),
            Err(EndpointRefusal::PrivateAddress)
        );
        assert_eq!(
            p.check_url("https://x.invalid"),
            Err(EndpointRefusal::LocalName)
        );
    }
}
