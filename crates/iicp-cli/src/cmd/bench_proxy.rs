//! `bench-proxy`: what the proxy costs. The same chats go through `Client::chat()` in
//! process and through `iicp_proxy::Proxy` (OpenAI `POST /v1/chat/completions` over
//! loopback HTTP, served by this process), against one private mesh on this machine
//! (`dev`'s: the embedded directory and nodes with the echo model, or `--backend-url`).
//! Reported: p50/p90/p99 at concurrency 1 (the latency the proxy adds), throughput
//! at `--concurrency` (the share of direct throughput the proxy keeps), and the time to
//! the first streamed chunk at concurrency 1 (`Client::chat_stream` to its first delta,
//! the proxy's `stream: true` to the first body chunk, which carries the first delta).
//!
//! The buffered proxy runs send from a load tool as light as `wrk`: one keep-alive
//! connection per worker, the request bytes built once, the answer's status and
//! `content-length` read and its body skipped. The load shares the process (and the two
//! cores) with the proxy, so a heavy HTTP client there would count against the proxy.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use iicp_client::{ChatEvent, ChatMessage, ChatOptions, ChatRequest, Client};
use iicp_proxy::Proxy;
use iicp_testkit::load::Histogram;
use iicp_testkit::raw_http::{self, RawHttp};
use iicp_transport::http::client::{HttpClient, HttpClientConfig};
use iicp_transport::listener::{Listener, ListenerConfig};
use iicp_transport::shutdown;
use serde_json::json;

use super::bench::ms;
use super::common::{probe_client, Backend};
use super::dev::Mesh;

/// Arguments of `bench-proxy`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Provider nodes of the mesh.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    nodes: u16,
    /// Concurrent closed-loop workers of the throughput run.
    #[arg(short, long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=4096))]
    concurrency: u16,
    /// Length of each measured run, in seconds.
    #[arg(short, long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// A model server behind the nodes (an OpenAI-compatible base URL, e.g. `iicp
    /// stub-model`'s) instead of the built-in echo model.
    #[arg(long)]
    backend_url: Option<String>,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// One way of sending a chat.
#[derive(Clone)]
enum Path {
    Direct(Client),
    /// The streamed runs' client, the proxy's URL, its address and the buffered
    /// request's bytes.
    Proxy(HttpClient, Arc<str>, SocketAddr, Arc<[u8]>),
}

/// One worker's way of sending: the client, or its own keep-alive connection.
enum Worker {
    Direct(Client),
    Proxy(RawConn),
}

impl Path {
    fn worker(&self) -> Worker {
        match self {
            Path::Direct(client) => Worker::Direct(client.clone()),
            Path::Proxy(_, _, addr, request) => Worker::Proxy(RawConn {
                http: RawHttp::new(*addr),
                request: Arc::clone(request),
            }),
        }
    }
}

impl Worker {
    async fn once(&mut self) -> anyhow::Result<()> {
        match self {
            Worker::Direct(client) => {
                client
                    .chat(vec![ChatMessage::new("user", "hello bench")])
                    .await?;
            }
            Worker::Proxy(conn) => conn.once().await?,
        }
        Ok(())
    }
}

/// The buffered chat request to the proxy, as bytes.
fn raw_request(addr: SocketAddr) -> Arc<[u8]> {
    let body = json!({"model": "iicp", "messages": [{"role": "user", "content": "hello bench"}]})
        .to_string();
    raw_http::request(
        "POST",
        addr,
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .into()
}

/// A worker's keep-alive connection to the proxy and the request it sends.
struct RawConn {
    http: RawHttp,
    request: Arc<[u8]>,
}

impl RawConn {
    async fn once(&mut self) -> anyhow::Result<()> {
        let status = self.http.send(&self.request).await?;
        if status != 200 {
            bail!("the proxy answered HTTP {status}");
        }
        Ok(())
    }
}

impl Path {
    /// One streamed chat, read to its end: the time to its first chunk.
    async fn first_chunk(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut first = None;
        match self {
            Path::Direct(client) => {
                let request = ChatRequest::new(vec![ChatMessage::new("user", "hello bench")]);
                let mut chat = client.chat_stream(request, ChatOptions::default()).await?;
                while let Some(event) = chat.next().await {
                    if let ChatEvent::Delta(_) = event? {
                        first.get_or_insert_with(|| started.elapsed());
                    }
                }
            }
            Path::Proxy(http, url, ..) => {
                let body = json!({"model": "iicp", "stream": true,
                                  "messages": [{"role": "user", "content": "hello bench"}]});
                let mut reply = http.post_json(url.as_ref(), &body).send_streaming().await?;
                if !reply.status.is_success() {
                    bail!("the proxy answered HTTP {}", reply.status);
                }
                while reply.chunk().await?.is_some() {
                    first.get_or_insert_with(|| started.elapsed());
                }
            }
        }
        first.context("the stream carried no chunk")
    }
}

/// Streamed chats one at a time for `secs`: the times to the first chunk.
async fn measure_first_chunk(path: &Path, secs: u64) -> anyhow::Result<Histogram> {
    for _ in 0..50 {
        path.first_chunk().await?;
    }
    let until = Instant::now() + Duration::from_secs(secs);
    let mut h = Histogram::new();
    while Instant::now() < until {
        h.record(path.first_chunk().await?);
    }
    Ok(h)
}

/// Closed-loop load for `secs` with `workers` workers: latencies and completed count.
async fn measure(path: &Path, workers: u16, secs: u64) -> anyhow::Result<(Histogram, f64)> {
    // warm-up: connections, discovery cache, CX keys
    let mut warm = path.worker();
    for _ in 0..50 {
        warm.once().await?;
    }
    let until = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(usize::from(workers));
    for _ in 0..workers {
        let mut worker = path.worker();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::new();
            while Instant::now() < until {
                let t = Instant::now();
                worker.once().await?;
                h.record(t.elapsed());
            }
            anyhow::Ok(h)
        }));
    }
    let mut all = Histogram::new();
    for t in tasks {
        all.merge(&t.await.context("a worker panicked")??);
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    Ok((all, rate))
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let backend = match &args.backend_url {
        None => Backend::Echo,
        Some(url) => Backend::from_flags(None, Some(url), None)?,
    };
    let (plan, handler) = backend.prepare(&probe_client()?, None).await?;
    let mesh = Mesh::start(
        args.nodes,
        &handler,
        &plan.model,
        0,
        // the load is the proxy's, not the node's: no node refuses for capacity
        Some(u32::from(args.concurrency).max(64)),
        false,
    )
    .await?;
    let client = Client::builder()
        .directory_url(mesh.dir_url.clone())
        .allow_private_endpoints(true)
        .build()
        .context("building the client")?;
    let proxy = Proxy::builder()
        .client(client.clone())
        .max_concurrent(usize::from(args.concurrency).max(256))
        .build()
        .context("building the proxy")?;
    let listener = Listener::bind(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        ListenerConfig::default(),
    )
    .await
    .context("binding the proxy")?;
    let proxy_addr = listener.local_addr()?;
    let url: Arc<str> = format!("http://{proxy_addr}/v1/chat/completions").into();
    let (trigger, sd) = shutdown::channel();
    let served = tokio::spawn(async move { proxy.serve(listener, sd).await });
    let mut cfg = HttpClientConfig::default();
    cfg.pool_max_idle_per_host = usize::from(args.concurrency).max(32);
    let http = HttpClient::new(cfg).context("building the HTTP client")?;

    let direct = Path::Direct(client);
    let proxied = Path::Proxy(http, url, proxy_addr, raw_request(proxy_addr));
    let result = async {
        let (d1, _) = measure(&direct, 1, args.seconds).await?;
        let (p1, _) = measure(&proxied, 1, args.seconds).await?;
        let (_, dn) = measure(&direct, args.concurrency, args.seconds).await?;
        let (_, pn) = measure(&proxied, args.concurrency, args.seconds).await?;
        let df = measure_first_chunk(&direct, args.seconds).await?;
        let pf = measure_first_chunk(&proxied, args.seconds).await?;
        anyhow::Ok((
            d1.latency(),
            p1.latency(),
            dn,
            pn,
            (df.latency(), pf.latency()),
        ))
    }
    .await;
    trigger.fire();
    let _ = served.await;
    mesh.stop().await;
    let (d1, p1, dn, pn, (df, pf)) = result?;
    let added_first_p50_us = pf.p50_us - df.p50_us;
    let added_p50_us = p1.p50_us - d1.p50_us;
    let kept = if dn > 0.0 { pn / dn } else { 0.0 };
    if args.json {
        let out = json!({
            "nodes": args.nodes, "concurrency": args.concurrency, "seconds": args.seconds,
            "model": plan.model,
            "direct_c1": {"p50_us": d1.p50_us, "p90_us": d1.p90_us, "p99_us": d1.p99_us},
            "proxy_c1": {"p50_us": p1.p50_us, "p90_us": p1.p90_us, "p99_us": p1.p99_us},
            "added_p50_us": added_p50_us,
            "direct_rps": dn, "proxy_rps": pn, "throughput_kept": kept,
            "first_chunk_c1": {
                "direct": {"p50_us": df.p50_us, "p90_us": df.p90_us, "p99_us": df.p99_us},
                "proxy": {"p50_us": pf.p50_us, "p90_us": pf.p90_us, "p99_us": pf.p99_us},
                "added_p50_us": added_first_p50_us,
            },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "mesh        {} node(s), model {}, {} s per run",
            args.nodes, plan.model, args.seconds
        );
        println!(
            "c=1         direct  p50 {}  p90 {}  p99 {}",
            ms(d1.p50_us),
            ms(d1.p90_us),
            ms(d1.p99_us)
        );
        println!(
            "c=1         proxy   p50 {}  p90 {}  p99 {}",
            ms(p1.p50_us),
            ms(p1.p90_us),
            ms(p1.p99_us)
        );
        println!("added       p50 {}", ms(added_p50_us));
        println!(
            "c={:<4}      direct {dn:.0}/s  proxy {pn:.0}/s  kept {:.0} %",
            args.concurrency,
            kept * 100.0
        );
        println!(
            "1st chunk   direct  p50 {}  p90 {}  p99 {}   (streamed, c=1)",
            ms(df.p50_us),
            ms(df.p90_us),
            ms(df.p99_us)
        );
        println!(
            "1st chunk   proxy   p50 {}  p90 {}  p99 {}",
            ms(pf.p50_us),
            ms(pf.p90_us),
            ms(pf.p99_us)
        );
        println!("added       1st chunk p50 {}", ms(added_first_p50_us));
    }
    Ok(())
}
