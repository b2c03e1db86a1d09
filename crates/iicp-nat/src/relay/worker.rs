//! The relay worker client (PROTOCOL.md §14.2, §14.4; SEED-SDK.md §3.7 step 5).
//!
//! A node without an inbound route keeps one outbound native session to a relay: TCP
//! connect (10 s), INIT/ACK, RELAY_BIND `{worker_id, intent, models, bind_ticket?}`,
//! RELAY_ACK. Once bound it answers the CALLs the relay pushes with the node's
//! [`CallHandler`], sends PING every 30 s (a missing PONG ends the session) and, when the
//! session ends or a bind is refused, reconnects with exponential back-off from 2 s,
//! capped at 60 s. Every attempt asks the [`TicketSource`] for a fresh bind ticket
//! (tickets are single-use).
//!
//! The node watches [`RelayWorker::subscribe`] and re-registers with
//! [`WorkerState::Bound`]'s endpoint `http://{relay_host}:{ACK key 4}/v1/relay-for/{id}`
//! and `transport_method = "turn_relay"`.

use std::sync::Arc;
use std::time::Duration;

use iicp_proto::message::{Channel, Message, RelayBind};
use iicp_proto::secret::Secret;
use iicp_proto::session::Role;
use iicp_transport::native::connection::{self, ConnectionConfig};
use iicp_transport::native::{CallContext, CallHandler, DEFAULT_PORT};
use iicp_transport::shutdown::{self, Shutdown, Trigger};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::upnp::BoxFuture;

/// Supplies a fresh bind ticket per attempt (the node fetches `POST /v1/relay/ticket`).
pub trait TicketSource: Send + Sync {
    /// A ticket for a bind to the relay `relay_node_id` (if known), or `None`.
    fn ticket(&self) -> BoxFuture<'_, Option<Secret>>;
}

/// Settings of a [`RelayWorker`].
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Relay host (name or IP, IPv6 without brackets).
    pub relay_host: String,
    /// Relay accept port.
    pub relay_port: u16,
    /// This node's id.
    pub worker_id: String,
    /// Served intent.
    pub intent: String,
    /// Served models.
    pub models: Vec<String>,
    /// Keep-alive PING interval (default 30 s).
    pub ping_interval: Duration,
    /// PONG must arrive within this (default 10 s).
    pub ping_timeout: Duration,
    /// TCP connect timeout (default 10 s).
    pub connect_timeout: Duration,
    /// RELAY_ACK must arrive within this (default 10 s).
    pub ack_timeout: Duration,
    /// First reconnect delay (default 2 s).
    pub backoff_initial: Duration,
    /// Reconnect delay cap (default 60 s).
    pub backoff_max: Duration,
    /// Session settings (client role, relay channel).
    pub connection: ConnectionConfig,
}

impl WorkerConfig {
    /// Defaults for `worker_id` serving `intent` through `relay_host:relay_port`.
    pub fn new(
        relay_host: impl Into<String>,
        relay_port: u16,
        worker_id: impl Into<String>,
        intent: impl Into<String>,
    ) -> Self {
        let mut connection = ConnectionConfig::client();
        connection.session.role = Role::Client;
        connection.session.channel = Channel::Relay;
        Self {
            relay_host: relay_host.into(),
            relay_port,
            worker_id: worker_id.into(),
            intent: intent.into(),
            models: Vec::new(),
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
            connection,
        }
    }

    /// The endpoint to advertise once bound with `relay_http_port`.
    pub fn endpoint(&self, relay_http_port: u16) -> String {
        let host = if self.relay_host.contains(':') {
            format!("[{}]", self.relay_host)
        } else {
            self.relay_host.clone()
        };
        format!(
            "http://{host}:{relay_http_port}/v1/relay-for/{}",
            self.worker_id
        )
    }
}

/// Where the worker is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerState {
    /// Connecting or waiting to reconnect.
    Connecting {
        /// Failed attempts since the last successful bind.
        attempt: u32,
    },
    /// Bound; advertise `endpoint`.
    Bound {
        /// `http://{relay_host}:{relay_http_port}/v1/relay-for/{worker_id}`.
        endpoint: String,
        /// The relay's HTTP port (RELAY_ACK key 4, default 9484).
        relay_http_port: u16,
    },
    /// The last bind was refused with this reason (retrying with back-off).
    Refused {
        /// RELAY_ACK reason.
        reason: String,
    },
    /// Stopped.
    Stopped,
}

/// A running relay worker.
#[derive(Debug)]
pub struct RelayWorker {
    state: watch::Receiver<WorkerState>,
    trigger: Trigger,
    task: Option<JoinHandle<()>>,
}

impl RelayWorker {
    /// Starts the worker; `handler` answers pushed CALLs, `tickets` supplies bind
    /// tickets.
    pub fn spawn(
        config: WorkerConfig,
        handler: Arc<dyn CallHandler>,
        tickets: Option<Arc<dyn TicketSource>>,
    ) -> Self {
        let (state_tx, state) = watch::channel(WorkerState::Connecting { attempt: 0 });
        let (trigger, shutdown) = shutdown::channel();
        let task = tokio::spawn(run(config, handler, tickets, state_tx, shutdown));
        Self {
            state,
            trigger,
            task: Some(task),
        }
    }

    /// The current state.
    pub fn state(&self) -> WorkerState {
        self.state.borrow().clone()
    }

    /// A receiver of state changes (re-register on each [`WorkerState::Bound`]).
    pub fn subscribe(&self) -> watch::Receiver<WorkerState> {
        self.state.clone()
    }

    /// Waits up to `timeout` for a bound session; returns its endpoint.
    pub async fn wait_bound(&self, timeout: Duration) -> Option<String> {
        let mut rx = self.state.clone();
        let wait = async {
            loop {
                if let WorkerState::Bound { endpoint, .. } = &*rx.borrow_and_update() {
                    return Some(endpoint.clone());
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    /// Closes the session and stops reconnecting.
    pub async fn stop(mut self) {
        self.trigger.fire();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RelayWorker {
    fn drop(&mut self) {
        self.trigger.fire();
    }
}

enum SessionEnd {
    /// Bound, then the session ended.
    Ended,
    /// Never bound (connect, handshake or refusal).
    Failed,
    /// Shutdown.
    Stop,
}

async fn run(
    config: WorkerConfig,
    handler: Arc<dyn CallHandler>,
    tickets: Option<Arc<dyn TicketSource>>,
    state: watch::Sender<WorkerState>,
    shutdown: Shutdown,
) {
    let mut attempt: u32 = 0;
    loop {
        let end = tokio::select! {
            end = once(&config, &handler, tickets.as_deref(), &state, shutdown.clone()) => end,
            _ = shutdown.cancelled() => SessionEnd::Stop,
        };
        let delay = match end {
            SessionEnd::Stop => break,
            SessionEnd::Ended => {
                attempt = 0;
                config.backoff_initial
            }
            SessionEnd::Failed => {
                attempt = attempt.saturating_add(1);
                let exp = attempt.saturating_sub(1).min(16);
                config
                    .backoff_initial
                    .saturating_mul(1u32 << exp)
                    .min(config.backoff_max)
            }
        };
        if !matches!(*state.borrow(), WorkerState::Refused { .. }) {
            state.send_replace(WorkerState::Connecting { attempt });
        }
        tracing::debug!(?delay, attempt, "relay worker reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    state.send_replace(WorkerState::Stopped);
}

async fn once(
    config: &WorkerConfig,
    handler: &Arc<dyn CallHandler>,
    tickets: Option<&dyn TicketSource>,
    state: &watch::Sender<WorkerState>,
    shutdown: Shutdown,
) -> SessionEnd {
    let target = if config.relay_host.contains(':') {
        format!("[{}]:{}", config.relay_host, config.relay_port)
    } else {
        format!("{}:{}", config.relay_host, config.relay_port)
    };
    let stream =
        match tokio::time::timeout(config.connect_timeout, TcpStream::connect(&target)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "relay connect failed");
                return SessionEnd::Failed;
            }
            Err(_) => return SessionEnd::Failed,
        };
    let _ = stream.set_nodelay(true);
    let Ok(peer) = stream.peer_addr() else {
        return SessionEnd::Failed;
    };
    let ticket = match tickets {
        Some(t) => tokio::time::timeout(config.connect_timeout, t.ticket())
            .await
            .unwrap_or_else(|_| {
                tracing::info!("no relay bind ticket in time; binding without one");
                None
            }),
        None => None,
    };
    let (msg_tx, mut msg_rx) = mpsc::channel(4);
    let mut conn = config.connection.clone();
    conn.session.role = Role::Client;
    conn.session.channel = Channel::Relay;
    let (handle, task) = connection::spawn(
        stream,
        CallContext { peer, tls: false },
        conn,
        Some(Arc::clone(handler)),
        Some(msg_tx),
        shutdown,
    );
    let bind = RelayBind {
        worker_id: Some(config.worker_id.clone()),
        intent: Some(config.intent.clone()),
        models: Some(config.models.clone()),
        bind_ticket: ticket,
    };
    if handle.send(Message::RelayBind(bind)).await.is_err() {
        let _ = task.await;
        return SessionEnd::Failed;
    }
    let deadline = tokio::time::Instant::now() + config.ack_timeout;
    let ack = loop {
        match tokio::time::timeout_at(deadline, msg_rx.recv()).await {
            Ok(Some(Message::RelayAck(a))) => break Some(a),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break None,
        }
    };
    let Some(ack) = ack else {
        handle.close();
        let _ = task.await;
        return SessionEnd::Failed;
    };
    if ack.status.as_deref() != Some("ok") {
        let reason = ack.reason.unwrap_or_else(|| "refused".into());
        tracing::warn!(%reason, "relay refused the bind");
        state.send_replace(WorkerState::Refused { reason });
        handle.close();
        let _ = task.await;
        return SessionEnd::Failed;
    }
    let http_port = ack
        .relay_http_port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_PORT);
    state.send_replace(WorkerState::Bound {
        endpoint: config.endpoint(http_port),
        relay_http_port: http_port,
    });
    tracing::info!("bound to relay");
    drop(msg_rx);
    let mut ticker = tokio::time::interval(config.ping_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if let Err(e) = handle.ping(Some(Vec::new()), config.ping_timeout).await {
                    tracing::info!(error = %e, "relay keep-alive failed");
                    handle.close();
                    break;
                }
            }
            info = handle.closed() => {
                tracing::info!(reason = %info.reason, "relay session ended");
                break;
            }
        }
    }
    let _ = task.await;
    SessionEnd::Ended
}
