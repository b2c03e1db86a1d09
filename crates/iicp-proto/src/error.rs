//! Protocol error codes as data, and the JSON error body.
//!
//! Implements PROTOCOL.md §6 (error model: §6.1 body shapes, §6.2 slug codes, §6.3 the
//! numeric `IICP-E0xx` catalogue, CX and policy codes), the retry classification of §7.1
//! and §7.3, and DESIGN §4.8/§4.9 (`capacity_exceeded` + `legacy_code`, client-side codes
//! `invalid_config`, `invalid_intent`, `no_nodes_available`, `all_nodes_failed`).
//!
//! [`ErrorCode`] is one enum for every code seen on the wire plus an
//! [`ErrorCode::Unknown`] catch-all; callers branch on predicates
//! ([`ErrorCode::is_retryable`], [`ErrorCode::is_node_switch`]) rather than on new enum
//! variants per failure. [`ErrorBody`] emits the spec shape
//! `{"error":{"code","message",...}}` and [`ErrorBody::parse`] accepts every shape the
//! deployed peers produce (§6.1 "wire reality", §4.2 ref-py `error_code`, plain text and
//! HTML).

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest error message kept by the lenient parser, in characters.
pub const MAX_MESSAGE_CHARS: usize = 512;

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = $text:literal, status $status:expr, retry $retry:expr; )*) => {
        /// An IICP error code: Phase-1 slug codes (§6.2), the numeric `IICP-E0xx`
        /// catalogue (§6.3), CX, policy and client-side codes (DESIGN §4.8), or
        /// [`ErrorCode::Unknown`] for anything else (kept verbatim).
        ///
        /// `as_str` / `FromStr` round-trip: every known spelling maps to its variant, every
        /// other string to `Unknown` with the same text.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
            /// A code this crate does not know, kept verbatim.
            Unknown(String),
        }

        impl ErrorCode {
            /// Every known code (not `Unknown`), in declaration order.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$variant, )* ];

            /// The wire spelling.
            pub fn as_str(&self) -> &str {
                match self {
                    $( ErrorCode::$variant => $text, )*
                    ErrorCode::Unknown(s) => s.as_str(),
                }
            }

            /// The HTTP status a server answers with this code, when the spec (or, where
            /// the spec is silent, the reference SDKs) fixes one. `None` for client-side
            /// codes and codes whose status varies.
            pub fn http_status(&self) -> Option<u16> {
                match self {
                    $( ErrorCode::$variant => $status, )*
                    ErrorCode::Unknown(_) => None,
                }
            }

            /// Whether the failed operation may be retried (§7.1, §7.3, DESIGN §4.9).
            /// `Unknown` codes are not retryable; use [`ErrorBody::is_retryable`] to fall
            /// back on the HTTP status.
            pub fn is_retryable(&self) -> bool {
                match self {
                    $( ErrorCode::$variant => $retry, )*
                    ErrorCode::Unknown(_) => false,
                }
            }

            fn lookup(s: &str) -> Option<ErrorCode> {
                match s {
                    $( $text => Some(ErrorCode::$variant), )*
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    // --- §6.2 Phase-1 slug codes ---------------------------------------------------
    /// `unauthorized` (401): missing or invalid credential.
    Unauthorized = "unauthorized", status Some(401), retry false;
    /// `forbidden` (403): credential valid but not allowed.
    Forbidden = "forbidden", status Some(403), retry false;
    /// `not_found` (404): unknown node id or resource.
    NotFound = "not_found", status Some(404), retry false;
    /// `conflict` (409): duplicate `task_id` in flight or with a different body.
    Conflict = "conflict", status Some(409), retry false;
    /// `rate_limited` (429): rate limit exceeded; retry after a delay.
    RateLimited = "rate_limited", status Some(429), retry true;
    /// `capacity_exceeded` (429): node at `max_concurrent`; switch to the next node now.
    CapacityExceeded = "capacity_exceeded", status Some(429), retry true;
    /// `task_timeout` (504): the task exceeded `constraints.timeout_ms`.
    TaskTimeout = "task_timeout", status Some(504), retry true;
    /// `backend_error` (502): the inference backend failed.
    BackendError = "backend_error", status Some(502), retry false;
    /// `no_consensus` (502): consensus mode without a majority.
    NoConsensus = "no_consensus", status Some(502), retry false;
    /// `validation_error` (422): input or schema validation failed.
    ValidationError = "validation_error", status Some(422), retry false;
    /// `liveness_failed` (422): the directory could not reach `/iicp/health`.
    LivenessFailed = "liveness_failed", status Some(422), retry false;
    /// `unsupported_media_type` (415): CBOR sent to a server without CBOR support.
    UnsupportedMediaType = "unsupported_media_type", status Some(415), retry false;
    /// `unknown_intent` (4xx; we answer 422): the node does not serve the intent.
    UnknownIntent = "unknown_intent", status Some(422), retry false;
    /// `unsupported_profile` (422): a required profile is not supported.
    UnsupportedProfile = "unsupported_profile", status Some(422), retry false;
    /// `cancelled` (499): the caller cancelled a lifecycle task (PROTOCOL.md §11.4).
    Cancelled = "cancelled", status Some(499), retry false;
    /// `no_available_node` (proxy): candidates existed but every attempt failed.
    NoAvailableNode = "no_available_node", status None, retry false;
    /// `timeout` (proxy): all nodes timed out.
    Timeout = "timeout", status None, retry true;
    /// `tool_execution_denied` (403): CIP policy forbids tool execution.
    ToolExecutionDenied = "tool_execution_denied", status Some(403), retry false;
    /// `reputation_too_low` (403): CIP admission gate.
    ReputationTooLow = "reputation_too_low", status Some(403), retry false;
    /// `insufficient_credits` (402): CIP admission gate.
    InsufficientCredits = "insufficient_credits", status Some(402), retry false;
    /// `private_address` (422): `/v1/probe` SSRF guard.
    PrivateAddress = "private_address", status Some(422), retry false;
    /// `not_configured` (503): the directory has no signing key.
    NotConfigured = "not_configured", status Some(503), retry false;
    /// `no_route_available` (404): dispatch ticket found no eligible node.
    NoRouteAvailable = "no_route_available", status Some(404), retry false;
    /// `overloaded` (conf NODE-CONC-01): treated like `capacity_exceeded`.
    Overloaded = "overloaded", status Some(429), retry true;
    /// `deadline_unachievable` (provider-admission profile, 408/504).
    DeadlineUnachievable = "deadline_unachievable", status Some(504), retry false;
    /// `temporarily_unavailable` (provider-admission profile, 503).
    TemporarilyUnavailable = "temporarily_unavailable", status Some(503), retry true;
    /// `policy_rejected` (provider-admission profile, 403).
    PolicyRejected = "policy_rejected", status Some(403), retry false;

    // --- DESIGN §4.8 client-side codes ---------------------------------------------
    /// `invalid_config` (client): configuration rejected at construction.
    InvalidConfig = "invalid_config", status None, retry false;
    /// `invalid_intent` (client): the intent URN failed validation.
    InvalidIntent = "invalid_intent", status None, retry false;
    /// `no_nodes_available` (client): discovery returned no candidate (carries `IICP-E033`).
    NoNodesAvailable = "no_nodes_available", status None, retry true;
    /// `all_nodes_failed` (client): retries exhausted across candidates.
    AllNodesFailed = "all_nodes_failed", status None, retry false;

    // --- §6.3 numeric catalogue ----------------------------------------------------
    /// `IICP-E001`: invalid intent URN (client) / missing relay field (422).
    E001 = "IICP-E001", status Some(422), retry false;
    /// `IICP-E003`: client request timeout (retryable) / ref-dir "node not found" (404).
    E003 = "IICP-E003", status None, retry true;
    /// `IICP-E004`: network error (retryable, conf SDK-ERR-02).
    E004 = "IICP-E004", status None, retry true;
    /// `IICP-E005`: retryable per conf SDK-ERR-02.
    E005 = "IICP-E005", status None, retry true;
    /// `IICP-E006`: ref-py "no nodes for intent" (503, retryable).
    E006 = "IICP-E006", status Some(503), retry true;
    /// `IICP-E008`: retryable per conf SDK-ERR-02.
    E008 = "IICP-E008", status None, retry true;
    /// `IICP-E010` (409): duplicate task.
    E010 = "IICP-E010", status Some(409), retry false;
    /// `IICP-E011` (409): nonce replay detected.
    E011 = "IICP-E011", status Some(409), retry false;
    /// `IICP-E012` (401): invalid peer-exchange signature.
    E012 = "IICP-E012", status Some(401), retry false;
    /// `IICP-E013`: replica event signature invalid.
    E013 = "IICP-E013", status None, retry false;
    /// `IICP-E014`: replica event `seq` not monotonic.
    E014 = "IICP-E014", status None, retry false;
    /// `IICP-E020` (403): coordinator reputation below the provider minimum.
    E020 = "IICP-E020", status Some(403), retry false;
    /// `IICP-E021` (503 spec; SDK nodes use it with 429 for `capacity_exceeded`).
    E021 = "IICP-E021", status Some(503), retry true;
    /// `IICP-E022` (503): no CIP-eligible workers.
    E022 = "IICP-E022", status Some(503), retry true;
    /// `IICP-E023` (429): policy-evaluation / per-origin rate limit.
    E023 = "IICP-E023", status Some(429), retry true;
    /// `IICP-E024` (504): all dispatched workers timed out (SDK: backend draining, 503).
    E024 = "IICP-E024", status Some(504), retry true;
    /// `IICP-E025` (422): invalid `majority_vote` replica count.
    E025 = "IICP-E025", status Some(422), retry false;
    /// `IICP-E026` (422): map-reduce split has coverage gaps.
    E026 = "IICP-E026", status Some(422), retry false;
    /// `IICP-E027` (422): CIP worker receipt invalid.
    E027 = "IICP-E027", status Some(422), retry false;
    /// `IICP-E028` (422): invalid CIP field or unknown intent modifier.
    E028 = "IICP-E028", status Some(422), retry false;
    /// `IICP-E029` (404): model not registered on this node.
    E029 = "IICP-E029", status Some(404), retry false;
    /// `IICP-E030` (404): relay target not found.
    E030 = "IICP-E030", status Some(404), retry false;
    /// `IICP-E031` (502): relay forwarding failed.
    E031 = "IICP-E031", status Some(502), retry false;
    /// `IICP-E032` (401): invalid or missing `proxy_token`.
    E032 = "IICP-E032", status Some(401), retry false;
    /// `IICP-E033` (503): directory reachable but zero candidates.
    E033 = "IICP-E033", status Some(503), retry true;
    /// `IICP-E034` (429): REGISTER rate limit (carries `retry_after`).
    E034 = "IICP-E034", status Some(429), retry true;
    /// `IICP-E035` (422): non-routable endpoint host.
    E035 = "IICP-E035", status Some(422), retry false;
    /// `IICP-E036` (402): insufficient credits (some directories reuse it with 422).
    E036 = "IICP-E036", status Some(402), retry false;
    /// `IICP-E038` (409): relay worker already has an alive session.
    E038 = "IICP-E038", status Some(409), retry false;
    /// `IICP-E039` (503/429): relay session cap or bind rate limit.
    E039 = "IICP-E039", status Some(503), retry true;
    /// `IICP-E040` (401/409): relay bind ticket invalid or replayed.
    E040 = "IICP-E040", status Some(401), retry false;
    /// `IICP-E041` (federation): replica DID validation.
    E041 = "IICP-E041", status None, retry false;
    /// `IICP-E042` (federation).
    E042 = "IICP-E042", status None, retry false;
    /// `IICP-E043` (federation).
    E043 = "IICP-E043", status None, retry false;
    /// `IICP-E044` (federation).
    E044 = "IICP-E044", status None, retry false;
    /// `IICP-E045` (federation): snapshot required.
    E045 = "IICP-E045", status None, retry false;
    /// `IICP-E046` (federation).
    E046 = "IICP-E046", status None, retry false;
    /// `IICP-E047` (federation).
    E047 = "IICP-E047", status None, retry false;
    /// `IICP-E048` (federation, 503).
    E048 = "IICP-E048", status Some(503), retry false;
    /// `IICP-E049` (403): `cx_public_key` change without `current_node_token`.
    E049 = "IICP-E049", status Some(403), retry false;
    /// `IICP-E050` (403 directory: route change without proof; 422 node: CX failure).
    E050 = "IICP-E050", status Some(403), retry false;
    /// `IICP-E053` (413): signaling message too large.
    E053 = "IICP-E053", status Some(413), retry false;
    /// `IICP-E060` (422): CX unknown key id.
    E060 = "IICP-E060", status Some(422), retry false;
    /// `IICP-E061` (422): CX unsupported version.
    E061 = "IICP-E061", status Some(422), retry false;
    /// `IICP-E062` (400): CX decrypt failure.
    E062 = "IICP-E062", status Some(400), retry false;
    /// `IICP-E063` (422): CX key expired.
    E063 = "IICP-E063", status Some(422), retry false;
    /// `IICP-E064`: CX not supported by the node.
    E064 = "IICP-E064", status Some(422), retry false;
    /// `IICP-E065` (client): operator key-binding signature invalid.
    E065 = "IICP-E065", status None, retry false;

    // --- CX, policy and other SDK namespaces (§6.3 "Other namespaces") -------------
    /// `IICP-CX-01` (400): node has no CX private key.
    Cx01 = "IICP-CX-01", status Some(400), retry false;
    /// `IICP-CX-02` (400): CX decrypt failed.
    Cx02 = "IICP-CX-02", status Some(400), retry false;
    /// `IICP-CX-03` (400): encrypted response requested for a plaintext request.
    Cx03 = "IICP-CX-03", status Some(400), retry false;
    /// `IICP-CX-REQUIRED` (client): the node has no CX key and plaintext is not allowed.
    CxRequired = "IICP-CX-REQUIRED", status None, retry false;
    /// `IICP-POLICY-001` (client, terminal): prohibited or high-risk intent.
    PolicyRefused = "IICP-POLICY-001", status Some(422), retry false;
    /// `IICP-CONSUMER-AUTH-REQUIRED` (client).
    ConsumerAuthRequired = "IICP-CONSUMER-AUTH-REQUIRED", status None, retry false;
    /// `IICP-ENDPOINT-REFUSED` (client): endpoint policy refused the provider endpoint.
    EndpointRefused = "IICP-ENDPOINT-REFUSED", status None, retry false;
    /// `IICP-REDIRECT-REFUSED` (client): a provider or directory redirect was not
    /// followed (cross-origin, a loop, or too many hops).
    RedirectRefused = "IICP-REDIRECT-REFUSED", status None, retry false;
    /// `IICP-CANDIDATE-RANKER-REFUSED` (client).
    CandidateRankerRefused = "IICP-CANDIDATE-RANKER-REFUSED", status None, retry false;
    /// `IICP-POLICY-ROUTING` (client, terminal): the routing profile excluded every
    /// discovered node; nothing was sent to a node (§9.4).
    RoutingPolicyRefused = "IICP-POLICY-ROUTING", status None, retry false;
    /// `IICP-POLICY-MANIFEST-BINDING-MISMATCH` (client).
    PolicyManifestBindingMismatch = "IICP-POLICY-MANIFEST-BINDING-MISMATCH", status None, retry false;
}

impl ErrorCode {
    /// True when the proxy must switch to the next node at once, without backoff
    /// against the same node (§7.3): `capacity_exceeded` and `overloaded`. The SDK form
    /// `IICP-E021` + HTTP 429 needs the status: see [`ErrorBody::is_node_switch`].
    pub fn is_node_switch(&self) -> bool {
        matches!(self, ErrorCode::CapacityExceeded | ErrorCode::Overloaded)
    }

    /// True for `Unknown` codes.
    pub fn is_unknown(&self) -> bool {
        matches!(self, ErrorCode::Unknown(_))
    }

    /// The code a client derives from a bare HTTP status when the body carries none.
    /// Statuses without an obvious slug become `Unknown("http_<status>")`.
    pub fn from_http_status(status: u16) -> ErrorCode {
        match status {
            400 | 422 => ErrorCode::ValidationError,
            401 => ErrorCode::Unauthorized,
            402 => ErrorCode::InsufficientCredits,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            408 => ErrorCode::Timeout,
            409 => ErrorCode::Conflict,
            415 => ErrorCode::UnsupportedMediaType,
            429 => ErrorCode::RateLimited,
            502 => ErrorCode::BackendError,
            503 => ErrorCode::TemporarilyUnavailable,
            504 => ErrorCode::TaskTimeout,
            other => ErrorCode::Unknown(format!("http_{other}")),
        }
    }
}

/// Whether a bare HTTP status is worth retrying (§7.1, DESIGN §4.9): 408, 429, 503, 504.
/// Other 4xx and 502 are not.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 503 | 504)
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorCode {
    type Err = Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(ErrorCode::lookup(s).unwrap_or_else(|| ErrorCode::Unknown(s.to_owned())))
    }
}

impl From<&str> for ErrorCode {
    fn from(s: &str) -> Self {
        ErrorCode::lookup(s).unwrap_or_else(|| ErrorCode::Unknown(s.to_owned()))
    }
}

impl From<String> for ErrorCode {
    fn from(s: String) -> Self {
        ErrorCode::lookup(&s).unwrap_or(ErrorCode::Unknown(s))
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Some peers send numeric codes; keep their text.
        let v = Value::deserialize(deserializer)?;
        match v {
            Value::String(s) => Ok(ErrorCode::from(s)),
            Value::Number(n) => Ok(ErrorCode::from(n.to_string())),
            other => Err(serde::de::Error::custom(format_args!(
                "error code must be a string, got {}",
                json_kind(&other)
            ))),
        }
    }
}

/// The kind of a JSON value with its article (`a string`, `null`), for messages that
/// say what was found instead of what was expected.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------
// ErrorBody
// ---------------------------------------------------------------------------

/// An IICP error as carried in an HTTP body (§6.1).
///
/// Serialises to the spec shape
/// `{"error":{"code":…,"message":…,"qos_class"?,"retry_after_ms"?,"legacy_code"?,"reason"?,…extra}}`.
/// `http_status` is transport information, not part of the JSON: [`ErrorBody::parse`]
/// fills it in, serialisation ignores it. Deserialising with serde accepts the same
/// shapes as [`ErrorBody::parse`] (with `http_status = None`).
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorBody {
    /// The error code.
    pub code: ErrorCode,
    /// Human-readable message (bounded to [`MAX_MESSAGE_CHARS`] by the parser).
    pub message: String,
    /// HTTP status the body arrived with, if known.
    pub http_status: Option<u16>,
    /// QoS class the node refused (`capacity_exceeded`, §7.3).
    pub qos_class: Option<String>,
    /// Suggested delay before retrying, in milliseconds (§7.3; also derived from the
    /// flat form's `retry_after` seconds).
    pub retry_after_ms: Option<u64>,
    /// Older code carried next to the spec code (e.g. `IICP-E021`, DESIGN §4.8).
    pub legacy_code: Option<ErrorCode>,
    /// Machine-readable reason (e.g. `availability_window`).
    pub reason: Option<String>,
    /// Any other members of the error object.
    pub extra: Map<String, Value>,
}

impl ErrorBody {
    /// A body with `code` and `message` and nothing else.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            http_status: None,
            qos_class: None,
            retry_after_ms: None,
            legacy_code: None,
            reason: None,
            extra: Map::new(),
        }
    }

    /// The §7.3 refusal: `capacity_exceeded` with `qos_class`, `retry_after_ms`,
    /// `legacy_code: "IICP-E021"` and HTTP status 429.
    pub fn capacity_exceeded(qos_class: impl Into<String>, retry_after_ms: u64) -> Self {
        let mut body = Self::new(
            ErrorCode::CapacityExceeded,
            "node is at max_concurrent; try another node",
        );
        body.http_status = Some(429);
        body.qos_class = Some(qos_class.into());
        body.retry_after_ms = Some(retry_after_ms);
        body.legacy_code = Some(ErrorCode::E021);
        body
    }

    /// Sets the HTTP status (builder style).
    pub fn with_status(mut self, status: u16) -> Self {
        self.http_status = Some(status);
        self
    }

    /// Sets `reason` (builder style).
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// The status to answer with: the explicit one, else the code's, else 500.
    pub fn status_or_default(&self) -> u16 {
        self.http_status
            .or_else(|| self.code.http_status())
            .unwrap_or(500)
    }

    /// Whether to retry: the code's classification when known, otherwise the HTTP
    /// status's ([`is_retryable_status`]).
    pub fn is_retryable(&self) -> bool {
        if self.code.is_unknown() {
            self.http_status.is_some_and(is_retryable_status)
        } else {
            self.code.is_retryable()
        }
    }

    /// True for the node-switch signal (§7.3, T8): `capacity_exceeded`/`overloaded`, or
    /// `IICP-E021` (as code or legacy code) with HTTP 429.
    pub fn is_node_switch(&self) -> bool {
        if self.code.is_node_switch() {
            return true;
        }
        let e021 = self.code == ErrorCode::E021 || self.legacy_code == Some(ErrorCode::E021);
        (e021 && self.http_status == Some(429))
            || (self.code == ErrorCode::E021 && self.message == "capacity_exceeded")
    }

    /// Parses an error response leniently. Accepts, in order:
    /// the spec shape `{"error":{"code","message",…}}` (code optional),
    /// the flat form `{"error":"IICP-E034","message":…,"retry_after":60}`,
    /// the ref-py task form `{"error_code":…,"error_message":…}`,
    /// any other JSON object (`message`/`detail` member),
    /// and plain text or HTML (markup stripped, message truncated).
    /// A missing code is derived from `http_status` ([`ErrorCode::from_http_status`]).
    /// Never fails.
    pub fn parse(http_status: u16, body: &[u8]) -> ErrorBody {
        let (mut parsed, _explicit) = Self::parse_inner(http_status, body);
        parsed.http_status = Some(http_status);
        parsed
    }

    /// Like [`ErrorBody::parse`]; also says whether the body carried an explicit code.
    pub(crate) fn parse_inner(http_status: u16, body: &[u8]) -> (ErrorBody, bool) {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(obj)) => {
                let (mut parsed, explicit) = Self::from_object(&obj);
                if !explicit {
                    parsed.code = ErrorCode::from_http_status(http_status);
                }
                if parsed.message.is_empty() {
                    parsed.message = default_message(&parsed.code, http_status);
                }
                (parsed, explicit)
            }
            Ok(Value::String(s)) => {
                let code = ErrorCode::from_http_status(http_status);
                let message = clean_text(&s);
                let message = if message.is_empty() {
                    default_message(&code, http_status)
                } else {
                    message
                };
                (Self::new(code, message), false)
            }
            _ => {
                let code = ErrorCode::from_http_status(http_status);
                let text = String::from_utf8_lossy(body);
                let message = clean_text(&text);
                let message = if message.is_empty() {
                    default_message(&code, http_status)
                } else {
                    message
                };
                (Self::new(code, message), false)
            }
        }
    }

    /// Interprets a JSON object as an error. Returns the body and whether it named a
    /// code; without one, `code` is `Unknown("")` and the caller decides.
    pub(crate) fn from_object(obj: &Map<String, Value>) -> (ErrorBody, bool) {
        let mut body = Self::new(ErrorCode::Unknown(String::new()), String::new());
        let mut explicit = false;
        match obj.get("error") {
            Some(Value::Object(inner)) => {
                for (k, v) in inner {
                    match k.as_str() {
                        "code" => {
                            if let Some(code) = code_from_value(v) {
                                body.code = code;
                                explicit = true;
                            }
                        }
                        "message" => body.message = value_text(v),
                        "qos_class" => body.qos_class = v.as_str().map(str::to_owned),
                        "retry_after_ms" => body.retry_after_ms = value_u64(v),
                        "legacy_code" => body.legacy_code = code_from_value(v),
                        "reason" => body.reason = v.as_str().map(str::to_owned),
                        _ => {
                            body.extra.insert(k.clone(), v.clone());
                        }
                    }
                }
                if body.retry_after_ms.is_none() {
                    body.retry_after_ms = inner
                        .get("retry_after")
                        .and_then(value_u64)
                        .map(|s| s.saturating_mul(1000));
                    if body.retry_after_ms.is_some() {
                        body.extra.remove("retry_after");
                    }
                }
                if body.message.is_empty() {
                    if let Some(m) = obj.get("message") {
                        body.message = value_text(m);
                    }
                }
            }
            Some(Value::String(code)) => {
                body.code = ErrorCode::from(code.as_str());
                explicit = true;
                for (k, v) in obj {
                    match k.as_str() {
                        "error" => {}
                        "message" | "error_message" | "detail" => {
                            if body.message.is_empty() {
                                body.message = value_text(v);
                            }
                        }
                        "retry_after_ms" => body.retry_after_ms = value_u64(v),
                        "retry_after" => {
                            if body.retry_after_ms.is_none() {
                                body.retry_after_ms = value_u64(v).map(|s| s.saturating_mul(1000));
                            }
                        }
                        "qos_class" => body.qos_class = v.as_str().map(str::to_owned),
                        "legacy_code" => body.legacy_code = code_from_value(v),
                        "reason" => body.reason = v.as_str().map(str::to_owned),
                        _ => {
                            body.extra.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            _ => {
                // ref-py handler error spread into a 200 body, or an arbitrary object.
                if let Some(code) = obj.get("error_code").and_then(code_from_value) {
                    body.code = code;
                    explicit = true;
                }
                for key in ["error_message", "message", "detail"] {
                    if let Some(v) = obj.get(key) {
                        let text = value_text(v);
                        if !text.is_empty() {
                            body.message = text;
                            break;
                        }
                    }
                }
                if let Some(ms) = obj.get("retry_after_ms").and_then(value_u64) {
                    body.retry_after_ms = Some(ms);
                }
            }
        }
        body.message = truncate_chars(&body.message, MAX_MESSAGE_CHARS);
        (body, explicit)
    }
}

fn default_message(code: &ErrorCode, status: u16) -> String {
    if status == 0 {
        code.as_str().to_owned()
    } else {
        format!("HTTP {status} ({code})")
    }
}

fn code_from_value(v: &Value) -> Option<ErrorCode> {
    match v {
        Value::String(s) if !s.is_empty() => Some(ErrorCode::from(s.as_str())),
        Value::Number(n) => Some(ErrorCode::from(n.to_string())),
        _ => None,
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn value_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f.ceil() as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Truncates to at most `max` characters, marking the cut with `…`.
pub(crate) fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Turns a plain-text or HTML body into a short one-line message: drops `<head>`,
/// `<script>` and `<style>` content and all tags, decodes the basic entities, collapses
/// whitespace and truncates.
fn clean_text(input: &str) -> String {
    // Bound the work before doing anything else.
    let input: String = input.chars().take(16 * 1024).collect();
    let lower = input.to_ascii_lowercase();
    let mut out = String::with_capacity(input.len().min(1024));
    let mut i = 0;
    let bytes = input.as_bytes();
    while i < bytes.len() {
        if bytes[i] == b'<' {
            // Skip whole elements whose content is not prose.
            let mut skipped = false;
            for tag in ["head", "script", "style", "title"] {
                let open = format!("<{tag}");
                if lower[i..].starts_with(&open) {
                    let close = format!("</{tag}>");
                    match lower[i..].find(&close) {
                        Some(end) => i += end + close.len(),
                        None => i = bytes.len(),
                    }
                    skipped = true;
                    break;
                }
            }
            if skipped {
                out.push(' ');
                continue;
            }
            match input[i..].find('>') {
                Some(end) => i += end + 1,
                None => i = bytes.len(),
            }
            out.push(' ');
            continue;
        }
        // Copy one char.
        let ch_len = input[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&input[i..i + ch_len]);
        i += ch_len;
    }
    let decoded = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&");
    let collapsed = decoded.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate_chars(&collapsed, MAX_MESSAGE_CHARS.min(256))
}

impl Serialize for ErrorBody {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Inner<'a> {
            code: &'a ErrorCode,
            message: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            qos_class: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            retry_after_ms: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            legacy_code: Option<&'a ErrorCode>,
            #[serde(skip_serializing_if = "Option::is_none")]
            reason: Option<&'a str>,
            #[serde(flatten)]
            extra: &'a Map<String, Value>,
        }
        #[derive(Serialize)]
        struct Outer<'a> {
            error: Inner<'a>,
        }
        Outer {
            error: Inner {
                code: &self.code,
                message: &self.message,
                qos_class: self.qos_class.as_deref(),
                retry_after_ms: self.retry_after_ms,
                legacy_code: self.legacy_code.as_ref(),
                reason: self.reason.as_deref(),
                extra: &self.extra,
            },
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ErrorBody {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(deserializer)?;
        match v {
            Value::Object(obj) => {
                let (mut body, explicit) = ErrorBody::from_object(&obj);
                if !explicit {
                    return Err(serde::de::Error::custom("error body carries no error code"));
                }
                if body.message.is_empty() {
                    body.message = body.code.as_str().to_owned();
                }
                Ok(body)
            }
            other => Err(serde::de::Error::custom(format_args!(
                "error body must be an object, got {}",
                json_kind(&other)
            ))),
        }
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.http_status {
            Some(status) => write!(f, "{} (HTTP {status}): {}", self.code, self.message),
            None => write!(f, "{}: {}", self.code, self.message),
        }
    }
}

impl std::error::Error for ErrorBody {}
