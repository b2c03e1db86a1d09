//! `chat PROMPT…`: send one chat through the mesh — discover, select, submit (with
//! IICP-CX encryption) — and print the answer as it is generated (SEED-SDK.md §2.5
//! `query`; the service-lifecycle profile, PROTOCOL.md §11: a node that does not stream
//! answers in one piece). `--no-stream` waits for the whole answer.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use std::io::Write as _;

use iicp_client::{ChatEvent, ChatOptions, ChatRequest, ChatResult, Client, Encryption, Transport};
use iicp_proto::task::ChatMessage;
use serde_json::json;

use super::common::DEFAULT_DIRECTORY;
use super::UsageError;

/// Which transport carries the task.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum TransportArg {
    /// HTTP `POST /v1/task` only.
    Http,
    /// The native IICP transport only.
    Native,
    /// Native when the node offers it, else HTTP.
    Auto,
}

impl From<TransportArg> for Transport {
    fn from(t: TransportArg) -> Self {
        match t {
            TransportArg::Http => Transport::Http,
            TransportArg::Native => Transport::Native,
            TransportArg::Auto => Transport::Auto,
        }
    }
}

/// Consumer options shared by `chat` and `discover`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConsumerArgs {
    /// Directory base URL.
    #[arg(long, env = "IICP_DIRECTORY_URL", default_value = DEFAULT_DIRECTORY, value_name = "URL")]
    pub(crate) directory_url: String,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// Accept loopback and private node endpoints (a private mesh).
    #[arg(long, env = "IICP_ALLOW_PRIVATE_ENDPOINTS", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) allow_private_endpoints: bool,
    /// Transport to the node.
    #[arg(long, value_enum, default_value_t = TransportArg::Auto)]
    pub(crate) transport: TransportArg,
    /// Also use nodes without an IICP-CX key, sending them plaintext (unsafe outside a
    /// private mesh).
    #[arg(long, env = "IICP_CX_ALLOW_PLAINTEXT", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) allow_plaintext: bool,
    /// Preferred region.
    #[arg(long, env = "IICP_REGION")]
    pub(crate) region: Option<String>,
    #[command(flatten)]
    pub(crate) routing: super::common::RoutingArgs,
}

impl ConsumerArgs {
    pub(crate) fn client(&self, timeout: Option<Duration>) -> anyhow::Result<Client> {
        super::common::http_url("--directory-url", &self.directory_url)?;
        let mut b = Client::builder()
            .directory_url(self.directory_url.clone())
            .routing_policy(self.routing.policy()?)
            .allow_private_endpoints(self.allow_private_endpoints)
            .transport(self.transport.into())
            .encryption(if self.allow_plaintext {
                Encryption::AllowPlaintext
            } else {
                Encryption::Required
            });
        if let Some(r) = self.region.as_deref().filter(|r| !r.is_empty()) {
            b = b.region(r);
        }
        if let Some(t) = timeout {
            b = b.timeout(t);
        }
        b.build()
            .map_err(|e| UsageError(format!("invalid client configuration: {e}")).into())
    }
}

/// Arguments of `chat`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The message (words are joined with spaces).
    #[arg(required = true, num_args = 1.., value_name = "PROMPT")]
    prompt: Vec<String>,
    #[command(flatten)]
    consumer: ConsumerArgs,
    /// Intent [default: urn:iicp:intent:llm:chat:v1].
    #[arg(long, env = "IICP_INTENT", value_name = "URN")]
    intent: Option<String>,
    /// Model to ask for.
    #[arg(long)]
    model: Option<String>,
    /// Output token cap.
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Time budget per node attempt in ms (at most 120000).
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..=120_000))]
    timeout_ms: u64,
    /// Wait for the whole answer instead of printing it as it is generated.
    #[arg(long, env = "IICP_NO_STREAM", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    no_stream: bool,
}

/// What a chat gave: the reply, and when its first text arrived (streamed).
struct Answer {
    reply: ChatResult,
    first_token: Option<Duration>,
    streamed: bool,
}

/// Runs the chat streamed, printing each delta to stdout as it arrives unless `quiet`.
async fn streamed(
    client: &Client,
    request: ChatRequest,
    options: ChatOptions,
    quiet: bool,
    t0: Instant,
) -> anyhow::Result<Answer> {
    let mut chat = client
        .chat_stream(request, options)
        .await
        .context("chat failed")?;
    let streamed = chat.is_streamed();
    let mut first_token = None;
    let mut stdout = std::io::stdout().lock();
    while let Some(event) = chat.next().await {
        match event {
            Ok(ChatEvent::Delta(text)) => {
                if first_token.is_none() && !text.is_empty() {
                    first_token = Some(t0.elapsed());
                }
                if !quiet {
                    stdout.write_all(text.as_bytes())?;
                    stdout.flush()?;
                }
            }
            Ok(ChatEvent::Done(reply)) => {
                if !quiet {
                    writeln!(stdout)?;
                }
                return Ok(Answer {
                    reply: *reply,
                    first_token,
                    streamed,
                });
            }
            Ok(_) => {}
            Err(e) => {
                if !quiet && first_token.is_some() {
                    writeln!(stdout)?;
                }
                return Err(anyhow::Error::new(e).context("chat failed"));
            }
        }
    }
    anyhow::bail!("chat failed: the stream ended without an answer")
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let prompt = args.prompt.join(" ");
    if prompt.trim().is_empty() {
        return Err(UsageError("the prompt is empty".into()).into());
    }
    let timeout = Duration::from_millis(args.timeout_ms);
    let client = args.consumer.client(Some(timeout))?;
    let options = ChatOptions {
        model: args.model.clone(),
        max_tokens: args.max_tokens,
        timeout: Some(timeout),
        intent: args.intent.clone(),
        ..ChatOptions::default()
    };
    let t0 = Instant::now();
    let answer = if args.no_stream {
        Answer {
            reply: client
                .chat_with(vec![ChatMessage::new("user", prompt)], options)
                .await
                .context("chat failed")?,
            first_token: None,
            streamed: false,
        }
    } else {
        // what `chat_with` puts into the request from the options
        let mut request = ChatRequest::new(vec![ChatMessage::new("user", prompt)]);
        request.model.clone_from(&options.model);
        request.max_tokens = options.max_tokens;
        streamed(&client, request, options, args.consumer.json, t0).await?
    };
    let elapsed = t0.elapsed();
    let reply = &answer.reply;
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if args.consumer.json {
        let out = json!({
            "text": reply.text(),
            "node_id": reply.node_id,
            "task_id": reply.task_id.as_str(),
            "model": reply.model,
            "latency_ms": ms(elapsed),
            "first_token_ms": answer.first_token.map(ms),
            "streamed": answer.streamed,
            "completion": reply.completion,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        if args.no_stream {
            println!("{}", reply.text());
        }
        let node = reply.node_id.get(..8).unwrap_or(&reply.node_id);
        let first = match (answer.first_token, answer.streamed) {
            (Some(t), true) => format!(", first token after {t:.1?}"),
            (_, false) if !args.no_stream => " (the node does not stream)".to_owned(),
            _ => String::new(),
        };
        eprintln!(
            "answered by node {node}{} in {elapsed:.1?}{first}",
            reply
                .model
                .as_deref()
                .map(|m| format!(" (model {m})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}
