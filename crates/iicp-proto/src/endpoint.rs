//! Endpoint hosts and URL components, without I/O: what an IP literal is, and the one
//! percent-encoding of query components and path segments every crate uses.
//!
//! A host is an IP literal whenever the system resolver would take it as one without a
//! lookup, so that a policy that classifies hosts sees the address the connection will
//! use. Besides the dotted quad and IPv6 (with or without brackets), `inet_aton(3)` —
//! which `getaddrinfo` applies first — accepts one to four parts, each decimal, octal
//! (leading `0`) or hexadecimal (`0x`), the last part filling the remaining bytes:
//! `127.1`, `2130706433`, `0x7f.1`, `0177.0.0.1` and `127.0.1` are all 127.0.0.1/…
//! Rust's `IpAddr::from_str` knows only the dotted quad, so a check built on it alone
//! lets `http://127.1/` through as a "name".

use std::net::{IpAddr, Ipv4Addr};

/// The address `host` denotes when it is an IP literal in any form the system resolver
/// accepts without a lookup (see the module docs); `None` for a host name. IPv6 may be
/// bracketed; a zone (`%eth0`) is not a literal here.
pub fn ip_literal(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(ip);
    }
    inet_aton(bare).map(IpAddr::V4)
}

/// `inet_aton(3)`: one to four numeric parts; the last fills the remaining bytes.
fn inet_aton(s: &str) -> Option<Ipv4Addr> {
    // a trailing dot is a fully qualified *name* to the resolver, not a literal
    if s.is_empty() || s.ends_with('.') {
        return None;
    }
    let mut parts = [0u64; 4];
    let mut n = 0;
    for part in s.split('.') {
        if n == 4 {
            return None;
        }
        parts[n] = number(part)?;
        n += 1;
    }
    let parts = &parts[..n];
    let (init, last) = parts.split_at(n - 1);
    if init.iter().any(|p| *p > 0xff) {
        return None;
    }
    let last_bits = 8 * (5 - n as u32);
    let last_max = if last_bits == 32 {
        u64::from(u32::MAX)
    } else {
        (1u64 << last_bits) - 1
    };
    if last[0] > last_max {
        return None;
    }
    let mut value: u64 = 0;
    for (i, p) in init.iter().enumerate() {
        value |= p << (24 - 8 * i as u32);
    }
    value |= last[0];
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

/// One part: decimal, octal with a leading `0`, or hexadecimal with `0x`/`0X`.
fn number(part: &str) -> Option<u64> {
    if part.is_empty() || part.len() > 12 {
        return None;
    }
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() {
        // "0x" alone is 0 to inet_aton
        return (radix == 16).then_some(0);
    }
    if !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// What a query component keeps unescaped: RFC 3986's unreserved characters.
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a query component or path segment (UTF-8; RFC 3986 unreserved
/// characters kept, everything else escaped): `a b/é` → `a%20b%2F%C3%A9`.
pub fn encode_component(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, COMPONENT).to_string()
}

/// Decodes a path segment's percent-escapes; the segment unchanged when the result
/// is not UTF-8. `+` stays `+` (it means a space only in queries).
pub fn decode_path_segment(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_or_else(|_| segment.to_owned(), std::borrow::Cow::into_owned)
}

/// The pairs of an `application/x-www-form-urlencoded` query (`+` is a space), at
/// most `limit`.
pub fn query_pairs(query: &str, limit: usize) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .take(limit)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Option<IpAddr> {
        Some(IpAddr::V4(s.parse().unwrap()))
    }

    #[test]
    fn every_form_the_resolver_accepts() {
        for (host, want) in [
            ("127.0.0.1", "127.0.0.1"),
            ("127.1", "127.0.0.1"),
            ("127.0.1", "127.0.0.1"),
            ("2130706433", "127.0.0.1"),
            ("0x7f.1", "127.0.0.1"),
            ("0x7F000001", "127.0.0.1"),
            ("0177.0.0.1", "127.0.0.1"),
            ("017700000001", "127.0.0.1"),
            ("10.1", "10.0.0.1"),
            ("192.168.257", "192.168.1.1"),
            ("0", "0.0.0.0"),
            ("0x", "0.0.0.0"),
            ("8.8.8.8", "8.8.8.8"),
        ] {
            assert_eq!(ip_literal(host), v4(want), "{host}");
        }
        assert_eq!(ip_literal("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(
            ip_literal("::ffff:127.0.0.1"),
            Some("::ffff:127.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn names_and_out_of_range_forms_are_not_literals() {
        for host in [
            "example.com",
            "localhost",
            "127.0.0.1.",
            "1.2.3.4.5",
            "256.1.1.1",
            "1.2.3.256",
            "1.2.65536",
            "4294967296",
            "08.1.1.1",
            "0xg.1",
            "",
            "1..2",
            "[::1",
            "fe80::1%eth0",
            "127.1.example",
        ] {
            assert_eq!(ip_literal(host), None, "{host}");
        }
    }

    #[test]
    fn components_round_trip() {
        assert_eq!(encode_component("a b/é"), "a%20b%2F%C3%A9");
        assert_eq!(
            encode_component("urn:iicp:intent:llm:chat:v1"),
            "urn%3Aiicp%3Aintent%3Allm%3Achat%3Av1"
        );
        assert_eq!(encode_component("A-z_0.9~"), "A-z_0.9~");
        assert_eq!(decode_path_segment("a%20b%2Fc+d"), "a b/c+d");
        assert_eq!(
            decode_path_segment("%ff%fe"),
            "%ff%fe",
            "not UTF-8: unchanged"
        );
        assert_eq!(decode_path_segment("100%"), "100%");
        assert_eq!(
            query_pairs("intent=urn%3Aiicp%3Ax&q=a+b&flag&bad=%zz", 64),
            [
                ("intent".to_owned(), "urn:iicp:x".to_owned()),
                ("q".to_owned(), "a b".to_owned()),
                ("flag".to_owned(), String::new()),
                ("bad".to_owned(), "%zz".to_owned()),
            ]
        );
        assert_eq!(query_pairs("a=1&b=2&c=3", 2).len(), 2);
        for s in ["", "plain", "sp ace", "ü/ß?&=#%", "emoji 🦀"] {
            assert_eq!(decode_path_segment(&encode_component(s)), s);
        }
    }

    #[test]
    fn agrees_with_the_system_resolver() {
        use std::net::ToSocketAddrs;
        for host in [
            "127.1",
            "2130706433",
            "0x7f.1",
            "0177.0.0.1",
            "127.0.1",
            "0x7F000001",
        ] {
            let sys: Vec<IpAddr> = (host, 80)
                .to_socket_addrs()
                .map(|a| a.map(|s| s.ip()).collect())
                .unwrap_or_default();
            assert_eq!(sys, vec![ip_literal(host).unwrap()], "{host}");
        }
    }
}
