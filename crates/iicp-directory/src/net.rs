//! Endpoint parsing and the address policy (SSRF guard), on the workspace's one
//! endpoint model ([`iicp_proto::endpoint`]).
//!
//! Implements the routability invariant of PROTOCOL.md §8.2 (`IICP-E035` for
//! non-routable hosts), the `/v1/probe` guard of §8.9 and the address vectors of
//! `fixtures/endpoint-security-v1.json`: loopback, RFC 1918, link-local (cloud
//! metadata), CGNAT, documentation, benchmarking, unique-local and multicast addresses,
//! IPv4-mapped forms of those, and local-only host names (`localhost`, `*.local`,
//! `*.internal`, single-label names) are private. A private-mesh directory
//! (DESIGN §4.12) allows them.

use std::net::IpAddr;

use iicp_proto::endpoint::classify_ip;
pub(crate) use iicp_proto::endpoint::{
    ip_literal, parse_url, EndpointUrl, HTTP_SCHEMES, NATIVE_SCHEMES,
};

/// True when the endpoint host is private: a private IP literal or a local-only name.
pub(crate) fn is_private_host(url: &EndpointUrl) -> bool {
    !url.class().is_global()
}

/// True when `ip` is not globally routable (see the module docs).
pub(crate) fn is_private_ip(ip: IpAddr) -> bool {
    !classify_ip(ip).is_global()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_hosts_must_be_global() {
        for (url, private) in [
            ("http://93.184.216.34:9484", false),
            ("https://provider.example.com", false),
            ("http://127.1:9484", true),
            ("http://2130706433:80", true),
            ("http://[::ffff:10.0.0.1]:80", true),
            ("http://ollama:11434", true),
            ("http://n.internal", true),
        ] {
            let u = parse_url(url, HTTP_SCHEMES).unwrap_or_else(|_| panic!("{url}"));
            assert_eq!(is_private_host(&u), private, "{url}");
        }
        let u = parse_url("iicp://[2001:db8::1]", NATIVE_SCHEMES).unwrap_or_else(|_| panic!());
        assert_eq!(address_family(&u), "ipv6");
        assert!(is_private_host(&u));
    }
}
