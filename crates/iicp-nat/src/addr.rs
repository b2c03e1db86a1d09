//! Address classification used by the planner (PROTOCOL.md §13.1, §13.2; SEED-SDK.md §3.1
//! `looksRoutable`): what counts as a public address, CGNAT's shared range 100.64.0.0/10,
//! IPv6 global unicast and the EUI-64 "stable address" heuristic. Pure functions.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether `ip` lies in the CGNAT shared address space 100.64.0.0/10 (RFC 6598).
pub fn is_cgnat(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 100 && (o[1] & 0xC0) == 64
}

/// Whether an IPv4 address is an ordinary public unicast address: not private
/// (RFC 1918), loopback, link-local, CGNAT, documentation, benchmarking (198.18/15),
/// "this network" (0/8), multicast or reserved (≥ 224).
pub fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(o[0] == 0
        || ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || is_cgnat(ip)
        || o[0] >= 224
        || (o[0] == 192 && o[1] == 0 && o[2] == 2)
        || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
        || (o[0] == 198 && o[1] == 51 && o[2] == 100)
        || (o[0] == 203 && o[1] == 0 && o[2] == 113)
        || (o[0] == 192 && o[1] == 0 && o[2] == 0))
}

/// Whether an IPv6 address is global unicast (2000::/3) and not documentation
/// (2001:db8::/32).
pub fn is_global_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    (s[0] & 0xE000) == 0x2000 && !(s[0] == 0x2001 && s[1] == 0x0db8)
}

/// Whether an IPv6 address looks stable (EUI-64 interface id with `ff:fe` in the
/// middle) rather than a privacy/temporary address (SEED-SDK.md §3.1 step 0).
pub fn is_stable_v6(ip: Ipv6Addr) -> bool {
    let o = ip.octets();
    o[11] == 0xff && o[12] == 0xfe
}

/// Whether `ip` is publicly routable (public IPv4 or global IPv6).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_global_v6(v6),
        },
    }
}

/// `http://ip:port` with IPv6 in brackets.
pub fn http_endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("http://{v4}:{port}"),
        IpAddr::V6(v6) => format!("http://[{v6}]:{port}"),
    }
}

/// `iicp://ip:port` with IPv6 in brackets.
pub fn native_endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("iicp://{v4}:{port}"),
        IpAddr::V6(v6) => format!("iicp://[{v6}]:{port}"),
    }
}

/// The host of an `http(s)://host[:port][/path]` endpoint (a scheme-less `host:port` is
/// accepted too), without IPv6 brackets.
pub fn endpoint_host(endpoint: &str) -> Option<&str> {
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split_once(']')?.0
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

/// Whether an advertised endpoint is plausibly reachable from the internet
/// (SEED-SDK.md §3.1 `looksRoutable`): rejects unparsable URLs, `localhost`, reserved
/// names (`.localhost .local .test .example .invalid .lan .internal`), bare single-label
/// names and non-public IP literals.
pub fn looks_routable(endpoint: &str) -> bool {
    let Some(host) = endpoint_host(endpoint) else {
        return false;
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return is_public(ip);
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    const RESERVED: [&str; 7] = [
        ".localhost",
        ".local",
        ".test",
        ".example",
        ".invalid",
        ".lan",
        ".internal",
    ];
    host != "localhost"
        && host.contains('.')
        && !RESERVED.iter().any(|s| host.ends_with(s))
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert!(is_cgnat("100.64.0.1".parse().unwrap()));
        assert!(is_cgnat("100.127.255.254".parse().unwrap()));
        assert!(!is_cgnat("100.128.0.1".parse().unwrap()));
        assert!(!is_cgnat("100.63.255.255".parse().unwrap()));
        for private in [
            "10.0.0.1",
            "172.16.3.4",
            "192.168.1.1",
            "100.64.1.1",
            "127.0.0.1",
            "169.254.1.1",
            "0.1.2.3",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
        ] {
            assert!(!is_public_v4(private.parse().unwrap()), "{private}");
        }
        for public in ["11.77.2.1", "8.8.8.8", "172.32.0.1", "100.128.0.1"] {
            assert!(is_public_v4(public.parse().unwrap()), "{public}");
        }
        assert!(is_global_v6("2a01:4f8::1".parse().unwrap()));
        assert!(!is_global_v6("2001:db8::1".parse().unwrap()));
        assert!(!is_global_v6("fe80::1".parse().unwrap()));
        assert!(!is_global_v6("fd00::1".parse().unwrap()));
        assert!(is_stable_v6(
            "2a01:4f8::0211:22ff:fe33:4455".parse().unwrap()
        ));
        assert!(!is_stable_v6(
            "2a01:4f8::1234:5678:9abc:def0".parse().unwrap()
        ));
        assert!(!is_public("::ffff:10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn routable_endpoints() {
        for ok in [
            "http://node.example.com:9484",
            "https://11.77.2.1",
            "http://[2a01:4f8::1]:9484/x",
            "node.example.org:9484",
        ] {
            assert!(looks_routable(ok), "{ok}");
        }
        for bad in [
            "http://localhost:9484",
            "http://127.0.0.1:1",
            "http://[::1]:9484",
            "http://box.local:1",
            "http://gateway:80",
            "http://10.1.2.3:9484",
            "http://100.64.0.9:9484",
            "http://[fe80::1]:1",
            "http://",
            "http://a.test",
        ] {
            assert!(!looks_routable(bad), "{bad}");
        }
        assert_eq!(endpoint_host("http://[::1]:80/p"), Some("::1"));
        assert_eq!(endpoint_host("h.example:1"), Some("h.example"));
        assert_eq!(
            http_endpoint("2a01::1".parse().unwrap(), 9),
            "http://[2a01::1]:9"
        );
    }
}
