//! Our harness around the Rust SDK's `IicpTcpClient` against a node's native port,
//! printing one JSON object per line:
//!
//! * `rust-sdk-tcp HOST PORT N` — handshake, ping, N CALLs;
//! * `rust-sdk-tcp HOST PORT discover INTENT` — handshake, one DISCOVER, the node list;
//! * `rust-sdk-tcp HOST PORT stream TASK_ID PROMPT` — handshake, the SDK's validating
//!   lifecycle client (`call_stream`, key 24): one line per frame, or its error.

use iicp_client::iicp_tcp::IicpTcpClient;
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (host, port) = (args[1].clone(), args[2].parse::<u16>()?);
    let mut client = IicpTcpClient::connect(&host, port).await?;
    client.handshake().await?;
    println!("{}", json!({"event": "handshake", "peer_node_id": client.peer_node_id, "framing": client.framing_version}));
    if args[3] == "discover" {
        let started = std::time::Instant::now();
        let nodes = client.discover(&args[4]).await?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        println!("{}", json!({"event": "discover", "ms": ms, "nodes": serde_json::to_value(&nodes)?}));
        println!("{}", json!({"event": "done"}));
        return Ok(());
    }
    if args[3] == "stream" {
        use futures_util::StreamExt as _;
        let payload = json!({"messages": [{"role": "user", "content": args[5]}]});
        let frames = client.call_stream(
            "urn:iicp:intent:llm:chat:v1",
            payload,
            args[4].clone(),
            "rs-stream-session",
            Some("rs-stream-call".to_owned()),
            None,
        );
        let mut frames = std::pin::pin!(frames);
        while let Some(frame) = frames.next().await {
            match frame {
                Ok(f) => println!("{}", json!({"event": "frame", "frame": serde_json::to_value(&f)?})),
                Err(e) => println!("{}", json!({"event": "error", "error": e.to_string()})),
            }
        }
        println!("{}", json!({"event": "done"}));
        return Ok(());
    }
    let n = args[3].parse::<usize>()?;
    let echo = client.ping(Some(b"rs-echo")).await?;
    println!("{}", json!({"event": "pong", "echo": echo.map(|e| String::from_utf8_lossy(&e).into_owned())}));
    for i in 0..n {
        let payload = json!({"messages": [{"role": "user", "content": format!("rust sdk native #{i}")}]});
        let result = client.call_with_session("urn:iicp:intent:llm:chat:v1", payload, Some(&format!("rc{i}")), &format!("rs{i}")).await?;
        println!("{}", json!({"event": "call", "i": i, "result": result}));
    }
    println!("{}", json!({"event": "done"}));
    Ok(())
}
