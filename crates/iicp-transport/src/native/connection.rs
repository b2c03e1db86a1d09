//! The per-connection actor: one tokio task owns the socket and the
//! [`Session`]; everything else talks to it through a bounded command channel
//! (PROTOCOL.md §10.3, §10.6).
//!
//! Memory per connection is bounded: the read buffer holds at most one frame plus what
//! the socket delivered with it (the session checks a frame's length against
//! [`session::Config::max_payload`] from its header, before the payload is read), the
//! number of outstanding calls in each direction is capped by the session, the command
//! and response channels are bounded, and writes that do not progress within
//! [`ConnectionConfig::write_timeout`] end the connection.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use iicp_proto::frame::{Decoded, Frame};
use iicp_proto::message::{Call, Discover, DiscoverReply, Message, Ping, Response};
use iicp_proto::session::{self, CallIds, Event, Session};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::{CallContext, CallHandler, NativeError};
use crate::shutdown::Shutdown;

/// Settings of one connection.
#[derive(Clone, Debug)]
pub struct ConnectionConfig {
    /// The session's settings (role, channel, limits, timers).
    pub session: session::Config,
    /// A write that makes no progress for this long ends the connection (slow reader).
    pub write_timeout: Duration,
    /// Capacity of the command channel from [`ConnectionHandle`]s.
    pub command_capacity: usize,
}

impl ConnectionConfig {
    /// Defaults for a task client.
    pub fn client() -> Self {
        Self {
            session: session::Config::client(),
            write_timeout: Duration::from_secs(30),
            command_capacity: 256,
        }
    }

    /// Defaults for a task server.
    pub fn server() -> Self {
        Self {
            session: session::Config::server(),
            ..Self::client()
        }
    }
}

/// How a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseInfo {
    /// The CLOSE reason (ours or the peer's), `eof` when the peer just hung up, or
    /// `io_error` / `write_timeout`.
    pub reason: String,
    /// Whether the peer ended it.
    pub by_peer: bool,
}

enum Command {
    Call(Call, oneshot::Sender<Result<Response, NativeError>>),
    Stream(
        Call,
        mpsc::Sender<Result<Response, NativeError>>,
        oneshot::Sender<Result<(), NativeError>>,
    ),
    Abandon(String),
    /// The stream's receiver is gone: drop its later RESPONSEs until the final one.
    Release(String),
    Send(Message, oneshot::Sender<Result<(), NativeError>>),
    Ping(Option<Vec<u8>>, oneshot::Sender<Result<Ping, NativeError>>),
    Close,
}

/// A cheap, cloneable handle to a running connection.
#[derive(Clone, Debug)]
pub struct ConnectionHandle {
    commands: mpsc::Sender<Command>,
    closed: watch::Receiver<Option<CloseInfo>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Call(..) => "Call",
            Command::Stream(..) => "Stream",
            Command::Abandon(_) => "Abandon",
            Command::Release(_) => "Release",
            Command::Send(..) => "Send",
            Command::Ping(..) => "Ping",
            Command::Close => "Close",
        })
    }
}

impl ConnectionHandle {
    /// Sends a CALL and waits up to `timeout` for its final RESPONSE. The CALL needs a
    /// call id or session id unique among this connection's outstanding calls.
    pub async fn call(&self, call: Call, timeout: Duration) -> Result<Response, NativeError> {
        let id = call.correlation_id().map(str::to_owned);
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Call(call, tx))
            .await
            .map_err(|_| self.closed_error())?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => {
                if let Some(id) = id {
                    let _ = self.commands.try_send(Command::Abandon(id));
                }
                Err(NativeError::Timeout)
            }
        }
    }

    /// Sends a CALL whose answer is a stream of RESPONSEs (a lifecycle CALL with key
    /// 24): every RESPONSE correlated with it, in arrival order, until and including the
    /// final one; then the stream ends. When the connection ends first, the stream
    /// yields the error ([`NativeError::Closed`]) and ends. Dropping the stream does not
    /// cancel the task (send the CONTROL `cancel` for that); its later RESPONSEs are
    /// dropped. The CALL needs a call id or session id unique among this connection's
    /// outstanding calls.
    ///
    /// The stream holds up to [`STREAM_BUFFER`] RESPONSEs the caller has not read yet;
    /// a caller that falls further behind gets [`NativeError::Overflow`] and the call
    /// is released.
    pub async fn call_stream(&self, call: Call) -> Result<ResponseStream, NativeError> {
        let id = call
            .correlation_id()
            .ok_or(NativeError::Session(
                iicp_proto::session::SessionError::MissingId,
            ))?
            .to_owned();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let (ack_tx, ack_rx) = oneshot::channel();
        self.commands
            .send(Command::Stream(call, tx, ack_tx))
            .await
            .map_err(|_| self.closed_error())?;
        ack_rx.await.map_err(|_| self.closed_error())??;
        Ok(ResponseStream {
            rx,
            id,
            commands: self.commands.clone(),
            done: false,
        })
    }

    /// Sends any non-call message (RELAY_BIND, RELAY_ACK, FEEDBACK, …).
    pub async fn send(&self, msg: Message) -> Result<(), NativeError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Send(msg, tx))
            .await
            .map_err(|_| self.closed_error())?;
        rx.await.map_err(|_| self.closed_error())?
    }

    /// Sends a PING and waits up to `timeout` for the PONG; returns the round-trip time.
    pub async fn ping(
        &self,
        echo: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Duration, NativeError> {
        let start = Instant::now();
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Ping(echo, tx))
            .await
            .map_err(|_| self.closed_error())?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(_pong))) => Ok(start.elapsed()),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => Err(NativeError::Timeout),
        }
    }

    /// Starts a graceful close (in-flight answers are flushed first).
    pub fn close(&self) {
        let _ = self.commands.try_send(Command::Close);
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.borrow().is_some() || self.commands.is_closed()
    }

    /// Waits until the connection has ended and says how.
    pub async fn closed(&self) -> CloseInfo {
        let mut rx = self.closed.clone();
        loop {
            if let Some(info) = rx.borrow_and_update().clone() {
                return info;
            }
            if rx.changed().await.is_err() {
                return CloseInfo {
                    reason: "dropped".into(),
                    by_peer: false,
                };
            }
        }
    }

    fn closed_error(&self) -> NativeError {
        let reason = self
            .closed
            .borrow()
            .as_ref()
            .map_or_else(|| "connection ended".to_owned(), |c| c.reason.clone());
        NativeError::Closed(reason)
    }
}

/// RESPONSEs a [`ResponseStream`] buffers before its reader is told it fell behind.
pub const STREAM_BUFFER: usize = 256;

/// The RESPONSEs of one streamed CALL ([`ConnectionHandle::call_stream`]).
#[derive(Debug)]
pub struct ResponseStream {
    rx: mpsc::Receiver<Result<Response, NativeError>>,
    id: String,
    commands: mpsc::Sender<Command>,
    done: bool,
}

impl ResponseStream {
    /// The next RESPONSE; `None` after the final one, or after the error that ended
    /// the stream (a closed connection, an overflow).
    pub async fn next(&mut self) -> Option<Result<Response, NativeError>> {
        if self.done {
            return None;
        }
        let item = self.rx.recv().await;
        match &item {
            Some(Ok(r)) if !r.is_final() => {}
            _ => self.done = true,
        }
        item
    }

    /// The correlation id of the CALL.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for ResponseStream {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.commands.try_send(Command::Release(self.id.clone()));
        }
    }
}

/// Where non-call messages go: RELAY_BIND, RELAY_ACK, DISCOVER, FEEDBACK, ….
pub type MessageSink = mpsc::Sender<Message>;

/// Smallest read buffer: an idle connection holds at most this much (most frames of a
/// quiet connection — PING, small CALLs — fit in it).
const MIN_READ: usize = 1024;
/// Largest read buffer kept between frames; a busy multiplexed connection grows its
/// reads up to this size so that one syscall picks up many frames.
const MAX_READ: usize = 64 * 1024;
/// A write buffer larger than this is released after it has been flushed.
const KEEP_WRITE: usize = 16 * 1024;

/// The next command, or never when the connection has no command channel.
async fn recv(commands: &mut Option<mpsc::Receiver<Command>>) -> Option<Command> {
    match commands {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Starts the actor for an established transport and returns its handle.
///
/// `handler` executes inbound CALLs (servers, relay workers); without one, inbound CALLs
/// are answered with an error. `messages` receives other messages; without it they are
/// logged and dropped. The task ends when the session closes, the peer hangs up, or
/// `shutdown` fires and the drain completes.
pub fn spawn<IO>(
    io: IO,
    ctx: CallContext,
    config: ConnectionConfig,
    handler: Option<Arc<dyn CallHandler>>,
    messages: Option<MessageSink>,
    shutdown: Shutdown,
) -> (ConnectionHandle, tokio::task::JoinHandle<CloseInfo>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (cmd_tx, cmd_rx) = mpsc::channel(config.command_capacity.max(1));
    let (closed_tx, closed_rx) = watch::channel(None);
    let actor = Actor::new(io, ctx, config, handler, messages);
    let task = tokio::spawn(actor.run(Some(cmd_rx), closed_tx, shutdown));
    (
        ConnectionHandle {
            commands: cmd_tx,
            closed: closed_rx,
        },
        task,
    )
}

/// Runs a server-side connection to completion on the current task (used by the
/// listener, which already runs one task per accepted connection).
pub async fn serve<IO>(
    io: IO,
    ctx: CallContext,
    config: ConnectionConfig,
    handler: Arc<dyn CallHandler>,
    shutdown: Shutdown,
) -> CloseInfo
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // nobody holds a handle to a served connection: no command channel
    let (closed_tx, _closed_rx) = watch::channel(None);
    Actor::new(io, ctx, config, Some(handler), None)
        .run(None, closed_tx, shutdown)
        .await
}

/// An outbound call awaiting RESPONSEs.
struct Pending {
    ids: CallIds,
    waiter: Waiter,
}

impl std::borrow::Borrow<CallIds> for Pending {
    fn borrow(&self) -> &CallIds {
        &self.ids
    }
}

enum Waiter {
    /// A buffered call: one final RESPONSE.
    Once(oneshot::Sender<Result<Response, NativeError>>),
    /// A streamed call: every RESPONSE until the final one.
    Stream(mpsc::Sender<Result<Response, NativeError>>),
    /// Nobody listens any more (a released stream, a buffered call that got a
    /// lifecycle partial): RESPONSEs are dropped until the final one.
    Gone,
}

impl Waiter {
    fn fail(self, e: NativeError) {
        match self {
            Waiter::Once(tx) => {
                let _ = tx.send(Err(e));
            }
            Waiter::Stream(tx) => {
                let _ = tx.try_send(Err(e));
            }
            Waiter::Gone => {}
        }
    }
}

struct Actor<IO> {
    io: IO,
    ctx: CallContext,
    config: ConnectionConfig,
    handler: Option<Arc<dyn CallHandler>>,
    messages: Option<MessageSink>,
    session: Session,
    rbuf: BytesMut,
    /// How much the next read asks for (adapts between [`MIN_READ`] and [`MAX_READ`]).
    read_hint: usize,
    wbuf: Vec<u8>,
    pending: HashMap<String, Pending>,
    pings: VecDeque<oneshot::Sender<Result<Ping, NativeError>>>,
    tasks: JoinSet<Response>,
    /// (session id, call id) of each running handler task, to answer even if it panics.
    task_calls: HashMap<tokio::task::Id, (Option<String>, Option<String>)>,
    /// Non-final RESPONSEs of streaming handlers, in order (sent before their final).
    partials_tx: mpsc::Sender<Response>,
    partials_rx: mpsc::Receiver<Response>,
    close: Option<CloseInfo>,
}

impl<IO> Actor<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn new(
        io: IO,
        ctx: CallContext,
        config: ConnectionConfig,
        handler: Option<Arc<dyn CallHandler>>,
        messages: Option<MessageSink>,
    ) -> Self {
        let session = Session::new(config.session.clone(), Instant::now());
        let (partials_tx, partials_rx) = mpsc::channel(PARTIALS_CAPACITY);
        Self {
            io,
            ctx,
            config,
            handler,
            messages,
            session,
            rbuf: BytesMut::new(),
            read_hint: MIN_READ,
            wbuf: Vec::new(),
            pending: HashMap::new(),
            pings: VecDeque::new(),
            tasks: JoinSet::new(),
            task_calls: HashMap::new(),
            partials_tx,
            partials_rx,
            close: None,
        }
    }

    async fn run(
        mut self,
        mut commands: Option<mpsc::Receiver<Command>>,
        closed_tx: watch::Sender<Option<CloseInfo>>,
        shutdown: Shutdown,
    ) -> CloseInfo {
        let mut commands_open = commands.is_some();
        let mut shutting_down = shutdown.is_cancelled();
        if shutting_down {
            self.session.close(Instant::now());
        }
        loop {
            self.dispatch_events().await;
            if let Err(info) = self.flush().await {
                self.close.get_or_insert(info);
                break;
            }
            if self.session.is_closed() {
                break;
            }
            if self.tasks.is_empty() && self.pending.is_empty() && self.pings.is_empty() {
                self.shrink_idle();
            }
            self.reserve_for_next_frame();
            let deadline = self
                .session
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                read = self.io.read_buf(&mut self.rbuf) => match read {
                    Ok(0) => {
                        self.close.get_or_insert(CloseInfo { reason: "eof".into(), by_peer: true });
                        break;
                    }
                    Ok(n) => {
                        let used = self.session.handle_input(&self.rbuf, Instant::now());
                        self.rbuf.advance(used);
                        self.adapt_read_buffer(n);
                    }
                    Err(e) => {
                        tracing::debug!(peer = %self.ctx.peer, error = %e, "native read failed");
                        self.close.get_or_insert(CloseInfo { reason: "io_error".into(), by_peer: true });
                        break;
                    }
                },
                cmd = recv(&mut commands), if commands_open => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => commands_open = false,
                },
                Some(partial) = self.partials_rx.recv(), if !self.tasks.is_empty() => {
                    self.send_partial(partial);
                    // partials queued meanwhile leave in the same write
                    for _ in 0..MAX_COALESCED {
                        match self.partials_rx.try_recv() {
                            Ok(p) => self.send_partial(p),
                            Err(_) => break,
                        }
                    }
                }
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.finish_call(joined);
                    self.finish_ready_calls();
                }
                _ = sleep_until(deadline), if deadline.is_some() => self.session.handle_timeout(Instant::now()),
                _ = shutdown.cancelled(), if !shutting_down => {
                    shutting_down = true;
                    self.session.close(Instant::now());
                }
            }
        }
        self.dispatch_events().await;
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
        let info = self.close.clone().unwrap_or_else(|| CloseInfo {
            reason: "closed".into(),
            by_peer: false,
        });
        for (_, p) in self.pending.drain() {
            p.waiter.fail(NativeError::Closed(info.reason.clone()));
        }
        for tx in self.pings.drain(..) {
            let _ = tx.send(Err(NativeError::Closed(info.reason.clone())));
        }
        self.tasks.abort_all();
        let _ = closed_tx.send(Some(info.clone()));
        info
    }

    /// Grows the read buffer to hold the frame being received (its length was already
    /// checked against the limit), so large frames are read in few syscalls.
    fn reserve_for_next_frame(&mut self) {
        let needed = match Frame::decode(&self.rbuf, self.config.session.max_payload) {
            Ok(Decoded::Incomplete { needed, .. }) => needed,
            _ => 0,
        };
        let want = needed.saturating_sub(self.rbuf.len()).max(self.read_hint);
        if self.rbuf.capacity() - self.rbuf.len() < want {
            self.rbuf.reserve(want);
        }
    }

    /// Nothing in flight: give back the capacity of empty queues and buffers.
    fn shrink_idle(&mut self) {
        self.session.shrink_idle();
        self.wbuf = Vec::new();
        self.pending.shrink_to_fit();
        self.task_calls.shrink_to_fit();
        self.pings.shrink_to_fit();
    }

    /// After a read of `n` bytes: a read that filled the buffer asks for twice as much
    /// next time, a small one for half, and an emptied buffer much larger than the
    /// hint is released, so idle connections hold [`MIN_READ`] bytes while busy ones
    /// read many frames per syscall.
    fn adapt_read_buffer(&mut self, n: usize) {
        if n >= self.read_hint {
            self.read_hint = (self.read_hint * 2).min(MAX_READ);
        } else if n < self.read_hint / 4 {
            self.read_hint = (self.read_hint / 2).max(MIN_READ);
        }
        if self.rbuf.is_empty() && self.rbuf.capacity() > 4 * self.read_hint {
            self.rbuf = BytesMut::new();
        }
    }

    async fn flush(&mut self) -> Result<(), CloseInfo> {
        self.session.take_transmit(&mut self.wbuf);
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let result =
            tokio::time::timeout(self.config.write_timeout, self.io.write_all(&self.wbuf)).await;
        self.wbuf.clear();
        if self.wbuf.capacity() > KEEP_WRITE {
            self.wbuf = Vec::new();
        }
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(CloseInfo {
                reason: "io_error".into(),
                by_peer: true,
            }),
            Err(_) => Err(CloseInfo {
                reason: "write_timeout".into(),
                by_peer: false,
            }),
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Call(call, tx) => {
                let id = call.correlation_id().map(str::to_owned);
                let ids = CallIds::of(&call);
                match (self.session.send_call(call), id) {
                    (Ok(()), Some(id)) => {
                        self.pending.insert(
                            id,
                            Pending {
                                ids,
                                waiter: Waiter::Once(tx),
                            },
                        );
                    }
                    (Ok(()), None) => {}
                    (Err(e), _) => {
                        let _ = tx.send(Err(e.into()));
                    }
                }
            }
            Command::Stream(call, tx, ack) => {
                let id = call.correlation_id().map(str::to_owned);
                let ids = CallIds::of(&call);
                match (self.session.send_call(call), id) {
                    (Ok(()), Some(id)) => {
                        self.pending.insert(
                            id,
                            Pending {
                                ids,
                                waiter: Waiter::Stream(tx),
                            },
                        );
                        let _ = ack.send(Ok(()));
                    }
                    (Ok(()), None) => {
                        let _ = ack.send(Err(NativeError::Session(
                            iicp_proto::session::SessionError::MissingId,
                        )));
                    }
                    (Err(e), _) => {
                        let _ = ack.send(Err(e.into()));
                    }
                }
            }
            Command::Abandon(id) => {
                self.session.abandon_call(&id);
                self.pending.remove(&id);
            }
            Command::Release(id) => {
                if let Some(p) = self.pending.get_mut(&id) {
                    p.waiter = Waiter::Gone;
                }
            }
            Command::Send(msg, tx) => {
                let _ = tx.send(self.session.send(msg).map_err(Into::into));
            }
            Command::Ping(echo, tx) => match self.session.ping(echo) {
                Ok(()) => self.pings.push_back(tx),
                Err(e) => {
                    let _ = tx.send(Err(e.into()));
                }
            },
            Command::Close => self.session.close(Instant::now()),
        }
    }

    async fn dispatch_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::Call(call) => self.start_call(call),
                Event::Response(resp) => self.route_response(resp),
                Event::Pong(p) => {
                    if let Some(tx) = self.pings.pop_front() {
                        let _ = tx.send(Ok(p));
                    }
                }
                Event::Discover(d) => self.answer_discover(&d),
                Event::Message(Message::Control(control)) if self.handler.is_some() => {
                    if let Some(h) = &self.handler {
                        h.control(&control, &self.ctx);
                    }
                }
                // a relay's cancel (ADR 0013: CONTROL's type byte is RELAY_BIND there)
                Event::Message(Message::Observe(o))
                    if self.handler.is_some() && o.as_cancel().is_some() =>
                {
                    if let (Some(h), Some(control)) = (&self.handler, o.as_cancel()) {
                        h.control(&control, &self.ctx);
                    }
                }
                Event::Message(msg) => match &self.messages {
                    Some(sink) => {
                        if sink.send(msg).await.is_err() {
                            tracing::debug!(peer = %self.ctx.peer, "message sink gone");
                        }
                    }
                    None => {
                        tracing::debug!(peer = %self.ctx.peer, msg_type = %msg.msg_type(), "native message without a consumer ignored")
                    }
                },
                Event::Ignored(t) => {
                    tracing::debug!(peer = %self.ctx.peer, msg_type = %t, "ignored frame of unknown type")
                }
                Event::Closed { reason, by_peer } => {
                    if !by_peer && reason != "graceful" {
                        tracing::warn!(peer = %self.ctx.peer, %reason, "native connection closed on malformed input");
                    }
                    self.close.get_or_insert(CloseInfo { reason, by_peer });
                }
                Event::Established { .. } => {}
                _ => {}
            }
        }
    }

    /// Hands a RESPONSE to the call it answers (the session already checked that it
    /// answers an outstanding call, strictly by call id when the CALL had one): a
    /// buffered call takes its final RESPONSE and fails on a lifecycle partial; a
    /// streamed call takes each until the final one.
    fn route_response(&mut self, resp: Response) {
        let Some(key) = session::outbound_key(&self.pending, &resp) else {
            return;
        };
        let is_final = resp.is_final();
        let Some(p) = self.pending.get_mut(&key) else {
            return;
        };
        match &p.waiter {
            Waiter::Once(_) if is_final => {
                if let Some(Pending {
                    waiter: Waiter::Once(tx),
                    ..
                }) = self.pending.remove(&key)
                {
                    let _ = tx.send(Ok(resp));
                }
                return;
            }
            Waiter::Once(_) => {
                // buffered requests never see lifecycle frames (ADR 0013)
                let waiter = std::mem::replace(&mut p.waiter, Waiter::Gone);
                waiter.fail(NativeError::Protocol(
                    "lifecycle RESPONSE to a buffered CALL".into(),
                ));
            }
            Waiter::Stream(tx) => {
                if tx.capacity() <= 1 && !is_final {
                    let waiter = std::mem::replace(&mut p.waiter, Waiter::Gone);
                    waiter.fail(NativeError::Overflow);
                } else if tx.try_send(Ok(resp)).is_err() {
                    p.waiter = Waiter::Gone;
                }
            }
            Waiter::Gone => {}
        }
        if is_final {
            self.pending.remove(&key);
        }
    }

    /// Answers a DISCOVER with the handler's nodes (none without a handler), bounded by
    /// the request's limit; a list too large for one frame is answered empty.
    fn answer_discover(&mut self, request: &Discover) {
        let mut nodes = self
            .handler
            .as_ref()
            .map(|h| h.discover(request, &self.ctx))
            .unwrap_or_default();
        let limit = request
            .limit
            .map_or(super::DISCOVER_DEFAULT_LIMIT, |l| {
                usize::try_from(l).unwrap_or(usize::MAX)
            })
            .min(super::DISCOVER_MAX_LIMIT);
        nodes.truncate(limit);
        let reply = DiscoverReply::new(request, &nodes);
        if let Err(e) = self.session.send_discover_reply(&reply) {
            tracing::debug!(peer = %self.ctx.peer, error = %e, "DISCOVER answer not sent as built");
            let _ = self
                .session
                .send_discover_reply(&DiscoverReply::new(request, &[]));
        }
    }

    fn start_call(&mut self, call: Call) {
        let Some(handler) = self.handler.clone() else {
            let r = Response::error(
                &call,
                "not_found",
                404,
                "this connection does not execute calls",
            );
            let _ = self.session.send_response(r);
            return;
        };
        let ids = (call.session_id.clone(), call.call_id.clone());
        let partials = super::PartialSender(self.partials_tx.clone());
        let task = self
            .tasks
            .spawn(handler.handle_streaming(call, self.ctx.clone(), partials));
        self.task_calls.insert(task.id(), ids);
    }

    /// Sends the answer of a finished handler task; a panicked handler is answered with
    /// a 500 error so the caller is not left waiting.
    /// Answers every call whose handler has already returned (at most
    /// [`MAX_COALESCED`]), so that answers ready together leave in one write.
    fn finish_ready_calls(&mut self) {
        for _ in 0..MAX_COALESCED {
            match self.tasks.try_join_next_with_id() {
                Some(joined) => self.finish_call(joined),
                None => break,
            }
        }
    }

    fn finish_call(&mut self, joined: Result<(tokio::task::Id, Response), tokio::task::JoinError>) {
        let (task, mut resp) = match joined {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(peer = %self.ctx.peer, "native call handler failed");
                let probe = Call::default();
                (
                    e.id(),
                    Response::error(&probe, "internal_error", 500, "the handler failed"),
                )
            }
        };
        // every partial a handler queued was queued before it returned: send those
        // first, so the final answer is the last frame of its call
        while let Ok(partial) = self.partials_rx.try_recv() {
            self.send_partial(partial);
        }
        let Some((session_id, call_id)) = self.task_calls.remove(&task) else {
            return;
        };
        if resp.session_id.is_none() {
            resp.session_id = session_id;
        }
        if resp.call_id.is_none() && resp.legacy_call_id.is_none() {
            resp.call_id.clone_from(&call_id);
            resp.legacy_call_id = call_id;
        }
        // an answer for a call the session already dropped (it closed) is moot
        let _ = self.session.send_response(resp);
    }
}

impl<IO> Actor<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Sends one non-final RESPONSE of a streaming handler; one marked final, or for a
    /// call no longer open, is dropped (the handler's returned answer is the final).
    fn send_partial(&mut self, resp: Response) {
        if resp.is_final() {
            tracing::debug!(peer = %self.ctx.peer, "a final RESPONSE sent as a partial was dropped");
            return;
        }
        if let Err(e) = self.session.send_response(resp) {
            tracing::debug!(peer = %self.ctx.peer, error = %e, "partial RESPONSE not sent");
        }
    }
}

/// Most finished calls answered in one write (the rest follow in the next).
const MAX_COALESCED: usize = 256;

/// Queued partial RESPONSEs per connection before streaming handlers wait.
const PARTIALS_CAPACITY: usize = 64;

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
