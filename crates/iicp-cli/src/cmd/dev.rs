//! `dev`: a complete private mesh on this machine in one command — the embedded
//! directory on loopback, N nodes (the built-in echo model, or a real backend), the
//! OpenAI/Anthropic/Ollama proxy in front of it, and a chat sent through discover →
//! select → submit over HTTP and over the native transport.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use iicp_client::{Client, Task, TaskEvent, Transport, TransportUsed};
use iicp_directory::store::MemoryStore;
use iicp_directory::Directory;
use iicp_node::{Node, NodeEvent, RateLimit, ServeHandle, ServeOptions};
use iicp_proto::task::{ChatMessage, Qos};
use iicp_proxy::Proxy;
use iicp_testkit::load::Histogram;
use iicp_transport::listener::{Listener, ListenerConfig};
use iicp_transport::shutdown;
use serde_json::json;
use tokio::sync::broadcast::{self, error::RecvError};

use super::bench::ms;
use super::common::{config_error, probe_client, Backend, Handler, CHAT};

/// Arguments of `dev`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Number of provider nodes to start.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    nodes: u16,
    /// Exit after the round trips instead of serving until Ctrl-C.
    #[arg(long)]
    once: bool,
    /// The chat message sent through the mesh.
    #[arg(long, default_value = "Hello from the IICP dev mesh")]
    prompt: String,
    /// A real model server instead of the built-in echo model.
    #[arg(long, env = "IICP_BACKEND_URL")]
    backend_url: Option<String>,
    /// Backend type: openai_compat, vllm, llamacpp, anthropic [default: openai_compat;
    /// anthropic for a URL at api.anthropic.com].
    #[arg(long, env = "IICP_BACKEND_TYPE")]
    backend_type: Option<String>,
    /// Model name (with --backend-url; auto-selected when the server lists exactly one).
    #[arg(long, env = "IICP_BACKEND_MODEL")]
    model: Option<String>,
    /// API key of the backend.
    #[arg(long, env = "IICP_BACKEND_API_KEY", hide_env_values = true)]
    backend_api_key: Option<String>,
    /// Port of the directory (0 = any free port).
    #[arg(long, default_value_t = 0)]
    directory_port: u16,
    /// Port of the OpenAI/Anthropic/Ollama proxy in front of the mesh (default 9483, or
    /// the next free one; 0 = any free port).
    #[arg(long)]
    proxy_port: Option<u16>,
    /// Do not start the proxy.
    #[arg(long)]
    no_proxy: bool,
    #[command(flatten)]
    routing: super::common::RoutingArgs,
    /// After the first chat on each transport, time this many more `chat()` calls
    /// through the same client (discovery cached) and print their latency percentiles.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    rounds: u32,
}

/// The task handler: the echo model, or the model server at `--backend-url` read the
/// way `serve` reads it ([`Backend`]: `/v1` added, the type inferred from the URL, the
/// model auto-selected when the server lists one, GGUF paths published by file name).
async fn handler(args: &Args) -> anyhow::Result<(Handler, String)> {
    let backend = match &args.backend_url {
        None => Backend::Echo,
        Some(url) => Backend::from_flags(
            args.backend_type.as_deref(),
            Some(url),
            args.backend_api_key.as_deref(),
        )?,
    };
    let (plan, handler) = backend
        .prepare(&probe_client()?, args.model.as_deref())
        .await?;
    Ok((handler, plan.model))
}

/// Waits until `node` holds a node token (registered), told by its events.
async fn registered(
    node: &Node,
    events: &mut broadcast::Receiver<NodeEvent>,
    deadline: tokio::time::Instant,
) -> anyhow::Result<()> {
    while node.node_token().is_none() {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(_) | Err(RecvError::Lagged(_))) => {}
            Ok(Err(RecvError::Closed)) | Err(_) => {
                bail!("nodes did not register with the directory within 15 s")
            }
        }
    }
    Ok(())
}

/// A private mesh on loopback: the embedded directory and nodes answering with one
/// handler (what `dev` runs, and `bench-proxy` measures against).
pub(crate) struct Mesh {
    /// The directory URL nodes and clients use.
    pub(crate) dir_url: String,
    handles: Vec<(ServeHandle, broadcast::Receiver<NodeEvent>)>,
    dir_trigger: shutdown::Trigger,
    dir_task: tokio::task::JoinHandle<Result<(), iicp_directory::DirectoryError>>,
}

impl Mesh {
    /// Starts the directory on `directory_port` (0: any) and `nodes` nodes serving
    /// `model` with `handler` (each taking `max_concurrent` tasks at once, else the
    /// node's default), and waits until every node is registered; `say` prints each
    /// step.
    pub(crate) async fn start(
        nodes: u16,
        handler: &Handler,
        model: &str,
        directory_port: u16,
        max_concurrent: Option<u32>,
        say: bool,
    ) -> anyhow::Result<Self> {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let directory = Directory::builder()
            .private_mesh(true)
            .store(MemoryStore::new())
            .build()
            .await
            .context("starting the directory")?;
        let listener = Listener::bind(
            SocketAddr::new(loopback, directory_port),
            ListenerConfig::default(),
        )
        .await
        .context("binding the directory")?;
        let dir_addr = listener.local_addr()?;
        let dir_url = format!("http://{dir_addr}/api");
        let (dir_trigger, dir_sd) = shutdown::channel();
        let dir_task = tokio::spawn(async move { directory.serve(listener, dir_sd).await });
        if say {
            println!("directory   {dir_url}");
        }
        let mut mesh = Mesh {
            dir_url,
            handles: Vec::new(),
            dir_trigger,
            dir_task,
        };
        // the nodes, each on a port bound first
        for i in 0..nodes {
            let listener = Listener::bind(SocketAddr::new(loopback, 0), ListenerConfig::default())
                .await
                .with_context(|| format!("binding node {i}"))?;
            let port = listener.local_addr()?.port();
            let mut node = Node::builder();
            if let Some(n) = max_concurrent {
                node = node.max_concurrent(n);
            }
            let node = node
                .endpoint(format!("http://127.0.0.1:{port}"))
                .intent(CHAT)
                .model(model.to_owned())
                .region("local")
                .directory_url(mesh.dir_url.clone())
                // a private mesh on loopback: no per-origin task limit (--rounds loads it)
                .rate_limit(RateLimit {
                    max_requests: 0,
                    window: Duration::from_secs(60),
                })
                .build()
                .map_err(config_error)?;
            let events = node.subscribe();
            let handle = node
                .serve(listener, handler.clone(), ServeOptions::default())
                .await
                .with_context(|| format!("starting node {i}"))?;
            if say {
                println!(
                    "node {i}      http://127.0.0.1:{port} (native iicp://127.0.0.1:{port}), model {model}"
                );
            }
            mesh.handles.push((handle, events));
        }
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        for (h, events) in &mut mesh.handles {
            registered(h.node(), events, deadline).await?;
        }
        if say {
            println!(
                "registered  {} node(s) in {:.0?}",
                mesh.handles.len(),
                start.elapsed()
            );
        }
        Ok(mesh)
    }

    /// Stops the nodes (they deregister), then the directory.
    pub(crate) async fn stop(self) {
        for (h, _) in self.handles {
            let _ = h.stop().await;
        }
        self.dir_trigger.fire();
        let _ = self.dir_task.await;
    }
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let routing = args.routing.policy()?;
    let (handler, model) = handler(&args).await?;
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);

    let mesh = Mesh::start(
        args.nodes,
        &handler,
        &model,
        args.directory_port,
        None,
        true,
    )
    .await?;
    let dir_url = mesh.dir_url.clone();

    // 3. the proxy: the mesh as a local OpenAI, Anthropic and Ollama endpoint
    let (proxy_trigger, proxy_sd) = shutdown::channel();
    let proxy_task = if args.no_proxy {
        None
    } else {
        let proxy = Proxy::builder()
            .directory_url(dir_url.clone())
            .allow_private_endpoints(true)
            .routing_policy(routing.clone())
            .build()
            .context("building the proxy")?;
        let (start, tries) = match args.proxy_port {
            Some(p) => (p, 1),
            None => (iicp_proxy::DEFAULT_PORT, 64),
        };
        let listener = Listener::bind_first_free(loopback, start, tries, ListenerConfig::default())
            .await
            .context("binding the proxy")?;
        let url = format!("http://{}", listener.local_addr()?);
        println!("proxy       {url} (OpenAI {url}/v1, Anthropic {url}/v1/messages, Ollama OLLAMA_HOST={url})");
        println!(
            "try         curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{{\"model\":\"iicp\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'"
        );
        Some(tokio::spawn(async move {
            proxy.serve(listener, proxy_sd).await
        }))
    };

    // 4. a chat over each transport, end to end through the directory
    let mut failed = false;
    for transport in [Transport::Http, Transport::Native] {
        let client = Client::builder()
            .directory_url(dir_url.clone())
            .allow_private_endpoints(true)
            .routing_policy(routing.clone())
            .transport(transport)
            .build()
            .context("building the client")?;
        let payload = json!({"messages": [{"role": "user", "content": args.prompt}]});
        let t0 = Instant::now();
        if let Err(e) = streamed_chat(
            &client,
            Task::new(CHAT, payload).with_qos(Qos::BestEffort),
            t0,
        )
        .await
        {
            failed = true;
            println!("chat        {transport:?} failed: {e}");
            continue;
        }
        if args.rounds > 0 {
            if let Err(e) = time_rounds(&client, transport, &args.prompt, args.rounds).await {
                failed = true;
                println!("rounds      {transport:?} failed: {e}");
            }
        }
    }
    println!();
    println!("Other SDKs can join this mesh with the directory URL {dir_url}");
    println!("  e.g. iicp-node serve --directory-url {dir_url} ... (Python or TypeScript SDK)");

    if !args.once {
        println!("serving until Ctrl-C");
        let (trigger, sd) = shutdown::channel();
        crate::signal::on_terminate(trigger);
        sd.cancelled().await;
    }
    proxy_trigger.fire();
    if let Some(task) = proxy_task {
        let _ = task.await;
    }
    mesh.stop().await;
    if failed {
        bail!("the mesh did not answer over every transport");
    }
    Ok(())
}

/// `rounds` sequential `chat()` calls: latency percentiles, end to end.
async fn time_rounds(
    client: &Client,
    transport: Transport,
    prompt: &str,
    rounds: u32,
) -> Result<(), iicp_client::Error> {
    let mut latencies = Histogram::new();
    let t0 = Instant::now();
    for _ in 0..rounds {
        let t = Instant::now();
        client.chat(vec![ChatMessage::new("user", prompt)]).await?;
        latencies.record(t.elapsed());
    }
    let total = t0.elapsed();
    let l = latencies.latency();
    println!(
        "timing      {rounds} x chat() via {:<6} p50 {}  p90 {}  p99 {}  max {}  ({:.0}/s, discovery cached)",
        match transport {
            Transport::Native => "native",
            _ => "HTTP",
        },
        ms(l.p50_us),
        ms(l.p90_us),
        ms(l.p99_us),
        ms(l.max_us),
        f64::from(rounds) / total.as_secs_f64(),
    );
    Ok(())
}

/// One chat, streamed (the echo model streams word by word): prints the node, the
/// transport, the time to the first token and to the end, and the joined answer.
async fn streamed_chat(client: &Client, task: Task, t0: Instant) -> anyhow::Result<()> {
    let mut stream = client.submit_stream(task).await?;
    let mut assembler = iicp_proto::task::ChatStreamAssembler::new();
    let mut first_token: Option<Duration> = None;
    let end = loop {
        match stream.next().await {
            Some(Ok(TaskEvent::Partial { result, .. })) => {
                let parts = assembler.push(&result);
                if first_token.is_none() && !parts.text.is_empty() {
                    first_token = Some(t0.elapsed());
                }
            }
            Some(Ok(TaskEvent::Completed(end))) => {
                assembler.push(&end.result);
                break end;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("the stream ended without an answer"),
        }
    };
    let elapsed = t0.elapsed();
    let transport = match end.transport {
        TransportUsed::Http => "HTTP",
        TransportUsed::Native => "native",
        _ => "other",
    };
    let node = end.node_id.get(..8).unwrap_or(&end.node_id);
    let cx = if end.encrypted {
        ", IICP-CX encrypted"
    } else {
        ""
    };
    let first = match (end.streamed, first_token) {
        (true, Some(t)) => format!(", first token {t:.1?} ({} chunks)", end.chunks),
        _ => ", not streamed".to_owned(),
    };
    println!(
        "chat        via {transport:<6} node {node}  {elapsed:>8.1?}{first}{cx}: {}",
        assembler.text()
    );
    Ok(())
}
