//! Registration and deregistration with the directory (PROTOCOL.md §8.2, with §8.2.3
//! implementation metadata and §8.2.4 `current_node_token`; §8.6): the REGISTER body
//! (configuration, credentials, the operator delegation and what reachability decided
//! to advertise), one attempt each, and the events they announce. The directory agent
//! retries; [`crate::Node::register`] and [`crate::Node::deregister`] call these.

use std::sync::atomic::Ordering;

use iicp_proto::crypto::manifest;
use iicp_proto::directory::{Limits, RegisterRequest};
use iicp_proto::secret::Secret;

use crate::config::{
    is_private_endpoint, may_register, IMPLEMENTATION_NAME, IMPLEMENTATION_VERSION,
};
use crate::directory::DirectoryError;
use crate::error::Error;
use crate::event::EventKind;
use crate::state::Shared;

/// The REGISTER body this node sends (PROTOCOL.md §8.2), with the token held as
/// `current_node_token`.
pub(crate) fn request(s: &Shared) -> RegisterRequest {
    let cfg = &s.cfg;
    let mut req = RegisterRequest::new(
        cfg.endpoint.clone(),
        cfg.region.clone(),
        s.capabilities(),
        Limits {
            max_concurrent: cfg.max_concurrent,
            tokens_per_min: cfg.tokens_per_min,
            ..Limits::default()
        },
    );
    {
        let creds = s.creds.lock();
        req.node_id.clone_from(&creds.node_id);
        req.current_node_token.clone_from(&creds.token);
    }
    req.transport_endpoint = s.transport_endpoint();
    if req.transport_endpoint.is_some() {
        req.transport_method = Some("direct".to_owned());
    }
    if cfg.relay_capable {
        req.relay_capable = Some(true);
        req.relay_accept_port = Some(cfg.relay_accept_port);
    }
    req.cx_public_key = s.cx_advertisement();
    if let (Some(op), Some(node_id)) = (&cfg.operator, req.node_id.as_deref()) {
        // §17.1–§17.2: a fresh delegation at every REGISTER
        let delegation = op.delegate(node_id, s.unix_secs());
        req.operator_delegation = serde_json::to_value(&delegation).ok();
        req.operator_display_name =
            (!op.display_name().is_empty()).then(|| op.display_name().to_owned());
        req.operator_created_at = (!op.created_at().is_empty()).then(|| op.created_at().to_owned());
        req.operator_integrity_hash = Some(op.integrity_hash());
    }
    if let Some(m) = &cfg.policy_manifest {
        // §17.4: signed with the operator key at every REGISTER, else self-attested
        let m = match &cfg.operator {
            Some(op) => manifest::sign(m.clone(), op.key(), s.unix_secs()),
            None => m.clone(),
        };
        req.policy_manifest = Some(serde_json::Value::Object(m));
    }
    apply_advert(s, &mut req);
    req.node_hmac_key.clone_from(&cfg.node_hmac_key);
    req.backend.clone_from(&cfg.backend);
    req.sdk_language = Some("rust".to_owned());
    req.implementation_name = Some(IMPLEMENTATION_NAME.to_owned());
    req.implementation_version = Some(IMPLEMENTATION_VERSION.to_owned());
    req.sdk_version = Some(cfg.sdk_compatibility_version.clone());
    req.sdk_compatibility_version = Some(cfg.sdk_compatibility_version.clone());
    req
}

/// Registers once (no retry: `Node::serve` retries in the background) and returns
/// the node token. The directory's node id and HMAC key are kept inside; a 403
/// leaves the old token in place (§8.2.4).
///
/// # Errors
/// [`Error::NoDirectory`], [`Error::PrivateEndpoint`], [`Error::Directory`].
pub(crate) async fn register(s: &Shared) -> Result<Secret, Error> {
    let result = register_once(s).await;
    match &result {
        Ok(_) => {
            s.directory_ok();
        }
        Err(Error::Directory(e)) => {
            s.directory_failed(e);
        }
        Err(_) => {}
    }
    let directory_url = s.cfg.directory_url.clone();
    s.emit(match &result {
        Ok(_) => EventKind::Registered {
            directory_url,
            endpoint: advertised_endpoint(s),
            operated: s.delegation_not_after.load(Ordering::Relaxed) > 0,
        },
        Err(e) => {
            let (code, message) = match e {
                Error::Directory(d) => (d.code_str(), d.message().map(str::to_owned)),
                _ => (None, None),
            };
            EventKind::RegisterFailed {
                directory_url,
                status: crate::event::status_of(e),
                retryable: e.is_retryable(),
                error: e.to_string(),
                code,
                message,
            }
        }
    });
    result
}

async fn register_once(s: &Shared) -> Result<Secret, Error> {
    let dir = s.cfg.directory.clone().ok_or(Error::NoDirectory)?;
    let endpoint = advertised_endpoint(s);
    if !may_register(&endpoint, s.cfg.directory_url.as_deref()) {
        return Err(Error::PrivateEndpoint);
    }
    if is_private_endpoint(&endpoint) {
        tracing::warn!(
            endpoint = %endpoint,
            "registering a loopback/private endpoint: only peers on this network can reach the node"
        );
    }
    let req = request(s);
    let ack = tokio::time::timeout(s.cfg.directory_timeout, dir.register(&req))
        .await
        .map_err(|_| DirectoryError::transport("register", Elapsed))?
        .map_err(|e| {
            let secrets = s.secrets();
            e.redact(&secrets.iter().collect::<Vec<_>>())
        })?;
    let token = ack
        .node_token
        .clone()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| DirectoryError::invalid_reply("register"))?;
    s.replace_token(|creds| {
        if !ack.node_id.is_empty() {
            creds.node_id = Some(ack.node_id.clone());
        }
        if ack.node_hmac_key.as_ref().is_some_and(|k| !k.is_empty()) {
            creds.hmac_key.clone_from(&ack.node_hmac_key);
        }
        Some(token.clone())
    });
    let not_after = req
        .operator_delegation
        .as_ref()
        .and_then(|d| d.get("not_after"))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    s.delegation_not_after.store(not_after, Ordering::Relaxed);
    tracing::info!(node_id = ?s.node_id(), operated = not_after > 0, "registered with the directory");
    Ok(token)
}

/// Deregisters (`DELETE /v1/register`) and forgets the token. 404 counts as done.
///
/// # Errors
/// [`Error::NoDirectory`], [`Error::NotRegistered`], [`Error::Directory`].
pub(crate) async fn deregister(s: &Shared) -> Result<(), Error> {
    let result = deregister_once(s).await;
    let directory_url = s.cfg.directory_url.clone();
    match &result {
        Ok(()) => s.emit(EventKind::Deregistered { directory_url }),
        // nothing to deregister is not a failure worth an event
        Err(Error::NoDirectory | Error::NotRegistered) => {}
        Err(e) => s.emit(EventKind::DeregisterFailed {
            directory_url,
            status: crate::event::status_of(e),
            error: e.to_string(),
        }),
    }
    result
}

async fn deregister_once(s: &Shared) -> Result<(), Error> {
    let dir = s.cfg.directory.clone().ok_or(Error::NoDirectory)?;
    let (token, node_id) = {
        let c = s.creds.lock();
        (c.token.clone(), c.node_id.clone())
    };
    let (Some(token), Some(node_id)) = (token, node_id) else {
        return Err(Error::NotRegistered);
    };
    tokio::time::timeout(s.cfg.directory_timeout, dir.deregister(&token, &node_id))
        .await
        .map_err(|_| DirectoryError::transport("deregister", Elapsed))??;
    // a token issued meanwhile (a re-registration) stays
    s.replace_token(|c| c.token.clone().filter(|held| *held != token));
    tracing::info!(%node_id, "deregistered from the directory");
    Ok(())
}

/// Applies the advert to a REGISTER body.
pub(crate) fn apply_advert(shared: &Shared, req: &mut RegisterRequest) {
    let ad = shared.advert.lock().clone();
    if let Some(ep) = &ad.endpoint {
        req.endpoint.clone_from(ep);
        req.transport_endpoint = if ad.relayed || !shared.cfg.native {
            None
        } else {
            iicp_transport::native::NativeEndpoint::from_http(ep).map(|e| e.to_string())
        };
    }
    if let Some(m) = ad.transport_method {
        req.transport_method = Some(m.as_str().to_owned());
    }
    if let Some(m) = ad.exposure_mode {
        req.exposure_mode = Some(m.as_str().to_owned());
    }
    if ad.relayed {
        req.relay_endpoint.clone_from(&ad.endpoint);
        req.transport_metadata.clone_from(&ad.transport_metadata);
    }
    if let (Some(p), true) = (ad.relay_accept_port, shared.cfg.relay_capable) {
        req.relay_accept_port = Some(p);
    }
    if let Some(m) = &shared.mesh {
        req.public_key = Some(m.public_key_hex());
    }
}

/// The endpoint the node registers now.
pub(crate) fn advertised_endpoint(shared: &Shared) -> String {
    shared
        .advert
        .lock()
        .endpoint
        .clone()
        .unwrap_or_else(|| shared.cfg.endpoint.clone())
}

/// A directory call that did not finish within the configured timeout.
#[derive(Debug, thiserror::Error)]
#[error("directory call timed out")]
struct Elapsed;
