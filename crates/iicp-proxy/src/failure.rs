//! [`Failure`]: what went wrong with one proxied request, decided once for every surface.
//!
//! [`Failure::from_client`] is the one mapping of an [`iicp_client::Error`] to an HTTP
//! status, an IICP code and a message; each surface (OpenAI, …) only renders a
//! `Failure` in its own error shape. Messages are the proxy's own text: a node's or a
//! backend's error message never reaches the local application (it may name internal
//! hosts or echo a payload); the IICP code says what happened.

use std::time::Duration;

use http::StatusCode;
use iicp_client::{Error as ClientError, ErrorCode, ErrorKind};
use iicp_transport::http::server::HttpError;

/// The class of a failure: what each surface maps to its own error `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// The request is malformed or invalid (400, 413, 415).
    InvalidRequest,
    /// Missing or wrong API key (401).
    Authentication,
    /// The proxy's routing profile refuses every node that could answer (403).
    Permission,
    /// No such model or route (404).
    NotFound,
    /// Every node is at capacity, or the proxy itself is (429).
    RateLimit,
    /// The mesh did not answer in time (504).
    Timeout,
    /// The mesh failed: no node, every node failed, the directory is unreachable (502).
    Upstream,
    /// The proxy itself failed (500).
    Internal,
}

/// One failed request, surface-neutral.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The HTTP status answered.
    pub(crate) status: StatusCode,
    /// What kind of failure (each surface's error `type`).
    pub(crate) class: Class,
    /// The IICP code (`IICP-E033`, `all_nodes_failed`, `task_timeout`, …).
    pub(crate) code: String,
    /// The proxy's own message (never a peer's text, a token or a payload).
    pub(crate) message: String,
    /// `Retry-After` for 429.
    pub(crate) retry_after: Option<Duration>,
    /// The node involved, when one was.
    pub(crate) node_id: Option<String>,
}

/// The wait suggested after capacity errors that named none.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

impl Failure {
    /// A failure with this status, class, code and message.
    pub(crate) fn new(
        status: StatusCode,
        class: Class,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            class,
            code: code.into(),
            message: message.into(),
            retry_after: None,
            node_id: None,
        }
    }

    /// 400: the request is not valid (the message says why, without echoing values).
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            Class::InvalidRequest,
            ErrorCode::ValidationError.as_str(),
            message,
        )
    }

    /// 400: the body is not JSON of the expected shape.
    pub(crate) fn bad_json() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            Class::InvalidRequest,
            "invalid_json",
            "the request body is not valid JSON of the expected shape",
        )
    }

    /// 401: the API key is missing or wrong.
    pub(crate) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            Class::Authentication,
            ErrorCode::Unauthorized.as_str(),
            "missing or invalid API key (Authorization: Bearer <key> or x-api-key)",
        )
    }

    /// 404: the mesh offers no such model.
    pub(crate) fn unknown_model(model: &str) -> Self {
        // model names are what the caller sent; bound what is echoed back
        let shown: String = model.chars().take(128).collect();
        Self::new(
            StatusCode::NOT_FOUND,
            Class::NotFound,
            "model_not_found",
            format!("the mesh offers no model named '{shown}' for llm:chat:v1 (GET /v1/models lists them)"),
        )
    }

    /// 404: no such route.
    pub(crate) fn no_route() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            Class::NotFound,
            ErrorCode::NotFound.as_str(),
            "no such endpoint on the IICP proxy",
        )
    }

    /// 429: the proxy's own concurrency limit is reached.
    pub(crate) fn busy() -> Self {
        let mut f = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            Class::RateLimit,
            ErrorCode::CapacityExceeded.as_str(),
            "the proxy is at its concurrency limit; retry shortly",
        );
        f.retry_after = Some(DEFAULT_RETRY_AFTER);
        f
    }

    /// 504: the proxy's own deadline passed.
    pub(crate) fn deadline() -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            Class::Timeout,
            ErrorCode::TaskTimeout.as_str(),
            "the mesh did not answer within the proxy's timeout",
        )
    }

    /// 502: the node's event stream ended without its answer (the client reports
    /// broken streams as errors; this is the proxy's guard should one end silently).
    pub(crate) fn stream_ended() -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            Class::Upstream,
            ErrorCode::BackendError.as_str(),
            "the mesh's answer ended before it was complete",
        )
    }

    /// A request-body error of the HTTP layer (413 too large, 408 too slow, 400
    /// broken, 415 not JSON) as a failure.
    pub(crate) fn from_http(err: &HttpError) -> Self {
        let status = err.status();
        let class = match status {
            StatusCode::REQUEST_TIMEOUT => Class::Timeout,
            s if s.is_server_error() => Class::Internal,
            _ => Class::InvalidRequest,
        };
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "the request body exceeds the proxy's size limit",
            StatusCode::REQUEST_TIMEOUT => "the request body did not arrive in time",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "expected Content-Type: application/json",
            _ => "the request body could not be read",
        };
        Self::new(status, class, err.code().as_str(), message)
    }

    /// The one mapping of a client error to what the proxy answers, shared by every
    /// surface:
    ///
    /// | client error | status | code |
    /// |---|---|---|
    /// | no eligible node (`no_nodes_available`, `IICP-CX-REQUIRED`) | 502 | `IICP-E033` (the spec code), else the code |
    /// | a timeout (local, `task_timeout`, 504; for `all_nodes_failed` the last node's) | 504 | `task_timeout` |
    /// | capacity everywhere (429 / node switch; for `all_nodes_failed` the last node's) | 429 + `Retry-After` | `capacity_exceeded` |
    /// | every node failed otherwise | 502 | `all_nodes_failed` |
    /// | the routing profile refuses every node (`IICP-POLICY-ROUTING`) | 403 | the code |
    /// | the request is invalid (`validation_error`, `invalid_intent`, policy) | 400 | the code |
    /// | the proxy's client is misconfigured | 500 | `invalid_config` |
    /// | anything else (directory unreachable, a node's 4xx/5xx, protocol, CX) | 502 | the code |
    pub(crate) fn from_client(err: &ClientError) -> Self {
        let node_id = err.node_id().map(str::to_owned).or_else(|| {
            err.last_node_error()
                .and_then(ClientError::node_id)
                .map(str::to_owned)
        });
        let code = err.code().as_str().to_owned();
        let mut failure = match err.kind() {
            ErrorKind::NoNodes => Self::new(
                StatusCode::BAD_GATEWAY,
                Class::Upstream,
                err.spec_code().map_or(code.as_str(), ErrorCode::as_str),
                "no node of the mesh can serve this request (IICP-E033: no eligible provider)",
            ),
            _ if err.is_timeout() => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                Class::Timeout,
                ErrorCode::TaskTimeout.as_str(),
                "the mesh did not answer in time",
            ),
            _ if is_capacity(err) => {
                let after = err
                    .retry_after()
                    .or_else(|| err.last_node_error().and_then(ClientError::retry_after))
                    .unwrap_or(DEFAULT_RETRY_AFTER);
                let mut f = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    Class::RateLimit,
                    ErrorCode::CapacityExceeded.as_str(),
                    "every node of the mesh is at capacity; retry later",
                );
                f.retry_after = Some(after);
                f
            }
            ErrorKind::Exhausted => Self::new(
                StatusCode::BAD_GATEWAY,
                Class::Upstream,
                code,
                "every candidate node of the mesh failed",
            ),
            // the routing profile (the proxy's privacy setting) excludes every node
            ErrorKind::Policy if err.code() == &ErrorCode::RoutingPolicyRefused => Self::new(
                StatusCode::FORBIDDEN,
                Class::Permission,
                code,
                err.message(),
            ),
            // our own client's text: it names the problem, never a value of the payload
            ErrorKind::Input | ErrorKind::Policy => Self::new(
                StatusCode::BAD_REQUEST,
                Class::InvalidRequest,
                code,
                err.message(),
            ),
            ErrorKind::Config => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                Class::Internal,
                code,
                "the proxy's mesh client is misconfigured",
            ),
            _ => Self::new(
                StatusCode::BAD_GATEWAY,
                Class::Upstream,
                code,
                "the mesh could not answer this request",
            ),
        };
        failure.node_id = node_id;
        failure
    }
}

/// Capacity exhausted: a 429 / node-switch answer, or `all_nodes_failed` whose last
/// node answered that.
fn is_capacity(err: &ClientError) -> bool {
    let capacity = |e: &ClientError| e.is_node_switch() || e.status_code() == Some(429);
    match err.kind() {
        ErrorKind::Exhausted => err.last_node_error().is_some_and(capacity),
        ErrorKind::Remote => capacity(err),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_config_error_is_internal() {
        let err = iicp_client::Client::builder()
            .directory_url("not a url")
            .build()
            .expect_err("bad url");
        let f = Failure::from_client(&err);
        assert_eq!(f.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(f.class, Class::Internal);
        assert_eq!(f.code, "invalid_config");
        assert!(!f.message.contains("not a url"));
    }

    #[test]
    fn http_errors_keep_their_status() {
        let e = HttpError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "x");
        let f = Failure::from_http(&e);
        assert_eq!(f.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(f.class, Class::InvalidRequest);
        assert_eq!(f.code, "payload_too_large");
    }

    #[test]
    fn unknown_model_is_404_and_bounded() {
        let f = Failure::unknown_model(&"m".repeat(1000));
        assert_eq!(f.status, StatusCode::NOT_FOUND);
        assert!(f.message.len() < 300);
        assert_eq!(Failure::busy().retry_after, Some(DEFAULT_RETRY_AFTER));
    }
}
