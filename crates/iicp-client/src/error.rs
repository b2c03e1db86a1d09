//! [`Error`]: the one error type of the client, with the protocol code as data.
//!
//! Implements DESIGN §4.8 (client-side codes `invalid_config`, `invalid_intent`,
//! `no_nodes_available` carrying `IICP-E033`, `all_nodes_failed`, plus every code a node
//! or directory sends, PROTOCOL.md §6), the retry classification of §7.1/§7.3 as
//! predicates, and conf SDK-06 / DESIGN §4.10: an error never contains a token or a task
//! payload. Messages come from our own text, from redacted transport errors (URLs
//! without userinfo or query) and from peers' error messages, which the parser bounds
//! and the client scrubs of its own credentials.
//!
//! Third-party errors (HTTP client, native transport, CX) stay private behind
//! [`std::error::Error::source`]; callers branch on [`Error::code`] and the predicates.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use iicp_proto::error::{ErrorBody, ErrorCode};
use iicp_transport::http::client::HttpClientError;

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What kind of failure an [`Error`] is ([`Error::kind`]), to `match` on; the
/// predicates ([`Error::is_retryable`], …) answer the common questions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Configuration refused (builder, base URL).
    Config,
    /// Caller input refused before any I/O (intent, payload, constraints).
    Input,
    /// The local guardrail refused the intent (`IICP-POLICY-001`).
    Policy,
    /// A request timed out.
    Timeout,
    /// The connection could not be established.
    Connect,
    /// The connection failed after connecting (reset, malformed reply, …).
    Transport,
    /// The peer answered with an error (HTTP status or error body).
    Remote,
    /// The peer's answer violates the protocol (wrong task id, unexpected shape).
    Protocol,
    /// IICP-CX failed locally (sealing, opening the encrypted response).
    Crypto,
    /// Discovery produced no usable candidate.
    NoNodes,
    /// Every candidate failed.
    Exhausted,
}

/// An error of the IICP client.
///
/// * [`Error::code`] is the protocol code as data: a client-side code
///   (`invalid_config`, `invalid_intent`, `no_nodes_available`, `all_nodes_failed`,
///   `task_timeout`, `IICP-E004` for network failures, `IICP-CX-REQUIRED`, …) or the
///   code a node or directory sent (`capacity_exceeded`, `unauthorized`, …).
/// * [`Error::status_code`] is the HTTP (or native key-100) status when one was involved.
/// * [`Error::is_retryable`], [`Error::is_timeout`], [`Error::is_node_switch`] classify
///   it (PROTOCOL.md §7.1, §7.3).
/// * For `all_nodes_failed`, [`Error::last_node_error`] (also the
///   [`source`](std::error::Error::source)) is the last node's error.
///
/// It never contains a token or a task payload (conf SDK-06).
///
/// ```
/// use iicp_client::{Client, ErrorCode};
///
/// // More than 120 000 ms is refused when the client is built (conf SDK-04).
/// let err = Client::builder()
///     .timeout(std::time::Duration::from_millis(120_001))
///     .build()
///     .unwrap_err();
/// assert_eq!(err.code(), &ErrorCode::InvalidConfig);
/// assert_eq!(err.code().as_str(), "invalid_config");
/// assert!(!err.is_retryable());
/// ```
pub struct Error {
    inner: Box<Inner>,
}

pub(crate) use self::ErrorKind as Kind;

/// What the retry loop does after a failed attempt, and so whether the failure is
/// transient: the one rule of PROTOCOL.md §7.1/§7.3 that both the loop
/// (`client::try_node`) and [`Error::is_retryable`] read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Transient on this node (429/503, `rate_limited`, `temporarily_unavailable`):
    /// retry it after a backoff (or its `Retry-After`).
    RetrySame,
    /// Transient, but not worth the same node again (a node switch, a timeout, 408/504,
    /// connect and transport failures): the next candidate.
    OtherNode,
    /// The node answered something that breaks the protocol: the next candidate, but
    /// trying again later would not help.
    BrokenNode,
    /// Final: the caller must change something.
    Stop,
}

impl Disposition {
    /// Whether a retry (later or elsewhere) may succeed.
    pub(crate) fn is_transient(self) -> bool {
        matches!(self, Disposition::RetrySame | Disposition::OtherNode)
    }
}

struct Inner {
    kind: Kind,
    code: ErrorCode,
    message: String,
    status: Option<u16>,
    spec_code: Option<ErrorCode>,
    node_id: Option<String>,
    body: Option<ErrorBody>,
    source: Option<BoxError>,
    /// For `all_nodes_failed`: every node's failure was transient.
    all_transient: bool,
}

impl Error {
    pub(crate) fn new(kind: Kind, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            inner: Box::new(Inner {
                kind,
                code,
                message: message.into(),
                status: None,
                spec_code: None,
                node_id: None,
                body: None,
                source: None,
                all_transient: false,
            }),
        }
    }

    /// `all_nodes_failed` after `last`: retryable when every node's failure was
    /// transient; the message ends with the last failure itself.
    pub(crate) fn exhausted(tried: usize, attempts: u32, last: Error, all_transient: bool) -> Self {
        let message = format!(
            "all {tried} candidate node(s) failed after {attempts} attempt(s); last: {last}"
        );
        let status = last.status_code();
        let mut err = Self::new(Kind::Exhausted, ErrorCode::AllNodesFailed, message);
        err.inner.status = status;
        err.inner.all_transient = all_transient;
        err.with_source(last)
    }

    /// `invalid_config`.
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(Kind::Config, ErrorCode::InvalidConfig, message)
    }

    /// A peer's error body (directory or node).
    pub(crate) fn remote(body: ErrorBody) -> Self {
        let mut err = Self::new(Kind::Remote, body.code.clone(), body.message.clone());
        err.inner.status = body.http_status;
        err.inner.body = Some(body);
        err
    }

    /// A protocol violation by the peer (`backend_error` unless told otherwise).
    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        Self::new(Kind::Protocol, ErrorCode::BackendError, message)
    }

    /// A transport failure of an HTTP request. `timeout_code` is the code used for a
    /// timeout (`task_timeout` towards nodes, `timeout` towards directories).
    pub(crate) fn http(err: HttpClientError, timeout_code: ErrorCode) -> Self {
        if let HttpClientError::Status { status, error, .. } = &err {
            let mut body = (**error).clone();
            body.http_status = Some(*status);
            return Self::remote(body);
        }
        let redirect = matches!(
            err,
            HttpClientError::RedirectRefused { .. }
                | HttpClientError::RedirectLoop { .. }
                | HttpClientError::TooManyRedirects { .. }
        );
        let (kind, code) = if matches!(err, HttpClientError::AddressRefused { .. }) {
            (Kind::Connect, ErrorCode::EndpointRefused)
        } else if redirect {
            (Kind::Protocol, ErrorCode::RedirectRefused)
        } else if err.is_timeout() {
            (Kind::Timeout, timeout_code)
        } else if err.is_connect() {
            (Kind::Connect, ErrorCode::E004)
        } else if err.is_retryable() {
            (Kind::Transport, ErrorCode::E004)
        } else {
            (Kind::Protocol, ErrorCode::BackendError)
        };
        // HttpClientError messages carry redacted URLs only.
        let message = err.to_string();
        Self::new(kind, code, message).with_source(err)
    }

    pub(crate) fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.inner.source = Some(Box::new(source));
        self
    }

    /// Puts `prefix` before the message (`prefix: message`).
    pub(crate) fn with_prefix(mut self, prefix: &str) -> Self {
        self.inner.message = format!("{prefix}: {}", self.inner.message);
        self
    }

    pub(crate) fn with_status(mut self, status: u16) -> Self {
        self.inner.status = Some(status);
        self
    }

    pub(crate) fn with_spec_code(mut self, code: ErrorCode) -> Self {
        self.inner.spec_code = Some(code);
        self
    }

    pub(crate) fn with_node(mut self, node_id: &str) -> Self {
        if self.inner.node_id.is_none() {
            self.inner.node_id = Some(node_id.to_owned());
        }
        self
    }

    /// Replaces every occurrence of each non-empty secret in the message (and the
    /// carried body's message) with `<redacted>`: a peer may echo what it received.
    pub(crate) fn scrub(mut self, secrets: &[&str]) -> Self {
        for s in secrets.iter().filter(|s| s.len() >= 4) {
            if self.inner.message.contains(s) {
                self.inner.message = self.inner.message.replace(s, "<redacted>");
            }
            if let Some(body) = self.inner.body.as_mut() {
                if body.message.contains(s) {
                    body.message = body.message.replace(s, "<redacted>");
                }
                let extra_has = body.extra.values().any(|v| v.to_string().contains(s));
                if extra_has {
                    body.extra.clear();
                }
            }
        }
        self
    }

    /// What kind of failure this is.
    ///
    /// ```
    /// use iicp_client::{Client, ErrorKind};
    ///
    /// let err = Client::builder().directory_url("not a url").build().unwrap_err();
    /// match err.kind() {
    ///     ErrorKind::Config => {} // fix the configuration
    ///     other => panic!("{other:?}"),
    /// }
    /// ```
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The protocol code (DESIGN §4.8; PROTOCOL.md §6).
    pub fn code(&self) -> &ErrorCode {
        &self.inner.code
    }

    /// A human-readable message without tokens or payload content.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// The HTTP status (or native key-100 status) involved, if any.
    pub fn status_code(&self) -> Option<u16> {
        self.inner.status
    }

    /// The spec catalogue code carried next to a client-side code: `IICP-E033` for
    /// `no_nodes_available` (DESIGN §4.8).
    pub fn spec_code(&self) -> Option<&ErrorCode> {
        self.inner.spec_code.as_ref()
    }

    /// The node the error came from, when a node was involved.
    pub fn node_id(&self) -> Option<&str> {
        self.inner.node_id.as_deref()
    }

    /// The peer's parsed error body (code, message, `retry_after_ms`, `qos_class`, …)
    /// when the error came from a node or directory.
    pub fn error_body(&self) -> Option<&ErrorBody> {
        self.inner.body.as_ref()
    }

    /// The delay the peer asked for (`retry_after_ms` / `Retry-After`), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner
            .body
            .as_ref()
            .and_then(|b| b.retry_after_ms)
            .map(Duration::from_millis)
    }

    /// For `all_nodes_failed`: the last node's error.
    pub fn last_node_error(&self) -> Option<&Error> {
        self.inner
            .source
            .as_deref()
            .and_then(|s| s.downcast_ref::<Error>())
    }

    /// What the retry loop does after this failure (§7.1, §7.3): see [`Disposition`].
    pub(crate) fn disposition(&self) -> Disposition {
        match self.inner.kind {
            Kind::Timeout | Kind::Connect | Kind::Transport => Disposition::OtherNode,
            Kind::Protocol => Disposition::BrokenNode,
            Kind::Remote => {
                if self.is_node_switch()
                    || matches!(self.inner.code, ErrorCode::TaskTimeout | ErrorCode::Timeout)
                {
                    return Disposition::OtherNode;
                }
                match self.inner.status {
                    Some(429 | 503) => Disposition::RetrySame,
                    Some(408 | 504) => Disposition::OtherNode,
                    Some(s) if !(200..300).contains(&s) && s != 0 => Disposition::Stop,
                    // no status, or an error inside a 2xx body: the code decides
                    _ => match &self.inner.body {
                        Some(body) if body.is_retryable() => Disposition::RetrySame,
                        None if self.inner.code.is_retryable() => Disposition::RetrySame,
                        _ => Disposition::Stop,
                    },
                }
            }
            Kind::Config
            | Kind::Input
            | Kind::Policy
            | Kind::Crypto
            | Kind::NoNodes
            | Kind::Exhausted => Disposition::Stop,
        }
    }

    /// Whether trying again (later, or elsewhere) may succeed (§7.1): what the retry
    /// loop treats as transient — timeouts, connect and network failures, 408, 429, 503
    /// and 504, node switches, retryable codes — and `no_nodes_available` (the mesh may
    /// change). `all_nodes_failed` is retryable when every node failed transiently.
    /// Configuration, input, policy, CX, redirect refusals, protocol violations and
    /// other 4xx/5xx answers are not.
    pub fn is_retryable(&self) -> bool {
        match self.inner.kind {
            Kind::NoNodes => true,
            Kind::Exhausted => self.inner.all_transient,
            _ => self.disposition().is_transient(),
        }
    }

    /// Whether a timeout caused the failure: a local request timeout, or a node's
    /// `task_timeout` / `timeout` / HTTP 504; for `all_nodes_failed`, the last node's.
    pub fn is_timeout(&self) -> bool {
        match self.inner.kind {
            Kind::Timeout => true,
            Kind::Exhausted => self.last_node_error().is_some_and(Error::is_timeout),
            _ => {
                matches!(self.inner.code, ErrorCode::TaskTimeout | ErrorCode::Timeout)
                    || (self.inner.kind == Kind::Remote && self.inner.status == Some(504))
            }
        }
    }

    /// Whether the connection to the peer could not be established.
    pub fn is_connect(&self) -> bool {
        self.inner.kind == Kind::Connect
    }

    /// True for the node-switch signal of §7.3 / T8: `capacity_exceeded`,
    /// `overloaded`, or `IICP-E021` with HTTP 429.
    pub fn is_node_switch(&self) -> bool {
        match &self.inner.body {
            Some(body) => body.is_node_switch(),
            None => self.inner.code.is_node_switch(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner.code)?;
        if let Some(status) = self.inner.status {
            write!(f, " (HTTP {status})")?;
        }
        write!(f, ": {}", self.inner.message)?;
        if let Some(node) = &self.inner.node_id {
            write!(f, " [node {}]", short_id(node))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.inner.kind)
            .field("code", &self.inner.code.as_str())
            .field("message", &self.inner.message)
            .field("status_code", &self.inner.status)
            .field("spec_code", &self.inner.spec_code)
            .field("node_id", &self.inner.node_id)
            .field("source", &self.inner.source)
            .finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

/// The first 8 characters of a node id (what logs and errors show).
pub(crate) fn short_id(id: &str) -> &str {
    match id.char_indices().nth(8) {
        Some((i, _)) => &id[..i],
        None => id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_classification() {
        let body = ErrorBody::parse(
            429,
            br#"{"error":{"code":"capacity_exceeded","message":"busy","retry_after_ms":250}}"#,
        );
        let err = Error::remote(body);
        assert_eq!(err.code(), &ErrorCode::CapacityExceeded);
        assert_eq!(err.status_code(), Some(429));
        assert!(err.is_node_switch());
        assert!(err.is_retryable());
        assert_eq!(err.retry_after(), Some(Duration::from_millis(250)));

        let err = Error::remote(ErrorBody::parse(502, b"bad gateway"));
        assert!(!err.is_retryable());
        assert!(!err.is_timeout());
    }

    #[test]
    fn scrub_removes_secrets() {
        let body = ErrorBody::parse(
            401,
            br#"{"error":{"code":"unauthorized","message":"bad token tok_abcdef","echo":"tok_abcdef"}}"#,
        );
        let err = Error::remote(body).scrub(&["tok_abcdef"]);
        assert!(!err.message().contains("tok_abcdef"));
        assert!(!format!("{err:?}").contains("tok_abcdef"));
        assert!(!err.to_string().contains("tok_abcdef"));
    }

    #[test]
    fn display_shape() {
        let err = Error::config("timeout above 120000 ms").with_status(0);
        assert!(err.to_string().starts_with("invalid_config"));
        assert_eq!(short_id("0123456789abcdef"), "01234567");
    }
}
