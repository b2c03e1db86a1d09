//! Round-trip time of one native CALL and one HTTP POST on loopback, against an
//! in-process echo server on one port. Prints the median, p90 and p99 over N calls.
//!
//! `cargo run --release -p iicp-transport --example rtt -- [N]`
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use iicp_proto::message::{Body, Call, Response};
use iicp_transport::http::server::{json, read_json, Params, Request};
use iicp_transport::http::{HttpClient, HttpClientConfig, Router};
use iicp_transport::listener::{Listener, ListenerConfig, Services};
use iicp_transport::native::{CallContext, CallHandler, NativeClient, NativeEndpoint};
use iicp_transport::shutdown;

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{name:<12} n={:<6} median={:>8.1?} p90={:>8.1?} p99={:>8.1?}",
        samples.len(),
        pick(0.5),
        pick(0.9),
        pick(0.99)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);
    let router = Router::new().route(Method::POST, "/v1/task", |mut req: Request, _p: Params| async move {
        match read_json::<serde_json::Value>(&mut req, 1 << 20).await {
            Ok(v) => json(http::StatusCode::OK, &serde_json::json!({"task_id": v["task_id"], "status": "success", "result": v["payload"]})),
            Err(e) => e.into_response(),
        }
    });
    let native: Arc<dyn CallHandler> = Arc::new(|call: Call, _ctx: CallContext| async move {
        let body = call.payload.clone().unwrap_or(Body::Bytes(Vec::new()));
        Response::success(&call, body)
    });
    let listener = Listener::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        ListenerConfig::default(),
    )
    .await?;
    let addr = listener.local_addr()?;
    let (trigger, sd) = shutdown::channel();
    let server = tokio::spawn(listener.serve(
        Services {
            http: Some(Arc::new(router)),
            native: Some(native),
        },
        sd,
    ));

    let payload = serde_json::json!({"messages": [{"role": "user", "content": "hello"}]});
    let client = NativeClient::default();
    let ep: NativeEndpoint = format!("iicp://{addr}").parse()?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 100 {
        let call = Call {
            session_id: Some("s".into()),
            call_id: Some(i.to_string()),
            payload: Some(Body::json(&payload)),
            ..Call::default()
        };
        let t0 = Instant::now();
        client.call(&ep, call, Duration::from_secs(5)).await?;
        if i >= 100 {
            samples.push(t0.elapsed());
        }
    }
    summary("native CALL", samples);

    let http = HttpClient::new(HttpClientConfig::default())?;
    let url = format!("http://{addr}/v1/task");
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 100 {
        let body = serde_json::json!({"task_id": i.to_string(), "intent": "urn:iicp:intent:llm:chat:v1", "payload": payload});
        let t0 = Instant::now();
        let reply = http.post_json(&url, &body).send().await?;
        if !reply.is_success() {
            return Err("HTTP error".into());
        }
        if i >= 100 {
            samples.push(t0.elapsed());
        }
    }
    summary("HTTP POST", samples);
    trigger.fire();
    server.await??;
    Ok(())
}
