//! JSON bodies and JSON errors (PROTOCOL.md §6.1): bounded body reading, media-type
//! checks, `{"error":{"code","message",…}}` responses and `Retry-After`.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::StatusCode;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use iicp_proto::error::{ErrorBody, ErrorCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::{Request, Response, ResponseBody};

/// Body limit used when neither the caller nor the server configuration says otherwise.
pub const DEFAULT_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// How long reading a request body may take when the server configuration does not say.
pub(crate) const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest part of a JSON deserialisation message echoed back to the client.
const MAX_ECHOED_MESSAGE: usize = 200;

/// Per-request body limits the connection driver puts into the request extensions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyLimits {
    /// Ceiling for any body read on this server.
    pub(crate) max_bytes: usize,
    /// Deadline for reading one body.
    pub(crate) read_timeout: Duration,
}

/// An HTTP error answer: a status, the §6.1 JSON error body and an optional
/// `Retry-After`. Handlers return it (`Result<Response, HttpError>` is a valid handler
/// output) and [`read_json`] produces it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("HTTP {status}: {}", body.code)]
pub struct HttpError {
    status: StatusCode,
    body: Box<ErrorBody>,
    retry_after: Option<Duration>,
}

impl HttpError {
    /// An error with `status`, `code` and `message`.
    ///
    /// The message is sent to the peer: never put secrets, paths or payload content in it.
    pub fn new(status: StatusCode, code: impl Into<ErrorCode>, message: impl Into<String>) -> Self {
        Self {
            status,
            body: Box::new(ErrorBody::new(code.into(), message)),
            retry_after: None,
        }
    }

    /// An error from a prepared [`ErrorBody`]; the status is the body's
    /// [`ErrorBody::status_or_default`]. A `retry_after_ms` in the body also sets the
    /// `Retry-After` header.
    pub fn from_body(body: ErrorBody) -> Self {
        let status = StatusCode::from_u16(body.status_or_default())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = body.retry_after_ms.map(Duration::from_millis);
        Self {
            status,
            body: Box::new(body),
            retry_after,
        }
    }

    /// 422 `validation_error`.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::ValidationError,
            message,
        )
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    /// 500 `internal_error` with a fixed, uninformative message.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal server error",
        )
    }

    /// Adds `retry_after_ms` to the body and a `Retry-After` header (whole seconds,
    /// rounded up, at least 1).
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.body.retry_after_ms = Some(u64::try_from(after.as_millis()).unwrap_or(u64::MAX));
        self.retry_after = Some(after);
        self
    }

    /// Adds a member to the `error` object (e.g. `qos_class`, `reason`, or any extension
    /// member). `retry_after_ms` given as a number behaves like [`Self::with_retry_after`].
    pub fn with_member(mut self, key: &str, value: impl Into<Value>) -> Self {
        let value = value.into();
        match (key, value) {
            ("retry_after_ms", Value::Number(n)) if n.as_u64().is_some() => {
                let ms = n.as_u64().unwrap_or_default();
                return self.with_retry_after(Duration::from_millis(ms));
            }
            ("qos_class", Value::String(s)) => self.body.qos_class = Some(s),
            ("reason", Value::String(s)) => self.body.reason = Some(s),
            ("legacy_code", Value::String(s)) => self.body.legacy_code = Some(s.into()),
            ("code" | "message", _) => {}
            (key, value) => {
                self.body.extra.insert(key.to_owned(), value);
            }
        }
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The error code.
    pub fn code(&self) -> &ErrorCode {
        &self.body.code
    }

    /// The error body.
    pub fn body(&self) -> &ErrorBody {
        &self.body
    }

    /// The response: status, `Content-Type: application/json`, the §6.1 body and
    /// `Retry-After` when set.
    pub fn into_response(self) -> Response {
        let mut response = json(self.status, &self.body);
        if let Some(after) = self.retry_after {
            set_retry_after(response.headers_mut(), after);
        }
        response
    }
}

impl From<ErrorBody> for HttpError {
    fn from(body: ErrorBody) -> Self {
        Self::from_body(body)
    }
}

/// What a handler may return: a [`Response`], an [`HttpError`], a [`StatusCode`] (empty
/// body) or a `Result` of two such types.
pub trait IntoResponse {
    /// Converts into the response sent to the peer.
    fn into_response(self) -> Response;
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        HttpError::into_response(self)
    }
}

impl IntoResponse for StatusCode {
    fn into_response(self) -> Response {
        let mut response = Response::new(ResponseBody::empty());
        *response.status_mut() = self;
        response
    }
}

impl<T: IntoResponse, E: IntoResponse> IntoResponse for Result<T, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(ok) => ok.into_response(),
            Err(err) => err.into_response(),
        }
    }
}

/// A JSON response with `status` and `Content-Type: application/json`.
///
/// Serialisation failure (a bug in a `Serialize` impl) yields a 500 JSON error instead.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => json_bytes(status, Bytes::from(bytes)),
        Err(err) => {
            tracing::error!(error = %err, "response serialisation failed");
            json_bytes(
                StatusCode::INTERNAL_SERVER_ERROR,
                Bytes::from_static(
                    br#"{"error":{"code":"internal_error","message":"internal server error"}}"#,
                ),
            )
        }
    }
}

/// A response carrying already-serialised JSON bytes.
pub fn json_bytes(status: StatusCode, body: Bytes) -> Response {
    let mut response = Response::new(ResponseBody::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A §6.1 error response `{"error":{"code":…,"message":…}}`. For extra members or
/// `Retry-After` build an [`HttpError`] instead.
pub fn error(
    status: StatusCode,
    code: impl Into<ErrorCode>,
    message: impl Into<String>,
) -> Response {
    HttpError::new(status, code, message).into_response()
}

/// Sets `Retry-After` to `after` in whole seconds, rounded up, at least 1 (§5.3).
pub fn set_retry_after(headers: &mut HeaderMap, after: Duration) {
    let mut secs = after.as_secs();
    if after.subsec_nanos() > 0 || secs == 0 {
        secs = secs.saturating_add(1);
    }
    headers.insert(RETRY_AFTER, HeaderValue::from(secs));
}

/// Whether a `Content-Type` value is JSON: `application/json` or `application/*+json`,
/// parameters allowed, case-insensitive.
pub fn is_json_content_type(value: &HeaderValue) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    let essence = text.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    if !kind.trim().eq_ignore_ascii_case("application") {
        return false;
    }
    let subtype = subtype.trim();
    subtype.eq_ignore_ascii_case("json")
        || (subtype.len() > 5
            && subtype.is_char_boundary(subtype.len() - 5)
            && subtype[subtype.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// Reads the whole request body, at most `limit` bytes (and at most the server's
/// configured ceiling).
///
/// A `Content-Length` above the limit is refused before any byte of the body is read;
/// a body without one is read through [`Limited`], so no more than `limit` bytes are ever
/// buffered. Errors: 413 `payload_too_large`, 408 `request_timeout` when the body does
/// not arrive within the server's body read timeout, 400 `bad_request` when the stream
/// breaks. The body is taken out of `req` (a second read yields an empty body); the
/// headers and extensions stay available.
pub async fn read_body(req: &mut Request, limit: usize) -> Result<Bytes, HttpError> {
    let limits = req.extensions().get::<BodyLimits>().copied();
    let limit = limits.map_or(limit, |l| limit.min(l.max_bytes));
    let read_timeout = limits.map_or(DEFAULT_BODY_READ_TIMEOUT, |l| l.read_timeout);

    if let Some(length) = content_length(req.headers()) {
        if length > limit as u64 {
            return Err(too_large(limit));
        }
    }
    let body = std::mem::take(req.body_mut());
    match tokio::time::timeout(read_timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(limit)),
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "request body read failed");
            Err(HttpError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "request body could not be read",
            ))
        }
        Err(_) => Err(HttpError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "request body not received in time",
        )),
    }
}

/// Reads and deserialises a JSON request body of at most `limit` bytes.
///
/// 415 `unsupported_media_type` when a `Content-Type` is present and is not JSON (see
/// [`is_json_content_type`]); a missing one is accepted. The size rules and errors of
/// [`read_body`] apply. 422 `validation_error` for malformed JSON or the wrong shape; the
/// message names the position or the missing/unknown field but never echoes values from
/// the body.
pub async fn read_json<T: DeserializeOwned>(
    req: &mut Request,
    limit: usize,
) -> Result<T, HttpError> {
    if let Some(content_type) = req.headers().get(CONTENT_TYPE) {
        if !content_type.is_empty() && !is_json_content_type(content_type) {
            return Err(HttpError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
                "expected Content-Type: application/json",
            ));
        }
    }
    let bytes = read_body(req, limit).await?;
    parse_json(&bytes)
}

/// Deserialises JSON bytes with the error rules of [`read_json`].
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, HttpError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(HttpError::validation(
            "request body must be a JSON document",
        ));
    }
    serde_json::from_slice(bytes).map_err(|err| HttpError::validation(describe_json_error(&err)))
}

fn too_large(limit: usize) -> HttpError {
    HttpError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body exceeds {limit} bytes"),
    )
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A client-facing description of a deserialisation error that never quotes body values.
fn describe_json_error(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let (line, column) = (err.line(), err.column());
    match err.classify() {
        Category::Data => {
            let text = err.to_string();
            let field_error = ["missing field", "unknown field", "duplicate field"]
                .iter()
                .any(|prefix| text.starts_with(prefix));
            if field_error {
                let text = text
                    .rsplit_once(" at line ")
                    .map_or(text.as_str(), |(head, _)| head);
                let mut short: String = text.chars().take(MAX_ECHOED_MESSAGE).collect();
                if short.len() < text.len() {
                    short.push('…');
                }
                format!("invalid request body: {short}")
            } else {
                format!("request body has the wrong shape (line {line}, column {column})")
            }
        }
        Category::Syntax | Category::Eof | Category::Io => {
            format!("request body is not valid JSON (line {line}, column {column})")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/problem+json",
            "application/vnd.iicp+JSON;v=1",
        ] {
            assert!(is_json_content_type(&HeaderValue::from_static(ok)), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/iicp+cbor",
            "json",
            "application/+json",
            "application/jsonx",
        ] {
            assert!(
                !is_json_content_type(&HeaderValue::from_static(bad)),
                "{bad}"
            );
        }
    }

    #[test]
    fn json_errors_never_echo_values() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Shape {
            task_id: String,
            n: u32,
        }
        let err =
            parse_json::<Shape>(br#"{"task_id":"tok_secret","n":"tok_secret2"}"#).unwrap_err();
        assert!(
            !err.body().message.contains("tok_secret"),
            "{}",
            err.body().message
        );
        let err = parse_json::<Shape>(br#"{"n":1}"#).unwrap_err();
        assert!(
            err.body().message.contains("missing field `task_id`"),
            "{}",
            err.body().message
        );
        let err = parse_json::<Shape>(b"{\"task_id\": tok_secret").unwrap_err();
        assert!(!err.body().message.contains("tok_secret"));
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn retry_after_rounds_up() {
        let mut headers = HeaderMap::new();
        set_retry_after(&mut headers, Duration::from_millis(1500));
        assert_eq!(headers[RETRY_AFTER], "2");
        set_retry_after(&mut headers, Duration::ZERO);
        assert_eq!(headers[RETRY_AFTER], "1");
        set_retry_after(&mut headers, Duration::from_secs(3));
        assert_eq!(headers[RETRY_AFTER], "3");
    }
}
