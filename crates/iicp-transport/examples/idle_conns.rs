//! Memory cost of idle native connections on a server in another process: opens N native
//! connections to ADDR, completes the handshake on each (INIT/ACK, then one PING/PONG),
//! and reports the server's resident set (`VmRSS` of PID) before and after, then holds
//! the connections for HOLD seconds.
//!
//! `cargo run --release -p iicp-transport --example idle_conns -- ADDR N PID [HOLD_S]`
//!
//! The server must accept N connections (`ListenerConfig::max_connections`) and this
//! process needs N file descriptors (`ulimit -n`). Prints one JSON line.
//!
//! `idle_conns serve PORT` runs a bare one-port server (HTTP + native, an echo handler,
//! 65 536 connections allowed) to measure the transport alone; a node built on it (e.g.
//! the `bench_node` example of iicp-node) is measured the same way.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use iicp_proto::message::{Body, Call, Response};
use iicp_transport::listener::{Listener, ListenerConfig, Services};
use iicp_transport::native::connection::{spawn, ConnectionConfig, ConnectionHandle};
use iicp_transport::native::{CallContext, CallHandler};
use iicp_transport::shutdown;
use tokio::net::TcpStream;

/// `VmRSS` of a process in bytes, from `/proc/PID/status`.
fn rss_bytes(pid: u32) -> Result<u64, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or("no VmRSS in /proc/PID/status")?;
    Ok(kib * 1024)
}

async fn open(addr: SocketAddr, sd: shutdown::Shutdown) -> Result<ConnectionHandle, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let ctx = CallContext {
        peer: addr,
        tls: false,
    };
    let (handle, _task) = spawn(stream, ctx, ConnectionConfig::client(), None, None, sd);
    handle
        .ping(None, Duration::from_secs(30))
        .await
        .map_err(|e| format!("ping: {e}"))?;
    Ok(handle)
}

async fn serve(port: u16) -> Result<(), Box<dyn std::error::Error>> {
    let native: std::sync::Arc<dyn CallHandler> =
        std::sync::Arc::new(|call: Call, _ctx: CallContext| async move {
            let body = call.payload.clone().unwrap_or(Body::Bytes(Vec::new()));
            Response::success(&call, body)
        });
    let config = ListenerConfig {
        max_connections: 65_536,
        ..ListenerConfig::default()
    };
    let listener = Listener::bind(SocketAddr::from(([127, 0, 0, 1], port)), config).await?;
    println!(
        "serving on {} (pid {})",
        listener.local_addr()?,
        std::process::id()
    );
    let (_trigger, sd) = shutdown::channel();
    let services = Services {
        http: None,
        native: Some(native),
    };
    listener.serve(services, sd).await?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        let port = args.get(1).ok_or("usage: idle_conns serve PORT")?.parse()?;
        return serve(port).await;
    }
    let usage = "usage: idle_conns ADDR N PID [HOLD_S]";
    let addr: SocketAddr = args.first().ok_or(usage)?.parse()?;
    let n: usize = args.get(1).ok_or(usage)?.parse()?;
    let pid: u32 = args.get(2).ok_or(usage)?.parse()?;
    let hold = Duration::from_secs(args.get(3).map_or(Ok(0), |s| s.parse())?);

    let before = rss_bytes(pid)?;
    let (trigger, sd) = shutdown::channel();
    let started = Instant::now();
    let mut handles = Vec::with_capacity(n);
    // open in waves, so the accept backlog never overflows
    for wave in (0..n).collect::<Vec<_>>().chunks(256) {
        let mut set = tokio::task::JoinSet::new();
        for _ in wave {
            set.spawn(open(addr, sd.clone()));
        }
        while let Some(joined) = set.join_next().await {
            handles.push(joined??);
        }
    }
    let opened = started.elapsed();
    // let the server settle (allocator, lazily touched pages)
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_bytes(pid)?;
    let open_now = handles.iter().filter(|h| !h.is_closed()).count();
    println!(
        "{{\"connections\":{n},\"open\":{open_now},\"open_seconds\":{:.2},\"rss_before_bytes\":{before},\"rss_after_bytes\":{after},\"per_connection_bytes\":{}}}",
        opened.as_secs_f64(),
        after.saturating_sub(before) / n.max(1) as u64
    );
    tokio::time::sleep(hold).await;
    trigger.fire();
    drop(handles);
    Ok(())
}
