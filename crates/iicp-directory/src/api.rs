//! The HTTP surface (PROTOCOL.md §8.1): every route under `/v1/…` and, through the
//! router alias, `/api/v1/…`. Each handler answers errors with the §6.1 JSON body and
//! the spec code; no handler logs or echoes a credential or a request value.

mod credits;
mod keys;
mod lookup;
mod node;
mod tokens;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, RETRY_AFTER};
use http::{HeaderMap, Method, StatusCode};
use iicp_proto::error::ErrorCode;
use iicp_transport::http::server::{
    json, read_json, HttpError, Params, PeerAddr, Request, Response, Router,
};
use serde_json::{json, Value};

use crate::auth::token_matches;
use crate::state::Core;

/// Builds the router over `core`.
pub(crate) fn router(core: Arc<Core>) -> Router {
    let r = Router::new();
    let r = route(r, &core, Method::POST, "/v1/register", node::register);
    let r = route(r, &core, Method::DELETE, "/v1/register", node::deregister);
    let r = route(r, &core, Method::POST, "/v1/heartbeat", node::heartbeat);
    let r = route(r, &core, Method::GET, "/v1/me", node::me);
    let r = route(r, &core, Method::GET, "/v1/discover", lookup::discover);
    let r = route(
        r,
        &core,
        Method::POST,
        "/v1/dispatch/ticket",
        lookup::dispatch_ticket,
    );
    let r = route(r, &core, Method::GET, "/v1/bootstrap", lookup::bootstrap);
    let r = route(r, &core, Method::GET, "/v1/node/{id}", lookup::node_detail);
    let r = route(
        r,
        &core,
        Method::GET,
        "/v1/registry/nodes/{prefix}",
        lookup::registry_node,
    );
    let r = route(r, &core, Method::GET, "/v1/probe", lookup::probe);
    let r = route(r, &core, Method::GET, "/v1/stats", lookup::stats);
    let r = route(r, &core, Method::GET, "/health", lookup::health);
    let r = route(r, &core, Method::GET, "/v1/health", lookup::health);
    let r = route(
        r,
        &core,
        Method::GET,
        "/v1/directory-key",
        tokens::directory_key,
    );
    let r = route(
        r,
        &core,
        Method::POST,
        "/v1/consumer-token",
        tokens::consumer_token,
    );
    let r = route(
        r,
        &core,
        Method::POST,
        "/v1/relay/ticket",
        tokens::relay_ticket,
    );
    let r = route(
        r,
        &core,
        Method::POST,
        "/v1/operator/rename",
        tokens::operator_rename,
    );
    let r = route(
        r,
        &core,
        Method::POST,
        "/v1/operator/challenge",
        keys::challenge,
    );
    let r = route(
        r,
        &core,
        Method::POST,
        "/v1/operator/key/revoke",
        keys::revoke,
    );
    let r = route(
        r,
        &core,
        Method::POST,
        "/v1/operator/key/rotate",
        keys::rotate,
    );
    let r = route(r, &core, Method::POST, "/v1/credits/award", credits::award);
    let r = route(
        r,
        &core,
        Method::GET,
        "/v1/credits/balance",
        credits::balance,
    );
    let r = route(
        r,
        &core,
        Method::GET,
        "/v1/credits/transactions",
        credits::transactions,
    );
    let r = route(
        r,
        &core,
        Method::GET,
        "/v1/credits/summary",
        credits::summary,
    );
    let r = route(r, &core, Method::POST, "/v1/telemetry", credits::telemetry);
    r.nest_alias("/api").cors(true)
}

type HandlerResult = Result<Response, HttpError>;

fn route<F, Fut>(r: Router, core: &Arc<Core>, method: Method, path: &str, f: F) -> Router
where
    F: Fn(Arc<Core>, Request, Params) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = HandlerResult> + Send + 'static,
{
    let core = Arc::clone(core);
    r.route(method, path, move |req: Request, params: Params| {
        f(Arc::clone(&core), req, params)
    })
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn err(status: StatusCode, code: impl Into<ErrorCode>, message: impl Into<String>) -> HttpError {
    HttpError::new(status, code, message)
}

fn unauthorized(message: &str) -> HttpError {
    err(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
}

/// 404 for a heartbeat or deregistration of an unknown node: `not_found` as the spec's
/// suite wants (DIR-HB-03), with the reference directory's `IICP-E003` alongside for
/// clients that match on it (PROTOCOL.md §6.2, §8.3). Nodes react to the status.
fn unknown_node() -> HttpError {
    err(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "node is not registered",
    )
    .with_member("legacy_code", "IICP-E003")
}

/// 503 for a storage failure (logged without detail that could carry secrets).
fn store_failed(core: &Core, err: &crate::error::StoreError) -> HttpError {
    crate::state::Counters::bump(&core.counters.store_errors);
    tracing::error!(error = %err, "directory store failed");
    HttpError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::TemporarilyUnavailable,
        "directory storage is temporarily unavailable",
    )
    .with_retry_after(Duration::from_secs(5))
}

/// A JSON response with extra headers.
fn json_with(
    status: StatusCode,
    body: &Value,
    headers: &[(&'static str, &'static str)],
) -> Response {
    let mut resp = json(status, body);
    for (k, v) in headers {
        resp.headers_mut().insert(*k, HeaderValue::from_static(v));
    }
    resp
}

fn no_store(status: StatusCode, body: &Value) -> Response {
    json_with(status, body, &[("cache-control", "no-store")])
}

/// The flat rate-limit body of §8.2: `{"error":"IICP-E034","code":"rate_limited",
/// "message","retry_after","retry_after_ms"}` with `Retry-After`.
fn rate_limited(code: &str, retry_after_ms: u64) -> Response {
    let secs = retry_after_ms.div_ceil(1000).max(1);
    let mut resp = json(
        StatusCode::TOO_MANY_REQUESTS,
        &json!({
            "error": code,
            "code": "rate_limited",
            "message": "rate limit exceeded; retry later",
            "retry_after": secs,
            "retry_after_ms": retry_after_ms,
        }),
    );
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// The client IP (§8.7 DIR-ADDR-05): forwarded headers only when trusted.
fn client_ip(core: &Core, req: &Request) -> IpAddr {
    if core.settings.trust_forwarded_headers {
        let h = req.headers();
        let forwarded = h
            .get("cf-connecting-ip")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .or_else(|| {
                h.get("x-forwarded-for")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(',').next())
                    .map(str::trim)
            });
        if let Some(ip) = forwarded.and_then(|s| s.parse::<IpAddr>().ok()) {
            return ip;
        }
    }
    req.extensions()
        .get::<PeerAddr>()
        .map(|p| p.0.ip())
        .map(|ip| match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        })
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= 4096)
        .then(|| token.to_owned())
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Identifies the calling node like [`check_credential`]. With a shared store, a
/// credential that does not match the working copy is checked once more after reloading
/// the node it names (by `node_id`, `X-Node-Id` or the JWT subject): it may have
/// registered or rotated its token through another directory process a moment ago. A
/// bare token without a node id is only looked up in the working copy (which announced
/// changes reach within milliseconds), so bad tokens cannot make the store scan.
async fn authenticate(
    core: &Core,
    headers: &HeaderMap,
    claimed: Option<&str>,
    body_token: Option<&str>,
) -> Result<String, HttpError> {
    let first = check_credential(core, headers, claimed, body_token);
    if first.is_ok() || !core.store.shared() {
        return first;
    }
    let jwt_sub = bearer(headers)
        .filter(|t| t.matches('.').count() == 2)
        .and_then(|t| core.jwt.verify(&t, core.clock.now_secs()))
        .map(|(sub, _)| sub);
    let Some(id) = claimed
        .map(str::to_owned)
        .or_else(|| header_str(headers, "x-node-id").map(str::to_owned))
        .or(jwt_sub)
    else {
        return first;
    };
    if let Err(err) = core.refresh_node(&id).await {
        return Err(store_failed(core, &err));
    }
    check_credential(core, headers, claimed, body_token)
}

/// Identifies the calling node from its bearer credential (§8.0): a `node_token`
/// (self-identifying here, since the directory indexes token hashes), optionally with
/// `X-Node-Id`, or the `jwt_token` of the ACK. `claimed` (a `node_id` in the body) and
/// `X-Node-Id` must name the same node.
fn check_credential(
    core: &Core,
    headers: &HeaderMap,
    claimed: Option<&str>,
    body_token: Option<&str>,
) -> Result<String, HttpError> {
    let token = bearer(headers)
        .or_else(|| body_token.map(str::to_owned))
        .ok_or_else(|| unauthorized("missing bearer credential"))?;
    let header_id = header_str(headers, "x-node-id");
    let node_id = if token.matches('.').count() == 2 {
        let (sub, tv) = core
            .jwt
            .verify(&token, core.clock.now_secs())
            .ok_or_else(|| unauthorized("invalid or expired credential"))?;
        let reg = core.read();
        let node = reg
            .nodes
            .get(&sub)
            .ok_or_else(|| unauthorized("invalid or expired credential"))?;
        if !node.record.credentials.token_hash.starts_with(&tv) {
            return Err(unauthorized("invalid or expired credential"));
        }
        sub
    } else {
        let target = claimed.or(header_id);
        let reg = core.read();
        match target {
            Some(id) => {
                let node = reg
                    .nodes
                    .get(id)
                    .ok_or_else(|| unauthorized("invalid or expired credential"))?;
                if !token_matches(&token, &node.record.credentials.token_hash) {
                    return Err(unauthorized("invalid or expired credential"));
                }
                id.to_owned()
            }
            None => {
                let hash = crate::auth::token_hash(&token);
                reg.by_token
                    .get(&hash)
                    .cloned()
                    .ok_or_else(|| unauthorized("invalid or expired credential"))?
            }
        }
    };
    for other in [claimed, header_id].into_iter().flatten() {
        if other != node_id {
            return Err(unauthorized("credential does not belong to this node"));
        }
    }
    Ok(node_id)
}

/// Decoded query pairs (`application/x-www-form-urlencoded`), at most 64.
fn query_pairs(req: &Request) -> Vec<(String, String)> {
    iicp_proto::endpoint::query_pairs(req.uri().query().unwrap_or(""), 64)
}

/// Reads a JSON object body within the directory's limit.
async fn read_object(
    core: &Core,
    req: &mut Request,
) -> Result<serde_json::Map<String, Value>, HttpError> {
    match read_json::<Value>(req, core.settings.max_body_bytes).await? {
        Value::Object(m) => Ok(m),
        _ => Err(HttpError::validation("request body must be a JSON object")),
    }
}

/// Reads a JSON object body within the directory's limit, as a [`Value`] (always an
/// object) that [`typed_value`] can read in place.
async fn read_object_value(core: &Core, req: &mut Request) -> Result<Value, HttpError> {
    match read_json::<Value>(req, core.settings.max_body_bytes).await? {
        v @ Value::Object(_) => Ok(v),
        _ => Err(HttpError::validation("request body must be a JSON object")),
    }
}

/// Converts a JSON object into a typed body without echoing values in errors.
fn typed<T: serde::de::DeserializeOwned>(
    body: &serde_json::Map<String, Value>,
    what: &str,
) -> Result<T, HttpError> {
    serde_json::from_value(Value::Object(body.clone())).map_err(|e| typed_error(&e, what))
}

/// [`typed`] for a body read by [`read_object_value`]: deserialised from the document
/// in place, without copying it.
fn typed_value<T: serde::de::DeserializeOwned>(body: &Value, what: &str) -> Result<T, HttpError> {
    T::deserialize(body).map_err(|e| typed_error(&e, what))
}

/// The 422 of a body of the wrong shape: the missing member's name, never a value.
fn typed_error(e: &serde_json::Error, what: &str) -> HttpError {
    let text = e.to_string();
    let detail = if text.starts_with("missing field") {
        text.split(" at line").next().unwrap_or("").to_owned()
    } else {
        "a member has the wrong type or an invalid value".to_owned()
    };
    HttpError::validation(format!("invalid {what} body: {detail}"))
}

/// The issuer (`iss`) of tokens: the origin of the public URL, else of the `Host`.
fn issuer(core: &Core, req: &Request) -> String {
    if let Some(url) = core.public_url.get() {
        return iicp_proto::crypto::token::directory_origin(url).to_owned();
    }
    let host = header_str(req.headers(), "host").unwrap_or("localhost");
    format!("http://{host}")
}

fn set_cache(resp: &mut Response, value: &'static str) {
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static(value));
}

#[cfg(test)]
mod tests {
    use iicp_proto::endpoint::query_pairs;

    #[test]
    fn decodes_queries() {
        let value = |q: &str| query_pairs(&format!("k={q}"), 64)[0].1.clone();
        assert_eq!(value("urn%3Aiicp%3Aintent"), "urn:iicp:intent");
        assert_eq!(value("a+b"), "a b");
        assert_eq!(value("100%"), "100%");
        assert_eq!(value("%zz"), "%zz");
        assert_eq!(value("%4"), "%4");
    }
}
