//! SSDP discovery (UPnP Device Architecture §1.3): a multicast `M-SEARCH` to
//! 239.255.255.250:1900 per search target, unicast HTTPU answers collected until a
//! deadline. Bounded: one socket, at most [`MAX_REPLIES`] answers, each ≤ 2 KiB read.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;

/// The SSDP multicast group and port.
pub const SSDP_MULTICAST: &str = "239.255.255.250:1900";

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
    /// Who answered.
    pub from: SocketAddr,
}

/// The `M-SEARCH` request for `st` with `MX` seconds.
pub fn m_search(st: &str, mx: u64) -> String {
    format!(
        "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: {mx}\r\nST: {st}\r\n\r\n"
    )
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
    let (mut location, mut st) = (None, None);
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.trim().eq_ignore_ascii_case("location") {
            location = Some(v.to_owned());
        } else if k.trim().eq_ignore_ascii_case("st") {
            st = Some(v.to_owned());
        }
    }
    let location = location.filter(|l| l.starts_with("http://"))?;
    Some(Reply {
        location,
        st: st.unwrap_or_default(),
        from,
    })
}

/// Sends one `M-SEARCH` per target to `to` (normally [`SSDP_MULTICAST`]) and collects
/// distinct answers until `timeout` has passed or [`MAX_REPLIES`] arrived.
///
/// # Errors
/// Socket errors (no route for multicast, bind failure).
pub async fn search(
    to: SocketAddr,
    targets: &[&str],
    timeout: Duration,
) -> std::io::Result<Vec<Reply>> {
    let bind: SocketAddr = if to.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = UdpSocket::bind(bind).await?;
    if to.ip().is_multicast() {
        // stay on the local link
        let _ = socket.set_multicast_ttl_v4(2);
    }
    let mx = timeout.as_secs().clamp(1, 5);
    for st in targets {
        socket.send_to(m_search(st, mx).as_bytes(), to).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers() {
        let from: SocketAddr = "10.77.1.1:1900".parse().unwrap();
        let r = parse_reply(
            b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nst: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLocation: http://10.77.1.1:5000/rootDesc.xml\r\n\r\n",
            from,
        )
        .unwrap();
        assert_eq!(r.location, "http://10.77.1.1:5000/rootDesc.xml");
        assert!(r.st.ends_with("InternetGatewayDevice:1"));
        assert!(parse_reply(b"NOTIFY * HTTP/1.1\r\nLOCATION: http://x/\r\n\r\n", from).is_none());
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\n\r\n", from).is_none());
        assert!(m_search("st", 2).contains("MX: 2\r\nST: st\r\n\r\n"));
    }
}
