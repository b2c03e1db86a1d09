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

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

/// Special-use suffixes refused as provider hosts.
const LOCAL_SUFFIXES: [&str; 8] = [
    ".local",
    ".localhost",
    ".internal",
    ".lan",
    ".home.arpa",
    ".test",
    ".example",
    ".invalid",
];

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
        let private = addrs.iter().filter(|a| !is_global(**a)).count();
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
        if let Some(ip) = iicp_proto::endpoint::ip_literal(host) {
            return self.check_addresses(&[ip]);
        }
        if self.allow_private {
            return Ok(());
        }
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        if name == "localhost"
            || !name.contains('.')
            || LOCAL_SUFFIXES.iter().any(|s| name.ends_with(s))
        {
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
        if self.allow_private || iicp_proto::endpoint::ip_literal(&host).is_some() {
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

/// Host (IPv6 without brackets) and port of an endpoint URL.
pub(crate) fn host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        "iicp" | "iicpsec" => 9484,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.contains('@') || authority.is_empty() {
        return None;
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, tail) = v6.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if tail.is_empty() => default_port,
            None => return None,
        };
        (h.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().ok()?),
            None => (authority.to_owned(), default_port),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some((host, port))
}

/// Whether an address is globally routable.
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => is_global_v6(v6),
    }
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0
        || a == 10
        || a == 127
        || (a == 100 && (64..=127).contains(&b))
        || (a == 169 && b == 254)
        || (a == 172 && (16..=31).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 192 && b == 0 && c == 2)
        || (a == 192 && b == 88 && c == 99)
        || (a == 192 && b == 168)
        || (a == 198 && (18..=19).contains(&b))
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || a >= 224)
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_global_v4(v4);
    }
    let s = ip.segments();
    if ip.is_unspecified() || ip.is_loopback() {
        return false;
    }
    // IPv4-compatible (deprecated) ::a.b.c.d
    if s[..6] == [0, 0, 0, 0, 0, 0] {
        return false;
    }
    // NAT64 64:ff9b::/96 and 6to4 2002::/16 embed an IPv4 address.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return is_global_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    if s[0] == 0x2002 {
        return is_global_v4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    !((s[0] & 0xfe00) == 0xfc00          // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80     // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0     // site-local fec0::/10
        || (s[0] & 0xff00) == 0xff00     // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard 100::/64
        || (s[0] == 0x2001 && s[1] < 0x0200 && s[1] != 0)) // IETF protocol assignments (Teredo 2001::/32 stays)
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
        assert!(!is_global(
            "2001:db8::1"
                .parse()
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
        ));
        assert!(is_global(
            "2606:4700::1111"
                .parse()
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
        ));
    }
}
