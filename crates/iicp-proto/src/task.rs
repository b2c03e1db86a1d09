//! CALL and RESPONSE bodies of `POST /v1/task`, the chat payload types and the health
//! body.
//!
//! Implements PROTOCOL.md §4.1 (CALL request), §4.2 (RESPONSE and the wire reality of the
//! reference nodes), §5.2 (`GET /iicp/health`), §7.4/§19 T13 (QoS names), §19 T2 (lenient
//! inbound CALL parsing), T7 (status values), T12 (timeout caps) and the `llm:chat:v1`
//! input/output schemas (`registry/schemas/llm-chat-v1-{input,output}.json`).
//!
//! Outbound values serialise minimally (absent optionals are omitted); inbound parsing
//! keeps unknown members in `extra` maps so nothing a peer sends is lost.
//! `iicp_conf` / `iicp_conf_resp` (IICP-CX envelopes, §16.2/§16.4) are carried as
//! [`serde_json::Value`]: `crypto::cx` owns their shape.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{ErrorBody, ErrorCode};
use crate::ids::TaskId;
use crate::intent::{Intent, IntentError};
use crate::secret::Secret;

/// Smallest `constraints.timeout_ms` a node accepts (`schemas/task.json`, §7.5).
pub const MIN_TIMEOUT_MS: u64 = 100;
/// Largest `constraints.timeout_ms` a node accepts (`schemas/task.json`, §7.5).
pub const MAX_TIMEOUT_MS: u64 = 300_000;

/// Lenient serde helpers shared by the JSON body types.
pub(crate) mod lenient {
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    fn to_u64(v: &Value) -> Option<u64> {
        match v {
            Value::Number(n) => n.as_u64().or_else(|| {
                n.as_f64().filter(|f| f.is_finite()).map(|f| {
                    if f <= 0.0 {
                        0
                    } else {
                        f.round() as u64
                    }
                })
            }),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// `Option<u64>` from an integer, a float (rounded, negatives → 0), a numeric string
    /// or null; anything else becomes `None`.
    pub(crate) fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let v = Option::<Value>::deserialize(d)?;
        Ok(v.as_ref().and_then(to_u64))
    }

    /// Like [`opt_u64`], saturating at `u32::MAX`.
    pub(crate) fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        let v = Option::<Value>::deserialize(d)?;
        Ok(v.as_ref()
            .and_then(to_u64)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)))
    }

    /// `Option<f64>` from a number or numeric string; anything else becomes `None`.
    pub(crate) fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        let v = Option::<Value>::deserialize(d)?;
        Ok(match v {
            Some(Value::Number(n)) => n.as_f64().filter(|f| f.is_finite()),
            Some(Value::String(s)) => s.trim().parse().ok().filter(|f: &f64| f.is_finite()),
            _ => None,
        })
    }

    /// `Option<T>` that becomes `None` when the value does not fit `T` instead of failing
    /// the whole document.
    pub(crate) fn opt_or_none<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: DeserializeOwned,
    {
        let v = Option::<Value>::deserialize(d)?;
        Ok(v.and_then(|v| serde_json::from_value(v).ok()))
    }

    /// `Vec<T>` that skips elements which do not fit `T`; a non-array becomes empty.
    pub(crate) fn vec_skip_invalid<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: DeserializeOwned,
    {
        let v = Option::<Value>::deserialize(d)?;
        Ok(match v {
            Some(Value::Array(items)) => items
                .into_iter()
                .filter_map(|item| serde_json::from_value(item).ok())
                .collect(),
            _ => Vec::new(),
        })
    }

    /// `Option<Vec<String>>` from an array of strings or a single string.
    pub(crate) fn opt_string_or_vec<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<String>>, D::Error> {
        let v = Option::<Value>::deserialize(d)?;
        Ok(match v {
            Some(Value::String(s)) => Some(vec![s]),
            Some(Value::Array(items)) => Some(
                items
                    .into_iter()
                    .filter_map(|i| match i {
                        Value::String(s) => Some(s),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => None,
        })
    }
}

// ---------------------------------------------------------------------------
// Constraints
// ---------------------------------------------------------------------------

/// QoS class (§7.4). Serialises as `realtime`, `interactive`, `batch`, `best-effort`;
/// also accepts `best_effort` and `realtime`-less spellings used by the ref nodes (T13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Qos {
    /// Sub-second, streaming preferred.
    #[serde(rename = "realtime", alias = "real-time", alias = "real_time")]
    Realtime,
    /// Human in the loop.
    #[serde(rename = "interactive")]
    Interactive,
    /// Throughput.
    #[serde(rename = "batch")]
    Batch,
    /// Deferrable.
    #[serde(rename = "best-effort", alias = "best_effort")]
    BestEffort,
}

impl Qos {
    /// All classes.
    pub const ALL: [Qos; 4] = [Qos::Realtime, Qos::Interactive, Qos::Batch, Qos::BestEffort];

    /// The wire spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Qos::Realtime => "realtime",
            Qos::Interactive => "interactive",
            Qos::Batch => "batch",
            Qos::BestEffort => "best-effort",
        }
    }

    /// Parses any accepted spelling.
    pub fn parse(s: &str) -> Option<Qos> {
        match s {
            "realtime" | "real-time" | "real_time" => Some(Qos::Realtime),
            "interactive" => Some(Qos::Interactive),
            "batch" => Some(Qos::Batch),
            "best-effort" | "best_effort" => Some(Qos::BestEffort),
            _ => None,
        }
    }
}

impl fmt::Display for Qos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Task priority, orthogonal to QoS (§4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// `low`.
    Low,
    /// `normal` (default).
    Normal,
    /// `high`.
    High,
    /// `critical`.
    Critical,
}

/// Client-side consensus mode (§9.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consensus {
    /// `none` (default).
    None,
    /// `first_completed`.
    FirstCompleted,
    /// `majority_of_3`.
    #[serde(rename = "majority_of_3")]
    MajorityOf3,
    /// `majority_of_5`.
    #[serde(rename = "majority_of_5")]
    MajorityOf5,
}

/// `constraints` of a CALL (§4.1). On input `qos_class` is accepted as a spelling of
/// `qos` (T13); `qos` wins when both are present. On output only `qos` is written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "ConstraintsWire")]
pub struct Constraints {
    /// Provider attempt budget in ms (node range 100–300000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// QoS class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<Qos>,
    /// Priority.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Consensus mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consensus: Option<Consensus>,
    /// Preferred region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Output token cap (ref SDKs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Requested model (ref SDKs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Profiles the node must support (unknown → `unsupported_profile`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required_profiles: Option<Vec<String>>,
    /// Profiles the node may use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional_profiles: Option<Vec<String>>,
    /// Unknown members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Deserialize)]
struct ConstraintsWire {
    #[serde(default)]
    timeout_ms: Option<Value>,
    #[serde(default)]
    qos: Option<Qos>,
    #[serde(default)]
    qos_class: Option<Qos>,
    #[serde(default)]
    priority: Option<Priority>,
    #[serde(default)]
    consensus: Option<Consensus>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_u32")]
    max_tokens: Option<u32>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    required_profiles: Option<Vec<String>>,
    #[serde(default)]
    optional_profiles: Option<Vec<String>>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// `timeout_ms` as a whole number of milliseconds: a non-negative JSON integer, or a
/// float with no fraction (`5000.0`). Strings, booleans, arrays, objects, negative and
/// fractional numbers are not.
fn timeout_ms_value(v: &Value) -> Option<u64> {
    let n = v.as_number()?;
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && f.fract() == 0.0 && *f <= u64::MAX as f64)
            .map(|f| f as u64)
    })
}

impl From<ConstraintsWire> for Constraints {
    fn from(w: ConstraintsWire) -> Self {
        let mut extra = w.extra;
        // A `timeout_ms` that is not a number of milliseconds is kept as sent, in
        // `extra`, so that `TaskRequest::validate` refuses it (and it round-trips).
        let timeout_ms = match w.timeout_ms {
            None | Some(Value::Null) => None,
            Some(v) => match timeout_ms_value(&v) {
                Some(ms) => Some(ms),
                None => {
                    extra.insert("timeout_ms".to_owned(), v);
                    None
                }
            },
        };
        Constraints {
            timeout_ms,
            qos: w.qos.or(w.qos_class),
            priority: w.priority,
            consensus: w.consensus,
            region: w.region,
            max_tokens: w.max_tokens,
            model: w.model,
            required_profiles: w.required_profiles,
            optional_profiles: w.optional_profiles,
            extra,
        }
    }
}

impl Constraints {
    /// True when nothing is set (the member can be omitted).
    pub fn is_empty(&self) -> bool {
        self == &Constraints::default()
    }

    /// `timeout_ms`, or `default_ms` when absent, clamped to the node range
    /// 100–300000 (T2, T12).
    pub fn effective_timeout_ms(&self, default_ms: u64) -> u64 {
        self.timeout_ms
            .unwrap_or(default_ms)
            .clamp(MIN_TIMEOUT_MS, MAX_TIMEOUT_MS)
    }
}

/// `auth` of a CALL. Accepts `token` as a spelling of `node_token` (ref-rs client);
/// writes `node_token`. `Debug` never shows the token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "TaskAuthWire")]
pub struct TaskAuth {
    /// The bearer credential the operator granted (§4.3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_token: Option<Secret>,
    /// Unknown members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Deserialize)]
struct TaskAuthWire {
    #[serde(default)]
    node_token: Option<Secret>,
    #[serde(default)]
    token: Option<Secret>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

impl From<TaskAuthWire> for TaskAuth {
    fn from(w: TaskAuthWire) -> Self {
        TaskAuth {
            node_token: w.node_token.or(w.token),
            extra: w.extra,
        }
    }
}

/// `trace` of a CALL (§2.3): `trace_id` is 32 hex chars (the `traceparent` trace id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceInfo {
    /// 32 lowercase hex chars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Requesting proxy's node id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_node: Option<String>,
    /// Unknown members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

// ---------------------------------------------------------------------------
// TaskRequest
// ---------------------------------------------------------------------------

/// Why a CALL is not acceptable to a node (§4.1, T2). Map to HTTP 422
/// `validation_error` (or `invalid_intent` client-side).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskRequestError {
    /// The intent URN is invalid.
    #[error("invalid intent: {0}")]
    Intent(#[source] IntentError),
    /// `task_id` is not a UUID v4 (36 characters, hyphenated; §4.1, `schemas/task.json`).
    #[error("task_id must be a UUID v4 (36 characters, hyphenated)")]
    TaskIdNotUuidV4,
    /// `constraints.timeout_ms` is not a whole number of milliseconds.
    #[error("constraints.timeout_ms must be an integer number of milliseconds")]
    TimeoutNotInteger,
    /// `constraints.timeout_ms` is outside 100–300000.
    #[error("constraints.timeout_ms {value} is outside {MIN_TIMEOUT_MS}..={MAX_TIMEOUT_MS}")]
    TimeoutOutOfRange {
        /// The value sent.
        value: u64,
    },
    /// Neither `payload` nor `iicp_conf` is present.
    #[error("the task carries neither `payload` nor `iicp_conf`")]
    MissingPayload,
    /// Both `payload` and `iicp_conf` are present.
    #[error("the task carries both `payload` and `iicp_conf`")]
    PayloadAndEnvelope,
    /// `payload` is present but not a JSON object.
    #[error("`payload` must be a JSON object")]
    PayloadNotObject,
    /// `iicp_conf` is present but not a JSON object.
    #[error("`iicp_conf` must be a JSON object")]
    EnvelopeNotObject,
}

impl TaskRequestError {
    /// The code to answer with: `validation_error`.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::ValidationError
    }
}

/// A CALL body (`POST /v1/task`, §4.1).
///
/// Parsing is lenient (T2): only `task_id` and `intent` must be present (any non-empty
/// `task_id`, any string `intent`); call [`TaskRequest::validate`] on the node.
/// Serialisation omits everything unset. `Debug` shows neither payload, envelope nor
/// token.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRequest {
    /// Task id (UUID v4 when we send it).
    pub task_id: TaskId,
    /// Intent URN as sent; see [`TaskRequest::validate`].
    pub intent: String,
    /// Intent-specific input (absent when `iicp_conf` carries it). Never log it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// IICP-CX request envelope (§16.2), replacing `payload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iicp_conf: Option<Value>,
    /// Constraints.
    #[serde(default, skip_serializing_if = "Constraints::is_empty")]
    pub constraints: Constraints,
    /// Credential (§4.3). The client never sends its own node_token here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<TaskAuth>,
    /// Trace information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceInfo>,
    /// `"required"` to ask for an encrypted response (§16.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cx_response_encryption: Option<String>,
    /// Requester node id (wire reality, #488).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_node_id: Option<String>,
    /// Replay nonce (wire reality; ref nodes reject reuse within 300 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Unknown members (`cip`, `identity`, `billing`, …), kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl TaskRequest {
    /// A plaintext CALL with `payload` and nothing else.
    pub fn new(task_id: TaskId, intent: &Intent, payload: Value) -> Self {
        Self::bare(task_id, intent, Some(payload), None)
    }

    /// A CX-encrypted CALL carrying `iicp_conf` instead of `payload`.
    pub fn new_encrypted(task_id: TaskId, intent: &Intent, iicp_conf: Value) -> Self {
        Self::bare(task_id, intent, None, Some(iicp_conf))
    }

    fn bare(
        task_id: TaskId,
        intent: &Intent,
        payload: Option<Value>,
        iicp_conf: Option<Value>,
    ) -> Self {
        Self {
            task_id,
            intent: intent.as_str().to_owned(),
            payload,
            iicp_conf,
            constraints: Constraints::default(),
            auth: None,
            trace: None,
            cx_response_encryption: None,
            source_node_id: None,
            nonce: None,
            extra: Map::new(),
        }
    }

    /// The node-side checks of §4.1/T2: `task_id` a UUID v4, then
    /// [`TaskRequest::validate_body`]. Returns the parsed intent.
    pub fn validate(&self) -> Result<Intent, TaskRequestError> {
        if !self.task_id.is_hyphenated_uuid_v4() {
            return Err(TaskRequestError::TaskIdNotUuidV4);
        }
        self.validate_body()
    }

    /// The checks of [`TaskRequest::validate`] except the task id's form, for tasks
    /// whose id the node chose or took from a native idempotency key: valid intent,
    /// `timeout_ms` a whole number in 100–300000 if present (absent: the node's
    /// default, as the reference clients omit it, ADR 0010), exactly one of `payload`
    /// (an object) and `iicp_conf` (an object).
    pub fn validate_body(&self) -> Result<Intent, TaskRequestError> {
        let intent = Intent::new(self.intent.as_str()).map_err(TaskRequestError::Intent)?;
        if self.constraints.extra.contains_key("timeout_ms") {
            return Err(TaskRequestError::TimeoutNotInteger);
        }
        if let Some(value) = self.constraints.timeout_ms {
            if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&value) {
                return Err(TaskRequestError::TimeoutOutOfRange { value });
            }
        }
        match (&self.payload, &self.iicp_conf) {
            (None, None) => Err(TaskRequestError::MissingPayload),
            (Some(_), Some(_)) => Err(TaskRequestError::PayloadAndEnvelope),
            (Some(p), None) if !p.is_object() => Err(TaskRequestError::PayloadNotObject),
            (None, Some(c)) if !c.is_object() => Err(TaskRequestError::EnvelopeNotObject),
            _ => Ok(intent),
        }
    }

    /// True when the request carries a CX envelope.
    pub fn is_encrypted(&self) -> bool {
        self.iicp_conf.is_some()
    }
}

fn redacted_presence(v: &Option<Value>) -> &'static str {
    if v.is_some() {
        "<redacted>"
    } else {
        "None"
    }
}

impl fmt::Debug for TaskRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskRequest")
            .field("task_id", &self.task_id)
            .field("intent", &self.intent)
            .field("payload", &redacted_presence(&self.payload))
            .field("iicp_conf", &redacted_presence(&self.iicp_conf))
            .field("constraints", &self.constraints)
            .field("auth", &self.auth)
            .field("trace", &self.trace)
            .field("cx_response_encryption", &self.cx_response_encryption)
            .field("source_node_id", &self.source_node_id)
            .field("nonce", &self.nonce)
            .field("extra_keys", &self.extra.keys().collect::<Vec<_>>())
            .finish()
    }
}

// ---------------------------------------------------------------------------
// TaskResponse
// ---------------------------------------------------------------------------

/// RESPONSE `status` (§4.2, T7). Writes `success|error|timeout|partial|encrypted`;
/// accepts `completed` (→ success) and `failed` (→ error) from peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Success (`completed` accepted on input).
    #[serde(alias = "completed")]
    Success,
    /// Failure (`failed` accepted on input).
    #[serde(alias = "failed")]
    Error,
    /// The task exceeded its budget.
    Timeout,
    /// A streaming event (lifecycle profile).
    Partial,
    /// CX-encrypted response; the real body is in `iicp_conf_resp` (§16.4).
    Encrypted,
}

impl TaskStatus {
    /// The wire spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            TaskStatus::Success => "success",
            TaskStatus::Error => "error",
            TaskStatus::Timeout => "timeout",
            TaskStatus::Partial => "partial",
            TaskStatus::Encrypted => "encrypted",
        }
    }

    /// Parses a wire status including the accepted aliases.
    pub fn parse(s: &str) -> Option<TaskStatus> {
        match s {
            "success" | "completed" => Some(TaskStatus::Success),
            "error" | "failed" => Some(TaskStatus::Error),
            "timeout" => Some(TaskStatus::Timeout),
            "partial" => Some(TaskStatus::Partial),
            "encrypted" => Some(TaskStatus::Encrypted),
            _ => None,
        }
    }
}

/// The `error` member of a RESPONSE: `{"code","message",…}` (code may be missing on
/// input, as ref-rs sends it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorObject {
    /// The code, when sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    /// Message (no stack traces, paths or secrets).
    #[serde(default)]
    pub message: String,
    /// Other members (`qos_class`, `retry_after_ms`, …), kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `metrics` of a RESPONSE (§4.2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Node-side latency in ms (floats are rounded on input).
    #[serde(
        default,
        deserialize_with = "lenient::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub latency_ms: Option<u64>,
    /// Tokens used.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub tokens_used: Option<u64>,
    /// Other members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A RESPONSE body (§4.2). Use [`TaskResponse::parse`] on the client; it folds every
/// failure shape into an [`ErrorBody`].
///
/// `R` is the result's type: a value on the client, and on a node a
/// [`crate::result::ResultJson`], so that a model server's answer is written out as the
/// text it came as (ADR 0022).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResponse<R = Value> {
    /// Echo of the CALL's task id.
    pub task_id: TaskId,
    /// Status.
    pub status: TaskStatus,
    /// Intent-specific output (`llm:chat:v1`: a [`ChatCompletion`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<R>,
    /// Error details when `status` is `error`/`timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorObject>,
    /// Metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// Model that produced the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_used: Option<String>,
    /// True for model-produced output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_by_ai: Option<bool>,
    /// CX response envelope (§16.4) when `status` is `encrypted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iicp_conf_resp: Option<Value>,
    /// Unknown members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Members of a RESPONSE that are not part of a spread ref-py result.
const RESPONSE_MEMBERS: [&str; 8] = [
    "task_id",
    "status",
    "result",
    "error",
    "metrics",
    "model_used",
    "generated_by_ai",
    "iicp_conf_resp",
];

impl<R> TaskResponse<R> {
    /// A success RESPONSE with `result`.
    pub fn success(task_id: TaskId, result: R) -> Self {
        Self {
            task_id,
            status: TaskStatus::Success,
            result: Some(result),
            error: None,
            metrics: None,
            model_used: None,
            generated_by_ai: None,
            iicp_conf_resp: None,
            extra: Map::new(),
        }
    }
}

impl TaskResponse {
    /// An error (or timeout) RESPONSE carrying `error`.
    pub fn failure(task_id: TaskId, error: &ErrorBody) -> Self {
        let status = if error.code == ErrorCode::TaskTimeout {
            TaskStatus::Timeout
        } else {
            TaskStatus::Error
        };
        let mut extra = error.extra.clone();
        if let Some(q) = &error.qos_class {
            extra.insert("qos_class".into(), Value::String(q.clone()));
        }
        if let Some(ms) = error.retry_after_ms {
            extra.insert("retry_after_ms".into(), Value::from(ms));
        }
        if let Some(reason) = &error.reason {
            extra.insert("reason".into(), Value::String(reason.clone()));
        }
        if let Some(legacy) = &error.legacy_code {
            extra.insert(
                "legacy_code".into(),
                Value::String(legacy.as_str().to_owned()),
            );
        }
        Self {
            task_id,
            status,
            result: None,
            error: Some(ErrorObject {
                code: Some(error.code.clone()),
                message: error.message.clone(),
                extra,
            }),
            metrics: None,
            model_used: None,
            generated_by_ai: Some(false),
            iicp_conf_resp: None,
            extra: Map::new(),
        }
    }

    /// Parses a node's answer to `POST /v1/task` leniently (§4.2 wire reality, T7):
    ///
    /// * non-2xx → the error body ([`ErrorBody::parse`]); a code-less `error` from a
    ///   task endpoint (ref-rs 500) becomes `backend_error`;
    /// * 2xx with `error`, `error_code`, or status `error|failed|timeout` → `Err`
    ///   (`task_timeout` for timeouts, `backend_error` when no code is given);
    /// * `completed` → `success`; a ref-py result spread at the top level (no `result`
    ///   member, e.g. `choices` beside `status`) becomes `result`;
    /// * `encrypted` needs `iicp_conf_resp`;
    /// * anything unparsable → `Err(backend_error)`.
    // The error is the failure outcome of a remote call, not a hot path; a plain
    // `ErrorBody` is easier for callers to match than a box.
    #[allow(clippy::result_large_err)]
    pub fn parse(http_status: u16, body: &[u8]) -> Result<TaskResponse, ErrorBody> {
        let is_2xx = (200..300).contains(&http_status);
        let value: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) if !is_2xx => return Err(ErrorBody::parse(http_status, body)),
            Err(_) => {
                return Err(
                    ErrorBody::new(ErrorCode::BackendError, "task response is not JSON")
                        .with_status(http_status),
                )
            }
        };
        let Value::Object(mut obj) = value else {
            if !is_2xx {
                return Err(ErrorBody::parse(http_status, body));
            }
            return Err(ErrorBody::new(
                ErrorCode::BackendError,
                "task response is not a JSON object",
            )
            .with_status(http_status));
        };

        let status_text = obj.get("status").and_then(Value::as_str).map(str::to_owned);
        let status = status_text.as_deref().and_then(TaskStatus::parse);
        let has_error = obj.get("error").is_some_and(|e| !e.is_null())
            || obj.get("error_code").is_some_and(|e| !e.is_null());
        let failed = matches!(status, Some(TaskStatus::Error | TaskStatus::Timeout));

        if !is_2xx || has_error || failed {
            let (mut err, explicit) = ErrorBody::from_object(&obj);
            if !explicit {
                err.code = if status == Some(TaskStatus::Timeout) {
                    ErrorCode::TaskTimeout
                } else if is_2xx || http_status == 500 {
                    ErrorCode::BackendError
                } else {
                    ErrorCode::from_http_status(http_status)
                };
            }
            if err.message.is_empty() {
                err.message = format!("task failed ({})", err.code);
            }
            err.http_status = Some(http_status);
            return Err(err);
        }

        let Some(task_id) = obj
            .get("task_id")
            .and_then(Value::as_str)
            .and_then(|s| TaskId::parse_lenient(s).ok())
        else {
            return Err(ErrorBody::new(
                ErrorCode::BackendError,
                "task response has no valid task_id",
            )
            .with_status(http_status));
        };

        let status = match (status, status_text) {
            (Some(s), _) => s,
            (None, None) => TaskStatus::Success,
            (None, Some(_)) => {
                return Err(ErrorBody::new(
                    ErrorCode::BackendError,
                    "task response has an unknown status",
                )
                .with_status(http_status))
            }
        };

        if status == TaskStatus::Encrypted
            && !obj.get("iicp_conf_resp").is_some_and(Value::is_object)
        {
            return Err(ErrorBody::new(
                ErrorCode::BackendError,
                "encrypted task response without iicp_conf_resp",
            )
            .with_status(http_status));
        }

        // ref-py spreads the handler dict at the top level: lift it into `result`.
        let spread = status == TaskStatus::Success && obj.get("result").is_none_or(Value::is_null);
        if spread {
            let mut lifted = Map::new();
            let keys: Vec<String> = obj
                .keys()
                .filter(|k| !RESPONSE_MEMBERS.contains(&k.as_str()))
                .cloned()
                .collect();
            for k in keys {
                if let Some(v) = obj.remove(&k) {
                    lifted.insert(k, v);
                }
            }
            if !lifted.is_empty() {
                obj.insert("result".into(), Value::Object(lifted));
            }
        }
        obj.insert("status".into(), Value::String(status.as_str().to_owned()));
        obj.insert("task_id".into(), Value::String(task_id.as_str().to_owned()));
        // Drop members we cannot type rather than failing the whole response.
        if obj.get("metrics").is_some_and(|m| !m.is_object()) {
            obj.remove("metrics");
        }
        if obj.get("generated_by_ai").is_some_and(|m| !m.is_boolean()) {
            obj.remove("generated_by_ai");
        }
        if obj.get("model_used").is_some_and(|m| !m.is_string()) {
            obj.remove("model_used");
        }
        serde_json::from_value(Value::Object(obj)).map_err(|e| {
            ErrorBody::new(
                ErrorCode::BackendError,
                format!("malformed task response: {e}"),
            )
            .with_status(http_status)
        })
    }

    /// The result as an OpenAI chat completion, when it is one.
    pub fn chat_completion(&self) -> Option<ChatCompletion> {
        self.result
            .as_ref()
            .and_then(|r| serde_json::from_value(r.clone()).ok())
    }
}

// ---------------------------------------------------------------------------
// Chat payload types (llm:chat:v1)
// ---------------------------------------------------------------------------

/// One chat message: `role` and `content` (a string or an array of content parts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool` (kept as sent).
    #[serde(default)]
    pub role: String,
    /// A string, an array of content parts, or null (assistant tool calls).
    #[serde(default)]
    pub content: Value,
    /// Optional participant name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Other members (`tool_calls`, `tool_call_id`, …), kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatMessage {
    /// A message with text content.
    pub fn new(role: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: Value::String(text.into()),
            name: None,
            extra: Map::new(),
        }
    }

    /// The text of the message: the content string, or the concatenated `text` parts.
    pub fn text(&self) -> Option<String> {
        match &self.content {
            Value::String(s) => Some(s.clone()),
            Value::Array(parts) => {
                let texts: Vec<&str> = parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect();
                (!texts.is_empty()).then(|| texts.concat())
            }
            _ => None,
        }
    }
}

/// Why a chat payload is invalid (`llm-chat-v1-input.json`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChatError {
    /// `messages` is empty.
    #[error("`messages` must contain at least one message")]
    NoMessages,
    /// A message has a role outside system/user/assistant/tool.
    #[error("message {index} has an unsupported role")]
    InvalidRole {
        /// Index of the message.
        index: usize,
    },
    /// A message has neither string nor array content.
    #[error("message {index} content must be a string or an array of parts")]
    InvalidContent {
        /// Index of the message.
        index: usize,
    },
    /// `max_tokens` is 0.
    #[error("`max_tokens` must be at least 1")]
    InvalidMaxTokens,
    /// `temperature` is outside 0–2.
    #[error("`temperature` must be within 0..=2")]
    InvalidTemperature,
}

/// The `llm:chat:v1` payload (OpenAI-style chat request).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The conversation (required, non-empty).
    pub messages: Vec<ChatMessage>,
    /// Model hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Sampling temperature (0–2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Output token cap.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_tokens: Option<u32>,
    /// Stop sequences (a single string is accepted on input).
    #[serde(
        default,
        deserialize_with = "lenient::opt_string_or_vec",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop: Option<Vec<String>>,
    /// Other members (`stream`, `top_p`, `tools`, …), kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatRequest {
    /// A request with these messages and nothing else.
    pub fn new(messages: Vec<ChatMessage>) -> Self {
        Self {
            messages,
            model: None,
            temperature: None,
            max_tokens: None,
            stop: None,
            extra: Map::new(),
        }
    }

    /// Checks the `llm-chat-v1-input.json` constraints.
    pub fn validate(&self) -> Result<(), ChatError> {
        if self.messages.is_empty() {
            return Err(ChatError::NoMessages);
        }
        for (index, m) in self.messages.iter().enumerate() {
            if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool") {
                return Err(ChatError::InvalidRole { index });
            }
            let content_ok = match &m.content {
                Value::String(_) | Value::Array(_) => true,
                // Assistant tool-call turns may carry null content.
                Value::Null => m.role == "assistant",
                _ => false,
            };
            if !content_ok {
                return Err(ChatError::InvalidContent { index });
            }
        }
        if self.max_tokens == Some(0) {
            return Err(ChatError::InvalidMaxTokens);
        }
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(ChatError::InvalidTemperature);
            }
        }
        Ok(())
    }
}

/// One choice of a chat completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    /// Choice index.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub index: Option<u32>,
    /// The generated message.
    pub message: ChatMessage,
    /// Why generation stopped (`stop`, `length`, …).
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Other members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Token usage of a completion.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub prompt_tokens: Option<u64>,
    /// Completion tokens.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub completion_tokens: Option<u64>,
    /// Total tokens.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub total_tokens: Option<u64>,
    /// Other members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Usage {
    /// `total_tokens`, or the sum of the parts.
    pub fn total(&self) -> Option<u64> {
        self.total_tokens
            .or(match (self.prompt_tokens, self.completion_tokens) {
                (None, None) => None,
                (p, c) => Some(p.unwrap_or(0).saturating_add(c.unwrap_or(0))),
            })
    }
}

/// The `llm:chat:v1` result: an OpenAI chat-completion object
/// (`llm-chat-v1-output.json`: `choices` required).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    /// Completion id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `chat.completion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// Unix seconds.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub created: Option<u64>,
    /// Model name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Choices (required).
    pub choices: Vec<ChatChoice>,
    /// Usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Other members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatCompletion {
    /// The text of the first choice.
    pub fn text(&self) -> Option<String> {
        self.choices.first().and_then(|c| c.message.text())
    }
}

/// One function-call fragment of a streamed chat chunk (`delta.tool_calls[]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCallDelta {
    /// The choice it belongs to.
    pub choice: u32,
    /// Its `index` (fragments with the same index are one call).
    pub index: u32,
    /// The call id, when this fragment carries it (usually the first).
    pub id: Option<String>,
    /// The function name fragment.
    pub name: Option<String>,
    /// The arguments fragment (JSON text, concatenated across fragments).
    pub arguments: Option<String>,
}

/// What one streamed chunk contributed ([`ChatStreamAssembler::push`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatChunkParts {
    /// New text of the first choice.
    pub text: String,
    /// Tool-call fragments, every choice.
    pub tool_calls: Vec<ToolCallDelta>,
    /// `usage`, when the chunk carried it.
    pub usage: Option<Usage>,
    /// The first choice's `finish_reason`, when the chunk carried it.
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct ToolCallAcc {
    id: Option<String>,
    kind: Option<String>,
    name: String,
    arguments: String,
}

#[derive(Debug, Clone, Default)]
struct ChoiceAcc {
    role: Option<String>,
    content: String,
    tool_calls: std::collections::BTreeMap<u32, ToolCallAcc>,
    finish_reason: Option<String>,
}

/// Assembles the streamed `llm:chat:v1` chunks of a lifecycle task (OpenAI
/// `chat.completion.chunk` objects: `choices[].delta.content`, `delta.tool_calls`
/// merged by `index`, `finish_reason`, `usage`) into one `chat.completion`, the shape
/// the buffered path returns. A chunk that is a whole `chat.completion` (choices with
/// `message`, as a buffered answer or a terminal carrying everything) sets its choices'
/// text; a bare string (or `{"content"|"text": …}`) is text of the first choice.
///
/// ```
/// use iicp_proto::task::ChatStreamAssembler;
/// use serde_json::json;
///
/// let mut a = ChatStreamAssembler::new();
/// a.push(&json!({"object": "chat.completion.chunk", "model": "m",
///     "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]}));
/// a.push(&json!({"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}],
///     "usage": {"prompt_tokens": 3, "completion_tokens": 2}}));
/// let done = a.finish();
/// assert_eq!(done.text().as_deref(), Some("Hello"));
/// assert_eq!(done.choices[0].finish_reason.as_deref(), Some("stop"));
/// assert_eq!(done.usage.and_then(|u| u.total()), Some(5));
/// ```
#[derive(Debug, Clone, Default)]
pub struct ChatStreamAssembler {
    id: Option<String>,
    model: Option<String>,
    created: Option<u64>,
    choices: std::collections::BTreeMap<u32, ChoiceAcc>,
    usage: Option<Usage>,
    chunks: usize,
}

impl ChatStreamAssembler {
    /// An empty assembly.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many chunks were pushed.
    pub fn chunks(&self) -> usize {
        self.chunks
    }

    /// The text of the first choice so far.
    pub fn text(&self) -> &str {
        self.choices.get(&0).map_or("", |c| c.content.as_str())
    }

    /// Adds one chunk (or a whole completion) and says what it contributed. Null and
    /// unrecognised values contribute nothing.
    pub fn push(&mut self, chunk: &Value) -> ChatChunkParts {
        self.chunks += 1;
        let mut parts = ChatChunkParts::default();
        let obj = match chunk {
            Value::String(s) => {
                self.add_text(0, s, &mut parts);
                return parts;
            }
            Value::Object(o) => o,
            _ => return parts,
        };
        if self.id.is_none() {
            self.id = obj.get("id").and_then(Value::as_str).map(str::to_owned);
        }
        if let Some(m) = obj.get("model").and_then(Value::as_str) {
            self.model = Some(m.to_owned());
        }
        if self.created.is_none() {
            self.created = obj.get("created").and_then(Value::as_u64);
        }
        if let Some(u) = obj.get("usage").filter(|u| u.is_object()) {
            if let Ok(u) = serde_json::from_value::<Usage>(u.clone()) {
                self.usage = Some(u.clone());
                parts.usage = Some(u);
            }
        }
        let Some(choices) = obj.get("choices").and_then(Value::as_array) else {
            if let Some(t) = ["content", "text"]
                .iter()
                .find_map(|k| obj.get(*k).and_then(Value::as_str))
            {
                self.add_text(0, t, &mut parts);
            }
            return parts;
        };
        for (pos, choice) in choices.iter().enumerate() {
            let index = choice
                .get("index")
                .and_then(Value::as_u64)
                .and_then(|i| u32::try_from(i).ok())
                .unwrap_or_else(|| u32::try_from(pos).unwrap_or(u32::MAX));
            if let Some(delta) = choice.get("delta").filter(|d| d.is_object()) {
                self.merge_delta(index, delta, &mut parts);
            } else if let Some(message) = choice.get("message").filter(|m| m.is_object()) {
                self.merge_message(index, message, &mut parts);
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.choices.entry(index).or_default().finish_reason = Some(reason.to_owned());
                if index == 0 {
                    parts.finish_reason = Some(reason.to_owned());
                }
            }
        }
        parts
    }

    fn add_text(&mut self, index: u32, text: &str, parts: &mut ChatChunkParts) {
        self.choices
            .entry(index)
            .or_default()
            .content
            .push_str(text);
        if index == 0 {
            parts.text.push_str(text);
        }
    }

    fn merge_delta(&mut self, index: u32, delta: &Value, parts: &mut ChatChunkParts) {
        if let Some(role) = delta.get("role").and_then(Value::as_str) {
            self.choices.entry(index).or_default().role = Some(role.to_owned());
        }
        if let Some(text) = delta.get("content").and_then(Value::as_str) {
            self.add_text(index, text, parts);
        }
        for (pos, call) in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let call_index = call
                .get("index")
                .and_then(Value::as_u64)
                .and_then(|i| u32::try_from(i).ok())
                .unwrap_or_else(|| u32::try_from(pos).unwrap_or(u32::MAX));
            let f = call.get("function");
            let frag = ToolCallDelta {
                choice: index,
                index: call_index,
                id: call.get("id").and_then(Value::as_str).map(str::to_owned),
                name: f
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                arguments: f
                    .and_then(|f| f.get("arguments"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            };
            let acc = self
                .choices
                .entry(index)
                .or_default()
                .tool_calls
                .entry(call_index)
                .or_default();
            if frag.id.is_some() {
                acc.id.clone_from(&frag.id);
            }
            if let Some(t) = call.get("type").and_then(Value::as_str) {
                acc.kind = Some(t.to_owned());
            }
            if let Some(n) = &frag.name {
                acc.name.push_str(n);
            }
            if let Some(a) = &frag.arguments {
                acc.arguments.push_str(a);
            }
            parts.tool_calls.push(frag);
        }
    }

    /// A whole message: authoritative for its choice. Text already streamed is not
    /// repeated in `parts` when the message continues it.
    fn merge_message(&mut self, index: u32, message: &Value, parts: &mut ChatChunkParts) {
        let msg: ChatMessage = match serde_json::from_value(message.clone()) {
            Ok(m) => m,
            Err(_) => return,
        };
        let text = msg.text().unwrap_or_default();
        let acc = self.choices.entry(index).or_default();
        if !msg.role.is_empty() {
            acc.role = Some(msg.role.clone());
        }
        let new = text.strip_prefix(acc.content.as_str()).unwrap_or(&text);
        if index == 0 {
            parts.text.push_str(new);
        }
        acc.content = text;
        if let Some(Value::Array(calls)) = msg.extra.get("tool_calls") {
            acc.tool_calls.clear();
            for (pos, call) in calls.iter().enumerate() {
                let f = call.get("function");
                let get = |v: Option<&Value>, k: &str| {
                    v.and_then(|v| v.get(k))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                };
                acc.tool_calls.insert(
                    u32::try_from(pos).unwrap_or(u32::MAX),
                    ToolCallAcc {
                        id: get(Some(call), "id"),
                        kind: get(Some(call), "type"),
                        name: get(f, "name").unwrap_or_default(),
                        arguments: get(f, "arguments").unwrap_or_default(),
                    },
                );
            }
        }
    }

    /// The assembled `chat.completion`: choices by index (role default `assistant`,
    /// `finish_reason` default `stop`, or `tool_calls` when the choice has calls),
    /// `tool_calls` with their merged names and arguments, the last `usage`.
    pub fn finish(self) -> ChatCompletion {
        let choices = if self.choices.is_empty() {
            vec![(0, ChoiceAcc::default())]
        } else {
            self.choices.into_iter().collect()
        };
        let choices = choices
            .into_iter()
            .map(|(index, c)| {
                let mut message =
                    ChatMessage::new(c.role.unwrap_or_else(|| "assistant".to_owned()), c.content);
                let has_calls = !c.tool_calls.is_empty();
                if has_calls {
                    let calls: Vec<Value> = c
                        .tool_calls
                        .into_values()
                        .map(|t| {
                            serde_json::json!({
                                "id": t.id,
                                "type": t.kind.unwrap_or_else(|| "function".to_owned()),
                                "function": {"name": t.name, "arguments": t.arguments},
                            })
                        })
                        .collect();
                    message
                        .extra
                        .insert("tool_calls".into(), Value::Array(calls));
                }
                let default_reason = if has_calls { "tool_calls" } else { "stop" };
                ChatChoice {
                    index: Some(index),
                    message,
                    finish_reason: Some(
                        c.finish_reason.unwrap_or_else(|| default_reason.to_owned()),
                    ),
                    extra: Map::new(),
                }
            })
            .collect();
        ChatCompletion {
            id: self.id,
            object: Some("chat.completion".to_owned()),
            created: self.created,
            model: self.model,
            choices,
            usage: self.usage,
            extra: Map::new(),
        }
    }
}

// ---------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------

/// The `GET /iicp/health` body of a node (§5.2). Every member is optional on input.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthStatus {
    /// `ok` or `degraded`.
    #[serde(default)]
    pub status: String,
    /// Node id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// `active_jobs / max_concurrent`.
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub load: Option<f64>,
    /// Tasks in flight.
    #[serde(default, deserialize_with = "lenient::opt_u32")]
    pub active_jobs: Option<u32>,
    /// Configured concurrency.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_concurrent: Option<u32>,
    /// Concurrency after availability windows.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub effective_max_concurrent: Option<u32>,
    /// Accepting work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<bool>,
    /// Primary model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Served models (superset of the registered ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Primary intent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    /// IPv6 pinhole state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinhole_state: Option<Value>,
    /// Backend stability summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_stability: Option<Value>,
    /// Other members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl HealthStatus {
    /// True when `status` is `ok` or `degraded` (the conformance requirement).
    pub fn is_live(&self) -> bool {
        matches!(self.status.as_str(), "ok" | "degraded")
    }
}

#[cfg(test)]
mod chat_stream_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deltas_and_tool_calls_merge_by_index() {
        let mut a = ChatStreamAssembler::new();
        let p = a.push(
            &json!({"id": "c-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
        );
        assert_eq!(p.text, "");
        let p = a.push(&json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_", "arguments": "{\"ci"}},
            {"index": 1, "id": "call_b", "function": {"name": "time", "arguments": ""}}]}}]}));
        assert_eq!(p.tool_calls.len(), 2);
        assert_eq!(p.tool_calls[0].id.as_deref(), Some("call_a"));
        a.push(&json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"name": "weather", "arguments": "ty\":\"Bonn\"}"}}]}}]}));
        let p = a.push(
            &json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}}),
        );
        assert_eq!(p.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(p.usage.as_ref().and_then(Usage::total), Some(9));
        assert_eq!(a.chunks(), 4);
        let done = a.finish();
        assert_eq!(done.id.as_deref(), Some("c-1"));
        assert_eq!(done.object.as_deref(), Some("chat.completion"));
        assert_eq!((done.created, done.model.as_deref()), (Some(7), Some("m")));
        let calls = done.choices[0].message.extra["tool_calls"]
            .as_array()
            .expect("calls");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["id"], "call_a");
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        assert_eq!(calls[0]["function"]["arguments"], "{\"city\":\"Bonn\"}");
        assert_eq!(calls[1]["type"], "function");
        assert_eq!(calls[1]["function"]["name"], "time");
        assert_eq!(done.choices[0].finish_reason.as_deref(), Some("tool_calls"));
        // the assembly is a valid chat completion
        let back: ChatCompletion =
            serde_json::from_value(serde_json::to_value(&done).expect("json")).expect("parse");
        assert_eq!(back, done);
    }

    #[test]
    fn text_chunks_strings_and_a_whole_completion_terminal() {
        let mut a = ChatStreamAssembler::new();
        assert_eq!(a.push(&json!("hel")).text, "hel");
        assert_eq!(
            a.push(&json!({"choices": [{"delta": {"content": "lo"}}]}))
                .text,
            "lo"
        );
        // a terminal with the whole message repeats nothing already streamed
        let p = a.push(&json!({"choices": [{"message": {"role": "assistant", "content": "hello!"}, "finish_reason": "stop"}]}));
        assert_eq!(p.text, "!");
        assert_eq!(a.text(), "hello!");
        let done = a.finish();
        assert_eq!(done.text().as_deref(), Some("hello!"));
        assert_eq!(done.choices[0].message.role, "assistant");

        // only a whole completion (a buffered answer)
        let mut b = ChatStreamAssembler::new();
        let p = b.push(
            &json!({"object": "chat.completion", "choices": [{"index": 0,
            "message": {"role": "assistant", "content": "whole"}}], "usage": {"total_tokens": 2}}),
        );
        assert_eq!(p.text, "whole");
        let done = b.finish();
        assert_eq!(done.text().as_deref(), Some("whole"));
        assert_eq!(done.choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(done.usage.and_then(|u| u.total_tokens), Some(2));

        // nothing at all: one empty assistant choice; null contributes nothing
        let mut c = ChatStreamAssembler::new();
        assert_eq!(c.push(&Value::Null), ChatChunkParts::default());
        assert_eq!(c.finish().text().as_deref(), Some(""));
    }
}
