//! Identifiers: task ids and W3C trace context.
//!
//! Implements PROTOCOL.md §2.1 (`task_id`: UUID v4, 36-char lowercase hyphenated text;
//! reference SDKs also send literals such as `"call-1"`), §2.3 (tracing identifiers: W3C
//! `traceparent`, `trace.trace_id` = 32 hex chars, native keys 13/14 = raw 16/8 bytes)
//! and §19 T14 (the `traceparent` is the source of truth for trace ids).
//!
//! Randomness is always injected: every generator takes `rng: &mut impl RngCore`.

use std::fmt;
use std::str::FromStr;

use rand_core::RngCore;
use serde::{Deserialize, Serialize};

/// Longest task id accepted by [`TaskId::parse_lenient`], in bytes.
pub const MAX_LENIENT_ID_LEN: usize = 128;

/// Why a task id or trace context is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The id is empty.
    #[error("id is empty")]
    Empty,
    /// The id is longer than allowed.
    #[error("id is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The id contains a control character.
    #[error("id contains a control character")]
    ControlCharacter,
    /// Not a 36-character lowercase hyphenated UUID.
    #[error("task id is not a lowercase hyphenated UUID (8-4-4-4-12 hex digits)")]
    NotUuid,
    /// A UUID, but not version 4 with the RFC 4122 variant.
    #[error("task id is a UUID but not version 4")]
    NotUuidV4,
    /// `traceparent` has the wrong length or field layout.
    #[error("traceparent is not `00-<32 hex>-<16 hex>-<2 hex>`")]
    TraceParentFormat,
    /// `traceparent` contains something other than lowercase hex in a field.
    #[error("traceparent field `{field}` is not lowercase hex")]
    TraceParentHex {
        /// The field name (`version`, `trace-id`, `parent-id`, `flags`).
        field: &'static str,
    },
    /// Version `ff` is forbidden by W3C Trace Context.
    #[error("traceparent version ff is invalid")]
    TraceParentVersion,
    /// The trace id is all zeros.
    #[error("traceparent trace-id is all zeros")]
    ZeroTraceId,
    /// The parent id is all zeros.
    #[error("traceparent parent-id is all zeros")]
    ZeroParentId,
}

// ---------------------------------------------------------------------------
// TaskId
// ---------------------------------------------------------------------------

/// A task identifier.
///
/// Outbound ids are UUID v4 ([`TaskId::generate`], [`TaskId::parse`] is strict).
/// Inbound ids from peers may be any short non-empty string ([`TaskId::parse_lenient`]);
/// serde deserialisation is lenient so a CALL with `"task_id": "t-rs-1"` still parses and
/// can be echoed. [`TaskId::is_uuid_v4`] tells the two apart.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(String);

/// Checks the strict form: 36 chars, lowercase hex, hyphens at 8/13/18/23, version 4,
/// variant 10xx.
fn check_uuid_v4(s: &str) -> Result<(), IdError> {
    uuid_v4_form(s, false)
}

/// [`check_uuid_v4`], with upper-case hex digits allowed when `any_case`.
fn uuid_v4_form(s: &str, any_case: bool) -> Result<(), IdError> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return Err(IdError::NotUuid);
    }
    for (i, &c) in b.iter().enumerate() {
        let ok = match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ if any_case => c.is_ascii_hexdigit(),
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        };
        if !ok {
            return Err(IdError::NotUuid);
        }
    }
    if b[14] != b'4' || !matches!(b[19].to_ascii_lowercase(), b'8' | b'9' | b'a' | b'b') {
        return Err(IdError::NotUuidV4);
    }
    Ok(())
}

fn check_lenient(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_LENIENT_ID_LEN {
        return Err(IdError::TooLong {
            len: s.len(),
            max: MAX_LENIENT_ID_LEN,
        });
    }
    if s.chars().any(char::is_control) {
        return Err(IdError::ControlCharacter);
    }
    Ok(())
}

/// A fresh random UUID v4 built from `rng` (for task, call, session and node ids).
pub fn uuid_v4(rng: &mut impl RngCore) -> uuid::Uuid {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

impl TaskId {
    /// A fresh UUID v4 task id.
    pub fn generate(rng: &mut impl RngCore) -> Self {
        TaskId(uuid_v4(rng).hyphenated().to_string())
    }

    /// Strict parse: a lowercase hyphenated UUID v4 (what we send).
    pub fn parse(s: &str) -> Result<Self, IdError> {
        check_uuid_v4(s)?;
        Ok(TaskId(s.to_owned()))
    }

    /// Lenient parse for inbound ids: any non-empty string of at most
    /// [`MAX_LENIENT_ID_LEN`] bytes without control characters.
    pub fn parse_lenient(s: &str) -> Result<Self, IdError> {
        check_lenient(s)?;
        Ok(TaskId(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when the id is a canonical lowercase UUID v4.
    pub fn is_uuid_v4(&self) -> bool {
        check_uuid_v4(&self.0).is_ok()
    }

    /// True when the id is a hyphenated UUID v4 in either case (RFC 9562 reads hex
    /// digits case-insensitively): what a node requires of a caller's `task_id`.
    pub fn is_hyphenated_uuid_v4(&self) -> bool {
        uuid_v4_form(&self.0, true).is_ok()
    }

    /// The id as a UUID, when it is one.
    pub fn as_uuid(&self) -> Option<uuid::Uuid> {
        uuid::Uuid::try_parse(&self.0).ok()
    }
}

impl From<uuid::Uuid> for TaskId {
    fn from(value: uuid::Uuid) -> Self {
        TaskId(value.hyphenated().to_string())
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TaskId").field(&self.0).finish()
    }
}

impl FromStr for TaskId {
    type Err = IdError;

    /// Strict, like [`TaskId::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskId::parse(s)
    }
}

impl AsRef<str> for TaskId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for TaskId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        check_lenient(&s).map_err(serde::de::Error::custom)?;
        Ok(TaskId(s))
    }
}

// ---------------------------------------------------------------------------
// TraceParent
// ---------------------------------------------------------------------------

/// A W3C `traceparent` (`00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>`).
///
/// ```
/// use iicp_proto::ids::TraceParent;
/// let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse()?;
/// assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert!(tp.sampled());
/// assert_eq!(tp.to_string(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
/// # Ok::<(), iicp_proto::ids::IdError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    version: u8,
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

fn decode_lower_hex<const N: usize>(s: &str, field: &'static str) -> Result<[u8; N], IdError> {
    if s.len() != N * 2
        || !s
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    {
        return Err(IdError::TraceParentHex { field });
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|_| IdError::TraceParentHex { field })?;
    Ok(out)
}

impl TraceParent {
    /// The `sampled` flag bit.
    pub const FLAG_SAMPLED: u8 = 0x01;

    /// Builds a trace context from parts; all-zero ids are rejected.
    pub fn from_parts(trace_id: [u8; 16], parent_id: [u8; 8], flags: u8) -> Result<Self, IdError> {
        if trace_id == [0u8; 16] {
            return Err(IdError::ZeroTraceId);
        }
        if parent_id == [0u8; 8] {
            return Err(IdError::ZeroParentId);
        }
        Ok(Self {
            version: 0,
            trace_id,
            parent_id,
            flags,
        })
    }

    /// A new sampled trace (flags `01`, as the reference SDKs send).
    pub fn generate(rng: &mut impl RngCore) -> Self {
        let mut trace_id = [0u8; 16];
        rng.fill_bytes(&mut trace_id);
        if trace_id == [0u8; 16] {
            trace_id[15] = 1;
        }
        Self {
            version: 0,
            trace_id,
            parent_id: random_parent_id(rng),
            flags: Self::FLAG_SAMPLED,
        }
    }

    /// Same trace id and flags, new parent id (a child span).
    pub fn child(&self, rng: &mut impl RngCore) -> Self {
        Self {
            version: 0,
            trace_id: self.trace_id,
            parent_id: random_parent_id(rng),
            flags: self.flags,
        }
    }

    /// Parses a `traceparent` header value (surrounding whitespace ignored).
    ///
    /// Version `00` must be exactly 55 characters; a higher version may carry further
    /// `-`-separated fields, which are ignored. Version `ff`, uppercase hex and all-zero
    /// ids are rejected.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let s = s.trim_matches(|c: char| c == ' ' || c == '\t');
        if s.len() < 55 || !s.is_ascii() {
            return Err(IdError::TraceParentFormat);
        }
        let b = s.as_bytes();
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return Err(IdError::TraceParentFormat);
        }
        let [version] = decode_lower_hex::<1>(&s[0..2], "version")?;
        if version == 0xff {
            return Err(IdError::TraceParentVersion);
        }
        if s.len() > 55 && (version == 0 || b[55] != b'-') {
            return Err(IdError::TraceParentFormat);
        }
        let trace_id = decode_lower_hex::<16>(&s[3..35], "trace-id")?;
        let parent_id = decode_lower_hex::<8>(&s[36..52], "parent-id")?;
        let [flags] = decode_lower_hex::<1>(&s[53..55], "flags")?;
        let mut tp = Self::from_parts(trace_id, parent_id, flags)?;
        tp.version = version;
        Ok(tp)
    }

    /// The version that was parsed (`0` for generated values). Formatting always emits
    /// version `00`.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The raw 16-byte trace id (native CALL key 13).
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The raw 8-byte parent id (native CALL key 14).
    pub fn parent_id(&self) -> [u8; 8] {
        self.parent_id
    }

    /// The trace flags byte.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// True when the `sampled` flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & Self::FLAG_SAMPLED != 0
    }

    /// The trace id as 32 lowercase hex chars, for CALL JSON `trace.trace_id`.
    pub fn trace_id_hex(&self) -> String {
        trace_id_hex(&self.trace_id)
    }

    /// The parent id as 16 lowercase hex chars.
    pub fn parent_id_hex(&self) -> String {
        lower_hex(&self.parent_id)
    }
}

fn random_parent_id(rng: &mut impl RngCore) -> [u8; 8] {
    let mut id = [0u8; 8];
    rng.fill_bytes(&mut id);
    if id == [0u8; 8] {
        id[7] = 1;
    }
    id
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.parent_id),
            self.flags
        )
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

impl FromStr for TraceParent {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TraceParent::parse(s)
    }
}

impl Serialize for TraceParent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TraceParent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        TraceParent::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A 16-byte trace id as 32 lowercase hex chars (W3C trace context, `x-iicp-trace-id`).
pub fn trace_id_hex(id: &[u8; 16]) -> String {
    lower_hex(id)
}

/// `N` bytes as `2N` lowercase hex chars, through a table (`hex::encode` goes char by
/// char through an iterator: a measurable share of a task's CPU at tens of thousands of
/// tasks a second).
fn lower_hex<const N: usize>(bytes: &[u8; N]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * N);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_are_lowercase_hex() {
        let b: [u8; 16] = core::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0xa5);
        assert_eq!(trace_id_hex(&b), hex::encode(b));
        assert_eq!(trace_id_hex(&[0xff; 16]), "f".repeat(32));
        assert_eq!(lower_hex(&[0x0a, 0xb0]), "0ab0");
    }
}
