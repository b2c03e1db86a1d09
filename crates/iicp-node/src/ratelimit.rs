//! Per-origin / per-IP sliding-window rate limit on task submission (PROTOCOL.md §4.3
//! "per-origin rate limit", §19 T6, DESIGN §4.5), on [`iicp_proto::limit`]. Bounded:
//! at most `MAX_KEYS` keys are tracked; beyond that, the idlest key is dropped.
//!
//! Behind a reverse proxy every caller arrives from the proxy's address; with
//! `trust_forwarded_for` the per-IP key is the client address the proxies report
//! ([`client_addr`], ADR 0008).

use iicp_proto::limit::SlidingWindow;
use parking_lot::Mutex;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::RateLimit;

/// Most distinct keys tracked at once (the idlest is dropped beyond).
const MAX_KEYS: usize = 10_000;

/// What a request is counted against: the caller's address (both transports share its
/// bucket), or the `Origin` a browser sent. Typed, so that counting a request formats
/// and allocates nothing for an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum RateKey {
    /// The caller's address ([`client_addr`]; IPv4-mapped addresses canonical).
    Ip(IpAddr),
    /// The `Origin` header.
    Origin(Box<str>),
}

/// The limiter: the workspace's [`SlidingWindow`] on tokio's clock (so tests that pause
/// time control it).
pub(crate) struct RateLimiter {
    origin: Instant,
    window: Mutex<SlidingWindow<RateKey>>,
}

impl RateLimiter {
    pub(crate) fn new(limit: RateLimit) -> Self {
        Self {
            origin: Instant::now(),
            window: Mutex::new(SlidingWindow::new(
                limit.max_requests,
                limit.window,
                MAX_KEYS,
            )),
        }
    }

    /// Counts a request for `key`; `Err(wait)` when over the limit.
    pub(crate) fn check(&self, key: &RateKey) -> Result<(), Duration> {
        let now = Instant::now().saturating_duration_since(self.origin);
        self.window.lock().check(key, now)
    }
}

/// Most forwarded hops looked at, from the right.
const MAX_HOPS: usize = 64;

/// The address a request is counted against. Without `trust` (or without forwarding
/// headers) it is the connection's `peer`. With `trust` the peer is a reverse proxy the
/// operator put in front of the node, and the hops it reports are walked from the
/// right (nearest first): loopback, private, link-local, unique-local and CGNAT
/// addresses are further proxies of the operator's own network and are skipped; the
/// first other address is the client. When every hop is internal the leftmost one is
/// the client; an entry that is not an address (`unknown`, an obfuscated name, junk)
/// ends the walk at the hop to its right, so a caller cannot pick its own key with it.
///
/// `x_forwarded_for` (every `X-Forwarded-For` line, in order) is used when present,
/// else `forwarded` (every RFC 7239 `Forwarded` line, its `for=` parameters); a proxy
/// appends to the one it maintains, and the other may be the caller's own invention.
pub(crate) fn client_addr(
    peer: IpAddr,
    trust: bool,
    x_forwarded_for: &[&str],
    forwarded: &[&str],
) -> IpAddr {
    let peer = peer.to_canonical();
    if !trust {
        return peer;
    }
    let hops: Vec<Option<IpAddr>> = if !x_forwarded_for.is_empty() {
        x_forwarded_for
            .iter()
            .rev()
            .flat_map(|line| line.rsplit(','))
            .take(MAX_HOPS)
            .map(hop_addr)
            .collect()
    } else {
        forwarded
            .iter()
            .rev()
            .flat_map(|line| line.rsplit(','))
            .filter_map(forwarded_for)
            .take(MAX_HOPS)
            .map(hop_addr)
            .collect()
    };
    let mut client = peer;
    for hop in hops {
        let Some(ip) = hop else { break };
        client = ip;
        if !internal(ip) {
            break;
        }
    }
    client
}

/// One hop: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]` or
/// `[2001:db8::1]:4711`, surrounding blanks and quotes ignored.
fn hop_addr(text: &str) -> Option<IpAddr> {
    let t = text.trim().trim_matches('"');
    let ip = t
        .parse::<IpAddr>()
        .ok()
        .or_else(|| t.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            t.strip_prefix('[')
                .and_then(|v| v.strip_suffix(']'))
                .and_then(|v| v.parse().ok())
        })?;
    Some(ip.to_canonical())
}

/// The `for=` value of one `Forwarded` element (`for=1.2.3.4;proto=https`); an element
/// without one is not a hop.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then_some(v)
    })
}

/// Addresses of the operator's own network (loopback, private, link-local, CGNAT,
/// unspecified): [`iicp_proto::endpoint::HostClass::is_internal`].
fn internal(ip: IpAddr) -> bool {
    iicp_proto::endpoint::classify_ip(ip).is_internal()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn forwarded_client() {
        let proxy = ip("127.0.0.1");
        // not trusted: the connection's address, whatever the headers say
        assert_eq!(client_addr(proxy, false, &["203.0.113.7"], &[]), proxy);
        // no header: the peer
        assert_eq!(client_addr(proxy, true, &[], &[]), proxy);
        // one proxy: the address it appended
        assert_eq!(
            client_addr(proxy, true, &["203.0.113.7"], &[]),
            ip("203.0.113.7")
        );
        // a caller-supplied prefix is left of the first untrusted hop: ignored
        assert_eq!(
            client_addr(proxy, true, &["1.1.1.1, 203.0.113.7, 10.0.0.2"], &[]),
            ip("203.0.113.7")
        );
        // several header lines are one list
        assert_eq!(
            client_addr(proxy, true, &["9.9.9.9", "198.51.100.2 , 192.168.1.1"], &[]),
            ip("198.51.100.2")
        );
        // all internal: the leftmost
        assert_eq!(
            client_addr(proxy, true, &["192.168.1.20, 10.0.0.2"], &[]),
            ip("192.168.1.20")
        );
        // junk ends the walk at the hop to its right
        assert_eq!(
            client_addr(proxy, true, &["1.2.3.4, unknown, 10.0.0.9"], &[]),
            ip("10.0.0.9")
        );
        assert_eq!(client_addr(proxy, true, &["garbage"], &[]), proxy);
        // ports, brackets, IPv4-mapped peers
        assert_eq!(
            client_addr(proxy, true, &["[2001:db8::5]:4711"], &[]),
            ip("2001:db8::5")
        );
        assert_eq!(
            client_addr(proxy, true, &["203.0.113.9:5555"], &[]),
            ip("203.0.113.9")
        );
        assert_eq!(client_addr(ip("::ffff:127.0.0.1"), false, &[], &[]), proxy);
        // RFC 7239, only when there is no X-Forwarded-For
        let fwd = ["for=192.0.2.60;proto=http;by=203.0.113.43, For=\"[2001:db8:cafe::17]:4711\""];
        assert_eq!(client_addr(proxy, true, &[], &fwd), ip("2001:db8:cafe::17"));
        assert_eq!(
            client_addr(proxy, true, &["198.51.100.1"], &fwd),
            ip("198.51.100.1")
        );
        assert_eq!(client_addr(proxy, true, &[], &["for=unknown"]), proxy);
        // long lists are bounded
        let long = vec!["10.0.0.1"; 1000].join(",");
        assert_eq!(client_addr(proxy, true, &[&long], &[]), ip("10.0.0.1"));
    }

    #[tokio::test(start_paused = true)]
    async fn window() {
        let rl = RateLimiter::new(RateLimit {
            max_requests: 2,
            window: Duration::from_secs(60),
        });
        let a = RateKey::Ip(ip("192.0.2.1"));
        // the same text as an origin is another key
        let b = RateKey::Origin("192.0.2.1".into());
        assert!(rl.check(&a).is_ok());
        assert!(rl.check(&a).is_ok());
        assert!(rl.check(&b).is_ok());
        let wait = rl.check(&a).expect_err("limited");
        assert_eq!(wait, Duration::from_secs(60));
        assert!(rl.check(&b).is_ok());
        assert!(rl.check(&b).is_err());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(rl.check(&a).is_ok());
        let off = RateLimiter::new(RateLimit {
            max_requests: 0,
            window: Duration::from_secs(1),
        });
        for _ in 0..1000 {
            assert!(off.check(&a).is_ok());
        }
    }
}
