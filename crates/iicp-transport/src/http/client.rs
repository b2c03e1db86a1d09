//! The pooled HTTP client of the workspace: node → directory, client → node, backends →
//! model servers.
//!
//! One [`HttpClient`] (cheap to clone, share it) holds a keep-alive pool of HTTP/1.1
//! connections, each driven by the task that uses it (`pool`, ADR 0023), and a rustls
//! connector (ring provider, webpki roots plus any
//! private CA given in [`HttpClientConfig::extra_root_certificates`]); `http://` and
//! `https://` both work. Everything is bounded: connect timeout, a per-request timeout
//! covering redirects and the body, and a response body cap
//! ([`HttpClientConfig::max_response_bytes`]) enforced while reading.
//!
//! Spec points implemented here:
//! * §8 / conf SDK-05: certificates are always verified; the switch to accept invalid
//!   certificates ([`HttpClientConfig::danger_accept_invalid_certs`]) only exists in
//!   debug builds.
//! * §8.0, §19 T9/T29, DESIGN §4.13: the caller picks a [`Redirects`] policy; directory
//!   calls follow 307/308 (method and body kept) up to 3 hops, with loop detection.
//!   Other statuses (301/302/303) are never followed.
//! * §10.4 LOG-FORBIDDEN, DESIGN §4.10: bearer tokens live in a
//!   [`Secret`], the header is marked sensitive, and URLs in
//!   errors lose their userinfo and query string.
//!
//! ```no_run
//! use iicp_transport::http::client::{HttpClient, HttpClientConfig, Redirects};
//! # async fn run() -> Result<(), iicp_transport::http::client::HttpClientError> {
//! let client = HttpClient::new(HttpClientConfig::default())?;
//! let reply = client
//!     .post_json("https://iicp.network/api/v1/heartbeat", &serde_json::json!({"node_id": "n1"}))
//!     .bearer("node-token")
//!     .redirects(Redirects::follow(3))
//!     .send()
//!     .await?
//!     .error_for_status()?;
//! let ack: serde_json::Value = reply.json()?;
//! # let _ = ack; Ok(()) }
//! ```

mod error;
#[cfg(debug_assertions)]
mod insecure;
mod pool;
mod redirect;

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION,
    USER_AGENT,
};
use http::{Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body as _, Frame};
use hyper_util::client::legacy::connect::HttpConnector;
use iicp_proto::error::ErrorBody;
use iicp_proto::secret::Secret;
use serde::de::DeserializeOwned;

use crate::resolve::{literal, AddressRule, RuleResolver};
use serde::Serialize;

pub use error::HttpClientError;
pub use redirect::Redirects;

use error::{redact_str, redact_uri};
use pool::{Pool, PooledBody};

/// The default `User-Agent`: `iicp-rs/<crate version>`.
pub const DEFAULT_USER_AGENT: &str = concat!("iicp-rs/", env!("CARGO_PKG_VERSION"));

/// Settings of an [`HttpClient`]. `Default` gives the production values.
#[derive(Clone)]
#[non_exhaustive]
pub struct HttpClientConfig {
    /// TCP connect timeout per address. Default 10 s.
    pub connect_timeout: Duration,
    /// Whole-request timeout (connect, redirects, response head and body) unless a
    /// request sets its own. Default 30 s.
    pub request_timeout: Duration,
    /// Largest response body accepted, in bytes. Default 16 MiB.
    pub max_response_bytes: usize,
    /// How long an idle pooled connection is kept. Default 90 s.
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept per host. Default 32.
    pub pool_max_idle_per_host: usize,
    /// Extra trusted root certificates (DER), for private CAs and self-signed test
    /// servers; added to the webpki roots.
    pub extra_root_certificates: Vec<Vec<u8>>,
    /// The `User-Agent` sent with every request. Default [`DEFAULT_USER_AGENT`].
    pub user_agent: String,
    /// Headers added to every request that does not set them itself, treated like
    /// credentials: marked sensitive, and not sent after a redirect leaves the origin.
    /// Default none.
    pub default_headers: http::HeaderMap,
    /// Redirect policy of requests that do not set one. Default [`Redirects::None`].
    pub redirects: Redirects,
    /// Which addresses the client may connect to, checked on the answer the connector
    /// itself dials and on IP-literal URLs ([`crate::resolve`]). Default: any.
    pub address_rule: Option<AddressRule>,
    /// The source address of connections to peers of its family (connections to the
    /// other family are not bound). For peers that authorise by the caller's address,
    /// such as a UPnP gateway's IPv6 firewall. Default: chosen by the system.
    pub local_address: Option<IpAddr>,
    /// Accept any server certificate. Exists only in debug builds (conf SDK-05: no
    /// TLS-verify switch in release builds). Default off.
    #[cfg(debug_assertions)]
    pub danger_accept_invalid_certs: bool,
}

impl Default for HttpClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_response_bytes: 16 * 1024 * 1024,
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 32,
            extra_root_certificates: Vec::new(),
            user_agent: DEFAULT_USER_AGENT.to_owned(),
            default_headers: http::HeaderMap::new(),
            redirects: Redirects::None,
            address_rule: None,
            local_address: None,
            #[cfg(debug_assertions)]
            danger_accept_invalid_certs: false,
        }
    }
}

impl fmt::Debug for HttpClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("HttpClientConfig");
        d.field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("pool_max_idle_per_host", &self.pool_max_idle_per_host)
            .field("address_rule", &self.address_rule.is_some())
            .field("local_address", &self.local_address)
            .field(
                "extra_root_certificates",
                &self.extra_root_certificates.len(),
            )
            .field("user_agent", &self.user_agent)
            .field(
                "default_headers",
                &self.default_headers.keys().collect::<Vec<_>>(),
            )
            .field("redirects", &self.redirects);
        #[cfg(debug_assertions)]
        d.field(
            "danger_accept_invalid_certs",
            &self.danger_accept_invalid_certs,
        );
        d.finish()
    }
}

struct Inner {
    pool: Pool,
    /// What the client was built from (its timeouts, caps and redirect policy, and the
    /// base of [`HttpClient::with_address_rule`]).
    config: HttpClientConfig,
    user_agent: HeaderValue,
}

/// A pooled HTTP/1.1 client over rustls. Clones share the pool.
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("request_timeout", &self.inner.config.request_timeout)
            .field("max_response_bytes", &self.inner.config.max_response_bytes)
            .field("redirects", &self.inner.config.redirects)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// Builds a client. Fails on an unparsable extra root certificate or user agent.
    pub fn new(config: HttpClientConfig) -> Result<Self, HttpClientError> {
        let user_agent =
            HeaderValue::from_str(&config.user_agent).map_err(|_| HttpClientError::Config {
                reason: "user agent is not a valid header value",
                source: None,
            })?;

        let pool = Pool::new(
            connector(&config)?,
            config.pool_idle_timeout,
            config.pool_max_idle_per_host,
        );

        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                user_agent,
                config,
            }),
        })
    }

    /// A client with this one's settings and `rule` as its [`address_rule`], with a
    /// pool of its own (connections admitted without the rule are not shared).
    ///
    /// [`address_rule`]: HttpClientConfig::address_rule
    pub fn with_address_rule(&self, rule: AddressRule) -> Result<Self, HttpClientError> {
        let mut config = self.inner.config.clone();
        config.address_rule = Some(rule);
        Self::new(config)
    }

    /// A request with `method` to `url` (absolute `http://` or `https://`).
    pub fn request(&self, method: Method, url: impl AsRef<str>) -> RequestBuilder {
        RequestBuilder::new(self.clone(), method, url.as_ref())
    }

    /// A `GET` request.
    pub fn get(&self, url: impl AsRef<str>) -> RequestBuilder {
        self.request(Method::GET, url)
    }

    /// A `POST` request with a JSON body.
    pub fn post_json<T: Serialize + ?Sized>(
        &self,
        url: impl AsRef<str>,
        body: &T,
    ) -> RequestBuilder {
        self.request(Method::POST, url).json(body)
    }

    /// A `DELETE` request with a JSON body (the directory deregister, §19 T9).
    pub fn delete_json<T: Serialize + ?Sized>(
        &self,
        url: impl AsRef<str>,
        body: &T,
    ) -> RequestBuilder {
        self.request(Method::DELETE, url).json(body)
    }
}

/// TCP (the address rule, the connect timeout, the local address, `TCP_NODELAY`), then
/// rustls for `https`.
fn connector(config: &HttpClientConfig) -> Result<pool::Connector, HttpClientError> {
    let mut http = HttpConnector::new_with_resolver(RuleResolver {
        rule: config.address_rule.clone(),
    });
    http.enforce_http(false);
    // binds only connections of the address's family
    http.set_local_address(config.local_address);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(config)?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

fn tls_config(config: &HttpClientConfig) -> Result<rustls::ClientConfig, HttpClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|err| HttpClientError::Config {
            reason: "TLS protocol versions unsupported by the crypto provider",
            source: Some(Box::new(err)),
        })?;

    #[cfg(debug_assertions)]
    if config.danger_accept_invalid_certs {
        tracing::warn!("TLS certificate verification is disabled (debug build only)");
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(insecure::AcceptAnyCert::new(provider)))
            .with_no_client_auth());
    }

    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for der in &config.extra_root_certificates {
        roots
            .add(rustls::pki_types::CertificateDer::from(der.clone()))
            .map_err(|err| HttpClientError::Config {
                reason: "extra root certificate is not a valid DER certificate",
                source: Some(Box::new(err)),
            })?;
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// A request being built; finish it with [`RequestBuilder::send`]. Invalid input
/// (URL, header) is reported by `send`.
pub struct RequestBuilder {
    client: HttpClient,
    method: Method,
    url: Result<Uri, HttpClientError>,
    headers: HeaderMap,
    body: Bytes,
    bearer: Option<Secret>,
    timeout: Option<Duration>,
    redirects: Option<Redirects>,
    max_response_bytes: Option<usize>,
    error: Option<HttpClientError>,
}

impl fmt::Debug for RequestBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = match &self.url {
            Ok(uri) => redact_uri(uri),
            Err(_) => "<invalid>".to_owned(),
        };
        let header_names: Vec<&str> = self.headers.keys().map(HeaderName::as_str).collect();
        f.debug_struct("RequestBuilder")
            .field("method", &self.method)
            .field("url", &url)
            .field("headers", &header_names)
            .field("body_len", &self.body.len())
            .field("bearer", &self.bearer)
            .field("timeout", &self.timeout)
            .field("redirects", &self.redirects)
            .finish()
    }
}

impl RequestBuilder {
    fn new(client: HttpClient, method: Method, url: &str) -> Self {
        Self {
            client,
            method,
            url: parse_url(url),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            bearer: None,
            timeout: None,
            redirects: None,
            max_response_bytes: None,
            error: None,
        }
    }

    /// Adds a header (appending to earlier values of the same name). `Authorization`
    /// and `X-IICP-Consumer-Token` values are marked sensitive.
    pub fn header<K, V>(mut self, name: K, value: V) -> Self
    where
        K: TryInto<HeaderName>,
        V: TryInto<HeaderValue>,
    {
        let name = match name.try_into() {
            Ok(name) => name,
            Err(_) => {
                self.error.get_or_insert(HttpClientError::InvalidHeader {
                    name: "<invalid name>".to_owned(),
                });
                return self;
            }
        };
        match value.try_into() {
            Ok(mut value) => {
                if is_credential_header(&name) {
                    value.set_sensitive(true);
                }
                self.headers.append(name, value);
            }
            Err(_) => {
                self.error.get_or_insert(HttpClientError::InvalidHeader {
                    name: name.as_str().to_owned(),
                });
            }
        }
        self
    }

    /// Sends `Authorization: Bearer <token>`. The token is kept redacted in `Debug` and
    /// dropped when a redirect leaves the origin.
    pub fn bearer(mut self, token: impl Into<Secret>) -> Self {
        self.bearer = Some(token.into());
        self
    }

    /// Replaces the body with `bytes` and sets `Content-Type`.
    pub fn body(mut self, content_type: &'static str, bytes: impl Into<Bytes>) -> Self {
        self.body = bytes.into();
        self.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        self
    }

    /// Replaces the body with `value` as JSON (`Content-Type: application/json`).
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(bytes) => self.body("application/json", bytes),
            Err(err) => {
                self.error.get_or_insert(HttpClientError::Serialize {
                    source: Box::new(err),
                });
                self
            }
        }
    }

    /// Overrides the whole-request timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Overrides the redirect policy.
    pub fn redirects(mut self, redirects: Redirects) -> Self {
        self.redirects = Some(redirects);
        self
    }

    /// Overrides the response body cap.
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = Some(limit);
        self
    }

    /// Sends the request and reads the whole response body (bounded). Any HTTP status
    /// is a successful reply; see [`HttpReply::error_for_status`].
    pub async fn send(self) -> Result<HttpReply, HttpClientError> {
        let (url, inner, timeout, parts) = self.prepare()?;
        let exchange = parts.exchange(&inner);
        match tokio::time::timeout(timeout, exchange.run(url.clone())).await {
            Ok(result) => result,
            Err(_) => Err(HttpClientError::Timeout {
                url: redact_uri(&url),
                after: timeout,
            }),
        }
    }

    /// Validates the builder and resolves its options against the client's defaults:
    /// the URL, the client, the request timeout and the parts of the exchange.
    fn prepare(self) -> Result<(Uri, Arc<Inner>, Duration, Parts), HttpClientError> {
        if let Some(err) = self.error {
            return Err(err);
        }
        let url = self.url?;
        let inner = Arc::clone(&self.client.inner);
        let parts = Parts {
            redirects: self.redirects.unwrap_or(inner.config.redirects),
            max_response_bytes: self
                .max_response_bytes
                .unwrap_or(inner.config.max_response_bytes),
            method: self.method,
            headers: self.headers,
            body: self.body,
            bearer: self.bearer,
        };
        let timeout = self.timeout.unwrap_or(inner.config.request_timeout);
        Ok((url, inner, timeout, parts))
    }
}

/// What an [`Exchange`] needs besides the client: the request and its policies.
struct Parts {
    method: Method,
    headers: HeaderMap,
    body: Bytes,
    bearer: Option<Secret>,
    redirects: Redirects,
    max_response_bytes: usize,
}

impl Parts {
    fn exchange(self, inner: &Inner) -> Exchange<'_> {
        Exchange {
            inner,
            method: self.method,
            headers: self.headers,
            body: self.body,
            bearer: self.bearer,
            redirects: self.redirects,
            max_response_bytes: self.max_response_bytes,
        }
    }
}

impl RequestBuilder {
    /// Sends the request and returns as soon as the response head arrives; the body is
    /// read incrementally with [`HttpStream::chunk`] (server-sent events, large
    /// downloads). Redirects are not followed. The request timeout covers the head; each
    /// chunk must arrive within the same timeout of the previous one, and the whole body
    /// stays within the response size limit.
    pub async fn send_streaming(self) -> Result<HttpStream, HttpClientError> {
        let (url, inner, timeout, mut parts) = self.prepare()?;
        parts.redirects = Redirects::None;
        let exchange = parts.exchange(&inner);
        let (url, inner) = (&url, &inner);
        let redacted = redact_uri(url);
        refuse_literal(inner, url)?;
        let request = exchange.build(url, true)?;
        let response = match tokio::time::timeout(timeout, inner.pool.request(request)).await {
            Ok(r) => r.map_err(|err| error::classify(err, url, inner.config.connect_timeout))?,
            Err(_) => {
                return Err(HttpClientError::Timeout {
                    url: redacted,
                    after: timeout,
                })
            }
        };
        let (parts, body) = response.into_parts();
        Ok(HttpStream {
            status: parts.status,
            headers: parts.headers,
            body,
            remaining: exchange.max_response_bytes,
            limit: exchange.max_response_bytes,
            idle_timeout: timeout,
            idle: None,
            active: tokio::time::Instant::now(),
            url: redacted,
        })
    }
}

/// A response whose body is read chunk by chunk ([`RequestBuilder::send_streaming`]).
#[derive(Debug)]
#[non_exhaustive]
pub struct HttpStream {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    body: PooledBody,
    remaining: usize,
    limit: usize,
    idle_timeout: Duration,
    /// One timer for the whole body, armed on the first read and moved on only when it
    /// fires early (a timer per chunk cost each chunk a registration and a removal).
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the last frame arrived.
    active: tokio::time::Instant,
    url: String,
}

/// A `Retry-After: <seconds>` header in milliseconds, if present and numeric.
fn retry_after_ms(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| secs.saturating_mul(1000))
}

impl HttpStream {
    /// The `Retry-After: <seconds>` header in milliseconds, if present and numeric.
    pub fn retry_after_ms(&self) -> Option<u64> {
        retry_after_ms(&self.headers)
    }

    /// The next chunk of the body, `None` at its end; an error when no frame came for
    /// the idle timeout.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, HttpClientError> {
        loop {
            let frame = match self.next_frame().await {
                None => {
                    return Err(HttpClientError::Timeout {
                        url: self.url.clone(),
                        after: self.idle_timeout,
                    })
                }
                Some(None) => return Ok(None),
                Some(Some(Err(e))) => {
                    return Err(HttpClientError::Body {
                        url: self.url.clone(),
                        source: Box::new(e),
                    })
                }
                Some(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.len() > self.remaining {
                return Err(HttpClientError::BodyTooLarge {
                    url: self.url.clone(),
                    limit: self.limit,
                });
            }
            self.remaining -= data.len();
            return Ok(Some(data));
        }
    }

    /// The next frame, or `None` when the idle timeout passed without one.
    async fn next_frame(&mut self) -> Option<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let idle_timeout = self.idle_timeout;
        let idle = self
            .idle
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle_timeout)));
        let (body, active) = (&mut self.body, &mut self.active);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(frame) = Pin::new(&mut *body).poll_frame(cx) {
                *active = tokio::time::Instant::now();
                return Poll::Ready(Some(frame));
            }
            while idle.as_mut().poll(cx).is_ready() {
                let due = *active + idle_timeout;
                if tokio::time::Instant::now() >= due {
                    return Poll::Ready(None);
                }
                idle.as_mut().reset(due);
            }
            Poll::Pending
        })
        .await
    }

    /// Reads the rest of the body (within the size limit).
    pub async fn collect(mut self) -> Result<Bytes, HttpClientError> {
        let mut all = Vec::new();
        while let Some(c) = self.chunk().await? {
            all.extend_from_slice(&c);
        }
        Ok(Bytes::from(all))
    }
}

/// The address rule on an IP-literal URL, which hyper-util dials without resolving.
fn refuse_literal(inner: &Inner, uri: &Uri) -> Result<(), HttpClientError> {
    let Some(rule) = inner.config.address_rule.as_ref() else {
        return Ok(());
    };
    match literal(uri.host().unwrap_or_default()) {
        Some(ip) if !rule.admits(&[ip]) => Err(HttpClientError::AddressRefused {
            url: redact_uri(uri),
        }),
        _ => Ok(()),
    }
}

fn is_credential_header(name: &HeaderName) -> bool {
    *name == AUTHORIZATION
        || *name == http::header::PROXY_AUTHORIZATION
        || *name == http::header::COOKIE
        || name.as_str() == "x-iicp-consumer-token"
}

fn parse_url(url: &str) -> Result<Uri, HttpClientError> {
    let invalid = |reason| HttpClientError::InvalidUrl {
        url: redact_str(url),
        reason,
    };
    let uri: Uri = url.parse().map_err(|_| invalid("not a valid URL"))?;
    check_uri(&uri).map_err(invalid)?;
    Ok(uri)
}

/// An absolute `http`/`https` URI with a host and no userinfo.
fn check_uri(uri: &Uri) -> Result<(), &'static str> {
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(_) => return Err("scheme must be http or https"),
        None => return Err("URL must be absolute"),
    }
    let Some(authority) = uri.authority() else {
        return Err("URL has no host");
    };
    if authority.as_str().contains('@') {
        return Err("credentials in URLs are not supported");
    }
    if authority.host().is_empty() {
        return Err("URL has no host");
    }
    Ok(())
}

/// One logical request: the hops of its redirect chain.
struct Exchange<'a> {
    inner: &'a Inner,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
    bearer: Option<Secret>,
    redirects: Redirects,
    max_response_bytes: usize,
}

impl Exchange<'_> {
    async fn run(mut self, url: Uri) -> Result<HttpReply, HttpClientError> {
        let mut current = url;
        let mut visited: Vec<Uri> = Vec::new();
        let mut credentials = true;
        loop {
            refuse_literal(self.inner, &current)?;
            let request = self.build(&current, credentials)?;
            let response =
                self.inner.pool.request(request).await.map_err(|err| {
                    error::classify(err, &current, self.inner.config.connect_timeout)
                })?;

            let Redirects::Follow {
                max_hops,
                same_origin_only,
            } = self.redirects
            else {
                return self.read(response, &current).await;
            };
            let status = response.status();
            if status != StatusCode::TEMPORARY_REDIRECT && status != StatusCode::PERMANENT_REDIRECT
            {
                return self.read(response, &current).await;
            }
            let Some(location) = response.headers().get(LOCATION) else {
                return self.read(response, &current).await;
            };
            let refused = |reason| HttpClientError::RedirectRefused {
                url: redact_uri(&current),
                reason,
            };
            let next = location
                .to_str()
                .ok()
                .and_then(|loc| redirect::resolve(&current, loc))
                .ok_or_else(|| refused("invalid Location header"))?;
            check_uri(&next).map_err(|_| refused("Location is not an http(s) URL"))?;
            if visited.len() >= usize::from(max_hops) {
                return Err(HttpClientError::TooManyRedirects {
                    url: redact_uri(&current),
                    max_hops,
                });
            }
            if next == current || visited.contains(&next) {
                return Err(HttpClientError::RedirectLoop {
                    url: redact_uri(&next),
                });
            }
            if current.scheme_str() == Some("https") && next.scheme_str() != Some("https") {
                return Err(refused("redirect from https to http"));
            }
            let origin = visited.first().unwrap_or(&current);
            if same_origin_only && !redirect::same_origin(origin, &next) {
                return Err(refused("cross-origin redirect"));
            }
            if !redirect::same_origin(&current, &next) && credentials {
                credentials = false;
                remove_credentials(&mut self.headers);
            }
            tracing::debug!(
                from = %redact_uri(&current),
                to = %redact_uri(&next),
                status = status.as_u16(),
                "following redirect"
            );
            drop(response);
            visited.push(std::mem::replace(&mut current, next));
        }
    }

    fn build(
        &self,
        url: &Uri,
        credentials: bool,
    ) -> Result<http::Request<Full<Bytes>>, HttpClientError> {
        let mut request = http::Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = url.clone();
        let headers = request.headers_mut();
        headers.clone_from(&self.headers);
        headers
            .entry(USER_AGENT)
            .or_insert_with(|| self.inner.user_agent.clone());
        if credentials {
            for (name, value) in &self.inner.config.default_headers {
                if !headers.contains_key(name) {
                    let mut value = value.clone();
                    value.set_sensitive(true);
                    headers.insert(name.clone(), value);
                }
            }
            if let Some(token) = &self.bearer {
                let mut value = HeaderValue::try_from(format!("Bearer {}", token.expose()))
                    .map_err(|_| HttpClientError::InvalidHeader {
                        name: AUTHORIZATION.as_str().to_owned(),
                    })?;
                value.set_sensitive(true);
                headers.insert(AUTHORIZATION, value);
            }
        }
        Ok(request)
    }

    async fn read(
        &self,
        response: http::Response<PooledBody>,
        url: &Uri,
    ) -> Result<HttpReply, HttpClientError> {
        let limit = self.max_response_bytes;
        let too_large = || HttpClientError::BodyTooLarge {
            url: redact_uri(url),
            limit,
        };
        let (parts, body) = response.into_parts();
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(too_large());
        }
        let body = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
            Err(err) => {
                return Err(HttpClientError::Body {
                    url: redact_uri(url),
                    source: err,
                })
            }
        };
        Ok(HttpReply {
            status: parts.status,
            headers: parts.headers,
            body,
            uri: url.clone(),
        })
    }
}

/// Drops the credential headers (a redirect left the origin).
fn remove_credentials(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_credential_header(name))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// A complete response: status, headers and the whole (bounded) body.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HttpReply {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// The URL that answered (after redirects); redacted when read ([`HttpReply::url`]),
    /// not on every reply.
    uri: Uri,
}

impl HttpReply {
    /// The URL that answered (after redirects), without userinfo and query.
    pub fn url(&self) -> String {
        redact_uri(&self.uri)
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// Deserialises the body as JSON. The error names the position only, never body
    /// content (the body may hold tokens).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HttpClientError> {
        serde_json::from_slice(&self.body).map_err(|err| HttpClientError::Json {
            url: self.url(),
            line: err.line(),
            column: err.column(),
        })
    }

    /// The `Retry-After: <seconds>` header in milliseconds, if present and numeric.
    pub fn retry_after_ms(&self) -> Option<u64> {
        retry_after_ms(&self.headers)
    }

    /// The body parsed as an IICP error in any of the shapes peers send (§6.1), with
    /// this reply's status; a `Retry-After` header fills in `retry_after_ms` when the
    /// body has none (429/503 from directories, nodes and proxies).
    pub fn error_body(&self) -> ErrorBody {
        let mut body = ErrorBody::parse(self.status.as_u16(), &self.body);
        if body.retry_after_ms.is_none() {
            body.retry_after_ms = self.retry_after_ms();
        }
        body
    }

    /// `Ok(self)` for 2xx; otherwise [`HttpClientError::Status`] with the parsed error
    /// body.
    pub fn error_for_status(self) -> Result<Self, HttpClientError> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(HttpClientError::Status {
                status: self.status.as_u16(),
                error: Box::new(self.error_body()),
                url: self.url(),
            })
        }
    }
}
