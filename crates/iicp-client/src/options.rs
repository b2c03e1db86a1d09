//! Inputs and outputs of [`Client`](crate::Client): tasks, discovery and chat options,
//! results, and the transport / encryption / route-discovery choices
//! (PROTOCOL.md §4.1, §8.4, §9.2–§9.3, §16; SEED-SDK §1.2–§1.5).

use std::time::Duration;

use iicp_proto::directory::{DiscoverQuery, DispatchTicketRequest};

use crate::routing::{RoutingPolicy, RoutingProfile};
use iicp_proto::ids::{TaskId, TraceParent};
use iicp_proto::intent::Intent;
use iicp_proto::task::{
    ChatCompletion, ChatMessage, Constraints, Metrics, Qos, TaskResponse, TaskStatus,
};
use serde_json::{Map, Value};

/// The chat intent used by [`Client::chat`](crate::Client::chat).
pub const CHAT_INTENT: &str = "urn:iicp:intent:llm:chat:v1";

/// Which transport carries a task to a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// `POST {endpoint}/v1/task` only.
    Http,
    /// The native transport only; nodes without a usable `transport_endpoint` are not
    /// candidates.
    Native,
    /// Native when the node advertises `transport_endpoint` and it can carry the task
    /// (with IICP-CX: the node lists `native_cx_v1`, ADR 0005), HTTP otherwise. The
    /// default.
    #[default]
    Auto,
}

/// Whether plaintext payloads may be sent (PROTOCOL.md §16, DESIGN §4.6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Encryption {
    /// Encrypt every payload with IICP-CX; nodes without a `cx_public_key` are skipped.
    /// The default.
    #[default]
    Required,
    /// Still encrypt to nodes that advertise a key (never downgrade), but also send
    /// plaintext to keyless nodes. An explicit, unsafe opt-in for private meshes.
    AllowPlaintext,
}

/// How candidates are discovered (§8.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteDiscovery {
    /// Ticketed dispatch when the directory offers it, plain discover otherwise (the
    /// default).
    #[default]
    Auto,
    /// Ticketed dispatch only; a directory without it is an error.
    Ticketed,
    /// Plain `GET /v1/discover` only.
    Legacy,
}

/// The transport that carried a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportUsed {
    /// HTTP `POST /v1/task`.
    Http,
    /// The native transport.
    Native,
}

/// Route-only criteria of discovery (never sent to the provider, §9.3 projection).
/// Unset members fall back to the client's configuration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DiscoverOptions {
    /// Region preference (not an exclusion, §19 T28).
    pub region: Option<String>,
    /// QoS class for the directory's probation filter.
    pub qos: Option<Qos>,
    /// Minimum reputation, 0–1.
    pub min_reputation: Option<f64>,
    /// Most nodes returned: default 10, clamped to 50.
    pub limit: Option<u32>,
    /// Model (directory switches to model-aware ranking).
    pub model: Option<String>,
    /// Required input modality (`text`, `image`, …).
    pub modality: Option<String>,
    /// Only this node (a conversation pinned to the node that answered before): the
    /// others are not candidates, and ticketed dispatch is not used. A node that is no
    /// longer listed, or not eligible, gives `no_nodes_available`.
    pub node_id: Option<String>,
    /// The routing policy of this request; the client's otherwise (§9.4).
    pub routing: Option<RoutingPolicy>,
}

impl DiscoverOptions {
    pub(crate) fn query(&self, intent: &Intent, default_region: Option<&str>) -> DiscoverQuery {
        let mut q = DiscoverQuery::new(intent);
        q.region = self
            .region
            .clone()
            .or_else(|| default_region.map(str::to_owned));
        q.qos = self.qos;
        q.min_reputation = self.min_reputation;
        q.limit = Some(self.effective_limit());
        q.model = self.model.clone();
        q.modality = self.modality.clone();
        q
    }

    pub(crate) fn ticket_request(
        &self,
        intent: &Intent,
        default_region: Option<&str>,
    ) -> DispatchTicketRequest {
        let mut r = DispatchTicketRequest::new(intent);
        r.region = self
            .region
            .clone()
            .or_else(|| default_region.map(str::to_owned));
        r.qos = self.qos;
        r.min_reputation = self.min_reputation;
        r.limit = Some(self.effective_limit());
        r.model = self.model.clone();
        r
    }

    pub(crate) fn effective_limit(&self) -> u32 {
        self.limit
            .unwrap_or(iicp_proto::directory::DEFAULT_DISCOVER_LIMIT)
            .clamp(1, iicp_proto::directory::MAX_DISCOVER_LIMIT)
    }
}

/// A task to submit: an intent, its payload, execution constraints and route options.
///
/// ```
/// use iicp_client::Task;
/// use serde_json::json;
///
/// let task = Task::new("urn:iicp:intent:llm:chat:v1", json!({"messages": [{"role": "user", "content": "hi"}]}))
///     .with_timeout_ms(20_000);
/// assert_eq!(task.constraints.timeout_ms, Some(20_000));
/// ```
#[derive(Clone, PartialEq)]
pub struct Task {
    /// Intent URN (validated before any I/O).
    pub intent: String,
    /// The payload (a JSON object). Never logged, never sent to the directory.
    pub payload: Value,
    /// Execution constraints sent to the node (`timeout_ms` ≤ 120 000, `qos`, `model`,
    /// `max_tokens`, …; `region` is route-only and not forwarded).
    pub constraints: Constraints,
    /// Route-only discovery criteria.
    pub route: DiscoverOptions,
    /// A caller-chosen task id; a fresh UUID v4 otherwise.
    pub task_id: Option<TaskId>,
}

impl Task {
    /// A task with this intent and payload and nothing else.
    pub fn new(intent: impl Into<String>, payload: Value) -> Self {
        Self {
            intent: intent.into(),
            payload,
            constraints: Constraints::default(),
            route: DiscoverOptions::default(),
            task_id: None,
        }
    }

    /// Sets `constraints.timeout_ms`.
    pub fn with_timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.constraints.timeout_ms = Some(timeout_ms);
        self
    }

    /// Sets the QoS class (sent to the node and used for discovery).
    pub fn with_qos(mut self, qos: Qos) -> Self {
        self.constraints.qos = Some(qos);
        self
    }

    /// Sets the route options.
    pub fn with_route(mut self, route: DiscoverOptions) -> Self {
        self.route = route;
        self
    }

    /// Sets the task id.
    pub fn with_task_id(mut self, task_id: TaskId) -> Self {
        self.task_id = Some(task_id);
        self
    }
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("intent", &self.intent)
            .field("payload", &"<redacted>")
            .field("constraints", &self.constraints)
            .field("route", &self.route)
            .field("task_id", &self.task_id)
            .finish()
    }
}

/// The result of [`Client::submit`](crate::Client::submit).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TaskResult {
    /// The task id (one per logical submit, echoed by the node).
    pub task_id: TaskId,
    /// The node that answered.
    pub node_id: String,
    /// The node's response (decrypted when it was encrypted).
    pub response: TaskResponse,
    /// Attempts made across all nodes (1 when the first attempt succeeded).
    pub attempts: u32,
    /// Wall-clock time of the successful attempt.
    pub latency: Duration,
    /// The transport that carried the successful attempt.
    pub transport: TransportUsed,
    /// Whether the payload travelled IICP-CX encrypted.
    pub encrypted: bool,
    /// The selection profile: `directory_ticket_v1` for ticketed dispatch, else the
    /// strategy name (`deterministic`, `weighted_v1`, `epsilon`).
    pub selection_profile: &'static str,
    /// The routing profile that admitted the node (§9.4).
    pub routing_profile: RoutingProfile,
    /// The W3C trace context sent on every attempt.
    pub traceparent: TraceParent,
}

impl TaskResult {
    /// The node's `result` (`null` when absent).
    pub fn result(&self) -> &Value {
        self.response.result.as_ref().unwrap_or(&Value::Null)
    }

    /// The node's status (`success`; `completed` is read as success).
    pub fn status(&self) -> TaskStatus {
        self.response.status
    }

    /// The node's metrics, if it sent any.
    pub fn metrics(&self) -> Option<&Metrics> {
        self.response.metrics.as_ref()
    }
}

/// Options of [`Client::chat_with`](crate::Client::chat_with).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatOptions {
    /// Model hint (payload, constraints and discovery).
    pub model: Option<String>,
    /// Output token cap.
    pub max_tokens: Option<u32>,
    /// Sampling temperature, 0–2.
    pub temperature: Option<f64>,
    /// Node attempt budget (≤ 120 000 ms); the client's timeout otherwise.
    pub timeout: Option<Duration>,
    /// QoS class (default `interactive`).
    pub qos: Option<Qos>,
    /// Region preference.
    pub region: Option<String>,
    /// Minimum reputation.
    pub min_reputation: Option<f64>,
    /// Another chat-shaped intent than `urn:iicp:intent:llm:chat:v1`.
    pub intent: Option<String>,
    /// Only this node ([`DiscoverOptions::node_id`](crate::DiscoverOptions::node_id)).
    pub node_id: Option<String>,
    /// The routing policy of this chat; the client's otherwise (§9.4).
    pub routing: Option<RoutingPolicy>,
}

/// The result of [`Client::chat`](crate::Client::chat): an OpenAI chat completion and
/// the node that produced it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ChatResult {
    /// `choices[0].message.content`, `usage`, `model`, … (`id` = the task id when the
    /// node sent none; roles default to `assistant`, `finish_reason` to `stop`).
    pub completion: ChatCompletion,
    /// The node that answered.
    pub node_id: String,
    /// The task id.
    pub task_id: TaskId,
    /// `model_used` of the response, else the completion's `model`.
    pub model: Option<String>,
    /// The W3C trace context sent on every attempt (its trace id names the request in
    /// logs and headers, e.g. the proxy's `X-IICP-Trace-Id`).
    pub traceparent: TraceParent,
}

impl ChatResult {
    /// The text of the first choice (empty when none), borrowed when the content is a
    /// plain string (the usual case), joined when it is a list of text parts.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        let Some(message) = self.message() else {
            return std::borrow::Cow::Borrowed("");
        };
        match message.content.as_str() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(message.text().unwrap_or_default()),
        }
    }

    /// The first choice's message, if any.
    pub fn message(&self) -> Option<&ChatMessage> {
        self.completion.choices.first().map(|c| &c.message)
    }
}

/// Maps a node's result to an OpenAI chat completion (seed SDK §1.5): choices indexed
/// by position, role default `assistant`, content default `""`, `finish_reason` default
/// `stop`, `id` default the task id. A bare text result (`content`, `text`, `response`,
/// `output` or a string) becomes one choice.
pub(crate) fn to_completion(result: &Value, task_id: &TaskId) -> Option<ChatCompletion> {
    let mut obj = match result {
        Value::Object(o) => o.clone(),
        Value::String(s) => {
            let mut o = Map::new();
            o.insert("content".into(), Value::String(s.clone()));
            o
        }
        _ => return None,
    };
    if !obj.get("choices").is_some_and(Value::is_array) {
        let text = ["content", "text", "response", "output"]
            .iter()
            .find_map(|k| obj.get(*k).and_then(Value::as_str).map(str::to_owned))?;
        obj.insert(
            "choices".into(),
            serde_json::json!([{"message": {"role": "assistant", "content": text}}]),
        );
    }
    if let Some(Value::Array(choices)) = obj.get_mut("choices") {
        for (i, choice) in choices.iter_mut().enumerate() {
            let Value::Object(c) = choice else {
                *choice = serde_json::json!({"message": {"role": "assistant", "content": ""}});
                continue;
            };
            c.entry("index").or_insert(Value::from(i));
            if c.get("finish_reason").is_none_or(Value::is_null) {
                c.insert("finish_reason".into(), Value::from("stop"));
            }
            let msg = c
                .entry("message")
                .or_insert_with(|| Value::Object(Map::new()));
            if !msg.is_object() {
                *msg = Value::Object(Map::new());
            }
            if let Value::Object(m) = msg {
                if !m.get("role").is_some_and(Value::is_string) {
                    m.insert("role".into(), Value::from("assistant"));
                }
                if m.get("content").is_none_or(Value::is_null) {
                    m.insert("content".into(), Value::from(""));
                }
            }
        }
    }
    if !obj.get("id").is_some_and(Value::is_string) {
        obj.insert("id".into(), Value::from(task_id.as_str()));
    }
    serde_json::from_value(Value::Object(obj)).ok()
}
