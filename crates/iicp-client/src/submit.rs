//! One attempt of a task against one node, over HTTP or the native transport, with
//! IICP-CX (PROTOCOL.md §4.1–§4.2, §10.7/§19 T3, §16; ADR 0002, ADR 0005).
//!
//! HTTP: `POST {endpoint}/v1/task` with `traceparent`, `X-IICP-Version: 1.5`,
//! `X-IICP-Trace-Id`, `Authorization: Bearer <api_token>` only when the caller
//! configured one, `X-IICP-Consumer-Token` when the client is itself a registered node;
//! never the client's node_token (§19 T6). Same-origin 307/308 only, at most 3.
//!
//! Native: a CALL in the superset layout (keys 1, 2, 3, 5 = UTF-8 JSON in a byte string,
//! 6 = timeout seconds rounded up, 11 = api_token when configured, 15 = a fresh call id
//! per attempt, 16 = task id as idempotency key, 17/18 = max_tokens/qos; never key 24).
//! With IICP-CX, key 5 carries `{"task_id", "iicp_conf", "cx_response_encryption"?}` and
//! the node answers `{"iicp_conf_resp"}` (ADR 0005, nodes listing `native_cx_v1`).
//!
//! With `cx_response_encryption: "required"` a plaintext reply is refused
//! (`IICP-CX-RESP-REQUIRED`) and an undecryptable one too (`IICP-CX-RESP-INVALID`); a CX
//! error never leads to a plaintext retry.

use std::time::Duration;

use iicp_proto::crypto::cx::{
    seal_request, IicpConfResp, NodePublicKey, ResponseKey, SealedRequest,
    RESPONSE_ENCRYPTION_REQUIRED,
};
use iicp_proto::error::{ErrorBody, ErrorCode};
use iicp_proto::ids::{uuid_v4, TaskId, TraceParent};
use iicp_proto::intent::Intent;
use iicp_proto::message::{Body, Call, Outcome, Prefer};
use iicp_proto::secret::Secret;
use iicp_proto::task::{Constraints, TaskRequest, TaskResponse, TaskStatus, TraceInfo};
use iicp_transport::http::client::{HttpClient, Redirects, RequestBuilder};
use iicp_transport::native::{NativeClient, NativeEndpoint, NativeError};
use rand_core::OsRng;
use serde_json::{json, Value};

use crate::directory::PROTOCOL_VERSION_HEADER;
use crate::error::{Error, Kind};

/// Code of a plaintext reply when an encrypted one was required (seed SDK).
pub(crate) const CX_RESP_REQUIRED: &str = "IICP-CX-RESP-REQUIRED";
/// Code of an encrypted reply that does not open (seed SDK).
pub(crate) const CX_RESP_INVALID: &str = "IICP-CX-RESP-INVALID";
/// Key feature of nodes that accept IICP-CX over the native transport (ADR 0005).
pub use iicp_proto::constants::NATIVE_CX_V1;
/// Same-origin redirects followed on provider calls.
const PROVIDER_REDIRECTS: u8 = 3;

/// Where an attempt goes.
#[derive(Clone, Debug)]
pub(crate) enum Route {
    /// `{endpoint}/v1/task`.
    Http(String),
    /// A native endpoint.
    Native(NativeEndpoint),
}

/// The per-submit constants of every attempt.
pub(crate) struct Exchange<'a> {
    pub(crate) task_id: &'a TaskId,
    pub(crate) intent: &'a Intent,
    pub(crate) payload: &'a Value,
    pub(crate) payload_json: &'a [u8],
    pub(crate) constraints: &'a Constraints,
    pub(crate) traceparent: &'a TraceParent,
    pub(crate) timeout: Duration,
    pub(crate) api_token: Option<&'a Secret>,
    pub(crate) consumer_token: Option<&'a Secret>,
}

/// The node-specific encryption parameters of an attempt.
pub(crate) struct Seal<'a> {
    pub(crate) key: Option<&'a NodePublicKey>,
    pub(crate) response_encryption: bool,
}

/// Runs one attempt. The response's `task_id` is checked.
pub(crate) async fn attempt(
    http: &HttpClient,
    native: &NativeClient,
    route: &Route,
    ex: &Exchange<'_>,
    seal: &Seal<'_>,
) -> Result<TaskResponse, Error> {
    let sealed = seal_for(ex, seal)?;
    let response_key = sealed.as_ref().map(|s| &s.response_key);
    let resp_required = sealed.is_some() && seal.response_encryption;
    let response = match route {
        Route::Http(url) => {
            let body = task_body(ex, sealed.as_ref(), resp_required);
            http_attempt(http, url, &body, ex).await?
        }
        Route::Native(endpoint) => {
            let key5 = native_key5(ex, sealed.as_ref(), resp_required);
            native_attempt(native, endpoint, key5, ex).await?
        }
    };
    let response = open_response(response, response_key, resp_required)?;
    if response.task_id != *ex.task_id {
        return Err(Error::protocol("the node answered with another task_id"));
    }
    Ok(response)
}

/// Seals the payload to the node's key, when it has one.
pub(crate) fn seal_for(ex: &Exchange<'_>, seal: &Seal<'_>) -> Result<Option<SealedRequest>, Error> {
    let Some(key) = seal.key else {
        return Ok(None);
    };
    seal_request(
        &mut OsRng,
        key,
        ex.task_id.as_str(),
        ex.intent.as_str(),
        ex.payload_json,
    )
    .map(Some)
    .map_err(|e| {
        Error::new(
            Kind::Crypto,
            e.wire_code(),
            format!("IICP-CX sealing failed: {e}"),
        )
        .with_source(e)
    })
}

/// The JSON body of `POST /v1/task` (and `POST /v1/tasks`).
pub(crate) fn task_body(
    ex: &Exchange<'_>,
    sealed: Option<&SealedRequest>,
    resp_required: bool,
) -> TaskRequest {
    let mut body = match sealed {
        Some(s) => TaskRequest::new_encrypted(ex.task_id.clone(), ex.intent, s.envelope.to_value()),
        None => TaskRequest::new(ex.task_id.clone(), ex.intent, ex.payload.clone()),
    };
    body.constraints = ex.constraints.clone();
    body.trace = Some(TraceInfo {
        trace_id: Some(ex.traceparent.trace_id_hex()),
        ..TraceInfo::default()
    });
    if resp_required {
        body.cx_response_encryption = Some(RESPONSE_ENCRYPTION_REQUIRED.to_owned());
    }
    body
}

/// Key 5 of a native CALL: the payload, or the ADR 0005 CX object.
pub(crate) fn native_key5(
    ex: &Exchange<'_>,
    sealed: Option<&SealedRequest>,
    resp_required: bool,
) -> Value {
    match sealed {
        Some(s) => {
            let mut v = json!({
                "task_id": ex.task_id.as_str(),
                "iicp_conf": s.envelope.to_value(),
            });
            if resp_required {
                v["cx_response_encryption"] = json!(RESPONSE_ENCRYPTION_REQUIRED);
            }
            v
        }
        None => ex.payload.clone(),
    }
}

/// The headers of every provider request: trace context, version, credentials.
pub(crate) fn provider_headers(mut req: RequestBuilder, ex: &Exchange<'_>) -> RequestBuilder {
    req = req
        .header("traceparent", ex.traceparent.to_string())
        .header("x-iicp-trace-id", ex.traceparent.trace_id_hex())
        .header(
            iicp_proto::constants::VERSION_HEADER,
            PROTOCOL_VERSION_HEADER,
        );
    if let Some(token) = ex.api_token {
        req = req.bearer(token.clone());
    }
    if let Some(token) = ex.consumer_token {
        req = req.header("x-iicp-consumer-token", token.expose());
    }
    req
}

/// A native CALL in the superset layout with a fresh call id (= session id).
pub(crate) fn native_call(key5: &Value, ex: &Exchange<'_>) -> Call {
    let call_id = uuid_v4(&mut OsRng).hyphenated().to_string();
    let timeout_ms = u64::try_from(ex.timeout.as_millis()).unwrap_or(u64::MAX);
    Call {
        protocol_version: Some(iicp_proto::message::PROTOCOL_VERSION),
        session_id: Some(call_id.clone()),
        intent: Some(ex.intent.as_str().to_owned()),
        payload: Some(Body::json(key5)),
        timeout_s: Some(Call::timeout_from_ms(timeout_ms)),
        auth_token: ex.api_token.cloned(),
        call_id: Some(call_id),
        idempotency_key: Some(ex.task_id.as_str().to_owned()),
        max_tokens: ex.constraints.max_tokens.map(u64::from),
        qos: ex.constraints.qos.map(|q| q.as_str().to_owned()),
        ..Call::default()
    }
}

async fn http_attempt(
    http: &HttpClient,
    url: &str,
    body: &TaskRequest,
    ex: &Exchange<'_>,
) -> Result<TaskResponse, Error> {
    let req = provider_headers(
        http.post_json(url, body)
            .header("accept", "application/json")
            .timeout(ex.timeout)
            .redirects(Redirects::follow_same_origin(PROVIDER_REDIRECTS)),
        ex,
    );
    let reply = req
        .send()
        .await
        .map_err(|e| Error::http(e, ErrorCode::TaskTimeout))?;
    TaskResponse::parse(reply.status.as_u16(), &reply.body).map_err(|mut body| {
        if body.retry_after_ms.is_none() {
            body.retry_after_ms = reply.retry_after_ms();
        }
        Error::remote(body)
    })
}

async fn native_attempt(
    native: &NativeClient,
    endpoint: &NativeEndpoint,
    key5: Value,
    ex: &Exchange<'_>,
) -> Result<TaskResponse, Error> {
    let call = native_call(&key5, ex);
    let resp = native
        .call(endpoint, call, ex.timeout)
        .await
        .map_err(native_error)?;
    native_response(&resp, ex)
}

/// A buffered native RESPONSE as a task response (or the node's error).
pub(crate) fn native_response(
    resp: &iicp_proto::message::Response,
    ex: &Exchange<'_>,
) -> Result<TaskResponse, Error> {
    match resp.outcome() {
        Outcome::Success(body) => {
            let value = match body {
                Some(b) => b.to_json(Prefer::Cbor).map_err(|e| {
                    Error::protocol("native result is neither CBOR nor JSON").with_source(e)
                })?,
                None => Value::Null,
            };
            if let Some(conf) = value.get("iicp_conf_resp").filter(|v| v.is_object()) {
                let mut r = TaskResponse::success(ex.task_id.clone(), Value::Null);
                r.status = TaskStatus::Encrypted;
                r.result = None;
                r.iicp_conf_resp = Some(conf.clone());
                return Ok(r);
            }
            Ok(TaskResponse::success(
                ex.task_id.clone(),
                lift_result(value),
            ))
        }
        Outcome::Partial(_) => Err(Error::protocol(
            "native node answered with a lifecycle partial that was not requested",
        )),
        Outcome::Timeout => Err(Error::remote(
            ErrorBody::new(ErrorCode::TaskTimeout, "the node reported a timeout").with_status(504),
        )),
        Outcome::Error {
            code,
            status,
            message,
        } => Err(native_failure(code, status, message)),
    }
}

/// The client error of a native error answer (key 6, keys 100/101).
pub(crate) fn native_failure(
    code: Option<&str>,
    status: Option<u64>,
    message: Option<&str>,
) -> Error {
    {
        {
            let status = status.and_then(|s| u16::try_from(s).ok());
            let code = match code {
                Some(c) if !c.is_empty() => ErrorCode::from(c),
                _ => status.map_or(ErrorCode::BackendError, ErrorCode::from_http_status),
            };
            let mut body = ErrorBody::new(code, message.unwrap_or("native call failed"));
            body.http_status = status;
            if body.code == ErrorCode::E021 && body.message == "capacity_exceeded" {
                body.legacy_code = Some(ErrorCode::E021);
            }
            Error::remote(body)
        }
    }
}

/// Native nodes put the handler's value under key 5; a ref-py handler value is a
/// `{"result": …}` object, which is lifted.
pub(crate) fn lift_result(value: Value) -> Value {
    match value {
        Value::Object(mut obj) if obj.len() == 1 && obj.contains_key("result") => {
            obj.remove("result").unwrap_or(Value::Null)
        }
        other => other,
    }
}

pub(crate) fn native_error(e: NativeError) -> Error {
    let (kind, code) = if matches!(e, NativeError::AddressRefused(_)) {
        (Kind::Connect, ErrorCode::EndpointRefused)
    } else if matches!(e, NativeError::Protocol(_)) {
        (Kind::Protocol, ErrorCode::BackendError)
    } else if e.is_timeout() {
        (Kind::Timeout, ErrorCode::TaskTimeout)
    } else if e.is_connect() {
        (Kind::Connect, ErrorCode::E004)
    } else {
        (Kind::Transport, ErrorCode::E004)
    };
    Error::new(kind, code, format!("native transport: {e}")).with_source(e)
}

/// Decrypts an `encrypted` response; refuses plaintext when encryption was required.
pub(crate) fn open_response(
    response: TaskResponse,
    key: Option<&ResponseKey>,
    required: bool,
) -> Result<TaskResponse, Error> {
    if response.status != TaskStatus::Encrypted {
        if required {
            return Err(Error::new(
                Kind::Crypto,
                ErrorCode::from(CX_RESP_REQUIRED),
                "the node answered in plaintext although an encrypted response was required",
            ));
        }
        return Ok(response);
    }
    let Some(key) = key else {
        return Err(Error::protocol(
            "the node sent an encrypted response to a plaintext request",
        ));
    };
    let invalid = |msg: &str| Error::new(Kind::Crypto, ErrorCode::from(CX_RESP_INVALID), msg);
    let conf = response
        .iicp_conf_resp
        .as_ref()
        .ok_or_else(|| invalid("encrypted response without iicp_conf_resp"))?;
    let conf = IicpConfResp::from_value(conf)
        .map_err(|e| invalid("malformed iicp_conf_resp").with_source(e))?;
    let plain = key
        .open(&conf)
        .map_err(|e| invalid("the encrypted response does not open").with_source(e))?;
    let inner = TaskResponse::parse(200, &plain).map_err(Error::remote)?;
    if inner.status == TaskStatus::Encrypted {
        return Err(invalid("the decrypted response is itself encrypted"));
    }
    Ok(inner)
}
