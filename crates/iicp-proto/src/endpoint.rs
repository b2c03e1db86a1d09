//! Endpoints without I/O, once for the workspace: what an IP literal is, what class of
//! host an endpoint names ([`HostClass`]: loopback, private, link-local, CGNAT,
//! documentation, other special-use, local-only name, global), how an endpoint URL
//! parses ([`parse_url`]), and the one percent-encoding of query components and path
//! segments every crate uses.
//!
//! A host is an IP literal whenever the system resolver would take it as one without a
//! lookup, so that a policy that classifies hosts sees the address the connection will
//! use. Besides the dotted quad and IPv6 (with or without brackets), `inet_aton(3)` —
//! which `getaddrinfo` applies first — accepts one to four parts, each decimal, octal
//! (leading `0`) or hexadecimal (`0x`), the last part filling the remaining bytes:
//! `127.1`, `2130706433`, `0x7f.1`, `0177.0.0.1` and `127.0.1` are all 127.0.0.1/…
//! Rust's `IpAddr::from_str` knows only the dotted quad, so a check built on it alone
//! lets `http://127.1/` through as a "name".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

/// What kind of host an endpoint names: the one classification the node (may it
/// register with a public directory?), the directory (REGISTER routability, §8.2
/// `IICP-E035`; the `/v1/probe` guard, §8.9), the client (provider SSRF policy, §9.3)
/// and the rate limiter (which proxies are the operator's own) all use.
/// `fixtures/endpoint-security-v1.json` is the test oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostClass {
    /// `0.0.0.0`, `::`.
    Unspecified,
    /// `127/8`, `::1`.
    Loopback,
    /// RFC 1918 and unique-local `fc00::/7`.
    Private,
    /// `169.254/16` (cloud metadata lives here), `fe80::/10`.
    LinkLocal,
    /// Carrier-grade NAT shared space `100.64/10`.
    SharedCgnat,
    /// Documentation ranges (`192.0.2/24`, `198.51.100/24`, `203.0.113/24`,
    /// `2001:db8::/32`).
    Documentation,
    /// Everything else that is not routable on the internet: benchmarking, IETF
    /// assignments, multicast, broadcast, reserved, `0/8`, site-local, discard,
    /// IPv4-compatible IPv6, and translated forms of non-global IPv4 addresses.
    Special,
    /// A name that can only be local: `localhost`, a single label (`ollama`), or a
    /// local-network suffix (`.local`, `.localhost`, `.internal`, `.lan`, `.home.arpa`).
    LocalName,
    /// A name reserved for testing and documentation that never resolves publicly
    /// (RFC 6761 `.test`, `.example`, `.invalid`).
    ReservedName,
    /// A globally routable address, or a name that may resolve to one.
    Global,
}

impl HostClass {
    /// Routable on the internet (a name counts until it is resolved).
    pub fn is_global(self) -> bool {
        self == HostClass::Global
    }

    /// On this machine or its network: an internal address or a local name (a
    /// directory there makes a private mesh, where private endpoints register).
    pub fn is_local_network(self) -> bool {
        self.is_internal() || self == HostClass::LocalName
    }

    /// The operator's own network: unspecified, loopback, private, link-local or CGNAT
    /// (the proxies whose `X-Forwarded-For` a node may trust).
    pub fn is_internal(self) -> bool {
        matches!(
            self,
            HostClass::Unspecified
                | HostClass::Loopback
                | HostClass::Private
                | HostClass::LinkLocal
                | HostClass::SharedCgnat
        )
    }
}

/// Name suffixes of the local network (RFC 6761 `.localhost`, RFC 6762 `.local`,
/// RFC 8375 `.home.arpa`, ICANN `.internal`, and the common `.lan`).
const LOCAL_SUFFIXES: [&str; 5] = [".local", ".localhost", ".internal", ".lan", ".home.arpa"];

/// Top-level names reserved for testing and documentation (RFC 6761). (The
/// `example.com` family resolves, and tests and docs use it as a public host.)
const RESERVED_SUFFIXES: [&str; 3] = [".test", ".example", ".invalid"];

/// Classifies an address; IPv4-mapped, NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`)
/// addresses take the class of the IPv4 address they carry.
pub fn classify_ip(ip: IpAddr) -> HostClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> HostClass {
    let [a, b, c, _] = ip.octets();
    if ip.is_unspecified() {
        HostClass::Unspecified
    } else if ip.is_loopback() {
        HostClass::Loopback
    } else if ip.is_private() {
        HostClass::Private
    } else if ip.is_link_local() {
        HostClass::LinkLocal
    } else if a == 100 && (64..=127).contains(&b) {
        HostClass::SharedCgnat
    } else if ip.is_documentation() {
        HostClass::Documentation
    } else if a == 0
        || a >= 224 // multicast, reserved, broadcast
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 88 && c == 99) // deprecated 6to4 relay anycast
        || (a == 198 && (18..=19).contains(&b))
    // benchmarking
    {
        HostClass::Special
    } else {
        HostClass::Global
    }
}

fn embedded_v4(s: &[u16], at: usize) -> Ipv4Addr {
    let [h0, l0] = s[at].to_be_bytes();
    let [h1, l1] = s[at + 1].to_be_bytes();
    Ipv4Addr::new(h0, l0, h1, l1)
}

fn classify_v6(ip: Ipv6Addr) -> HostClass {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let s = ip.segments();
    if ip.is_unspecified() {
        HostClass::Unspecified
    } else if ip.is_loopback() {
        HostClass::Loopback
    } else if s[..6] == [0, 0, 0, 0, 0, 0] {
        // IPv4-compatible (deprecated) ::a.b.c.d
        HostClass::Special
    } else if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        // NAT64 carries an IPv4 address
        match classify_v4(embedded_v4(&s, 6)) {
            HostClass::Global => HostClass::Global,
            _ => HostClass::Special,
        }
    } else if s[0] == 0x2002 {
        // 6to4 carries an IPv4 address
        match classify_v4(embedded_v4(&s, 1)) {
            HostClass::Global => HostClass::Global,
            _ => HostClass::Special,
        }
    } else if (s[0] & 0xfe00) == 0xfc00 {
        HostClass::Private
    } else if (s[0] & 0xffc0) == 0xfe80 {
        HostClass::LinkLocal
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        HostClass::Documentation
    } else if (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00 // multicast
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard 100::/64
        || (s[0] == 0x2001 && s[1] < 0x0200 && s[1] != 0)
    // IETF protocol assignments (Teredo 2001::/32 stays global)
    {
        HostClass::Special
    } else {
        HostClass::Global
    }
}

/// Classifies a host *name* ([`HostClass::LocalName`], [`HostClass::ReservedName`] or
/// [`HostClass::Global`]); a trailing dot and letter case do not matter.
pub fn classify_name(name: &str) -> HostClass {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost"
        || !name.contains('.')
        || LOCAL_SUFFIXES.iter().any(|s| name.ends_with(s))
    {
        HostClass::LocalName
    } else if RESERVED_SUFFIXES.iter().any(|s| name.ends_with(s)) {
        HostClass::ReservedName
    } else {
        HostClass::Global
    }
}

/// Classifies a host as written in a URL: an IP literal in any form the resolver takes
/// ([`ip_literal`]), else a name ([`classify_name`]).
pub fn classify_host(host: &str) -> HostClass {
    match ip_literal(host) {
        Some(ip) => classify_ip(ip),
        None => classify_name(host),
    }
}

/// `http` and `https` with their default ports (REGISTER `endpoint`).
pub const HTTP_SCHEMES: &[(&str, u16)] = &[("http", 80), ("https", 443)];
/// `iicp` and `iicpsec` on port 9484 (REGISTER `transport_endpoint`, §8.2).
pub const NATIVE_SCHEMES: &[(&str, u16)] = &[
    ("iicp", crate::constants::DEFAULT_PORT),
    ("iicpsec", crate::constants::DEFAULT_PORT),
];
/// Every provider endpoint scheme (HTTP and native).
pub const ENDPOINT_SCHEMES: &[(&str, u16)] = &[
    ("http", 80),
    ("https", 443),
    ("iicp", crate::constants::DEFAULT_PORT),
    ("iicpsec", crate::constants::DEFAULT_PORT),
];

/// An endpoint URL, parsed: `scheme://host[:port][/path]` and nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl {
    /// Lowercase scheme.
    pub scheme: String,
    /// Host, lowercase, IPv6 without brackets.
    pub host: String,
    /// The explicit port, else the scheme's default.
    pub port: u16,
    /// The host as an address, when it is an IP literal in any resolver form.
    pub ip: Option<IpAddr>,
}

impl EndpointUrl {
    /// The host's class.
    pub fn class(&self) -> HostClass {
        match self.ip {
            Some(ip) => classify_ip(ip),
            None => classify_name(&self.host),
        }
    }
}

/// Why a URL is not an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// Not an absolute URL with a host (or too long, or with whitespace, a bad port or
    /// a host that is neither an address nor a DNS name).
    #[error("not an absolute URL with a host")]
    Malformed,
    /// A scheme not accepted here.
    #[error("URL scheme not accepted here")]
    Scheme,
    /// Userinfo, a query or a fragment.
    #[error("URL has userinfo, a query or a fragment")]
    Extras,
}

/// Parses an endpoint URL, accepting only `schemes` (`(scheme, default port)`).
///
/// # Errors
/// [`UrlError`] saying what is wrong.
pub fn parse_url(url: &str, schemes: &[(&str, u16)]) -> Result<EndpointUrl, UrlError> {
    let url = url.trim();
    if url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(UrlError::Malformed);
    }
    let (scheme, rest) = url.split_once("://").ok_or(UrlError::Malformed)?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = schemes
        .iter()
        .find(|(s, _)| *s == scheme)
        .map(|(_, p)| *p)
        .ok_or(UrlError::Scheme)?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    if authority.contains('@') || tail.contains('?') || tail.contains('#') {
        return Err(UrlError::Extras);
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or(UrlError::Malformed)?;
        if h.parse::<Ipv6Addr>().is_err() {
            return Err(UrlError::Malformed);
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(UrlError::Malformed)?),
        };
        (h, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(UrlError::Malformed);
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or(UrlError::Malformed)?,
    };
    let host = host.to_ascii_lowercase();
    let ip = ip_literal(&host);
    if ip.is_none()
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(UrlError::Malformed);
    }
    Ok(EndpointUrl {
        scheme,
        host,
        port,
        ip,
    })
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

    #[test]
    fn parses_endpoint_urls() {
        let ok = |u: &str, schemes| parse_url(u, schemes).unwrap_or_else(|e| panic!("{u}: {e}"));
        let u = ok("http://127.0.0.1:9484", HTTP_SCHEMES);
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 9484));
        let u = ok("HTTPS://[::1]/", HTTP_SCHEMES);
        assert_eq!(
            (u.scheme.as_str(), u.host.as_str(), u.port),
            ("https", "::1", 443)
        );
        let u = ok("http://2130706433:80", HTTP_SCHEMES);
        assert_eq!(u.ip, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let u = ok("http://127.1", HTTP_SCHEMES);
        assert_eq!(u.ip, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(ok("iicp://node.example.com", NATIVE_SCHEMES).port, 9484);
        assert_eq!(
            ok("iicpsec://Node.Example.com:1/x", ENDPOINT_SCHEMES).host,
            "node.example.com"
        );
        assert_eq!(parse_url("ftp://x", HTTP_SCHEMES), Err(UrlError::Scheme));
        assert_eq!(parse_url("iicp://x", HTTP_SCHEMES), Err(UrlError::Scheme));
        for extras in ["http://u:p@x.com", "http://x.com/?q=1", "http://x.com/#f"] {
            assert_eq!(
                parse_url(extras, HTTP_SCHEMES),
                Err(UrlError::Extras),
                "{extras}"
            );
        }
        for bad in [
            "not a url",
            "http://",
            "http://x.com:0",
            "http://x.com:65536",
            "http://x.com:port",
            "http://[::1",
            "http://[not-v6]:80",
            "http://x y.com",
            "http://ex%41mple.com",
            "http://bad\u{7f}.com",
        ] {
            assert_eq!(
                parse_url(bad, HTTP_SCHEMES),
                Err(UrlError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            parse_url(&format!("http://{}.com", "a".repeat(2048)), HTTP_SCHEMES),
            Err(UrlError::Malformed)
        );
    }

    #[test]
    fn endpoint_security_vectors() {
        // fixtures/endpoint-security-v1.json address vectors, plus the forms around them
        for (addr, class) in [
            ("93.184.216.34", HostClass::Global),
            ("2606:2800:220:1:248:1893:25c8:1946", HostClass::Global),
            ("127.0.0.1", HostClass::Loopback),
            ("10.0.0.5", HostClass::Private),
            ("172.16.0.1", HostClass::Private),
            ("192.168.1.1", HostClass::Private),
            ("169.254.169.254", HostClass::LinkLocal),
            ("100.64.0.1", HostClass::SharedCgnat),
            ("100.127.255.255", HostClass::SharedCgnat),
            ("100.128.0.1", HostClass::Global),
            ("192.0.2.10", HostClass::Documentation),
            ("198.51.100.7", HostClass::Documentation),
            ("203.0.113.9", HostClass::Documentation),
            ("198.18.0.1", HostClass::Special),
            ("192.0.0.8", HostClass::Special),
            ("224.0.0.1", HostClass::Special),
            ("255.255.255.255", HostClass::Special),
            ("240.0.0.1", HostClass::Special),
            ("0.1.2.3", HostClass::Special),
            ("0.0.0.0", HostClass::Unspecified),
            ("fd00::1", HostClass::Private),
            ("fe80::1", HostClass::LinkLocal),
            ("fec0::1", HostClass::Special),
            ("ff02::1", HostClass::Special),
            ("2001:db8::1", HostClass::Documentation),
            ("::ffff:127.0.0.1", HostClass::Loopback),
            ("::ffff:8.8.8.8", HostClass::Global),
            ("::127.0.0.1", HostClass::Special),
            ("64:ff9b::a00:1", HostClass::Special),
            ("64:ff9b::808:808", HostClass::Global),
            ("2002:a00:1::", HostClass::Special),
            ("2002:808:808::", HostClass::Global),
            ("2001::1", HostClass::Global),
            ("2001:10::1", HostClass::Special),
            ("100::1", HostClass::Special),
            ("::1", HostClass::Loopback),
            ("::", HostClass::Unspecified),
        ] {
            let ip: IpAddr = addr.parse().unwrap_or_else(|_| panic!("{addr}"));
            assert_eq!(classify_ip(ip), class, "{addr}");
            assert_eq!(
                classify_ip(ip).is_global(),
                class == HostClass::Global,
                "{addr}"
            );
        }
        for (host, class) in [
            ("provider.iicp.network", HostClass::Global),
            ("example.community", HostClass::Global),
            ("provider.example.com", HostClass::Global),
            ("localhost", HostClass::LocalName),
            ("LOCALHOST.", HostClass::LocalName),
            ("provider.local", HostClass::LocalName),
            ("provider.internal", HostClass::LocalName),
            ("a.home.arpa", HostClass::LocalName),
            ("x.test", HostClass::ReservedName),
            ("x.example", HostClass::ReservedName),
            ("x.invalid", HostClass::ReservedName),
            ("ollama", HostClass::LocalName),
            ("127.1", HostClass::Loopback),
            ("0x7f.1", HostClass::Loopback),
            ("[::1]", HostClass::Loopback),
            ("10.1", HostClass::Private),
        ] {
            assert_eq!(classify_host(host), class, "{host}");
            let local = matches!(
                class,
                HostClass::LocalName | HostClass::Loopback | HostClass::Private
            );
            assert_eq!(classify_host(host).is_local_network(), local, "{host}");
        }
    }

    #[test]
    fn internal_is_the_operators_own_network() {
        for (addr, internal) in [
            ("127.0.0.1", true),
            ("10.1.2.3", true),
            ("100.64.0.1", true),
            ("169.254.1.1", true),
            ("fd00::1", true),
            ("0.0.0.0", true),
            ("192.0.2.1", false),
            ("224.0.0.1", false),
            ("8.8.8.8", false),
        ] {
            let ip: IpAddr = addr.parse().unwrap_or_else(|_| panic!("{addr}"));
            assert_eq!(classify_ip(ip).is_internal(), internal, "{addr}");
        }
    }
}
