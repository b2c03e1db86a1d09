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
use iicp_transport::http::client::{HttpClient, HttpClientError, Redirects};
use serde_json::Value;

use crate::handler::BoxFuture;

/// A failed directory call. Carries the HTTP status and the protocol code when the
/// directory answered; never the request or response body.
#[derive(Debug, thiserror::Error)]
#[error("directory {operation} failed{}", fmt_status(*.status))]
pub struct DirectoryError {
    operation: &'static str,
    status: Option<u16>,
    code: Option<ErrorCode>,
    retryable: bool,
    retry_after: Option<Duration>,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

fn fmt_status(status: Option<u16>) -> String {
    status
        .map(|s| format!(" with HTTP {s}"))
        .unwrap_or_default()
}

impl DirectoryError {
    /// An error for `operation` with an HTTP `status` and optional code.
    pub fn status(operation: &'static str, status: u16, code: Option<ErrorCode>) -> Self {
        Self {
            operation,
            status: Some(status),
            code,
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

    /// The protocol error code, when the directory sent one.
    pub fn code(&self) -> Option<&ErrorCode> {
        self.code.as_ref()
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
        let code = (!err.code().is_unknown()).then(|| err.code().clone());
        let retryable = err.is_retryable();
        Self {
            operation,
            status,
            code,
            retryable,
            retry_after: err.retry_after(),
            source: Some(Box::new(err)),
        }
    }

    fn from_http(operation: &'static str, err: HttpClientError) -> Self {
        match &err {
            HttpClientError::Status { status, error, .. } => {
                let code = (!error.code.is_unknown()).then(|| error.code.clone());
                Self::status(operation, *status, code)
                    .with_retry_after(error.retry_after_ms.map(Duration::from_millis))
            }
            _ => {
                let retryable = err.is_retryable();
                let mut e = Self::transport(operation, err);
                e.retryable = retryable;
                e
            }
        }
    }
}

/// What the node needs from a directory. Implemented by [`HttpDirectory`]; supply your
/// own to embed the node elsewhere or to script a directory in tests.
pub trait DirectoryApi: Send + Sync + fmt::Debug + 'static {
    /// `POST /v1/register` → the ACK (HTTP 201).
    fn register(&self, req: &RegisterRequest) -> BoxFuture<Result<RegisterAck, DirectoryError>>;

    /// `POST /v1/heartbeat` with `Authorization: Bearer <token>` → the PONG.
    fn heartbeat(
        &self,
        token: &Secret,
        req: &HeartbeatRequest,
    ) -> BoxFuture<Result<HeartbeatResponse, DirectoryError>>;

    /// `DELETE /v1/register` with `{node_id}`; 404 counts as done.
    fn deregister(&self, token: &Secret, node_id: &str) -> BoxFuture<Result<(), DirectoryError>>;

    /// `GET /v1/directory-key`; `None` when the directory has no key (404/503).
    fn directory_key(&self) -> BoxFuture<Result<Option<DirectoryPublicKey>, DirectoryError>>;

    /// `POST /v1/credits/award` with a signed receipt body (§8.11). The default says
    /// the operation is unsupported.
    fn award_credits(
        &self,
        token: &Secret,
        receipt: &Value,
    ) -> BoxFuture<Result<(), DirectoryError>> {
        let _ = (token, receipt);
        Box::pin(async { Err(DirectoryError::unsupported("credits award")) })
    }
}

/// [`DirectoryApi`] over HTTP: `iicp_client::DirectoryClient` for the directory
/// protocol, plus the credits-receipt POST it does not offer.
#[derive(Clone)]
pub struct HttpDirectory {
    client: DirectoryClient,
    http: HttpClient,
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
        let client = DirectoryClient::new(base_url, http.clone())
            .map_err(|e| DirectoryError::from_client("configure", e))?
            .with_timeout(timeout);
        Ok(Self { client, http })
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
    fn register(&self, req: &RegisterRequest) -> BoxFuture<Result<RegisterAck, DirectoryError>> {
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
    ) -> BoxFuture<Result<HeartbeatResponse, DirectoryError>> {
        let client = self.client.clone();
        let (token, req) = (token.clone(), req.clone());
        Box::pin(async move {
            client
                .heartbeat(&token, &req)
                .await
                .map_err(|e| DirectoryError::from_client("heartbeat", e))
        })
    }

    fn deregister(&self, token: &Secret, node_id: &str) -> BoxFuture<Result<(), DirectoryError>> {
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

    fn directory_key(&self) -> BoxFuture<Result<Option<DirectoryPublicKey>, DirectoryError>> {
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
    ) -> BoxFuture<Result<(), DirectoryError>> {
        let rb = self
            .http
            .post_json(
                format!("{}/v1/credits/award", self.client.base_url()),
                receipt,
            )
            .bearer(token.clone())
            .header("x-iicp-version", "1.5")
            .redirects(Redirects::follow(3))
            .timeout(Duration::from_secs(10));
        Box::pin(async move {
            rb.send()
                .await
                .and_then(|r| r.error_for_status())
                .map(|_| ())
                .map_err(|e| DirectoryError::from_http("credits award", e))
        })
    }
}
