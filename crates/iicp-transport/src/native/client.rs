//! [`NativeClient`]: calls over the native transport with one multiplexed connection
//! per endpoint, reconnecting when a connection ends (PROTOCOL.md §10.6, §10.3).
//!
//! Retries are not this layer's business (a CALL that may have reached the node is not
//! resent); a failed or closed connection is replaced on the next call. After an ACK
//! timeout the endpoint is not dialled again for [`NativeClientConfig::ack_backoff`].

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iicp_proto::message::{Call, Response};
use tokio::net::TcpStream;

use super::connection::{self, ConnectionConfig, ConnectionHandle};
use super::{CallContext, NativeEndpoint, NativeError};
use crate::resolve::{resolve, AddressRule};
use crate::shutdown::Shutdown;

/// Settings of a [`NativeClient`].
#[derive(Clone, Debug)]
pub struct NativeClientConfig {
    /// Settings of each connection (session limits and timers).
    pub connection: ConnectionConfig,
    /// TCP connect (and TLS handshake) timeout.
    pub connect_timeout: Duration,
    /// How long an endpoint is avoided after its handshake timed out (spec: 60 s).
    pub ack_backoff: Duration,
    /// Extra trusted root certificates (DER) for `iicpsec://` peers with private CAs.
    pub extra_roots: Vec<Vec<u8>>,
    /// Which addresses the client may connect to, checked on the answer it dials
    /// ([`crate::resolve`]). Default: any.
    pub address_rule: Option<AddressRule>,
}

impl Default for NativeClientConfig {
    fn default() -> Self {
        Self {
            connection: ConnectionConfig::client(),
            connect_timeout: Duration::from_secs(10),
            ack_backoff: Duration::from_secs(60),
            extra_roots: Vec::new(),
            address_rule: None,
        }
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<ConnectionHandle>>>;

/// A pool of native connections, one per endpoint, each carrying many concurrent calls.
#[derive(Clone)]
pub struct NativeClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: NativeClientConfig,
    slots: Mutex<HashMap<NativeEndpoint, Slot>>,
    backoff: Mutex<HashMap<NativeEndpoint, Instant>>,
    tls: Mutex<Option<tokio_rustls::TlsConnector>>,
}

impl std::fmt::Debug for NativeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeClient")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Default for NativeClient {
    fn default() -> Self {
        Self::new(NativeClientConfig::default())
    }
}

impl NativeClient {
    /// A client with the given settings. Connections are made on first use.
    pub fn new(config: NativeClientConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                slots: Mutex::new(HashMap::new()),
                backoff: Mutex::new(HashMap::new()),
                tls: Mutex::new(None),
            }),
        }
    }

    /// A client with this one's settings and `rule` as its
    /// [`address_rule`](NativeClientConfig::address_rule), with a pool of its own.
    pub fn with_address_rule(&self, rule: AddressRule) -> Self {
        let mut config = self.inner.config.clone();
        config.address_rule = Some(rule);
        Self::new(config)
    }

    /// Sends `call` to `endpoint` and waits up to `timeout` for the final RESPONSE.
    ///
    /// The CALL must carry a call id (or session id) unique among the calls in flight to
    /// that endpoint; [`iicp_proto::ids::uuid_v4`] makes one.
    pub async fn call(
        &self,
        endpoint: &NativeEndpoint,
        call: Call,
        timeout: Duration,
    ) -> Result<Response, NativeError> {
        let conn = self.connection(endpoint).await?;
        conn.call(call, timeout).await
    }

    /// The live connection to `endpoint`, connecting if there is none.
    pub async fn connection(
        &self,
        endpoint: &NativeEndpoint,
    ) -> Result<ConnectionHandle, NativeError> {
        let slot = {
            let mut slots = self.inner.slots.lock();
            slots.entry(endpoint.clone()).or_default().clone()
        };
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref() {
            if !conn.is_closed() {
                return Ok(conn.clone());
            }
        }
        if let Some(until) = self.inner.backoff.lock().get(endpoint) {
            if Instant::now() < *until {
                return Err(NativeError::BackingOff(endpoint.to_string()));
            }
        }
        let conn = self.connect(endpoint).await?;
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Number of pooled endpoints (live or not).
    pub fn pooled(&self) -> usize {
        self.inner.slots.lock().len()
    }

    /// Closes every pooled connection gracefully.
    pub fn close_all(&self) {
        let slots: Vec<Slot> = self.inner.slots.lock().drain().map(|(_, s)| s).collect();
        for slot in slots {
            if let Ok(guard) = slot.try_lock() {
                if let Some(c) = guard.as_ref() {
                    c.close();
                }
            }
        }
    }

    /// TCP to the first address of `endpoint` that accepts, the answer checked against
    /// the address rule first.
    async fn dial(&self, endpoint: &NativeEndpoint) -> Result<TcpStream, NativeError> {
        let rule = self.inner.config.address_rule.as_ref();
        let addrs = match resolve(&endpoint.host, endpoint.port, rule).await {
            Ok(a) => a,
            Err(e) if e.is_refused() => {
                return Err(NativeError::AddressRefused(endpoint.to_string()))
            }
            Err(e) => {
                return Err(NativeError::Connect {
                    endpoint: endpoint.to_string(),
                    source: std::io::Error::other(e),
                })
            }
        };
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(NativeError::Connect {
            endpoint: endpoint.to_string(),
            source: last.unwrap_or_else(|| std::io::Error::other("no address")),
        })
    }

    async fn connect(&self, endpoint: &NativeEndpoint) -> Result<ConnectionHandle, NativeError> {
        let cfg = &self.inner.config;
        let tcp = match tokio::time::timeout(cfg.connect_timeout, self.dial(endpoint)).await {
            Ok(r) => r?,
            Err(_) => return Err(NativeError::ConnectTimeout(endpoint.to_string())),
        };
        let _ = tcp.set_nodelay(true);
        let peer = tcp
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let ctx = CallContext {
            peer,
            tls: endpoint.tls,
        };
        let (handle, task) = if endpoint.tls {
            let connector = self.tls_connector()?;
            let name =
                rustls::pki_types::ServerName::try_from(endpoint.host.clone()).map_err(|e| {
                    NativeError::Tls {
                        endpoint: endpoint.to_string(),
                        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
                    }
                })?;
            let tls = match tokio::time::timeout(cfg.connect_timeout, connector.connect(name, tcp))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(source)) => {
                    return Err(NativeError::Tls {
                        endpoint: endpoint.to_string(),
                        source,
                    })
                }
                Err(_) => return Err(NativeError::ConnectTimeout(endpoint.to_string())),
            };
            connection::spawn(
                tls,
                ctx,
                cfg.connection.clone(),
                None,
                None,
                Shutdown::new(),
            )
        } else {
            connection::spawn(
                tcp,
                ctx,
                cfg.connection.clone(),
                None,
                None,
                Shutdown::new(),
            )
        };
        // remember handshake timeouts for the spec's 60 s back-off
        let inner = Arc::clone(&self.inner);
        let ep = endpoint.clone();
        tokio::spawn(async move {
            if let Ok(info) = task.await {
                if info.reason == "ack_timeout" {
                    inner
                        .backoff
                        .lock()
                        .insert(ep, Instant::now() + inner.config.ack_backoff);
                }
            }
        });
        Ok(handle)
    }

    fn tls_connector(&self) -> Result<tokio_rustls::TlsConnector, NativeError> {
        let mut cached = self.inner.tls.lock();
        if let Some(c) = cached.as_ref() {
            return Ok(c.clone());
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for der in &self.inner.config.extra_roots {
            roots
                .add(rustls::pki_types::CertificateDer::from(der.clone()))
                .map_err(|e| NativeError::Tls {
                    endpoint: "(root store)".into(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| NativeError::Tls {
                endpoint: "(config)".into(),
                source: std::io::Error::other(e),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        *cached = Some(connector.clone());
        Ok(connector)
    }
}
