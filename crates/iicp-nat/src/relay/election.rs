//! Relay election (PROTOCOL.md §14.5, §14.1 trust floor; SEED-SDK.md §3.5). Pure.
//!
//! Keep candidates that are `relay_capable`, have an `endpoint`, are not ourselves and
//! do not fall below the reputation floor (0.1; an unknown reputation passes); pick the
//! minimum of `(load, sha256_hex("{own}:{candidate}"))` — least loaded first, a stable
//! per-worker hash as the tie-break so workers spread over equally loaded relays. The
//! relay host is the host of the candidate's endpoint, the port its
//! `relay_accept_port` or 9485.

use std::cmp::Ordering;

use iicp_proto::crypto::mac::sha256_hex;

use super::DEFAULT_RELAY_PORT;
use crate::addr::endpoint_host;

/// Relays below this `reputation_score` are never bound (§14.1).
pub const MIN_REPUTATION: f64 = 0.1;

/// A node from `GET /v1/discover?relay_capable=true` (or the gossip peer cache).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RelayCandidate {
    /// Its node id.
    pub node_id: String,
    /// Its HTTP endpoint.
    pub endpoint: Option<String>,
    /// Whether it serves as a relay.
    pub relay_capable: bool,
    /// Its load (`load` or `relay_load`), 0 when unknown.
    pub load: Option<f64>,
    /// Its relay accept port (default 9485).
    pub relay_accept_port: Option<u16>,
    /// Its reputation, when the directory reports one.
    pub reputation_score: Option<f64>,
}

/// The elected relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayTarget {
    /// The relay's node id (the bind ticket's audience).
    pub node_id: String,
    /// Host to connect to.
    pub host: String,
    /// Relay accept port.
    pub port: u16,
}

impl RelayTarget {
    /// `host:port` (IPv6 in brackets), the form of `IICP_RELAY_WORKER_ENDPOINT`.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Elects a relay for `own_node_id` among `candidates`; `None` when none qualifies.
pub fn elect(own_node_id: &str, candidates: &[RelayCandidate]) -> Option<RelayTarget> {
    let mut best: Option<(f64, String, &RelayCandidate, &str)> = None;
    for c in candidates {
        if !c.relay_capable || c.node_id == own_node_id || c.node_id.is_empty() {
            continue;
        }
        if c.reputation_score
            .is_some_and(|r| r.is_nan() || r < MIN_REPUTATION)
        {
            continue;
        }
        let Some(host) = c.endpoint.as_deref().and_then(endpoint_host) else {
            continue;
        };
        let load = c.load.filter(|l| l.is_finite()).unwrap_or(0.0);
        let hash = sha256_hex(format!("{own_node_id}:{}", c.node_id).as_bytes());
        let better = match &best {
            None => true,
            Some((bl, bh, _, _)) => match load.partial_cmp(bl) {
                Some(Ordering::Less) => true,
                Some(Ordering::Equal) => hash < *bh,
                _ => false,
            },
        };
        if better {
            best = Some((load, hash, c, host));
        }
    }
    best.map(|(_, _, c, host)| RelayTarget {
        node_id: c.node_id.clone(),
        host: host.to_owned(),
        port: c.relay_accept_port.unwrap_or(DEFAULT_RELAY_PORT),
    })
}

/// Parses `IICP_RELAY_WORKER_ENDPOINT`: `host[:port]` (port default 9485), also
/// accepting an `http://` or `iicp://` prefix.
pub fn parse_relay_endpoint(text: &str) -> Option<(String, u16)> {
    let rest = text.split_once("://").map_or(text, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, tail) = v6.split_once(']')?;
        match tail.strip_prefix(':') {
            Some(p) => (h, p.parse().ok()?),
            None if tail.is_empty() => (h, DEFAULT_RELAY_PORT),
            None => return None,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (authority, DEFAULT_RELAY_PORT),
        }
    };
    (!host.is_empty() && port != 0).then(|| (host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: &str, load: Option<f64>) -> RelayCandidate {
        RelayCandidate {
            node_id: id.into(),
            endpoint: Some(format!("http://{id}.example:9484")),
            relay_capable: true,
            load,
            ..RelayCandidate::default()
        }
    }

    #[test]
    fn least_loaded_wins() {
        let c = [cand("a", Some(0.5)), cand("b", Some(0.1)), cand("c", None)];
        // "c" has unknown load = 0
        assert_eq!(elect("me", &c).unwrap().node_id, "c");
        let c = [cand("a", Some(0.5)), cand("b", Some(0.1))];
        let t = elect("me", &c).unwrap();
        assert_eq!(
            (t.node_id.as_str(), t.host.as_str(), t.port),
            ("b", "b.example", 9485)
        );
    }

    #[test]
    fn ties_break_on_the_stable_hash() {
        let c = [
            cand("a", Some(0.0)),
            cand("b", Some(0.0)),
            cand("c", Some(0.0)),
        ];
        let winner = elect("worker-1", &c).unwrap().node_id;
        let expected = ["a", "b", "c"]
            .into_iter()
            .min_by_key(|id| sha256_hex(format!("worker-1:{id}").as_bytes()))
            .unwrap();
        assert_eq!(winner, expected);
        // order of the input does not matter
        let rev = [c[2].clone(), c[1].clone(), c[0].clone()];
        assert_eq!(elect("worker-1", &rev).unwrap().node_id, expected);
    }

    #[test]
    fn filters() {
        let mut not_relay = cand("a", Some(0.0));
        not_relay.relay_capable = false;
        let mut no_endpoint = cand("b", Some(0.0));
        no_endpoint.endpoint = None;
        let own = cand("me", Some(0.0));
        let mut low_rep = cand("d", Some(0.0));
        low_rep.reputation_score = Some(0.05);
        assert_eq!(elect("me", &[not_relay, no_endpoint, own, low_rep]), None);
        let mut good = cand("e", Some(3.0));
        good.reputation_score = Some(0.5);
        good.relay_accept_port = Some(9600);
        good.endpoint = Some("https://[2a01::5]:443/x".into());
        let t = elect("me", &[good]).unwrap();
        assert_eq!(t.authority(), "[2a01::5]:9600");
    }

    #[test]
    fn relay_endpoints() {
        assert_eq!(
            parse_relay_endpoint("relay.example:9600"),
            Some(("relay.example".into(), 9600))
        );
        assert_eq!(
            parse_relay_endpoint("relay.example"),
            Some(("relay.example".into(), 9485))
        );
        assert_eq!(
            parse_relay_endpoint("iicp://[::1]:7"),
            Some(("::1".into(), 7))
        );
        assert_eq!(parse_relay_endpoint("[::1]"), Some(("::1".into(), 9485)));
        assert_eq!(parse_relay_endpoint(":9"), None);
        assert_eq!(parse_relay_endpoint("h:0"), None);
        assert_eq!(parse_relay_endpoint("h:x"), None);
    }
}
