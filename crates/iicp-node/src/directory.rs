//! The node's view of the directory (IICP-DIR, PROTOCOL.md §8.2 REGISTER, §8.3
//! HEARTBEAT, §8.6 DEREGISTER, §8.10 directory key, §8.11 credits receipt).
//!
//! [`DirectoryApi`] is the seam the runtime talks through: [`HttpDirectory`] is the
//! implementation over HTTP (the shared `iicp_client::DirectoryClient`); tests and
//! embedders may supply their own. Paths derive from one base URL (`{base}/v1/register`,
//! …, DESIGN §4.13); directory calls follow 307/308 up to 3 hops.

use std::fmt;
use std::time::Duration;

use iicp_client::DirectoryClient;
use iicp_proto::crypto::token::DirectoryPublicKey;
use iicp_proto::directory::{HeartbeatRequest, HeartbeatResponse, RegisterAck, RegisterRequest};
use iicp_proto::error::ErrorCode;
use iicp_proto::secret::Secret;
use iicp_transport::http::client::HttpClient;
use serde_json::Value;

use crate::handler::BoxFuture;

/// Longest directory message kept (characters); longer ones are cut with `…`.
pub const MAX_DIRECTORY_MESSAGE_CHARS: usize = 200;
/// Longest directory error code kept (characters).
const MAX_CODE_CHARS: usize = 64;

/// A failed directory call. Carries the HTTP status and, when the directory answered
/// with an error body, its code and message (one line, control characters removed,
/// bounded, and scrubbed of the node's own secrets before the node logs or shows it);
/// never the request body.
#[derive(Debug)]
pub struct DirectoryError {
    operation: &'static str,
    status: Option<u16>,
    code: Option<ErrorCode>,
    message: Option<String>,
    retryable: bool,
    retry_after: Option<Duration>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl fmt::Display for DirectoryError {
    /// `directory register failed with HTTP 403: IICP-E050: <the directory's message>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "directory {} failed", self.operation)?;
        if let Some(s) = self.status {
            write!(f, " with HTTP {s}")?;
        }
        if let Some(code) = self.code_str() {
            write!(f, ": {code}")?;
        }
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DirectoryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// One line of at most `max` characters: control characters (terminal escapes
/// included) become spaces, runs of whitespace collapse, a cut is marked with `…`.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let cleaned: String = text
        .chars()
        .take(max.saturating_mul(4))
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let collapsed = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() <= max {
        return collapsed;
    }
    let mut out: String = collapsed.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

impl DirectoryError {
    /// An error for `operation` with an HTTP `status` and optional code.
    pub fn status(operation: &'static str, status: u16, code: Option<ErrorCode>) -> Self {
        Self {
            operation,
            status: Some(status),
            code,
            message: None,
            retryable: iicp_proto::error::is_retryable_status(status),
            retry_after: None,
            source: None,
        }
    }

    /// The same error, with the delay the directory asked for (`Retry-After`).
    pub fn with_retry_after(mut self, delay: Option<Duration>) -> Self {
        self.retry_after = delay;
        self
    }

    /// A transport failure (connect, timeout, …) of `operation`; retryable.
    pub fn transport(
        operation: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            operation,
            status: None,
            code: None,
            message: None,
            retryable: true,
            retry_after: None,
            source: Some(Box::new(source)),
        }
    }

    /// A reply that is not what the protocol says (e.g. an ACK without a token).
    pub fn invalid_reply(operation: &'static str) -> Self {
        Self {
            operation,
            status: None,
            code: None,
            message: None,
            retryable: false,
            retry_after: None,
            source: None,
        }
    }

    /// The operation is not offered by this [`DirectoryApi`].
    pub fn unsupported(operation: &'static str) -> Self {
        Self::invalid_reply(operation)
    }

    /// The HTTP status, when the directory answered.
    pub fn status_code(&self) -> Option<u16> {
        self.status
    }

    /// The same error, with the directory's own message (made one bounded line).
    pub fn with_message(mut self, message: &str) -> Self {
        let m = one_line(message, MAX_DIRECTORY_MESSAGE_CHARS);
        self.message = (!m.is_empty()).then_some(m);
        self
    }

    /// The operation that failed (`register`, `heartbeat`, …).
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// The protocol error code, when the directory answered with an error (the code it
    /// sent, or the one its HTTP status implies when its body had none).
    pub fn code(&self) -> Option<&ErrorCode> {
        self.code.as_ref()
    }

    /// The code as one bounded line of text (`IICP-E050`).
    pub fn code_str(&self) -> Option<String> {
        self.code
            .as_ref()
            .map(|c| one_line(c.as_str(), MAX_CODE_CHARS))
            .filter(|c| !c.is_empty())
    }

    /// The directory's message, when it sent one: one line of at most
    /// [`MAX_DIRECTORY_MESSAGE_CHARS`] characters without control characters.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// Replaces every occurrence of each secret (at least 4 bytes long) in the
    /// directory's message with `<redacted>`: a directory may echo what it was sent.
    pub fn redact(mut self, secrets: &[&Secret]) -> Self {
        if let Some(m) = self.message.as_mut() {
            for s in secrets.iter().map(|s| s.expose()).filter(|s| s.len() >= 4) {
                if m.contains(s) {
                    *m = m.replace(s, "<redacted>");
                }
            }
        }
        if let Some(ErrorCode::Unknown(code)) = &self.code {
            if secrets
                .iter()
                .any(|s| s.expose().len() >= 4 && code.contains(s.expose()))
            {
                self.code = Some(ErrorCode::Unknown("<redacted>".to_owned()));
            }
        }
        self
    }

    /// How long the directory asked us to wait (`Retry-After` / `retry_after_ms`).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// Whether the directory no longer knows our token or node (401, 404, 410): the
    /// node must register again (PROTOCOL.md §8.3).
    pub fn is_registration_lost(&self) -> bool {
        matches!(self.status, Some(401 | 404 | 410))
    }

    fn from_client(operation: &'static str, err: iicp_client::Error) -> Self {
        let status = err.status_code();
        let retryable = err.is_retryable();
        let retry_after = err.retry_after();
        if let Some(body) = err.error_body() {
            // the directory answered: its code and message are the error (the client
            // error is not kept as the source, it would repeat the unscrubbed message)
            let mut e = Self {
                operation,
                status,
                code: Some(body.code.clone()),
                message: None,
                retryable,
                retry_after,
                source: None,
            };
            e = e.with_message(&body.message);
            return e;
        }
        let code = (!err.code().is_unknown()).then(|| err.code().clone());
        Self {
            operation,
            status,
            code,
            message: None,
            retryable,
            retry_after,
            source: Some(Box::new(err)),
        }
    }
}

/// A failed directory call as the node remembers it for operators
/// ([`DirectoryStatus::last_error`]): nothing secret, everything one bounded line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DirectoryFailure {
    /// `register` or `heartbeat`.
    pub operation: &'static str,
    /// The HTTP status, when the directory answered.
    pub status: Option<u16>,
    /// The directory's error code (`IICP-E050`), when it answered with one.
    pub code: Option<String>,
    /// The directory's message, when it sent one.
    pub message: Option<String>,
    /// The whole error, one line.
    pub error: String,
    /// When it happened (the node's clock), milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

impl DirectoryFailure {
    pub(crate) fn of(e: &DirectoryError, at_unix_ms: u64) -> Self {
        Self {
            operation: e.operation(),
            status: e.status_code(),
            code: e.code_str(),
            message: e.message().map(str::to_owned),
            error: one_line(&e.to_string(), 2 * MAX_DIRECTORY_MESSAGE_CHARS),
            at_unix_ms,
        }
    }

    /// `HTTP 403 IICP-E050: <message>`, or the error when the directory did not answer.
    pub fn summary(&self) -> String {
        let Some(status) = self.status else {
            return self.error.clone();
        };
        let mut out = format!("HTTP {status}");
        if let Some(c) = &self.code {
            out.push(' ');
            out.push_str(c);
        }
        if let Some(m) = &self.message {
            out.push_str(": ");
            out.push_str(m);
        }
        out
    }
}

/// What the node knows of its directory ([`crate::Node::directory_status`]): whether
/// it holds a registration, the failures in a row (registration and heartbeat), the
/// circuit breaker (ADR 0009) and the last failure, with the directory's own code and
/// message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DirectoryStatus {
    /// A node token is held (the node registered, or adopted a saved token).
    pub registered: bool,
    /// Directory calls that failed in a row since the last success.
    pub consecutive_failures: u32,
    /// While the breaker is open (from the failure that opened it until a directory
    /// call succeeds): when the next attempt is due (the node's clock, milliseconds
    /// since the Unix epoch).
    pub breaker_open_until_unix_ms: Option<u64>,
    /// The last failure (kept after a success, for the record).
    pub last_error: Option<DirectoryFailure>,
    /// The last successful registration or heartbeat.
    pub last_success_unix_ms: Option<u64>,
}

impl DirectoryStatus {
    /// `registered`, `degraded` (registered, the last calls failed), `breaker_open`,
    /// `rate_limited` (429), `refused` (the directory answered the last attempt with
    /// another 4xx),
    /// `unreachable` (the last attempt got no answer or a 5xx) or `registering`.
    pub fn state(&self) -> &'static str {
        if self.breaker_open_until_unix_ms.is_some() {
            return "breaker_open";
        }
        let failing = self.consecutive_failures > 0;
        match (&self.last_error, self.registered, failing) {
            (_, true, false) => "registered",
            (_, true, true) => "degraded",
            (Some(e), false, true) => match e.status {
                Some(429) => "rate_limited",
                Some(s) if (400..500).contains(&s) => "refused",
                _ => "unreachable",
            },
            _ => "registering",
        }
    }
}

/// What the node needs from a directory. Implemented by [`HttpDirectory`]; supply your
/// own to embed the node elsewhere or to script a directory in tests.
pub trait DirectoryApi: Send + Sync + fmt::Debug + 'static {
    /// `POST /v1/register` → the ACK (HTTP 201).
    fn register(
        &self,
        req: &RegisterRequest,
    ) -> BoxFuture<'static, Result<RegisterAck, DirectoryError>>;

    /// `POST /v1/heartbeat` with `Authorization: Bearer <token>` → the PONG.
    fn heartbeat(
        &self,
        token: &Secret,
        req: &HeartbeatRequest,
    ) -> BoxFuture<'static, Result<HeartbeatResponse, DirectoryError>>;

    /// `DELETE /v1/register` with `{node_id}`; 404 counts as done.
    fn deregister(
        &self,
        token: &Secret,
        node_id: &str,
    ) -> BoxFuture<'static, Result<(), DirectoryError>>;

    /// `GET /v1/directory-key`; `None` when the directory has no key (404/503).
    fn directory_key(
        &self,
    ) -> BoxFuture<'static, Result<Option<DirectoryPublicKey>, DirectoryError>>;

    /// `POST /v1/credits/award` with a signed receipt body (§8.11). The default says
    /// the operation is unsupported.
    fn award_credits(
        &self,
        token: &Secret,
        receipt: &Value,
    ) -> BoxFuture<'static, Result<(), DirectoryError>> {
        let _ = (token, receipt);
        Box::pin(async { Err(DirectoryError::unsupported("credits award")) })
    }
}

/// [`DirectoryApi`] over HTTP: `iicp_client::DirectoryClient`, whose errors are
/// wrapped once ([`DirectoryError`]).
#[derive(Clone)]
pub struct HttpDirectory {
    client: DirectoryClient,
}

impl fmt::Debug for HttpDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpDirectory")
            .field("base", &self.client.base_url())
            .finish_non_exhaustive()
    }
}

impl HttpDirectory {
    /// A directory at `base_url` (e.g. `https://iicp.network/api`); calls time out after
    /// `timeout`.
    ///
    /// # Errors
    /// When `base_url` is not an absolute `http(s)://` URL.
    pub fn new(
        base_url: &str,
        http: HttpClient,
        timeout: Duration,
    ) -> Result<Self, DirectoryError> {
        let client = DirectoryClient::new(base_url, http)
            .map_err(|e| DirectoryError::from_client("configure", e))?
            .with_timeout(timeout);
        Ok(Self { client })
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        self.client.base_url()
    }

    /// The underlying directory client.
    pub fn client(&self) -> &DirectoryClient {
        &self.client
    }
}

impl DirectoryApi for HttpDirectory {
    fn register(
        &self,
        req: &RegisterRequest,
    ) -> BoxFuture<'static, Result<RegisterAck, DirectoryError>> {
        let client = self.client.clone();
        let req = req.clone();
        Box::pin(async move {
            client
                .register(&req)
                .await
                .map_err(|e| DirectoryError::from_client("register", e))
        })
    }

    fn heartbeat(
        &self,
        token: &Secret,
        req: &HeartbeatRequest,
    ) -> BoxFuture<'static, Result<HeartbeatResponse, DirectoryError>> {
        let client = self.client.clone();
        let (token, req) = (token.clone(), req.clone());
        Box::pin(async move {
            client
                .heartbeat(&token, &req)
                .await
                .map_err(|e| DirectoryError::from_client("heartbeat", e))
        })
    }

    fn deregister(
        &self,
        token: &Secret,
        node_id: &str,
    ) -> BoxFuture<'static, Result<(), DirectoryError>> {
        let client = self.client.clone();
        let (token, node_id) = (token.clone(), node_id.to_owned());
        Box::pin(async move {
            match client.deregister(&token, &node_id).await {
                Ok(()) => Ok(()),
                Err(e) if e.status_code() == Some(404) => Ok(()),
                Err(e) => Err(DirectoryError::from_client("deregister", e)),
            }
        })
    }

    fn directory_key(
        &self,
    ) -> BoxFuture<'static, Result<Option<DirectoryPublicKey>, DirectoryError>> {
        let client = self.client.clone();
        Box::pin(async move {
            match client.directory_key().await {
                Ok(key) => Ok(Some(key)),
                Err(e) if matches!(e.status_code(), Some(404 | 503)) => Ok(None),
                Err(e) => Err(DirectoryError::from_client("directory key", e)),
            }
        })
    }

    fn award_credits(
        &self,
        token: &Secret,
        receipt: &Value,
    ) -> BoxFuture<'static, Result<(), DirectoryError>> {
        let client = self.client.clone();
        let (token, receipt) = (token.clone(), receipt.clone());
        Box::pin(async move {
            client
                .award_credits(&token, &receipt)
                .await
                .map_err(|e| DirectoryError::from_client("credits award", e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_text_is_one_bounded_line() {
        assert_eq!(one_line("a\u{1b}[31mb\r\n\tc  ", 50), "a [31mb c");
        let long = "x".repeat(500);
        let cut = one_line(&long, MAX_DIRECTORY_MESSAGE_CHARS);
        assert_eq!(cut.chars().count(), MAX_DIRECTORY_MESSAGE_CHARS);
        assert!(cut.ends_with('…'));
        let e = DirectoryError::status("register", 403, None).with_message(" \n ");
        assert_eq!(e.message(), None, "a blank message is no message");
    }

    #[test]
    fn display_redaction_and_summary() {
        let token = Secret::new("tok-abcdef");
        let short = Secret::new("abc");
        let e = DirectoryError::status("register", 403, Some(ErrorCode::E050))
            .with_message("token tok-abcdef is not yours (abc)")
            .redact(&[&token, &short]);
        assert_eq!(
            e.to_string(),
            "directory register failed with HTTP 403: IICP-E050: token <redacted> is not yours (abc)"
        );
        let f = DirectoryFailure::of(&e, 1);
        assert_eq!(
            f.summary(),
            "HTTP 403 IICP-E050: token <redacted> is not yours (abc)"
        );
        // a code made of a secret is not shown either
        let e = DirectoryError::status(
            "heartbeat",
            400,
            Some(ErrorCode::Unknown("tok-abcdef".into())),
        )
        .redact(&[&token]);
        assert_eq!(e.code_str().as_deref(), Some("<redacted>"));
        // no answer: the error itself
        let e = DirectoryError::invalid_reply("register");
        assert_eq!(
            DirectoryFailure::of(&e, 1).summary(),
            "directory register failed"
        );
    }

    #[test]
    fn states() {
        let failure = |status| {
            Some(DirectoryFailure::of(
                &match status {
                    Some(s) => DirectoryError::status("register", s, None),
                    None => DirectoryError::invalid_reply("register"),
                },
                1,
            ))
        };
        let st = |registered, failures, status: Option<u16>, open: bool| DirectoryStatus {
            registered,
            consecutive_failures: failures,
            breaker_open_until_unix_ms: open.then_some(9),
            last_error: if failures > 0 { failure(status) } else { None },
            last_success_unix_ms: None,
        };
        assert_eq!(DirectoryStatus::default().state(), "registering");
        assert_eq!(st(true, 0, None, false).state(), "registered");
        assert_eq!(st(true, 2, Some(503), false).state(), "degraded");
        assert_eq!(st(false, 1, Some(403), false).state(), "refused");
        assert_eq!(st(false, 1, Some(429), false).state(), "rate_limited");
        assert_eq!(st(false, 1, Some(503), false).state(), "unreachable");
        assert_eq!(st(false, 1, None, false).state(), "unreachable");
        assert_eq!(st(false, 5, Some(503), true).state(), "breaker_open");
    }
}
