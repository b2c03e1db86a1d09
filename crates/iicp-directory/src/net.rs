//! Endpoint parsing and the address policy (SSRF guard).
//!
//! Implements the routability invariant of PROTOCOL.md §8.2 (`IICP-E035` for
//! non-routable hosts), the `/v1/probe` guard of §8.9 and the address vectors of
//! `fixtures/endpoint-security-v1.json`: loopback, RFC 1918, link-local (cloud
//! metadata), CGNAT, documentation, benchmarking, unique-local and multicast addresses,
//! IPv4-mapped forms of those, and local-only host names (`localhost`, `*.local`,
//! `*.internal`, single-label names) are private. A private-mesh directory
//! (DESIGN §4.12) allows them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An endpoint URL split into the parts the directory checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EndpointUrl {
    /// Lowercase scheme.
    pub(crate) scheme: String,
    /// Host without IPv6 brackets, lowercase.
    pub(crate) host: String,
    /// Port (explicit or the scheme default).
    pub(crate) port: u16,
    /// The host as an IP address, when it is one (including the single-number IPv4 form
    /// `http://2130706433:P` some SDKs use).
    pub(crate) ip: Option<IpAddr>,
}

/// Why an endpoint URL was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UrlProblem {
    /// Not an absolute URL of an accepted scheme with a host.
    Malformed,
    /// Scheme not accepted here.
    Scheme,
    /// Contains userinfo, a query or a fragment.
    Extras,
}

/// Parses `url`, accepting only the given schemes (`default_port` per scheme).
pub(crate) fn parse_url(url: &str, schemes: &[(&str, u16)]) -> Result<EndpointUrl, UrlProblem> {
    let url = url.trim();
    if url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(UrlProblem::Malformed);
    }
    let (scheme, rest) = url.split_once("://").ok_or(UrlProblem::Malformed)?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = schemes
        .iter()
        .find(|(s, _)| *s == scheme)
        .map(|(_, p)| *p)
        .ok_or(UrlProblem::Scheme)?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    if authority.contains('@') || tail.contains('?') || tail.contains('#') {
        return Err(UrlProblem::Extras);
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or(UrlProblem::Malformed)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(UrlProblem::Malformed)?),
        };
        (h, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(UrlProblem::Malformed);
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or(UrlProblem::Malformed)?,
    };
    let host = host.to_ascii_lowercase();
    let ip = parse_host_ip(&host);
    if ip.is_none()
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(UrlProblem::Malformed);
    }
    Ok(EndpointUrl {
        scheme,
        host,
        port,
        ip,
    })
}

/// The host as an IP address: dotted IPv4, IPv6 (brackets already removed), or one
/// decimal number (the WHATWG single-number IPv4 form).
pub(crate) fn parse_host_ip(host: &str) -> Option<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ip);
    }
    if !host.is_empty() && host.len() <= 10 && host.bytes().all(|b| b.is_ascii_digit()) {
        return host
            .parse::<u32>()
            .ok()
            .map(|n| IpAddr::V4(Ipv4Addr::from(n)));
    }
    None
}

/// True when `ip` is not globally routable (see the module docs).
pub(crate) fn is_private_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private_v4(v4);
            }
            is_private_v6(v6)
        }
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..=127).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..=19).contains(&b)) // benchmarking
        || a >= 240 // reserved
}

fn is_private_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (seg[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (seg[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
        || (seg[0] == 0x0064 && seg[1] == 0xff9b) // NAT64 (maps private space too)
        || (seg[0] == 0 && seg[1] == 0 && seg[2] == 0 && seg[3] == 0 && seg[4] == 0 && seg[5] == 0)
    // IPv4-compatible
}

/// True when a host *name* can only be local: `localhost`, `*.localhost`, `*.local`,
/// `*.internal`, `*.lan`, `*.home.arpa`, or a single label (`ollama`).
pub(crate) fn is_local_hostname(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    host == "localhost"
        || !host.contains('.')
        || [".localhost", ".local", ".internal", ".lan", ".home.arpa"]
            .iter()
            .any(|s| host.ends_with(s))
}

/// True when the endpoint host is private: a private IP literal or a local-only name.
pub(crate) fn is_private_host(url: &EndpointUrl) -> bool {
    match url.ip {
        Some(ip) => is_private_ip(ip),
        None => is_local_hostname(&url.host),
    }
}

/// `ipv4`, `ipv6` or `hostname` for the NODELIST `address_family` member.
pub(crate) fn address_family(url: &EndpointUrl) -> &'static str {
    match url.ip {
        Some(IpAddr::V4(_)) => "ipv4",
        Some(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_some() => "ipv4",
        Some(IpAddr::V6(_)) => "ipv6",
        None => "hostname",
    }
}

/// The endpoint schemes of REGISTER `endpoint`.
pub(crate) const HTTP_SCHEMES: &[(&str, u16)] = &[("http", 80), ("https", 443)];
/// The schemes of REGISTER `transport_endpoint` (§8.2: default port 9484).
pub(crate) const NATIVE_SCHEMES: &[(&str, u16)] = &[
    ("iicp", iicp_proto::constants::DEFAULT_PORT),
    ("iicpsec", iicp_proto::constants::DEFAULT_PORT),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        let u = parse_url("http://127.0.0.1:9484", HTTP_SCHEMES).unwrap_or_else(|_| panic!());
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 9484));
        let u = parse_url("https://[::1]/", HTTP_SCHEMES).unwrap_or_else(|_| panic!());
        assert_eq!((u.host.as_str(), u.port), ("::1", 443));
        let u = parse_url("http://2130706433:80", HTTP_SCHEMES).unwrap_or_else(|_| panic!());
        assert_eq!(u.ip, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(parse_url("ftp://x", HTTP_SCHEMES), Err(UrlProblem::Scheme));
        assert_eq!(
            parse_url("http://u:p@x.com", HTTP_SCHEMES),
            Err(UrlProblem::Extras)
        );
        assert_eq!(
            parse_url("http://x.com:0", HTTP_SCHEMES),
            Err(UrlProblem::Malformed)
        );
        assert_eq!(
            parse_url("not a url", HTTP_SCHEMES),
            Err(UrlProblem::Malformed)
        );
        assert!(parse_url("iicp://node.example.com", NATIVE_SCHEMES).is_ok());
    }

    #[test]
    fn endpoint_security_vectors() {
        for (addr, private) in [
            ("93.184.216.34", false),
            ("2606:2800:220:1:248:1893:25c8:1946", false),
            ("127.0.0.1", true),
            ("10.0.0.5", true),
            ("169.254.169.254", true),
            ("100.64.0.1", true),
            ("192.0.2.10", true),
            ("fd00::1", true),
            ("fe80::1", true),
            ("::ffff:127.0.0.1", true),
            ("::1", true),
            ("0.0.0.0", true),
        ] {
            let ip: IpAddr = addr.parse().unwrap_or_else(|_| panic!("{addr}"));
            assert_eq!(is_private_ip(ip), private, "{addr}");
        }
        for (host, local) in [
            ("provider.example.com", false),
            ("localhost", true),
            ("provider.local", true),
            ("provider.internal", true),
            ("ollama", true),
        ] {
            assert_eq!(is_local_hostname(host), local, "{host}");
        }
    }
}
