//! A keep-alive HTTP/1.1 connection for load tools, as light as `wrk`: requests are byte
//! strings built once, an answer's status line and `content-length` are read and its
//! body kept in a reused buffer. A load generator that shares the process (and the
//! cores) with the server it measures should cost that server little; a full HTTP
//! client stack per request would count against it.
//!
//! Not a general client: no chunked answers, no redirects, no TLS.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The bytes of one HTTP/1.1 request to `host` (`content-length` added when there is a
/// body).
pub fn request(
    method: &str,
    host: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n");
    for (name, value) in headers {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    if !body.is_empty() || method == "POST" {
        out.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// One keep-alive connection (opened on first use, again after the server closed it).
#[derive(Debug)]
pub struct RawHttp {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    body_at: usize,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

impl RawHttp {
    /// A connection to `addr`, not yet open.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            stream: None,
            buf: Vec::with_capacity(4096),
            body_at: 0,
        }
    }

    /// The last answer's body.
    pub fn body(&self) -> &[u8] {
        self.buf.get(self.body_at..).unwrap_or_default()
    }

    /// Sends `request` (whole request bytes, see [`request`]) and reads the answer;
    /// returns its status.
    ///
    /// # Errors
    /// Connection failures, a closed connection, an answer without `content-length`.
    pub async fn send(&mut self, request: &[u8]) -> io::Result<u16> {
        let result = self.exchange(request).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn exchange(&mut self, request: &[u8]) -> io::Result<u16> {
        let stream = match &mut self.stream {
            Some(s) => s,
            None => {
                let s = TcpStream::connect(self.addr).await?;
                s.set_nodelay(true)?;
                self.stream.insert(s)
            }
        };
        stream.write_all(request).await?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        let (status, head_len, body_len, close) = loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end])
                    .map_err(|_| invalid("a non-UTF-8 head"))?;
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse::<u16>().ok())
                    .ok_or_else(|| invalid("no status"))?;
                let mut length = None;
                let mut close = false;
                for line in head.split("\r\n").skip(1) {
                    let (name, value) = line.split_once(':').unwrap_or((line, ""));
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse::<usize>().ok();
                    } else if name.eq_ignore_ascii_case("connection") {
                        close = value.trim().eq_ignore_ascii_case("close");
                    }
                }
                let length = length.ok_or_else(|| invalid("an answer without content-length"))?;
                break (status, end + 4, length, close);
            }
        };
        while self.buf.len() < head_len + body_len {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        self.buf.truncate(head_len + body_len);
        self.body_at = head_len;
        if close {
            self.stream = None;
        }
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_connection_and_reads_each_body() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for i in 0..2 {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let body = format!("{{\"n\":{i}}}");
                let close = if i == 1 { "connection: close\r\n" } else { "" };
                s.write_all(
                    format!(
                        "HTTP/1.1 20{i} OK\r\ncontent-length: {}\r\n{close}\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await
                .unwrap();
            }
            seen
        });
        let mut c = RawHttp::new(addr);
        let req = request(
            "POST",
            addr,
            "/x",
            &[("content-type", "application/json")],
            b"{}",
        );
        assert_eq!(c.send(&req).await.unwrap(), 200);
        assert_eq!(c.body(), b"{\"n\":0}");
        assert_eq!(c.send(&req).await.unwrap(), 201);
        assert_eq!(c.body(), b"{\"n\":1}");
        assert!(c.stream.is_none(), "closed as the server said");
        let seen = server.await.unwrap();
        assert!(seen[0].starts_with("POST /x HTTP/1.1\r\n"));
        assert!(seen[0].contains("content-length: 2\r\n"));
        assert!(seen[1].ends_with("\r\n\r\n{}"));
    }
}
