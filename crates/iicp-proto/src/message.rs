//! Native messages: integer-keyed CBOR maps carried in frames (PROTOCOL.md §10.4–§10.7,
//! §14.2, §19 T3, T4, T15, T16; ADR 0002).
//!
//! Each message is a struct whose integer keys are declared once, on its fields, in
//! ascending order, so the derived encoding is deterministic CBOR (sorted keys, shortest
//! integers, definite lengths, no tags). Absent optional fields are not encoded.
//!
//! Receiving is strict on structure and lenient on everything else (ADR 0007): payloads
//! are first [normalized](crate::cbor::normalize) — indefinite-length items and duplicate
//! map keys at any depth are refused with `invalid_payload`, tags are stripped, key order
//! and integer widths are not checked — then unknown keys are ignored, empty payloads
//! are accepted for INIT, ACK, PING, PONG and CLOSE, and the deployed SDK dialect is
//! read next to the spec schema: key 5 as a map, CBOR-in-bytes or JSON-in-bytes
//! ([`Body`]; JSON that repeats a member name is refused like a repeated CBOR key), the
//! call id from key 3 or 15, errors from key 6 or 100/101.

use std::collections::BTreeMap;

use minicbor::bytes::{ByteArray, ByteVec};
use minicbor::{Decode, Decoder, Encode};

use crate::cbor::{self, CborError};
use crate::frame::{self, FrameError, FrameHeader, MessageType};
use crate::secret::Secret;

/// The native protocol version this crate speaks.
pub const PROTOCOL_VERSION: u64 = 1;

/// A task body or result carried under key 5.
///
/// The deployed SDKs put JSON text in a byte string (CALL), CBOR in a byte string
/// (RESPONSE) or a plain CBOR map (spec form); a relay-pushed CALL holds the JSON of the
/// whole task. `Body` keeps what arrived and interprets it on request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// A byte string: JSON text or an encoded CBOR item inside.
    Bytes(Vec<u8>),
    /// A CBOR item carried inline (normally a map), as its encoded bytes.
    Cbor(Vec<u8>),
}

/// Which interpretation [`Body::to_json`] tries first for a byte string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefer {
    /// JSON first, then CBOR: CALL payloads and relay traffic.
    Json,
    /// CBOR first, then JSON: RESPONSE results.
    Cbor,
}

/// A key-5 body that is neither JSON nor CBOR (or is ambiguous: a repeated JSON member
/// name or CBOR map key, ADR 0007).
#[derive(Debug, thiserror::Error)]
#[error("body is neither JSON nor CBOR")]
pub struct BodyError;

/// Parses JSON text, refusing objects that repeat a member name (at any depth):
/// `serde_json` would keep the last one, while other readers keep the first (ADR 0007).
pub fn json_strict(text: &[u8]) -> Result<serde_json::Value, serde_json::Error> {
    use serde::de::DeserializeSeed as _;
    let mut de = serde_json::Deserializer::from_slice(text);
    let v = StrictJson.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

/// Builds a `serde_json::Value`, failing on a repeated member name.
#[derive(Clone, Copy)]
struct StrictJson;

impl<'de> serde::de::DeserializeSeed<'de> for StrictJson {
    type Value = serde_json::Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for StrictJson {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictJson)? {
            out.push(v);
        }
        Ok(serde_json::Value::Array(out))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(StrictJson)?;
            if out.insert(key, value).is_some() {
                return Err(serde::de::Error::custom("duplicate member name"));
            }
        }
        Ok(serde_json::Value::Object(out))
    }
}

impl Body {
    /// The CALL form of the deployed SDKs: UTF-8 JSON text in a byte string.
    pub fn json(value: &serde_json::Value) -> Self {
        // serializing a Value cannot fail
        Body::Bytes(serde_json::to_vec(value).unwrap_or_default())
    }

    /// The spec form: the value as an inline deterministic CBOR item.
    pub fn cbor(value: &serde_json::Value) -> Self {
        Body::Cbor(cbor::json_to_vec(value))
    }

    /// Interprets the body as a JSON value.
    pub fn to_json(&self, prefer: Prefer) -> Result<serde_json::Value, BodyError> {
        match self {
            Body::Cbor(raw) => cbor::to_json(raw).map_err(|_| BodyError),
            Body::Bytes(b) => {
                let as_json = || json_strict(b).ok();
                let as_cbor = || cbor::to_json(b).ok();
                let v = match prefer {
                    Prefer::Json => as_json().or_else(as_cbor),
                    Prefer::Cbor => as_cbor().or_else(as_json),
                };
                v.ok_or(BodyError)
            }
        }
    }

    /// Length of the carried bytes.
    pub fn len(&self) -> usize {
        match self {
            Body::Bytes(b) | Body::Cbor(b) => b.len(),
        }
    }

    /// Whether the body carries no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<C> Encode<C> for Body {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut minicbor::Encoder<W>,
        _: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        match self {
            Body::Bytes(b) => {
                e.bytes(b)?;
            }
            Body::Cbor(raw) => e
                .writer_mut()
                .write_all(raw)
                .map_err(minicbor::encode::Error::write)?,
        }
        Ok(())
    }
}

impl<'b, C> Decode<'b, C> for Body {
    fn decode(d: &mut Decoder<'b>, _: &mut C) -> Result<Self, minicbor::decode::Error> {
        if d.datatype()? == minicbor::data::Type::Bytes {
            return Ok(Body::Bytes(d.bytes()?.to_vec()));
        }
        let start = d.position();
        d.skip()?;
        Ok(Body::Cbor(d.input()[start..d.position()].to_vec()))
    }
}

/// Any CBOR item kept as its encoded bytes (maps whose schema is open).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawCbor(pub Vec<u8>);

impl RawCbor {
    /// The item as JSON.
    pub fn to_json(&self) -> Result<serde_json::Value, CborError> {
        cbor::to_json(&self.0)
    }
}

impl<C> Encode<C> for RawCbor {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut minicbor::Encoder<W>,
        _: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.writer_mut()
            .write_all(&self.0)
            .map_err(minicbor::encode::Error::write)
    }
}

impl<'b, C> Decode<'b, C> for RawCbor {
    fn decode(d: &mut Decoder<'b>, _: &mut C) -> Result<Self, minicbor::decode::Error> {
        let start = d.position();
        d.skip()?;
        Ok(RawCbor(d.input()[start..d.position()].to_vec()))
    }
}

/// INIT (0x01), client → server (PROTOCOL.md §10.5). The SDKs send `{1: 1}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Init {
    /// Preferred protocol version.
    #[n(1)]
    pub protocol_version: Option<u64>,
    /// Lowest acceptable version; its presence marks a spec-aware peer.
    #[n(2)]
    pub min_version: Option<u64>,
    /// The connecting node's id.
    #[n(3)]
    pub node_id: Option<String>,
    /// The connecting node's token (LOG-FORBIDDEN).
    #[n(4)]
    pub node_token: Option<Secret>,
    /// Offered custom type URNs.
    #[n(5)]
    pub capabilities: Option<Vec<String>>,
    /// Offered compression algorithms.
    #[n(6)]
    pub compression: Option<Vec<String>>,
    /// Largest frame the client accepts.
    #[n(7)]
    pub max_frame_size: Option<u64>,
}

impl Init {
    /// The INIT this crate sends: version 1, minimum version 1.
    pub fn v1() -> Self {
        Self {
            protocol_version: Some(PROTOCOL_VERSION),
            min_version: Some(PROTOCOL_VERSION),
            ..Self::default()
        }
    }
}

/// ACK (0x02), server → client. The SDKs send `{1: 1, 2: node_id}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Ack {
    /// Negotiated version.
    #[n(1)]
    pub protocol_version: Option<u64>,
    /// The server's node id.
    #[n(2)]
    pub node_id: Option<String>,
    /// Accepted custom type URNs.
    #[n(3)]
    pub capabilities: Option<Vec<String>>,
    /// Selected compression.
    #[n(4)]
    pub compression: Option<String>,
    /// Largest frame the server accepts.
    #[n(5)]
    pub max_frame_size: Option<u64>,
    /// Server time, unix seconds.
    #[n(6)]
    pub server_time: Option<u64>,
}

/// `retry_policy` of a CALL (key 12).
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct RetryPolicy {
    /// Maximum retries.
    #[n(1)]
    pub max_retries: Option<u64>,
    /// Backoff in milliseconds.
    #[n(2)]
    pub backoff_ms: Option<u64>,
}

/// CALL (0x05): a task request. Spec keys plus the deployed dialect (ADR 0002).
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Call {
    /// Protocol version (spec MUST; the SDKs omit it).
    #[n(1)]
    pub protocol_version: Option<u64>,
    /// Session id; the SDKs use literals such as `"call-1"`.
    #[n(2)]
    pub session_id: Option<String>,
    /// Intent URN.
    #[n(3)]
    pub intent: Option<String>,
    /// Target node id.
    #[n(4)]
    pub provider_id: Option<String>,
    /// Task payload (JSON in bytes when sent by us and the SDKs).
    #[n(5)]
    pub payload: Option<Body>,
    /// Timeout in **seconds**, 1–3600.
    #[n(6)]
    pub timeout_s: Option<u64>,
    /// Priority 0–3.
    #[n(7)]
    pub priority: Option<u64>,
    /// Credits offered.
    #[n(8)]
    pub credits: Option<u64>,
    /// Routing hint.
    #[n(9)]
    pub routing_hint: Option<String>,
    /// Scheduling hint.
    #[n(10)]
    pub scheduling_hint: Option<String>,
    /// Credential (LOG-FORBIDDEN).
    #[n(11)]
    pub auth_token: Option<Secret>,
    /// Retry policy.
    #[n(12)]
    pub retry_policy: Option<RetryPolicy>,
    /// W3C trace id, exactly 16 bytes.
    #[n(13)]
    pub trace_id: Option<ByteArray<16>>,
    /// Parent span id, exactly 8 bytes.
    #[n(14)]
    pub parent_span: Option<ByteArray<8>>,
    /// Call id: one transport attempt.
    #[n(15)]
    pub call_id: Option<String>,
    /// Idempotency key, constant across retries.
    #[n(16)]
    pub idempotency_key: Option<String>,
    /// Maximum output tokens.
    #[n(17)]
    pub max_tokens: Option<u64>,
    /// QoS class.
    #[n(18)]
    pub qos: Option<String>,
    /// Deprecated transport hint.
    #[n(19)]
    pub transport_hint: Option<String>,
    /// Region.
    #[n(20)]
    pub region: Option<String>,
    /// Required node capabilities.
    #[n(21)]
    pub capabilities: Option<Vec<String>>,
    /// Binding-local TTL in seconds.
    #[n(22)]
    pub ttl: Option<u64>,
    /// Free-form metadata.
    #[n(23)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Task id; its presence asks the reference servers for lifecycle streaming.
    #[n(24)]
    pub task_id: Option<String>,
}

impl Call {
    /// The id a server correlates this call by: key 15, else key 2.
    pub fn correlation_id(&self) -> Option<&str> {
        self.call_id.as_deref().or(self.session_id.as_deref())
    }

    /// Converts a JSON `timeout_ms` to the key-6 seconds, rounding up, clamped to 1–3600
    /// (PROTOCOL.md §19 T12).
    pub fn timeout_from_ms(ms: u64) -> u64 {
        ms.div_ceil(1000).clamp(1, 3600)
    }
}

/// `{1: code, 2: message}` error map of a RESPONSE (key 6).
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct ErrorMap {
    /// Error code (`capacity_exceeded`, `IICP-E021`, …).
    #[n(1)]
    pub code: Option<String>,
    /// Human-readable message.
    #[n(2)]
    pub message: Option<String>,
}

/// Lifecycle envelope (RESPONSE key 13, PROTOCOL.md §11.3).
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Lifecycle {
    /// Task id (= CALL key 24).
    #[n(1)]
    pub task_id: Option<String>,
    /// Sequence number, strictly increasing.
    #[n(2)]
    pub sequence: Option<u64>,
    /// Event name.
    #[n(3)]
    pub event: Option<String>,
    /// Whether this is the terminal event.
    #[n(4)]
    pub is_final: Option<bool>,
    /// Redacted receipt.
    #[n(5)]
    pub receipt: Option<RawCbor>,
}

/// RESPONSE (0x06): a task result. Spec keys plus the deployed dialect (ADR 0002).
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Response {
    /// Protocol version.
    #[n(1)]
    pub protocol_version: Option<u64>,
    /// Session id, echoed.
    #[n(2)]
    pub session_id: Option<String>,
    /// Call id, echoed (spec key).
    #[n(3)]
    pub call_id: Option<String>,
    /// `success` | `error` | `timeout` | `partial`.
    #[n(4)]
    pub status: Option<String>,
    /// Result (inline CBOR from us; CBOR-in-bytes from the SDKs).
    #[n(5)]
    pub result: Option<Body>,
    /// Error map.
    #[n(6)]
    pub error: Option<ErrorMap>,
    /// Tokens used.
    #[n(7)]
    pub tokens_used: Option<u64>,
    /// Server wall-clock duration.
    #[n(8)]
    pub duration_ms: Option<u64>,
    /// Trace id echo.
    #[n(9)]
    pub trace_id: Option<ByteArray<16>>,
    /// Credits charged.
    #[n(10)]
    pub credits_charged: Option<u64>,
    /// Serving node id.
    #[n(11)]
    pub node_id: Option<String>,
    /// Whether this is the last RESPONSE for the call.
    #[n(12)]
    pub is_final: Option<bool>,
    /// Lifecycle envelope.
    #[n(13)]
    pub lifecycle: Option<Lifecycle>,
    /// Call id, echoed (deployed SDK key).
    #[n(15)]
    pub legacy_call_id: Option<String>,
    /// Node list of a deployed DISCOVER reply.
    #[n(20)]
    pub nodes: Option<RawCbor>,
    /// HTTP-like status of a deployed error reply (429, 500, 503, …).
    #[n(100)]
    pub status_code: Option<u64>,
    /// Message of a deployed error reply.
    #[n(101)]
    pub message: Option<String>,
}

/// What a RESPONSE says happened, whichever dialect carried it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Success (or `completed`), with the result if any.
    Success(Option<&'a Body>),
    /// A lifecycle partial result.
    Partial(Option<&'a Body>),
    /// The task timed out.
    Timeout,
    /// The task failed.
    Error {
        /// Error code from key 6, if given.
        code: Option<&'a str>,
        /// HTTP-like status from key 100, if given.
        status: Option<u64>,
        /// Message from key 6 or 101.
        message: Option<&'a str>,
    },
}

impl Response {
    /// The echoed call id: key 3, else key 15.
    pub fn call_id(&self) -> Option<&str> {
        self.call_id.as_deref().or(self.legacy_call_id.as_deref())
    }

    /// The id this answers, for correlation: call id, else session id.
    pub fn correlation_id(&self) -> Option<&str> {
        self.call_id().or(self.session_id.as_deref())
    }

    /// A success in the superset layout, correlated with `call`.
    pub fn success(call: &Call, result: Body) -> Self {
        Self {
            protocol_version: Some(PROTOCOL_VERSION),
            session_id: call.session_id.clone(),
            call_id: call.call_id.clone(),
            status: Some("success".into()),
            result: Some(result),
            is_final: Some(true),
            legacy_call_id: call.call_id.clone(),
            ..Self::default()
        }
    }

    /// An error in the superset layout (key 6 and keys 100/101), correlated with `call`.
    pub fn error(call: &Call, code: &str, http_status: u16, message: &str) -> Self {
        let status = if code == "task_timeout" || code == "timeout" {
            "timeout"
        } else {
            "error"
        };
        Self {
            protocol_version: Some(PROTOCOL_VERSION),
            session_id: call.session_id.clone(),
            call_id: call.call_id.clone(),
            status: Some(status.into()),
            error: Some(ErrorMap {
                code: Some(code.into()),
                message: Some(message.into()),
            }),
            is_final: Some(true),
            legacy_call_id: call.call_id.clone(),
            status_code: Some(u64::from(http_status)),
            message: Some(message.into()),
            ..Self::default()
        }
    }

    /// Interprets the status across dialects (PROTOCOL.md §10.7, §19 T7).
    pub fn outcome(&self) -> Outcome<'_> {
        let error = || Outcome::Error {
            code: self.error.as_ref().and_then(|e| e.code.as_deref()),
            status: self.status_code,
            message: self
                .error
                .as_ref()
                .and_then(|e| e.message.as_deref())
                .or(self.message.as_deref()),
        };
        match self.status.as_deref() {
            Some("success" | "completed") => Outcome::Success(self.result.as_ref()),
            Some("partial") => Outcome::Partial(self.result.as_ref()),
            Some("timeout") => Outcome::Timeout,
            Some(_) => error(),
            None if self.status_code.is_some() || self.error.is_some() => error(),
            None => Outcome::Success(self.result.as_ref()),
        }
    }

    /// Whether more RESPONSEs follow for the same call (lifecycle partials).
    pub fn is_final(&self) -> bool {
        self.is_final.unwrap_or(true)
    }
}

/// CLOSE (0x07). The SDKs send an empty payload; we send `{1: reason, 2: message}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Close {
    /// `graceful` or an error code (PROTOCOL.md §6.4).
    #[n(1)]
    pub reason: Option<String>,
    /// Detail.
    #[n(2)]
    pub message: Option<String>,
    /// Session id.
    #[n(3)]
    pub session_id: Option<String>,
}

impl Close {
    /// A CLOSE with a reason code.
    pub fn with_reason(reason: CloseReason) -> Self {
        Self {
            reason: Some(reason.as_str().into()),
            ..Self::default()
        }
    }
}

/// PING (0x09) / PONG (0x0A): empty, or `{1: echo ≤ 64 bytes}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Ping {
    /// Echo data, returned verbatim in the PONG.
    #[n(1)]
    pub echo: Option<ByteVec>,
}

/// RELAY_BIND (0x0B on relay-accept connections), worker → relay (PROTOCOL.md §14.2).
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct RelayBind {
    /// The worker's node id.
    #[n(1)]
    pub worker_id: Option<String>,
    /// Served intent.
    #[n(2)]
    pub intent: Option<String>,
    /// Served models.
    #[n(3)]
    pub models: Option<Vec<String>>,
    /// Directory-signed bind ticket (a credential).
    #[n(4)]
    pub bind_ticket: Option<Secret>,
}

/// RELAY_ACK (0x0C on relay-accept connections), relay → worker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct RelayAck {
    /// `ok` or `error`.
    #[n(1)]
    pub status: Option<String>,
    /// The bound worker id.
    #[n(2)]
    pub worker_id: Option<String>,
    /// Error reason.
    #[n(3)]
    pub reason: Option<String>,
    /// The relay's HTTP task port (default 9484 when absent).
    #[n(4)]
    pub relay_http_port: Option<u64>,
}

/// DISCOVER (0x03). Reads the spec keys and the SDK form `{2: session_id, 3: intent}`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Discover {
    /// Intent URN (key 1, or key 3 in the SDK form).
    pub intent: Option<String>,
    /// Result limit (key 2 as an integer).
    pub limit: Option<u64>,
    /// Region (key 3 when it is not an intent).
    pub region: Option<String>,
    /// Excluded node ids (key 4).
    pub exclude: Option<Vec<String>>,
    /// Minimum score (key 5).
    pub min_score: Option<f64>,
    /// Session id (key 2 as text, SDK form).
    pub session_id: Option<String>,
}

impl<C> Encode<C> for Discover {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut minicbor::Encoder<W>,
        _: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        // the spec form; the SDK form is never sent (ADR 0002)
        let n = [
            self.intent.is_some(),
            self.limit.is_some(),
            self.region.is_some(),
            self.exclude.is_some(),
            self.min_score.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        e.map(n as u64)?;
        if let Some(v) = &self.intent {
            e.u8(1)?.str(v)?;
        }
        if let Some(v) = self.limit {
            e.u8(2)?.u64(v)?;
        }
        if let Some(v) = &self.region {
            e.u8(3)?.str(v)?;
        }
        if let Some(v) = &self.exclude {
            e.u8(4)?.encode(v)?;
        }
        if let Some(v) = self.min_score {
            e.u8(5)?.f64(v)?;
        }
        Ok(())
    }
}

impl<'b, C> Decode<'b, C> for Discover {
    fn decode(d: &mut Decoder<'b>, _: &mut C) -> Result<Self, minicbor::decode::Error> {
        use minicbor::data::Type;
        let mut out = Discover::default();
        let n = d.map()?.unwrap_or(0);
        for _ in 0..n {
            let key = if matches!(d.datatype()?, Type::U8 | Type::U16 | Type::U32 | Type::U64) {
                Some(d.u64()?)
            } else {
                None
            };
            match (key, d.datatype()?) {
                (Some(1), Type::String) => out.intent = Some(d.str()?.to_owned()),
                (Some(2), Type::String) => out.session_id = Some(d.str()?.to_owned()),
                (Some(2), _) => out.limit = Some(d.u64()?),
                (Some(3), Type::String) => {
                    let s = d.str()?;
                    if s.starts_with("urn:iicp:intent:") && out.intent.is_none() {
                        out.intent = Some(s.to_owned());
                    } else {
                        out.region = Some(s.to_owned());
                    }
                }
                (Some(4), _) => out.exclude = Some(d.decode()?),
                (Some(5), _) => out.min_score = Some(d.f64()?),
                (None, _) => {
                    d.skip()?; // non-integer key: skip key... then value
                    d.skip()?;
                }
                _ => d.skip()?,
            }
        }
        Ok(out)
    }
}

/// The answer to a DISCOVER: a RESPONSE (0x06) frame `{2: session_id, 3: intent,
/// 20: [node maps]}`, the shape both reference servers send and their
/// `IicpTcpClient.discover()` reads (key 20; PROTOCOL.md §10.7). The spec defines no
/// answer; key 2 is left out when the request had no session id (spec form `{1: intent}`).
///
/// Each node map is a string-keyed map with the directory's NODELIST field names
/// (`node_id`, `endpoint`, `intents`, …), as the reference servers fill it from a
/// directory lookup. Send it with
/// [`Session::send_discover_reply`](crate::session::Session::send_discover_reply).
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct DiscoverReply {
    /// Session id of the DISCOVER, echoed.
    #[n(2)]
    pub session_id: Option<String>,
    /// Intent of the DISCOVER, echoed.
    #[n(3)]
    pub intent: Option<String>,
    /// The nodes, each one encoded CBOR map.
    #[n(20)]
    #[cbor(default)]
    pub nodes: Vec<RawCbor>,
}

impl DiscoverReply {
    /// The answer to `request` listing `nodes` (JSON objects, sent as CBOR maps).
    pub fn new(request: &Discover, nodes: &[serde_json::Value]) -> Self {
        Self {
            session_id: request.session_id.clone(),
            intent: request.intent.clone(),
            nodes: nodes
                .iter()
                .map(|n| RawCbor(cbor::json_to_vec(n)))
                .collect(),
        }
    }

    /// The whole RESPONSE frame, appended to `out`.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] when the payload exceeds 16 MiB; `out` is left as it was.
    pub fn encode_frame(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let start = frame::begin_frame(MessageType::RESPONSE, out);
        // writing into a Vec cannot fail
        let _ = minicbor::encode(self, &mut *out);
        frame::finish_frame(out, start)
    }
}

/// FEEDBACK (0x08).
#[derive(Clone, Debug, Default, PartialEq, Encode, Decode)]
#[cbor(map)]
pub struct Feedback {
    /// Call id.
    #[n(1)]
    pub call_id: Option<String>,
    /// Score 0.0–1.0.
    #[n(2)]
    pub score: Option<f64>,
    /// Observed latency.
    #[n(3)]
    pub latency_ms: Option<u64>,
    /// Error code.
    #[n(4)]
    pub error_code: Option<String>,
    /// Comment, ≤ 512 characters.
    #[n(5)]
    pub comment: Option<String>,
}

/// CONTROL (0x0B on task connections).
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Control {
    /// `credit_grant` | `credit_revoke` | `rate_limit` | `pause` | `resume` | `cancel`.
    #[n(1)]
    pub action: Option<String>,
    /// Credits.
    #[n(2)]
    pub credits: Option<u64>,
    /// Rate limit.
    #[n(3)]
    pub rate_limit_rps: Option<u64>,
    /// Session id.
    #[n(4)]
    pub session_id: Option<String>,
    /// Why (the lifecycle cancel, ADR 0013).
    #[n(5)]
    pub reason: Option<String>,
    /// The lifecycle task a `cancel` names (ADR 0013: the CALL's key 24).
    #[n(24)]
    pub task_id: Option<String>,
}

impl Control {
    /// The lifecycle cancel of `task_id`: `{1: "cancel", 5: reason, 24: task_id}`
    /// (ADR 0013; `cancel` is `lifecycle::CANCEL_ACTION`).
    pub fn cancel(task_id: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            action: Some("cancel".to_owned()),
            reason: Some(reason.into()),
            task_id: Some(task_id.into()),
            ..Self::default()
        }
    }
}

/// ADVERTISE (0x0C on task connections).
#[derive(Clone, Debug, Default, PartialEq, Encode, Decode)]
#[cbor(map)]
pub struct Advertise {
    /// Node id.
    #[n(1)]
    pub node_id: Option<String>,
    /// Served intents.
    #[n(2)]
    pub intents: Option<Vec<String>>,
    /// Score.
    #[n(3)]
    pub score: Option<f64>,
    /// Region.
    #[n(4)]
    pub region: Option<String>,
    /// Endpoint.
    #[n(5)]
    pub endpoint: Option<String>,
    /// Load.
    #[n(6)]
    pub load: Option<f64>,
}

/// OBSERVE (0x0D).
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Observe {
    /// `session` | `node` | `call`.
    #[n(1)]
    pub subject: Option<String>,
    /// Subject id.
    #[n(2)]
    pub subject_id: Option<String>,
    /// `start` | `update` | `end` | `error`.
    #[n(3)]
    pub event_type: Option<String>,
    /// Event data.
    #[n(4)]
    pub data: Option<RawCbor>,
    /// Sequence.
    #[n(5)]
    pub sequence: Option<u64>,
}

impl Observe {
    /// A lifecycle cancel as OBSERVE, for relay connections, where type 0x0B is
    /// RELAY_BIND and a CONTROL cannot travel (ADR 0013): `{1: "call", 2: task_id,
    /// 3: "end", 4: {"action": "cancel", "reason": reason}}`.
    pub fn cancel(task_id: impl Into<String>, reason: impl Into<String>) -> Self {
        let data = serde_json::json!({"action": "cancel", "reason": reason.into()});
        Self {
            subject: Some("call".to_owned()),
            subject_id: Some(task_id.into()),
            event_type: Some("end".to_owned()),
            data: Some(RawCbor(cbor::json_to_vec(&data))),
            sequence: None,
        }
    }

    /// The lifecycle cancel this OBSERVE carries ([`Observe::cancel`]), as the CONTROL
    /// it stands for.
    pub fn as_cancel(&self) -> Option<Control> {
        if self.subject.as_deref() != Some("call") || self.event_type.as_deref() != Some("end") {
            return None;
        }
        let data = self.data.as_ref()?.to_json().ok()?;
        if data.get("action").and_then(serde_json::Value::as_str) != Some("cancel") {
            return None;
        }
        let reason = data
            .get("reason")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        Some(Control::cancel(self.subject_id.clone()?, reason))
    }
}

/// TELEMETRY (0x0E).
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Telemetry {
    /// Node id.
    #[n(1)]
    pub node_id: Option<String>,
    /// Unix seconds.
    #[n(2)]
    pub timestamp: Option<u64>,
    /// Metrics map (text keys).
    #[n(3)]
    pub metrics: Option<RawCbor>,
    /// Trace id.
    #[n(4)]
    pub trace_id: Option<ByteArray<16>>,
    /// Span id.
    #[n(5)]
    pub span_id: Option<ByteArray<8>>,
}

/// SUB_PROTOCOL (0x04).
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct SubProtocol {
    /// Sub-protocol URN.
    #[n(1)]
    pub sub_protocol: Option<String>,
    /// `propose` | `accept` | `reject`.
    #[n(2)]
    pub action: Option<String>,
    /// Parameters.
    #[n(3)]
    pub parameters: Option<RawCbor>,
    /// Reason (on reject).
    #[n(4)]
    pub reason: Option<String>,
}

/// The CLOSE reason codes of PROTOCOL.md §6.4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// Orderly shutdown.
    Graceful,
    /// Reserved type byte 0x0F–0xEF.
    UnknownType,
    /// Custom type not negotiated.
    UnsupportedExtension,
    /// Frame length over the limit.
    FrameTooLarge,
    /// Inflated payload over the limit.
    PayloadTooLarge,
    /// Version above what we support / negotiation failed.
    VersionMismatch,
    /// Peer version below our floor.
    VersionTooOld,
    /// Version byte 0.
    InvalidVersion,
    /// Type byte 0x00 or 0xFF.
    InvalidType,
    /// Structurally invalid frame (e.g. empty CALL).
    InvalidFrame,
    /// A frame did not complete in time.
    ReadTimeout,
    /// Payload is not CBOR.
    CborDecodeError,
    /// CBOR of the wrong shape.
    InvalidPayload,
    /// Authentication failed.
    AuthFailed,
    /// Idle too long.
    IdleTimeout,
    /// No INIT in time.
    InitTimeout,
    /// No ACK in time (client-side, local).
    AckTimeout,
    /// Any other protocol violation.
    ProtocolError,
}

impl CloseReason {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Graceful => "graceful",
            CloseReason::UnknownType => "unknown_type",
            CloseReason::UnsupportedExtension => "unsupported_extension",
            CloseReason::FrameTooLarge => "frame_too_large",
            CloseReason::PayloadTooLarge => "payload_too_large",
            CloseReason::VersionMismatch => "version_mismatch",
            CloseReason::VersionTooOld => "version_too_old",
            CloseReason::InvalidVersion => "invalid_version",
            CloseReason::InvalidType => "invalid_type",
            CloseReason::InvalidFrame => "invalid_frame",
            CloseReason::ReadTimeout => "read_timeout",
            CloseReason::CborDecodeError => "cbor_decode_error",
            CloseReason::InvalidPayload => "invalid_payload",
            CloseReason::AuthFailed => "auth_failed",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::InitTimeout => "init_timeout",
            CloseReason::AckTimeout => "ack_timeout",
            CloseReason::ProtocolError => "protocol_error",
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which meaning type bytes 0x0B/0x0C have on a connection (PROTOCOL.md §19 T4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Channel {
    /// A task connection: 0x0B CONTROL, 0x0C ADVERTISE.
    #[default]
    Task,
    /// A relay-accept connection: 0x0B RELAY_BIND, 0x0C RELAY_ACK.
    Relay,
}

/// Any native message.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Message {
    /// INIT.
    Init(Init),
    /// ACK.
    Ack(Ack),
    /// DISCOVER.
    Discover(Discover),
    /// SUB_PROTOCOL.
    SubProtocol(SubProtocol),
    /// CALL.
    Call(Call),
    /// RESPONSE.
    Response(Response),
    /// CLOSE.
    Close(Close),
    /// FEEDBACK.
    Feedback(Feedback),
    /// PING.
    Ping(Ping),
    /// PONG.
    Pong(Ping),
    /// CONTROL (task connections).
    Control(Control),
    /// ADVERTISE (task connections).
    Advertise(Advertise),
    /// OBSERVE.
    Observe(Observe),
    /// TELEMETRY.
    Telemetry(Telemetry),
    /// RELAY_BIND (relay connections).
    RelayBind(RelayBind),
    /// RELAY_ACK (relay connections).
    RelayAck(RelayAck),
}

/// Why a frame's payload could not become a [`Message`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The payload is not well-formed CBOR, or breaks a structural rule of the native
    /// transport (indefinite length, duplicate map key: see [`CborError::is_structural`]).
    #[error("payload is not valid CBOR: {0}")]
    Cbor(#[source] CborError),
    /// Well-formed CBOR of the wrong shape (types, lengths, UTF-8).
    #[error("payload has the wrong shape for {msg_type}: {detail}")]
    Invalid {
        /// The frame's type.
        msg_type: MessageType,
        /// What was wrong (no payload bytes).
        detail: String,
    },
    /// A CALL or RESPONSE with an empty payload.
    #[error("empty {0} payload")]
    Empty(MessageType),
    /// A type byte that is not a message here.
    #[error("no message is defined for type {0}")]
    UnknownType(MessageType),
    /// A field value breaks a rule of the spec (e.g. PING echo over 64 bytes).
    #[error("{0}")]
    Rule(&'static str),
}

impl MessageError {
    /// The CLOSE reason the spec prescribes for this error (PROTOCOL.md §10.3).
    pub fn close_reason(&self) -> CloseReason {
        match self {
            MessageError::Cbor(e) if e.is_structural() => CloseReason::InvalidPayload,
            MessageError::Cbor(_) => CloseReason::CborDecodeError,
            MessageError::Invalid { .. } | MessageError::Rule(_) => CloseReason::InvalidPayload,
            MessageError::Empty(_) => CloseReason::InvalidFrame,
            MessageError::UnknownType(t) => match t.class() {
                frame::TypeClass::Invalid => CloseReason::InvalidType,
                frame::TypeClass::Custom => CloseReason::UnsupportedExtension,
                _ => CloseReason::UnknownType,
            },
        }
    }
}

fn decode_as<'b, T: Decode<'b, ()> + Default>(
    msg_type: MessageType,
    payload: &'b [u8],
    allow_empty: bool,
) -> Result<T, MessageError> {
    if payload.is_empty() {
        return if allow_empty {
            Ok(T::default())
        } else {
            Err(MessageError::Empty(msg_type))
        };
    }
    let mut d = Decoder::new(payload);
    let v = d.decode::<T>().map_err(|e| MessageError::Invalid {
        msg_type,
        detail: e.to_string(),
    })?;
    if d.position() != payload.len() {
        return Err(MessageError::Cbor(CborError::TrailingBytes));
    }
    Ok(v)
}

impl Message {
    /// Decodes a frame payload into a message.
    ///
    /// Empty payloads are accepted for INIT, ACK, PING, PONG and CLOSE (the SDKs send
    /// them) and rejected for CALL and RESPONSE. Indefinite lengths and duplicate map
    /// keys are refused ([`CloseReason::InvalidPayload`]); tags are stripped first.
    pub fn decode(
        header: &FrameHeader,
        payload: &[u8],
        channel: Channel,
    ) -> Result<Message, MessageError> {
        let t = header.msg_type;
        let normalized = if payload.is_empty() {
            std::borrow::Cow::Borrowed(payload)
        } else {
            cbor::normalize(payload).map_err(MessageError::Cbor)?
        };
        let p = normalized.as_ref();
        let msg = match (t, channel) {
            (MessageType::INIT, _) => Message::Init(decode_as(t, p, true)?),
            (MessageType::ACK, _) => Message::Ack(decode_as(t, p, true)?),
            (MessageType::DISCOVER, _) => Message::Discover(decode_as(t, p, true)?),
            (MessageType::SUB_PROTOCOL, _) => Message::SubProtocol(decode_as(t, p, false)?),
            (MessageType::CALL, _) => Message::Call(decode_as(t, p, false)?),
            (MessageType::RESPONSE, _) => Message::Response(decode_as(t, p, false)?),
            (MessageType::CLOSE, _) => Message::Close(decode_as(t, p, true)?),
            (MessageType::FEEDBACK, _) => Message::Feedback(decode_as(t, p, false)?),
            (MessageType::PING | MessageType::PONG, _) => {
                let ping: Ping = decode_as(t, p, true)?;
                if ping.echo.as_ref().is_some_and(|e| e.len() > 64) {
                    return Err(MessageError::Rule("PING/PONG echo data exceeds 64 bytes"));
                }
                if t == MessageType::PING {
                    Message::Ping(ping)
                } else {
                    Message::Pong(ping)
                }
            }
            (MessageType::CONTROL, Channel::Task) => Message::Control(decode_as(t, p, false)?),
            (MessageType::ADVERTISE, Channel::Task) => Message::Advertise(decode_as(t, p, false)?),
            (MessageType::RELAY_BIND, Channel::Relay) => {
                Message::RelayBind(decode_as(t, p, false)?)
            }
            (MessageType::RELAY_ACK, Channel::Relay) => Message::RelayAck(decode_as(t, p, false)?),
            (MessageType::OBSERVE, _) => Message::Observe(decode_as(t, p, false)?),
            (MessageType::TELEMETRY, _) => Message::Telemetry(decode_as(t, p, false)?),
            _ => return Err(MessageError::UnknownType(t)),
        };
        Ok(msg)
    }

    /// The type byte this message travels with on `channel`.
    pub fn msg_type(&self) -> MessageType {
        match self {
            Message::Init(_) => MessageType::INIT,
            Message::Ack(_) => MessageType::ACK,
            Message::Discover(_) => MessageType::DISCOVER,
            Message::SubProtocol(_) => MessageType::SUB_PROTOCOL,
            Message::Call(_) => MessageType::CALL,
            Message::Response(_) => MessageType::RESPONSE,
            Message::Close(_) => MessageType::CLOSE,
            Message::Feedback(_) => MessageType::FEEDBACK,
            Message::Ping(_) => MessageType::PING,
            Message::Pong(_) => MessageType::PONG,
            Message::Control(_) => MessageType::CONTROL,
            Message::Advertise(_) => MessageType::ADVERTISE,
            Message::Observe(_) => MessageType::OBSERVE,
            Message::Telemetry(_) => MessageType::TELEMETRY,
            Message::RelayBind(_) => MessageType::RELAY_BIND,
            Message::RelayAck(_) => MessageType::RELAY_ACK,
        }
    }

    /// Appends the whole frame (header + canonical CBOR payload) to `out`.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] when the payload exceeds 16 MiB; `out` is left as it was.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let start = frame::begin_frame(self.msg_type(), out);
        // writing into a Vec cannot fail
        let _ = match self {
            Message::Init(m) => minicbor::encode(m, &mut *out),
            Message::Ack(m) => minicbor::encode(m, &mut *out),
            Message::Discover(m) => minicbor::encode(m, &mut *out),
            Message::SubProtocol(m) => minicbor::encode(m, &mut *out),
            Message::Call(m) => minicbor::encode(m, &mut *out),
            Message::Response(m) => minicbor::encode(m, &mut *out),
            Message::Close(m) => minicbor::encode(m, &mut *out),
            Message::Feedback(m) => minicbor::encode(m, &mut *out),
            Message::Ping(m) | Message::Pong(m) => minicbor::encode(m, &mut *out),
            Message::Control(m) => minicbor::encode(m, &mut *out),
            Message::Advertise(m) => minicbor::encode(m, &mut *out),
            Message::Observe(m) => minicbor::encode(m, &mut *out),
            Message::Telemetry(m) => minicbor::encode(m, &mut *out),
            Message::RelayBind(m) => minicbor::encode(m, &mut *out),
            Message::RelayAck(m) => minicbor::encode(m, &mut *out),
        };
        frame::finish_frame(out, start)
    }

    /// The encoded frame as a new buffer.
    pub fn to_frame(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Decoded, Frame, MAX_PAYLOAD};

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).expect("hex")
    }

    fn decode_frame(wire: &[u8], channel: Channel) -> Message {
        let Ok(Decoded::Complete { frame, consumed }) = Frame::decode(wire, MAX_PAYLOAD) else {
            panic!("frame")
        };
        assert_eq!(consumed, wire.len());
        Message::decode(&frame.header, frame.payload, channel).expect("message")
    }

    #[test]
    fn worked_examples_of_the_digest() {
        // PROTOCOL.md §10.7 worked examples, byte for byte
        let init = Message::Init(Init {
            protocol_version: Some(1),
            ..Init::default()
        });
        assert_eq!(
            init.to_frame().expect("enc"),
            unhex("494943500101000000000003 a10101")
        );
        assert_eq!(
            Message::Pong(Ping::default()).to_frame().expect("enc"),
            unhex("49494350010a000000000001 a0")
        );
        let ack = Message::Ack(Ack {
            protocol_version: Some(1),
            node_id: Some("3fa85f64-5717-4562-b3fc-2c963f66afa6".into()),
            ..Ack::default()
        });
        assert_eq!(
            ack.to_frame().expect("enc"),
            unhex("49494350010200000000002a a2 0101 02 7824 33666138356636342d353731372d343536322d623366632d326339363366363661666136")
        );
        let payload = br#"{"messages":[{"role":"user","content":"hi"}]}"#.to_vec();
        let call = Message::Call(Call {
            session_id: Some("call-1".into()),
            intent: Some("urn:iicp:intent:llm:chat:v1".into()),
            payload: Some(Body::Bytes(payload)),
            call_id: Some("c0ffee00-0000-4000-8000-000000000001".into()),
            ..Call::default()
        });
        let want = unhex(
            "49494350 01 05 00 00 0000007e a4 02 66 63616c6c2d31 03 781b 75726e3a696963703a696e74656e743a6c6c6d3a636861743a7631
             05 582d 7b226d65737361676573223a5b7b22726f6c65223a2275736572222c22636f6e74656e74223a226869227d5d7d
             0f 7824 63306666656530302d303030302d343030302d383030302d303030303030303030303031",
        );
        assert_eq!(call.to_frame().expect("enc"), want);
        assert_eq!(decode_frame(&want, Channel::Task), call);
    }

    #[test]
    fn integer_keys_above_23_are_canonical() {
        let call = Call {
            task_id: Some("t".into()),
            ..Call::default()
        };
        let mut out = Vec::new();
        minicbor::encode(&call, &mut out).expect("enc");
        assert_eq!(out, unhex("a1 1818 6174"));
        let resp = Response {
            status_code: Some(429),
            ..Response::default()
        };
        out.clear();
        minicbor::encode(&resp, &mut out).expect("enc");
        assert_eq!(out, unhex("a1 1864 1901ad"));
    }

    #[test]
    fn empty_payloads() {
        let h = |t| FrameHeader::new(t, 0);
        assert_eq!(
            Message::decode(&h(MessageType::CLOSE), &[], Channel::Task).expect("close"),
            Message::Close(Close::default())
        );
        assert_eq!(
            Message::decode(&h(MessageType::PING), &[], Channel::Task).expect("ping"),
            Message::Ping(Ping::default())
        );
        let err =
            Message::decode(&h(MessageType::CALL), &[], Channel::Task).expect_err("empty call");
        assert_eq!(err.close_reason(), CloseReason::InvalidFrame);
        let err = Message::decode(&h(MessageType::RESPONSE), &[], Channel::Task)
            .expect_err("empty response");
        assert_eq!(err.close_reason(), CloseReason::InvalidFrame);
    }

    #[test]
    fn type_byte_meaning_depends_on_channel() {
        let bind = Message::RelayBind(RelayBind {
            worker_id: Some("w".into()),
            intent: Some("urn:iicp:intent:llm:chat:v1".into()),
            models: Some(vec!["m".into()]),
            bind_ticket: None,
        });
        let wire = bind.to_frame().expect("enc");
        assert_eq!(wire[5], 0x0B);
        assert_eq!(decode_frame(&wire, Channel::Relay), bind);
        // on a task port the same byte is CONTROL, whose schema the bind does not fit as action text
        let Ok(Decoded::Complete { frame, .. }) = Frame::decode(&wire, MAX_PAYLOAD) else {
            panic!()
        };
        assert!(matches!(
            Message::decode(&frame.header, frame.payload, Channel::Task),
            Ok(Message::Control(_)) | Err(_)
        ));
    }

    #[test]
    fn errors_map_to_close_reasons() {
        let h = FrameHeader::new(MessageType::CALL, 2);
        let e = Message::decode(&h, &unhex("a1"), Channel::Task).expect_err("truncated");
        assert_eq!(e.close_reason(), CloseReason::CborDecodeError);
        let e =
            Message::decode(&h, &unhex("a1 02 01"), Channel::Task).expect_err("session id as int");
        assert_eq!(e.close_reason(), CloseReason::InvalidPayload);
        let e = Message::decode(&h, &unhex("a1 0d 43 010203"), Channel::Task)
            .expect_err("short trace id");
        assert_eq!(e.close_reason(), CloseReason::InvalidPayload);
        let e = Message::decode(&h, &unhex("a0 a0"), Channel::Task).expect_err("trailing");
        assert_eq!(e.close_reason(), CloseReason::CborDecodeError);
        let e = Message::decode(
            &FrameHeader::new(MessageType(0x42), 1),
            &unhex("a0"),
            Channel::Task,
        )
        .expect_err("reserved type");
        assert_eq!(e.close_reason(), CloseReason::UnknownType);
        let e = Message::decode(
            &FrameHeader::new(MessageType(0xF1), 1),
            &unhex("a0"),
            Channel::Task,
        )
        .expect_err("custom type");
        assert_eq!(e.close_reason(), CloseReason::UnsupportedExtension);
        let e = Message::decode(
            &FrameHeader::new(MessageType(0), 1),
            &unhex("a0"),
            Channel::Task,
        )
        .expect_err("type 0");
        assert_eq!(e.close_reason(), CloseReason::InvalidType);
        let mut long = vec![0xa1, 0x01, 0x58, 65];
        long.extend_from_slice(&[0u8; 65]);
        let e = Message::decode(
            &FrameHeader::new(MessageType::PING, 0),
            &long,
            Channel::Task,
        )
        .expect_err("echo too long");
        assert_eq!(e.close_reason(), CloseReason::InvalidPayload);
    }

    #[test]
    fn unknown_keys_and_tags_are_tolerated() {
        // {2: "s", 99: [1,2], 5: 65535({"a": 1})} in insertion order, tagged map
        let p = unhex("a3 02 6173 1863 820102 05 d9ffff a1 6161 01");
        let m = Message::decode(
            &FrameHeader::new(MessageType::RESPONSE, 0),
            &p,
            Channel::Task,
        )
        .expect("decode");
        let Message::Response(r) = m else { panic!() };
        assert_eq!(r.session_id.as_deref(), Some("s"));
        assert_eq!(
            r.result
                .expect("result")
                .to_json(Prefer::Cbor)
                .expect("json"),
            serde_json::json!({"a": 1})
        );
    }

    #[test]
    fn outcome_across_dialects() {
        let call = Call {
            session_id: Some("s".into()),
            call_id: Some("c".into()),
            ..Call::default()
        };
        let ok = Response::success(&call, Body::cbor(&serde_json::json!({"x": 1})));
        assert!(matches!(ok.outcome(), Outcome::Success(Some(_))));
        assert_eq!(ok.call_id(), Some("c"));
        let err = Response::error(&call, "capacity_exceeded", 429, "busy");
        assert_eq!(
            err.outcome(),
            Outcome::Error {
                code: Some("capacity_exceeded"),
                status: Some(429),
                message: Some("busy")
            }
        );
        let legacy = Response {
            session_id: Some("s".into()),
            legacy_call_id: Some("c".into()),
            status_code: Some(503),
            message: Some("drain".into()),
            ..Response::default()
        };
        assert_eq!(
            legacy.outcome(),
            Outcome::Error {
                code: None,
                status: Some(503),
                message: Some("drain")
            }
        );
        assert_eq!(legacy.call_id(), Some("c"));
        let bare = Response {
            legacy_call_id: Some("c".into()),
            result: Some(Body::Bytes(b"{}".to_vec())),
            ..Response::default()
        };
        assert!(matches!(bare.outcome(), Outcome::Success(Some(_))));
        let timeout = Response::error(&call, "task_timeout", 504, "slow");
        assert_eq!(timeout.outcome(), Outcome::Timeout);
    }

    #[test]
    fn discover_reads_both_layouts() {
        let sdk = unhex("a2 02 6a646973636f7665722d31 03 781b 75726e3a696963703a696e74656e743a6c6c6d3a636861743a7631");
        let Message::Discover(d) = Message::decode(
            &FrameHeader::new(MessageType::DISCOVER, 0),
            &sdk,
            Channel::Task,
        )
        .expect("sdk") else {
            panic!()
        };
        assert_eq!(d.intent.as_deref(), Some("urn:iicp:intent:llm:chat:v1"));
        assert_eq!(d.session_id.as_deref(), Some("discover-1"));
        let spec = Discover {
            intent: Some("urn:iicp:intent:llm:chat:v1".into()),
            limit: Some(5),
            region: Some("eu".into()),
            exclude: Some(vec![]),
            min_score: Some(0.5),
            session_id: None,
        };
        let wire = Message::Discover(spec.clone()).to_frame().expect("enc");
        assert_eq!(decode_frame(&wire, Channel::Task), Message::Discover(spec));
    }

    #[test]
    fn body_interpretations() {
        let v = serde_json::json!({"messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(Body::json(&v).to_json(Prefer::Json).expect("json"), v);
        assert_eq!(
            Body::json(&v)
                .to_json(Prefer::Cbor)
                .expect("json via fallback"),
            v
        );
        assert_eq!(Body::cbor(&v).to_json(Prefer::Json).expect("cbor"), v);
        assert_eq!(
            Body::Bytes(cbor::json_to_vec(&v))
                .to_json(Prefer::Cbor)
                .expect("cbor in bytes"),
            v
        );
        assert!(Body::Bytes(vec![0xff, 0x00]).to_json(Prefer::Json).is_err());
        // a repeated JSON member name, at any depth, is not read either way (ADR 0007)
        for dup in [
            &br#"{"intent": "a", "intent": "b"}"#[..],
            br#"{"payload": {"messages": [], "messages": [1]}}"#,
            br#"[{"a": 1, "b": 2, "a": 3}]"#,
        ] {
            assert!(json_strict(dup).is_err());
            assert!(Body::Bytes(dup.to_vec()).to_json(Prefer::Json).is_err());
            assert!(Body::Bytes(dup.to_vec()).to_json(Prefer::Cbor).is_err());
        }
        let v = serde_json::json!({"a": [1, -2, 2.5, true, null, "s"], "b": {"a": {}}, "c": 18446744073709551615u64});
        let text = serde_json::to_vec(&v).expect("json");
        assert_eq!(json_strict(&text).expect("strict"), v);
        assert!(json_strict(b"{} x").is_err(), "trailing text");
    }

    #[test]
    fn timeout_conversion_rounds_up() {
        assert_eq!(Call::timeout_from_ms(0), 1);
        assert_eq!(Call::timeout_from_ms(1), 1);
        assert_eq!(Call::timeout_from_ms(1001), 2);
        assert_eq!(Call::timeout_from_ms(30_000), 30);
        assert_eq!(Call::timeout_from_ms(10_000_000), 3600);
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let c = Call {
            auth_token: Some(Secret::new("very-secret-token-value-0123456789")),
            ..Call::default()
        };
        assert!(!format!("{c:?}").contains("very-secret"));
        let i = Init {
            node_token: Some(Secret::new("node-token-abcdef")),
            ..Init::default()
        };
        assert!(!format!("{i:?}").contains("node-token"));
    }
}
