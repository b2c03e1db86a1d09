//! [`DirectoryClient`]: the IICP-DIR REST client shared by the consumer [`Client`],
//! the node runtime and the CLI.
//!
//! Implements PROTOCOL.md §8.0 (one configured base URL, every path derived from it —
//! DESIGN §4.13, §19 T9/T27; bearer node_token, `X-Node-Id` next to a plain node_token),
//! §8.2 REGISTER (201), §8.3 HEARTBEAT, §8.4 DISCOVER (with the `Cache-Control` max-age
//! the directory sends, for the client's discovery cache), §8.5 ticketed dispatch (ticket
//! verified against the directory key: signature, claims, issuer = directory origin,
//! node, intent, expiry, policy-manifest binding), §8.6 DEREGISTER (`DELETE` with a JSON
//! body), §8.10 consumer tokens and the directory key (cached), and §19 T29: directory
//! calls follow 307/308 up to 3 hops (provider calls never do so across origins).
//!
//! Every request carries `Accept: application/json` and `X-IICP-Version: 1.5`; discover
//! and ticket requests carry the caller's `traceparent`. Tokens travel in
//! [`Secret`]s and never appear in errors or logs.
//!
//! [`Client`]: crate::Client

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

use iicp_proto::crypto::token::{
    directory_origin, verify_dispatch_ticket, DirectoryPublicKey, DispatchTicketCheck,
    DispatchTicketClaims,
};
use iicp_proto::directory::{
    ConsumerTokenRequest, ConsumerTokenResponse, DeregisterRequest, DirectoryKey, DiscoverQuery,
    DispatchTicketRequest, DispatchTicketResponse, HeartbeatRequest, HeartbeatResponse, NodeEntry,
    NodeList, RegisterAck, RegisterRequest,
};
use iicp_proto::endpoint::UrlError;
use iicp_proto::error::ErrorCode;
use iicp_proto::ids::TraceParent;
use iicp_proto::secret::Secret;
use iicp_transport::clock::{Clock, SystemClock};
use iicp_transport::http::client::{HttpClient, HttpReply, Redirects, RequestBuilder};
use serde::de::DeserializeOwned;

use crate::error::{Error, Kind};

/// The public directory (DESIGN §4.13).
pub use iicp_proto::constants::DEFAULT_DIRECTORY_URL;
/// Redirect hops followed on directory calls (§19 T29).
pub const MAX_REDIRECTS: u8 = 3;
/// Default timeout of one directory request.
pub const DEFAULT_DIRECTORY_TIMEOUT: Duration = Duration::from_secs(10);
/// The protocol version advertised in `X-IICP-Version` (§19 T24).
pub use iicp_proto::constants::PROTOCOL_VERSION_HEADER;
/// Longest `Cache-Control: max-age` honoured for discovery results.
pub const MAX_DISCOVERY_TTL: Duration = Duration::from_secs(30);

/// Error code of a dispatch ticket that does not verify (seed SDK).
pub(crate) const TICKET_UNVERIFIED: &str = "IICP-DISPATCH-TICKET-UNVERIFIED";
/// Error code of a dispatch ticket without a usable route (seed SDK).
pub(crate) const TICKET_MALFORMED: &str = "IICP-DISPATCH-TICKET-MALFORMED";

/// A dispatch ticket whose signature and claims verified (§8.5).
#[derive(Debug, Clone)]
pub struct VerifiedTicket {
    /// The directory's answer (the ticket itself is a [`Secret`]).
    pub response: DispatchTicketResponse,
    /// The route: the node to submit to.
    pub route: NodeEntry,
    /// The verified claims.
    pub claims: DispatchTicketClaims,
}

impl VerifiedTicket {
    /// The routed node id (equal to the ticket's `node_id` claim).
    pub fn node_id(&self) -> &str {
        &self.claims.node_id
    }
}

/// The outcome of [`DirectoryClient::dispatch_ticket`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TicketOutcome {
    /// 201 with a verified ticket and its route.
    Ticket(Box<VerifiedTicket>),
    /// 404 `no_route_available`: no (further) eligible node.
    NoRoute,
    /// The directory does not offer ticketed dispatch (404/405/501, or 503
    /// `not_configured`): use plain discovery.
    Unavailable,
}

struct Inner {
    base: String,
    origin: String,
    http: HttpClient,
    timeout: Duration,
    key: Mutex<Option<DirectoryPublicKey>>,
}

/// A client of one directory. Cheap to clone (shares the HTTP pool and the cached
/// directory key).
///
/// ```no_run
/// use iicp_client::DirectoryClient;
/// use iicp_proto::directory::DiscoverQuery;
/// use iicp_transport::http::client::{HttpClient, HttpClientConfig};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let http = HttpClient::new(HttpClientConfig::default())?;
/// let dir = DirectoryClient::new("https://iicp.network/api", http)?;
/// let intent = "urn:iicp:intent:llm:chat:v1".parse()?;
/// let list = dir.discover(&DiscoverQuery::new(&intent), None).await?;
/// println!("{} nodes", list.nodes.len());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DirectoryClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DirectoryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryClient")
            .field("base_url", &self.inner.base)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl DirectoryClient {
    /// A client for the directory at `base_url` (e.g. `https://iicp.network/api`; a
    /// trailing `/` is ignored). Every path is derived from it (`{base}/v1/register`
    /// …).
    ///
    /// # Errors
    /// `invalid_config` when `base_url` is not an absolute `http(s)://` URL with a
    /// host, or carries userinfo, a query or a fragment.
    pub fn new(base_url: &str, http: HttpClient) -> Result<Self, Error> {
        let base = validate_base_url(base_url)?;
        let origin = directory_origin(&base).to_owned();
        Ok(Self {
            inner: Arc::new(Inner {
                base,
                origin,
                http,
                timeout: DEFAULT_DIRECTORY_TIMEOUT,
                key: Mutex::new(None),
            }),
        })
    }

    /// The same directory with another per-request timeout (default 10 s).
    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                base: self.inner.base.clone(),
                origin: self.inner.origin.clone(),
                http: self.inner.http.clone(),
                timeout,
                key: Mutex::new(*self.inner.key.lock()),
            }),
        }
    }

    /// The base URL, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// The directory origin (`iss` of its tokens): the base URL without `/api`.
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.inner.base)
    }

    fn prepare(&self, req: RequestBuilder, traceparent: Option<&TraceParent>) -> RequestBuilder {
        let req = req
            .header("accept", "application/json")
            .header(
                iicp_proto::constants::VERSION_HEADER,
                PROTOCOL_VERSION_HEADER,
            )
            .redirects(Redirects::follow(MAX_REDIRECTS))
            .timeout(self.inner.timeout);
        match traceparent {
            Some(tp) => req.header("traceparent", tp.to_string()),
            None => req,
        }
    }

    async fn send(&self, req: RequestBuilder) -> Result<HttpReply, Error> {
        req.send()
            .await
            .map_err(|e| Error::http(e, ErrorCode::Timeout))
    }

    /// `REGISTER`: `POST {base}/v1/register` → 201 ACK (§8.2).
    ///
    /// # Errors
    /// The directory's error (e.g. 422 `validation_error`, `liveness_failed`,
    /// 429 `IICP-E034`, 403 `IICP-E049`/`E050`), or a transport error.
    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterAck, Error> {
        let http = self.inner.http.post_json(self.url("/v1/register"), req);
        let reply = self.send(self.prepare(http, None)).await?;
        parse_ok(&reply)
    }

    /// `HEARTBEAT`: `POST {base}/v1/heartbeat` with `Authorization: Bearer <node_token>`
    /// (§8.3).
    ///
    /// # Errors
    /// The directory's error (401, 404 `IICP-E003` re-register, 429) or a transport
    /// error.
    pub async fn heartbeat(
        &self,
        node_token: &Secret,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, Error> {
        let http = self
            .inner
            .http
            .post_json(self.url("/v1/heartbeat"), req)
            .bearer(node_token.clone());
        let reply = self.send(self.prepare(http, None)).await?;
        parse_ok(&reply)
    }

    /// `DEREGISTER`: `DELETE {base}/v1/register` with body `{"node_id"}` and the bearer
    /// node_token (§8.6, §19 T9).
    ///
    /// # Errors
    /// The directory's error or a transport error.
    pub async fn deregister(&self, node_token: &Secret, node_id: &str) -> Result<(), Error> {
        let body = DeregisterRequest {
            node_id: node_id.to_owned(),
            ..DeregisterRequest::default()
        };
        let http = self
            .inner
            .http
            .delete_json(self.url("/v1/register"), &body)
            .bearer(node_token.clone());
        let reply = self.send(self.prepare(http, None)).await?;
        expect_success(&reply)
    }

    /// `DISCOVER`: `GET {base}/v1/discover?intent=…` (§8.4). Discovery itself is never
    /// retried.
    ///
    /// # Errors
    /// The directory's error (422 for a bad query) or a transport error.
    pub async fn discover(
        &self,
        query: &DiscoverQuery,
        traceparent: Option<&TraceParent>,
    ) -> Result<NodeList, Error> {
        self.discover_with_ttl(query, traceparent)
            .await
            .map(|(list, _)| list)
    }

    /// Like [`DirectoryClient::discover`], also returning the `Cache-Control` max-age
    /// of the answer (bounded by [`MAX_DISCOVERY_TTL`]).
    pub(crate) async fn discover_with_ttl(
        &self,
        query: &DiscoverQuery,
        traceparent: Option<&TraceParent>,
    ) -> Result<(NodeList, Option<Duration>), Error> {
        let mut url = self.url("/v1/discover");
        let mut sep = '?';
        for (k, v) in query.to_query_pairs() {
            url.push(sep);
            url.push_str(k);
            url.push('=');
            url.push_str(&percent_encode(&v));
            sep = '&';
        }
        let http = self.inner.http.get(url);
        let reply = self.send(self.prepare(http, traceparent)).await?;
        let list: NodeList = parse_ok(&reply)?;
        Ok((list, cache_max_age(&reply)))
    }

    /// Ticketed dispatch: `POST {base}/v1/dispatch/ticket` (§8.5). A 201 ticket is
    /// verified against the directory key ([`DirectoryClient::directory_key`]):
    /// signature, `v`, `typ`, `aud`, `iss` = this directory's origin, `node_id` = the
    /// route's node, `intent` = the requested one, not expired, `jti`, and the
    /// policy-manifest binding.
    ///
    /// Returns [`TicketOutcome::NoRoute`] for 404 `no_route_available` and
    /// [`TicketOutcome::Unavailable`] for 404/405/501 and 503 `not_configured` (also
    /// when the directory key itself is `not_configured`).
    ///
    /// # Errors
    /// `IICP-DISPATCH-TICKET-UNVERIFIED` for a ticket that does not verify,
    /// `IICP-DISPATCH-TICKET-MALFORMED` for a route without node id or endpoint,
    /// `IICP-POLICY-MANIFEST-BINDING-MISMATCH`, other directory errors, transport errors.
    pub async fn dispatch_ticket(
        &self,
        req: &DispatchTicketRequest,
        traceparent: Option<&TraceParent>,
    ) -> Result<TicketOutcome, Error> {
        let http = self
            .inner
            .http
            .post_json(self.url("/v1/dispatch/ticket"), req);
        let reply = self.send(self.prepare(http, traceparent)).await?;
        let status = reply.status.as_u16();
        if !reply.is_success() {
            let body = reply.error_body();
            return match (status, &body.code) {
                (404, ErrorCode::NoRouteAvailable) => Ok(TicketOutcome::NoRoute),
                (404 | 405 | 501, _) => Ok(TicketOutcome::Unavailable),
                (503, ErrorCode::NotConfigured) => Ok(TicketOutcome::Unavailable),
                _ => Err(Error::remote(body)),
            };
        }
        let response: DispatchTicketResponse = parse_ok(&reply)?;
        let Some(route) = response.route.clone() else {
            return Err(malformed("dispatch ticket carries no route"));
        };
        let Some(node_id) = route.node_id.clone().or_else(|| response.node_id.clone()) else {
            return Err(malformed("dispatch ticket route has no node_id"));
        };
        if route.endpoint.as_deref().is_none_or(str::is_empty)
            && route
                .transport_endpoint
                .as_deref()
                .is_none_or(str::is_empty)
        {
            return Err(malformed("dispatch ticket route has no endpoint"));
        }
        if response.node_id.as_deref().is_some_and(|n| n != node_id) {
            return Err(malformed("dispatch ticket node_id differs from its route"));
        }
        let key = match self.directory_key().await {
            Ok(key) => key,
            Err(e) if e.code() == &ErrorCode::NotConfigured => {
                return Ok(TicketOutcome::Unavailable)
            }
            Err(e) => return Err(e),
        };
        let manifest = route
            .node_policy_manifest
            .as_ref()
            .and_then(|m| m.pointer("/verification/canonical_sha256"))
            .and_then(serde_json::Value::as_str);
        let check = DispatchTicketCheck {
            issuer: &self.inner.origin,
            node_id: &node_id,
            intent: &req.intent,
            policy_manifest_sha256: manifest,
        };
        let claims = verify_dispatch_ticket(
            &key,
            response.ticket.expose(),
            &check,
            SystemClock.now_secs(),
        )
        .map_err(|e| {
            let code = if e == iicp_proto::crypto::token::TokenError::PolicyManifestMismatch {
                ErrorCode::PolicyManifestBindingMismatch
            } else {
                ErrorCode::from(TICKET_UNVERIFIED)
            };
            Error::new(
                Kind::Protocol,
                code,
                format!("dispatch ticket refused: {e}"),
            )
            .with_source(e)
        })?;
        let mut route = route;
        route.node_id = Some(node_id);
        Ok(TicketOutcome::Ticket(Box::new(VerifiedTicket {
            response,
            route,
            claims,
        })))
    }

    /// The directory's Ed25519 key: `GET {base}/v1/directory-key` (§8.10), fetched once
    /// and cached for the life of this client (and its clones).
    ///
    /// # Errors
    /// 503 `not_configured` when the directory has no key, `backend_error` for a key
    /// that is not 64 hex digits of an Ed25519 point, transport errors.
    pub async fn directory_key(&self) -> Result<DirectoryPublicKey, Error> {
        if let Some(key) = *self.inner.key.lock() {
            return Ok(key);
        }
        let http = self.inner.http.get(self.url("/v1/directory-key"));
        let reply = self.send(self.prepare(http, None)).await?;
        let doc: DirectoryKey = parse_ok(&reply)?;
        let bytes = doc
            .key_bytes()
            .map_err(|e| Error::protocol(format!("directory key refused: {e}")).with_source(e))?;
        let key = DirectoryPublicKey::from_bytes(&bytes)
            .map_err(|e| Error::protocol(format!("directory key refused: {e}")).with_source(e))?;
        *self.inner.key.lock() = Some(key);
        Ok(key)
    }

    /// A consumer token for calling `target_node_id` with `intent`:
    /// `POST {base}/v1/consumer-token` with the caller's bearer node_token and
    /// `X-Node-Id: <caller_node_id>` (§8.10, §19 T9). Only registered nodes get one.
    ///
    /// # Errors
    /// 401 (no caller auth), 404 (unknown target), 503 `not_configured`, transport
    /// errors.
    pub async fn consumer_token(
        &self,
        node_token: &Secret,
        caller_node_id: &str,
        target_node_id: &str,
        intent: &str,
    ) -> Result<ConsumerTokenResponse, Error> {
        let body = ConsumerTokenRequest {
            target_node_id: target_node_id.to_owned(),
            intent: intent.to_owned(),
            ..ConsumerTokenRequest::default()
        };
        let http = self
            .inner
            .http
            .post_json(self.url("/v1/consumer-token"), &body)
            .bearer(node_token.clone())
            .header("x-node-id", caller_node_id);
        let reply = self.send(self.prepare(http, None)).await?;
        let token: ConsumerTokenResponse = parse_ok(&reply)?;
        if token.token.is_empty() {
            return Err(Error::protocol("consumer-token response carries no token"));
        }
        Ok(token)
    }

    /// `PROBE`: `GET {base}/v1/probe?host=…&port=…` (§8.9): whether the directory
    /// reaches `host:port` from outside. `Ok(None)` when it answered without a verdict.
    ///
    /// # Errors
    /// The directory's refusal (422 `private_address`, 404 without a probe, 429) or a
    /// transport error.
    pub async fn probe(&self, host: &str, port: u16) -> Result<Option<bool>, Error> {
        let url = format!(
            "{}?host={}&port={port}",
            self.url("/v1/probe"),
            percent_encode(host)
        );
        let reply = self
            .send(self.prepare(self.inner.http.get(url), None))
            .await?;
        let verdict: serde_json::Value = parse_ok(&reply)?;
        Ok(verdict
            .get("reachable")
            .and_then(serde_json::Value::as_bool))
    }

    /// A relay bind ticket: `POST {base}/v1/relay/ticket` with the worker's bearer
    /// node_token and `X-Node-Id` (§14.6), for the relay `relay_node_id` (`"*"`, any
    /// relay, when `None`).
    ///
    /// # Errors
    /// 401 (unknown token), 503 `not_configured` (no signing key), a reply without a
    /// ticket, transport errors.
    pub async fn relay_ticket(
        &self,
        node_token: &Secret,
        node_id: &str,
        relay_node_id: Option<&str>,
    ) -> Result<Secret, Error> {
        let body = serde_json::json!({"relay_node_id": relay_node_id.unwrap_or("*")});
        let http = self
            .inner
            .http
            .post_json(self.url("/v1/relay/ticket"), &body)
            .bearer(node_token.clone())
            .header("x-node-id", node_id);
        let reply = self.send(self.prepare(http, None)).await?;
        let answer: serde_json::Value = parse_ok(&reply)?;
        answer
            .get("ticket")
            .and_then(serde_json::Value::as_str)
            .filter(|t| !t.is_empty())
            .map(Secret::new)
            .ok_or_else(|| Error::protocol("relay ticket response carries no ticket"))
    }

    /// Node detail: `GET {base}/v1/node/{node_id}` (§8.11), as the directory sent it
    /// (health, probation, the gossip `public_key`, …).
    ///
    /// # Errors
    /// `invalid_config` for a node id that is not a plain identifier, 404 for an
    /// unknown node, transport errors.
    pub async fn node_detail(&self, node_id: &str) -> Result<serde_json::Value, Error> {
        if node_id.is_empty()
            || !node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Error::config("node id is not a plain identifier"));
        }
        let url = self.url(&format!("/v1/node/{node_id}"));
        let reply = self
            .send(self.prepare(self.inner.http.get(url), None))
            .await?;
        parse_ok(&reply)
    }

    /// Credit receipt: `POST {base}/v1/credits/award` with a signed receipt body and
    /// the node's bearer token (§8.11).
    ///
    /// # Errors
    /// The directory's error (401 for a wrong token, 409 for a replayed nonce) or a
    /// transport error.
    pub async fn award_credits(
        &self,
        node_token: &Secret,
        receipt: &serde_json::Value,
    ) -> Result<(), Error> {
        let http = self
            .inner
            .http
            .post_json(self.url("/v1/credits/award"), receipt)
            .bearer(node_token.clone());
        let reply = self.send(self.prepare(http, None)).await?;
        expect_success(&reply)
    }

    /// A node's credit ledger: `GET {base}/v1/credits/summary?node_id=…` with the node's
    /// bearer token (§8.1 credits extension), as the directory sent it.
    ///
    /// # Errors
    /// The directory's error (401, 404 without the extension), a body that is not a
    /// JSON object, or a transport error.
    pub async fn credits_summary(
        &self,
        node_token: &Secret,
        node_id: &str,
    ) -> Result<serde_json::Value, Error> {
        let url = self.url(&format!(
            "/v1/credits/summary?node_id={}",
            iicp_proto::endpoint::encode_component(node_id)
        ));
        let http = self.inner.http.get(url).bearer(node_token.clone());
        let reply = self.send(self.prepare(http, None)).await?;
        let body: serde_json::Value = parse_ok(&reply)?;
        if body.is_object() {
            Ok(body)
        } else {
            Err(Error::protocol("the credits summary is not a JSON object")
                .with_status(reply.status.as_u16()))
        }
    }
}

fn malformed(message: &str) -> Error {
    Error::new(Kind::Protocol, ErrorCode::from(TICKET_MALFORMED), message)
}

/// 2xx → `Ok`; otherwise the parsed error body.
fn expect_success(reply: &HttpReply) -> Result<(), Error> {
    if reply.is_success() {
        Ok(())
    } else {
        Err(Error::remote(reply.error_body()))
    }
}

/// 2xx → the JSON body; otherwise the parsed error body.
fn parse_ok<T: DeserializeOwned>(reply: &HttpReply) -> Result<T, Error> {
    expect_success(reply)?;
    reply.json().map_err(|e| {
        Error::protocol(format!("unexpected directory response: {e}"))
            .with_status(reply.status.as_u16())
            .with_source(e)
    })
}

/// `max-age` of a `Cache-Control` header, bounded by [`MAX_DISCOVERY_TTL`].
fn cache_max_age(reply: &HttpReply) -> Option<Duration> {
    let value = reply.headers.get("cache-control")?.to_str().ok()?;
    let mut max_age = None;
    for directive in value.split(',') {
        let directive = directive.trim().to_ascii_lowercase();
        if directive == "no-store" || directive == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(v) = directive.strip_prefix("max-age=") {
            max_age = v.trim().parse::<u64>().ok().map(Duration::from_secs);
        }
    }
    max_age.map(|d| d.min(MAX_DISCOVERY_TTL))
}

/// Checks a directory base URL and strips trailing `/`.
fn validate_base_url(url: &str) -> Result<String, Error> {
    let url = url.trim().trim_end_matches('/');
    iicp_proto::endpoint::parse_url(url, iicp_proto::endpoint::HTTP_SCHEMES).map_err(|e| {
        Error::config(match e {
            UrlError::Scheme => "directory URL must start with http:// or https://",
            UrlError::Extras => "directory URL must not carry credentials, a query or a fragment",
            _ => "directory URL needs a valid host (and port), without whitespace",
        })
    })?;
    Ok(url.to_owned())
}

/// Percent-encodes a query component (`iicp_proto::endpoint::encode_component`).
pub(crate) fn percent_encode(s: &str) -> String {
    iicp_proto::endpoint::encode_component(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(
            validate_base_url("https://iicp.network/api/")
                .ok()
                .as_deref(),
            Some("https://iicp.network/api")
        );
        assert!(validate_base_url("ftp://x").is_err());
        assert!(validate_base_url("https://u:p@x/api").is_err());
        assert!(validate_base_url("https://x/api?x=1").is_err());
        assert!(validate_base_url("https:///api").is_err());
    }

    #[test]
    fn encoding() {
        assert_eq!(
            percent_encode("urn:iicp:intent:llm:chat:v1"),
            "urn%3Aiicp%3Aintent%3Allm%3Achat%3Av1"
        );
        assert_eq!(percent_encode("a b/é"), "a%20b%2F%C3%A9");
    }
}
