//! SSDP discovery (UPnP Device Architecture §1.3): a multicast `M-SEARCH` per search
//! target to 239.255.255.250:1900 (IPv4) or to the link-local group `[ff02::c]:1900` on
//! each IPv6 interface (IGD2 gateways announce their IPv6 control URLs there), unicast
//! HTTPU answers collected until a deadline. Bounded: at most [`MAX_REPLIES`] answers,
//! each ≤ 2 KiB read.
//!
//! The IPv4 group search goes through `rupnp`'s SSDP client ([`search_v4_group`]). The
//! IPv6 search and a search sent to any other address (a gateway's unicast SSDP port,
//! as tests do) are ours ([`search`]): `rupnp` sends only to the IPv4 group
//! (docs/adr/0011-rupnp-for-upnp.md).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// The SSDP multicast group and port.
pub const SSDP_MULTICAST: &str = "239.255.255.250:1900";

/// The IPv4 SSDP group ([`SSDP_MULTICAST`] as an address).
pub const SSDP_GROUP_V4: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(Ipv4Addr::new(239, 255, 255, 250)),
    1900,
);

/// The link-local IPv6 SSDP group (`ff02::c`).
pub const SSDP_MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xc);

/// Search targets tried, in preference order (SEED-SDK.md §3.1 step 4, §3.3).
pub const SEARCH_TARGETS: [&str; 4] = [
    "urn:schemas-upnp-org:device:InternetGatewayDevice:2",
    "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
];

/// Most answers kept from one search.
pub const MAX_REPLIES: usize = 16;

/// One SSDP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// `LOCATION`: the device description URL.
    pub location: String,
    /// `ST`: the search target answered.
    pub st: String,
    /// `USN`: the unique service name (`uuid:…::…`) of the (sub)device that answered,
    /// empty when absent.
    pub usn: String,
    /// Who answered; `None` from [`search_v4_group`] (`rupnp` does not tell).
    pub from: Option<SocketAddr>,
}

/// The `HOST` of an `M-SEARCH` sent to `to`: the multicast group of its family.
pub fn host_header(to: SocketAddr) -> &'static str {
    if to.is_ipv4() {
        SSDP_MULTICAST
    } else {
        "[FF02::C]:1900"
    }
}

/// The `M-SEARCH` request for `st` with `MX` seconds, for the group `host`.
pub fn m_search(host: &str, st: &str, mx: u64) -> String {
    format!(
        "M-SEARCH * HTTP/1.1\r\nHOST: {host}\r\nMAN: \"ssdp:discover\"\r\nMX: {mx}\r\nST: {st}\r\n\r\n"
    )
}

/// The IPv6 SSDP group on each interface of `scopes` (interface indexes).
pub fn v6_targets(scopes: &[u32]) -> Vec<SocketAddr> {
    scopes
        .iter()
        .map(|&scope| SocketAddr::V6(SocketAddrV6::new(SSDP_MULTICAST_V6, 1900, 0, scope)))
        .collect()
}

/// Parses an SSDP answer (`HTTP/1.1 200 OK` with `LOCATION` and `ST`). Headers are
/// case-insensitive.
pub fn parse_reply(datagram: &[u8], from: SocketAddr) -> Option<Reply> {
    let text = std::str::from_utf8(datagram).ok()?;
    let mut lines = text.split("\r\n").flat_map(|l| l.split('\n'));
    let status = lines.next()?;
    if !(status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200")) {
        return None;
    }
    let (mut location, mut st, mut usn) = (None, None, None);
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("location") {
            location = Some(v.to_owned());
        } else if k.eq_ignore_ascii_case("st") {
            st = Some(v.to_owned());
        } else if k.eq_ignore_ascii_case("usn") {
            usn = Some(v.to_owned());
        }
    }
    let location = location.filter(|l| l.starts_with("http://"))?;
    Some(Reply {
        location,
        st: st.unwrap_or_default(),
        usn: usn.unwrap_or_default(),
        from: Some(from),
    })
}

/// Sends one `M-SEARCH` per target to each destination of `to` (normally
/// [`SSDP_MULTICAST`], or [`v6_targets`]; all of one address family) and collects
/// distinct answers until `timeout` has passed or [`MAX_REPLIES`] arrived.
///
/// # Errors
/// Socket errors (no route for multicast, bind failure). With several destinations,
/// only a failure to send to every one of them.
pub async fn search(
    to: &[SocketAddr],
    targets: &[&str],
    timeout: Duration,
) -> std::io::Result<Vec<Reply>> {
    let Some(first) = to.first() else {
        return Ok(Vec::new());
    };
    let bind: SocketAddr = if first.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = UdpSocket::bind(bind).await?;
    if first.is_ipv4() && first.ip().is_multicast() {
        // stay on the local link
        let _ = socket.set_multicast_ttl_v4(2);
    }
    let mx = timeout.as_secs().clamp(1, 5);
    let mut sent = 0;
    let mut last_err = None;
    for dest in to {
        for st in targets {
            match socket
                .send_to(m_search(host_header(*dest), st, mx).as_bytes(), dest)
                .await
            {
                Ok(_) => sent += 1,
                Err(e) => last_err = Some(e),
            }
        }
    }
    if sent == 0 {
        return Err(last_err.unwrap_or_else(|| std::io::Error::other("nothing sent")));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut replies: Vec<Reply> = Vec::new();
    let mut buf = [0u8; 2048];
    while replies.len() < MAX_REPLIES {
        let recv = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await;
        let Ok(Ok((n, from))) = recv else { break };
        if let Some(reply) = parse_reply(&buf[..n], from) {
            if !replies.iter().any(|r| r.location == reply.location) {
                tracing::debug!(st = %reply.st, "SSDP answer");
                replies.push(reply);
            }
        }
    }
    Ok(replies)
}

/// [`search`] for the IPv4 SSDP group ([`SSDP_GROUP_V4`]) through `rupnp`: one
/// `M-SEARCH` per target (each from its own socket, multicast TTL 2), answers merged in
/// arrival order with one per `LOCATION` (as [`search`] keeps them), until `timeout` has
/// passed or [`MAX_REPLIES`] arrived. Answers `rupnp` cannot read are skipped: those
/// without `USN` or `SERVER`, an unparsable `ST`, or a status line other than
/// `HTTP/1.1 200`.
///
/// # Errors
/// Socket errors, only when no search could be sent at all.
pub async fn search_v4_group(targets: &[&str], timeout: Duration) -> std::io::Result<Vec<Reply>> {
    let deadline = Instant::now() + timeout;
    let mx = usize::try_from(timeout.as_secs().clamp(1, 5)).unwrap_or(1);
    let mut searches = tokio::task::JoinSet::new();
    let mut last_err = None;
    for st in targets {
        let target = match st.parse::<rupnp::ssdp::SearchTarget>() {
            Ok(t) => t,
            Err(e) => {
                last_err = Some(std::io::Error::other(e.to_string()));
                continue;
            }
        };
        match rupnp::ssdp::search(&target, timeout, mx, Some(2)).await {
            Ok(answers) => {
                searches.spawn(collect(answers, deadline));
            }
            Err(e) => last_err = Some(io_error(e)),
        }
    }
    if searches.is_empty() {
        return Err(last_err.unwrap_or_else(|| std::io::Error::other("nothing sent")));
    }
    let mut arrived: Vec<(Instant, Reply)> = Vec::new();
    while let Some(done) = searches.join_next().await {
        arrived.extend(done.unwrap_or_default());
    }
    arrived.sort_by_key(|(at, _)| *at);
    let mut replies: Vec<Reply> = Vec::new();
    for (_, reply) in arrived {
        if replies.len() == MAX_REPLIES {
            break;
        }
        if !replies.iter().any(|r| r.location == reply.location) {
            tracing::debug!(st = %reply.st, "SSDP answer");
            replies.push(reply);
        }
    }
    Ok(replies)
}

/// The answers of one `rupnp` search until `deadline` (its own timeout only bounds the
/// wait for each next answer), at most [`MAX_REPLIES`], each with its arrival time.
async fn collect<S>(answers: S, deadline: Instant) -> Vec<(Instant, Reply)>
where
    S: futures_util::Stream<Item = Result<rupnp::ssdp::SearchResponse, rupnp::ssdp::Error>>,
{
    let mut answers = std::pin::pin!(answers);
    let mut out = Vec::new();
    while out.len() < MAX_REPLIES {
        let Ok(Some(answer)) = tokio::time::timeout_at(deadline, answers.next()).await else {
            break;
        };
        match answer {
            Ok(a) if a.location().starts_with("http://") => out.push((
                Instant::now(),
                Reply {
                    location: a.location().to_owned(),
                    st: a.search_target().to_string(),
                    usn: a.usn().to_owned(),
                    from: None,
                },
            )),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "SSDP answer skipped"),
        }
    }
    out
}

/// The I/O error inside a `rupnp` SSDP error (search start fails only on I/O).
fn io_error(e: rupnp::ssdp::Error) -> std::io::Error {
    match e {
        rupnp::ssdp::Error::IO(e) => e,
        other => std::io::Error::other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers() {
        let from: SocketAddr = "10.77.1.1:1900".parse().unwrap();
        let r = parse_reply(
            b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nst: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nUSN: uuid:6a1c3e6e-77a1::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLocation: http://10.77.1.1:5000/rootDesc.xml\r\n\r\n",
            from,
        )
        .unwrap();
        assert_eq!(r.location, "http://10.77.1.1:5000/rootDesc.xml");
        assert!(r.st.ends_with("InternetGatewayDevice:1"));
        assert!(r.usn.starts_with("uuid:6a1c3e6e-77a1::"));
        assert_eq!(r.from, Some(from));
        assert!(parse_reply(b"NOTIFY * HTTP/1.1\r\nLOCATION: http://x/\r\n\r\n", from).is_none());
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\n\r\n", from).is_none());
        let no_usn = parse_reply(b"HTTP/1.1 200 OK\r\nLOCATION: http://x/\r\n\r\n", from).unwrap();
        assert_eq!(no_usn.usn, "");
    }

    #[test]
    fn m_search_names_the_group_of_its_family() {
        let v4: SocketAddr = SSDP_MULTICAST.parse().unwrap();
        assert_eq!(v4, SSDP_GROUP_V4);
        let m = m_search(host_header(v4), "st", 2);
        assert!(m.starts_with("M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n"));
        assert!(m.contains("MX: 2\r\nST: st\r\n\r\n"));
        let v6 = v6_targets(&[3, 7]);
        assert_eq!(v6.len(), 2);
        let SocketAddr::V6(a) = v6[1] else { panic!() };
        assert_eq!(
            (*a.ip(), a.port(), a.scope_id()),
            (SSDP_MULTICAST_V6, 1900, 7)
        );
        assert!(m_search(host_header(v6[0]), "st", 2).contains("HOST: [FF02::C]:1900\r\n"));
    }
}
