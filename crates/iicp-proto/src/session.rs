//! The sans-IO native session (PROTOCOL.md §10.3, §10.6, §14.2, §19 T16, T17, T32).
//!
//! A [`Session`] is one end of one native connection. It owns no socket and reads no
//! clock: the driver feeds it received bytes ([`Session::handle_input`]), the current
//! time, and timer expiries ([`Session::handle_timeout`]); it takes out the bytes to
//! write ([`Session::take_transmit`]) and the events for the application
//! ([`Session::poll_event`]).
//!
//! What it enforces:
//! * the handshake: a client sends INIT (`{1: 1, 2: 1}`) and waits for ACK; a server
//!   negotiates `min(offered, 1)`, refuses offers whose floor is above 1
//!   (`version_mismatch`), and answers reference-SDK clients (INIT without `min_version`)
//!   with exactly the ACK they expect. Servers accept CALLs without INIT unless
//!   [`Config::require_init`] is set (the SDKs' behaviour, T16).
//! * the malformed-frame dispositions of §10.3: bad magic closes silently, on the first
//!   frame and on any later one (framing §1.2, §9.6: no CLOSE frame, the peer is likely
//!   not IICP); oversize lengths, version 0 or > 1, invalid, reserved and custom type
//!   bytes, empty CALL/RESPONSE, undecodable CBOR, indefinite lengths, duplicate map keys
//!   and wrong shapes send one CLOSE with the prescribed reason and end the session
//!   (ADR 0007); nothing of such a frame reaches the application. Reserved/custom type bytes are ignored
//!   instead for peers that did not show they speak the spec (T17).
//! * call-id bookkeeping: a RESPONSE must answer an outstanding CALL (else
//!   `protocol_error`: call-id drift); duplicate in-flight ids are answered `conflict`;
//!   more than [`Config::max_in_flight`] concurrent calls are answered
//!   `capacity_exceeded`, never queued.
//! * deadlines from the injected `now`: INIT/ACK timeout, a started frame that does not
//!   complete within the read timeout, optional idle timeout, graceful-close drain.
//! * graceful close: flush the answers to in-flight calls, then CLOSE `graceful`; a peer
//!   CLOSE is answered with our own CLOSE.
//! * DISCOVER on a server's task connection becomes [`Event::Discover`]; the application
//!   answers each with [`Session::send_discover_reply`] (a RESPONSE `{2, 3, 20}`, the
//!   deployed shape, PROTOCOL.md §10.7).
//!
//! # Driving a session
//!
//! A driver (`iicp_transport::native` is one) runs this loop until
//! [`Session::is_closed`]:
//!
//! 1. **Input.** When bytes arrive, call [`Session::handle_input`] with everything
//!    buffered and drop the number of bytes it returns from the front of the buffer
//!    (the rest is an incomplete frame). At end of stream stop reading.
//! 2. **Events.** Call [`Session::poll_event`] until it returns `None`, and act on each
//!    (answer CALLs with [`Session::send_response`], DISCOVERs with
//!    [`Session::send_discover_reply`]). Application sends may happen at any time.
//! 3. **Transmit.** After any input, timeout or send, call [`Session::take_transmit`]
//!    and write the bytes in order before reading more (a session never writes by
//!    itself, and [`Session::pending_transmit`] tells how much is waiting).
//! 4. **Timers.** Sleep until [`Session::poll_timeout`] (recomputed after each step;
//!    `None` means no deadline) and then call [`Session::handle_timeout`] with the
//!    current time; it may queue a CLOSE to transmit.
//!
//! Every call takes the time as an argument; passing a time earlier than a previous
//! call's is harmless (nothing expires). Ignoring a `Result` of a send loses a message,
//! so they are `#[must_use]`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::frame::{
    Decoded, Frame, FrameError, FrameHeader, MessageType, TypeClass, MAX_PAYLOAD, VERSION,
};
use crate::message::{
    Ack, Call, Channel, Close, CloseReason, Discover, DiscoverReply, Init, Message, MessageError,
    Ping, Response, PROTOCOL_VERSION,
};

/// Which end of the connection this session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Connects and sends INIT.
    Client,
    /// Accepts and answers INIT with ACK.
    Server,
}

/// Session settings. [`Config::client`] and [`Config::server`] give the spec defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// This end's role.
    pub role: Role,
    /// Task or relay-accept connection (decides 0x0B/0x0C and who sends CALLs).
    pub channel: Channel,
    /// Largest accepted frame payload.
    pub max_payload: u32,
    /// Server: INIT must arrive within this; client: ACK must arrive within this.
    pub handshake_timeout: Duration,
    /// A frame whose first byte arrived must complete within this (`read_timeout`).
    pub read_timeout: Duration,
    /// Close after this long without any received frame (`idle_timeout`); `None` = never.
    pub idle_timeout: Option<Duration>,
    /// Most calls outstanding at once in either direction.
    pub max_in_flight: usize,
    /// Server: refuse CALLs before INIT (`protocol_error`) instead of accepting them.
    pub require_init: bool,
    /// Server: node id announced in the ACK.
    pub node_id: Option<String>,
    /// How long a graceful close waits for in-flight calls to be answered.
    pub drain_timeout: Duration,
}

impl Config {
    /// Defaults for a client on a task connection.
    pub fn client() -> Self {
        Self {
            role: Role::Client,
            channel: Channel::Task,
            max_payload: MAX_PAYLOAD,
            handshake_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            idle_timeout: None,
            max_in_flight: 256,
            require_init: false,
            node_id: None,
            drain_timeout: Duration::from_secs(5),
        }
    }

    /// Defaults for a server on a task connection.
    pub fn server() -> Self {
        Self {
            role: Role::Server,
            ..Self::client()
        }
    }
}

/// What the session tells the application.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// Client: the server's ACK arrived. Server: the client's INIT was accepted.
    Established {
        /// Negotiated version.
        version: u64,
        /// The ACK (client side) — `None` on the server.
        ack: Option<Ack>,
    },
    /// A CALL to execute; answer it with [`Session::send_response`].
    Call(Call),
    /// A RESPONSE to one of our CALLs. Partial (lifecycle) responses keep the call open.
    Response(Response),
    /// A PONG to our PING.
    Pong(Ping),
    /// Server, task connection: a DISCOVER to answer with
    /// [`Session::send_discover_reply`] (an empty list when the node knows none).
    Discover(Discover),
    /// Any other message (RELAY_BIND, RELAY_ACK, FEEDBACK, TELEMETRY, a DISCOVER that
    /// is not for a task server, …).
    Message(Message),
    /// A frame with a reserved or custom type from a peer that does not speak the spec;
    /// ignored for compatibility.
    Ignored(MessageType),
    /// The session ended. The driver closes the transport once
    /// [`Session::take_transmit`] is empty.
    Closed {
        /// Why (our reason, or the peer's CLOSE reason).
        reason: String,
        /// Whether the peer initiated it.
        by_peer: bool,
    },
}

/// Misuse of the session API by the application.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionError {
    /// The session is closing or closed.
    #[error("session is closed")]
    Closed,
    /// This end may not send that message in this direction.
    #[error("{0} may not be sent by this end of the connection")]
    WrongDirection(MessageType),
    /// The CALL or RESPONSE carries neither call id nor session id.
    #[error("message has no call id or session id")]
    MissingId,
    /// A CALL with this id is already outstanding.
    #[error("a call with this id is already in flight")]
    DuplicateCall,
    /// No outstanding CALL has this id.
    #[error("no call with this id is in flight")]
    UnknownCall,
    /// [`Config::max_in_flight`] calls are outstanding.
    #[error("too many calls in flight")]
    TooManyInFlight,
    /// The encoded message exceeds the frame limit.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Handshake,
    Open,
    /// Graceful close pending: waiting for in-flight calls to be answered.
    Draining {
        deadline: Instant,
        by_peer: bool,
    },
    Closed,
}

/// The ids a CALL was sent with, to recognise its RESPONSEs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallIds {
    /// Key 15 of the CALL.
    pub call_id: Option<String>,
    /// Key 2 of the CALL.
    pub session_id: Option<String>,
}

impl CallIds {
    /// The ids of `call`.
    pub fn of(call: &Call) -> Self {
        Self {
            call_id: call.call_id.clone(),
            session_id: call.session_id.clone(),
        }
    }

    /// Whether `resp` answers this CALL: a RESPONSE naming a call id answers only the
    /// CALL sent with that call id; one naming none answers by its session id. A
    /// RESPONSE with another call id never answers, whatever its session id.
    pub fn answered_by(&self, resp: &Response) -> bool {
        match (resp.call_id(), self.call_id.as_deref()) {
            (Some(got), Some(want)) => got == want,
            (Some(got), None) => self.session_id.as_deref() == Some(got),
            (None, _) => {
                resp.session_id.is_some()
                    && resp.session_id.as_deref() == self.session_id.as_deref()
            }
        }
    }
}

/// The key of the outstanding call `resp` answers, if any.
pub fn outbound_key<V: std::borrow::Borrow<CallIds>>(
    outbound: &HashMap<String, V>,
    resp: &Response,
) -> Option<String> {
    // fast path: the correlation id is the key
    if let Some(id) = resp.correlation_id() {
        if outbound
            .get(id)
            .is_some_and(|c| c.borrow().answered_by(resp))
        {
            return Some(id.to_owned());
        }
    }
    let mut found = outbound
        .iter()
        .filter(|(_, c)| (*c).borrow().answered_by(resp))
        .map(|(k, _)| k);
    match (found.next(), found.next()) {
        (Some(k), None) => Some(k.clone()),
        _ => None,
    }
}

/// One end of a native connection, without IO.
#[derive(Debug)]
pub struct Session {
    config: Config,
    state: State,
    /// Deadline for the handshake (server: INIT, client: ACK).
    handshake_deadline: Option<Instant>,
    /// When the first byte of a still incomplete frame arrived.
    partial_since: Option<Instant>,
    last_activity: Instant,
    /// Whether any complete frame arrived yet (bad magic on the first one closes silently).
    seen_frame: bool,
    /// The peer showed it speaks the spec (INIT with `min_version`, or a rich ACK).
    peer_spec_aware: bool,
    /// Ids of CALLs we sent that await a RESPONSE.
    /// Ids of CALLs we sent that await a RESPONSE: correlation id → the CALL's ids.
    outbound: HashMap<String, CallIds>,
    /// Ids of CALLs we received that await our RESPONSE.
    inbound: HashSet<String>,
    /// DISCOVERs handed to the application and not answered yet.
    discovers: usize,
    tx: Vec<u8>,
    events: VecDeque<Event>,
}

impl Session {
    /// Starts a session at `now`. A client queues its INIT immediately.
    #[must_use]
    pub fn new(config: Config, now: Instant) -> Self {
        let mut s = Self {
            handshake_deadline: Some(now + config.handshake_timeout),
            config,
            state: State::Handshake,
            partial_since: None,
            last_activity: now,
            seen_frame: false,
            peer_spec_aware: false,
            outbound: HashMap::new(),
            inbound: HashSet::new(),
            discovers: 0,
            tx: Vec::new(),
            events: VecDeque::new(),
        };
        if s.config.role == Role::Client {
            s.queue(&Message::Init(Init::v1()));
        }
        s
    }

    /// The settings this session runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the session has ended (no more input is processed).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether the handshake completed (or a legacy peer skipped it).
    pub fn is_established(&self) -> bool {
        !matches!(self.state, State::Handshake | State::Closed)
    }

    /// Number of outstanding outbound and inbound calls.
    pub fn in_flight(&self) -> (usize, usize) {
        (self.outbound.len(), self.inbound.len())
    }

    /// Moves the bytes to write into `out` (appending). Write them in order.
    pub fn take_transmit(&mut self, out: &mut Vec<u8>) {
        if out.is_empty() {
            std::mem::swap(out, &mut self.tx);
        } else {
            out.append(&mut self.tx);
        }
    }

    /// Bytes queued for writing (for write-buffer limits).
    pub fn pending_transmit(&self) -> usize {
        self.tx.len()
    }

    /// The next event for the application.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Releases the capacity of empty internal queues. For a connection going idle: a
    /// server holding many thousands of quiet connections keeps only what they use.
    pub fn shrink_idle(&mut self) {
        if self.events.is_empty() {
            self.events = VecDeque::new();
        }
        if self.tx.is_empty() {
            self.tx = Vec::new();
        }
        if self.inbound.is_empty() {
            self.inbound = HashSet::new();
        }
        if self.outbound.is_empty() {
            self.outbound = HashMap::new();
        }
    }

    /// The earliest instant at which [`Session::handle_timeout`] must be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        match self.state {
            State::Closed => return None,
            State::Handshake => consider(self.handshake_deadline),
            State::Draining { deadline, .. } => consider(Some(deadline)),
            State::Open => {}
        }
        consider(self.partial_since.map(|t| t + self.config.read_timeout));
        consider(self.config.idle_timeout.map(|d| self.last_activity + d));
        next
    }

    /// Applies every deadline that has passed at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Closed => return,
            State::Handshake if self.handshake_deadline.is_some_and(|d| now >= d) => {
                match self.config.role {
                    Role::Server => self.close_with(CloseReason::InitTimeout, None),
                    // ack_timeout is local: close without a frame (PROTOCOL.md §10.3)
                    Role::Client => self.close_silently(CloseReason::AckTimeout.as_str(), false),
                }
                return;
            }
            State::Draining { deadline, by_peer } if now >= deadline => {
                self.inbound.clear();
                self.finish_close(by_peer);
                return;
            }
            _ => {}
        }
        if self
            .partial_since
            .is_some_and(|t| now >= t + self.config.read_timeout)
        {
            self.close_with(CloseReason::ReadTimeout, Some("frame incomplete"));
            return;
        }
        if self
            .config
            .idle_timeout
            .is_some_and(|d| now >= self.last_activity + d)
        {
            self.close_with(CloseReason::IdleTimeout, None);
        }
    }

    /// Consumes complete frames from the front of `buf` and returns how many bytes were
    /// used; the caller keeps the rest (an incomplete frame) for the next call.
    #[must_use = "the consumed bytes must be dropped from the input buffer"]
    pub fn handle_input(&mut self, buf: &[u8], now: Instant) -> usize {
        let mut used = 0;
        while !self.is_closed() {
            let rest = &buf[used..];
            if rest.is_empty() {
                self.partial_since = None;
                break;
            }
            match Frame::decode(rest, self.config.max_payload) {
                Ok(Decoded::Complete { frame, consumed }) => {
                    used += consumed;
                    self.partial_since = None;
                    self.last_activity = now;
                    self.seen_frame = true;
                    self.handle_frame(&frame.header, frame.payload, now);
                }
                Ok(Decoded::Incomplete { .. }) => {
                    self.partial_since.get_or_insert(now);
                    break;
                }
                Err(FrameError::InvalidMagic) => {
                    // not IICP (any more): close with zero bytes written, whether or not
                    // valid frames came before (framing §1.2, §9.6)
                    self.close_silently("invalid_magic", false);
                }
                Err(FrameError::TooLarge { .. }) => {
                    self.close_with(CloseReason::FrameTooLarge, None)
                }
                Err(_) => self.close_with(CloseReason::InvalidFrame, None),
            }
        }
        used
    }

    fn handle_frame(&mut self, header: &FrameHeader, payload: &[u8], now: Instant) {
        if header.version == 0 {
            return self.close_with(CloseReason::InvalidVersion, None);
        }
        if header.version > VERSION {
            return self.close_with(CloseReason::VersionMismatch, None);
        }
        let t = header.msg_type;
        match t.class() {
            TypeClass::Invalid => return self.close_with(CloseReason::InvalidType, None),
            TypeClass::Reserved | TypeClass::Custom if !self.peer_spec_aware => {
                self.events.push_back(Event::Ignored(t));
                return;
            }
            TypeClass::Reserved => return self.close_with(CloseReason::UnknownType, None),
            TypeClass::Custom => return self.close_with(CloseReason::UnsupportedExtension, None),
            TypeClass::Core => {}
        }
        if header.flags.compressed() || header.flags.fragmented() {
            // neither compression nor fragmentation is offered in our INIT/ACK
            return self.close_with(
                CloseReason::ProtocolError,
                Some("compression and fragmentation were not negotiated"),
            );
        }
        // A RELAY_BIND on a task port is answered with a CLOSE (PROTOCOL.md §14.2).
        if self.config.channel == Channel::Task
            && t == MessageType::RELAY_BIND
            && self.config.role == Role::Server
            && !self.peer_spec_aware
        {
            return self.close_with(
                CloseReason::ProtocolError,
                Some("relay bind is only accepted on the relay port"),
            );
        }
        let msg = match Message::decode(header, payload, self.config.channel) {
            Ok(m) => m,
            Err(e) => return self.close_on_message_error(&e),
        };
        self.handle_message(msg, now);
    }

    fn close_on_message_error(&mut self, e: &MessageError) {
        self.close_with(e.close_reason(), None);
    }

    fn calls_outbound(&self) -> bool {
        // on a relay-accept connection the accepting server pushes CALLs to the worker
        (self.config.role == Role::Client) != (self.config.channel == Channel::Relay)
    }

    fn handle_message(&mut self, msg: Message, now: Instant) {
        match msg {
            Message::Init(init) => self.on_init(init),
            Message::Ack(ack) => self.on_ack(ack),
            Message::Ping(p) => self.queue(&Message::Pong(p)),
            Message::Pong(p) => self.events.push_back(Event::Pong(p)),
            Message::Close(c) => self.on_close(c, now),
            Message::Call(call) => self.on_call(call, now),
            Message::Response(resp) => self.on_response(resp),
            Message::Discover(d)
                if self.config.role == Role::Server && self.config.channel == Channel::Task =>
            {
                self.on_discover(d)
            }
            other => self.events.push_back(Event::Message(other)),
        }
    }

    fn on_init(&mut self, init: Init) {
        if self.config.role != Role::Server || self.state != State::Handshake {
            return self.close_with(CloseReason::ProtocolError, Some("unexpected INIT"));
        }
        let offered = init.protocol_version.unwrap_or(PROTOCOL_VERSION);
        let floor = init.min_version.unwrap_or(1);
        self.peer_spec_aware = init.min_version.is_some();
        if offered == 0 || floor == 0 {
            return self.close_with(CloseReason::InvalidVersion, None);
        }
        let chosen = offered.min(PROTOCOL_VERSION);
        if chosen < floor {
            return self.close_with(
                CloseReason::VersionMismatch,
                Some("server supports version 1 only"),
            );
        }
        let mut ack = Ack {
            protocol_version: Some(chosen),
            node_id: self.config.node_id.clone(),
            ..Ack::default()
        };
        if self.peer_spec_aware {
            // spec peers learn what was negotiated: no custom types, no compression
            ack.capabilities = Some(Vec::new());
            ack.max_frame_size = Some(u64::from(self.config.max_payload));
        }
        self.queue(&Message::Ack(ack));
        self.state = State::Open;
        self.handshake_deadline = None;
        self.events.push_back(Event::Established {
            version: chosen,
            ack: None,
        });
    }

    fn on_ack(&mut self, ack: Ack) {
        if self.config.role != Role::Client || self.state != State::Handshake {
            return self.close_with(CloseReason::ProtocolError, Some("unexpected ACK"));
        }
        let version = ack.protocol_version.unwrap_or(PROTOCOL_VERSION);
        if version != PROTOCOL_VERSION {
            return self.close_with(CloseReason::VersionMismatch, None);
        }
        self.peer_spec_aware = ack.max_frame_size.is_some() || ack.capabilities.is_some();
        self.state = State::Open;
        self.handshake_deadline = None;
        self.events.push_back(Event::Established {
            version,
            ack: Some(ack),
        });
    }

    fn on_close(&mut self, close: Close, now: Instant) {
        let reason = close
            .reason
            .unwrap_or_else(|| CloseReason::Graceful.as_str().to_owned());
        if !self.inbound.is_empty() && self.state != State::Closed {
            // answer what we are executing before closing (PROTOCOL.md §10.6)
            self.state = State::Draining {
                deadline: now + self.config.drain_timeout,
                by_peer: true,
            };
            self.events.push_back(Event::Closed {
                reason,
                by_peer: true,
            });
            return;
        }
        self.events.push_back(Event::Closed {
            reason,
            by_peer: true,
        });
        self.queue(&Message::Close(Close::with_reason(CloseReason::Graceful)));
        self.outbound.clear();
        self.state = State::Closed;
    }

    fn on_call(&mut self, call: Call, now: Instant) {
        if self.calls_outbound() {
            return self.close_with(
                CloseReason::ProtocolError,
                Some("CALL sent in the wrong direction"),
            );
        }
        if self.state == State::Handshake {
            if self.config.require_init {
                return self.close_with(CloseReason::ProtocolError, Some("CALL before INIT"));
            }
            // reference SDK clients may skip the handshake (T16)
            self.state = State::Open;
            self.handshake_deadline = None;
        }
        let _ = now;
        let Some(id) = call.correlation_id().map(str::to_owned) else {
            return self.close_with(
                CloseReason::InvalidPayload,
                Some("CALL without call id or session id"),
            );
        };
        if matches!(self.state, State::Draining { .. }) {
            let r = Response::error(
                &call,
                "temporarily_unavailable",
                503,
                "node is shutting down",
            );
            return self.queue(&Message::Response(r));
        }
        if self.inbound.contains(&id) {
            let r = Response::error(
                &call,
                "conflict",
                409,
                "a call with this id is already in flight",
            );
            return self.queue(&Message::Response(r));
        }
        if self.inbound.len() >= self.config.max_in_flight {
            let r = Response::error(
                &call,
                "capacity_exceeded",
                429,
                "too many calls in flight on this connection",
            );
            return self.queue(&Message::Response(r));
        }
        self.inbound.insert(id);
        self.events.push_back(Event::Call(call));
    }

    fn on_discover(&mut self, discover: Discover) {
        if self.state == State::Handshake {
            if self.config.require_init {
                return self.close_with(CloseReason::ProtocolError, Some("DISCOVER before INIT"));
            }
            // like a CALL: reference SDK clients may skip the handshake (T16)
            self.state = State::Open;
            self.handshake_deadline = None;
        }
        self.discovers += 1;
        self.events.push_back(Event::Discover(discover));
    }

    fn on_response(&mut self, resp: Response) {
        if !self.calls_outbound() {
            return self.close_with(
                CloseReason::ProtocolError,
                Some("RESPONSE sent in the wrong direction"),
            );
        }
        // the SDKs echo the call id (key 15) and the session id (key 2); a call sent
        // with a call id is answered only by a RESPONSE naming that call id
        let known = outbound_key(&self.outbound, &resp);
        let Some(id) = known else {
            return self.close_with(
                CloseReason::ProtocolError,
                Some("RESPONSE for no outstanding CALL"),
            );
        };
        if resp.is_final() {
            self.outbound.remove(&id);
        }
        self.events.push_back(Event::Response(resp));
    }

    /// Sends a CALL. Its correlation id (call id, else session id) must be unique among
    /// outstanding calls.
    pub fn send_call(&mut self, call: Call) -> Result<(), SessionError> {
        self.check_open()?;
        if !self.calls_outbound() {
            return Err(SessionError::WrongDirection(MessageType::CALL));
        }
        let id = call
            .correlation_id()
            .ok_or(SessionError::MissingId)?
            .to_owned();
        if self.outbound.contains_key(&id) {
            return Err(SessionError::DuplicateCall);
        }
        if self.outbound.len() >= self.config.max_in_flight {
            return Err(SessionError::TooManyInFlight);
        }
        let ids = CallIds::of(&call);
        Message::Call(call).encode(&mut self.tx)?;
        self.outbound.insert(id, ids);
        Ok(())
    }

    /// Forgets an outstanding outbound call (the caller gave up, e.g. on its timeout);
    /// a late RESPONSE to it then counts as call-id drift only if the id is reused.
    pub fn abandon_call(&mut self, id: &str) -> bool {
        self.outbound.remove(id).is_some()
    }

    /// Sends the RESPONSE to a received CALL. A final response ends the call.
    pub fn send_response(&mut self, resp: Response) -> Result<(), SessionError> {
        if self.state == State::Closed {
            return Err(SessionError::Closed);
        }
        if self.calls_outbound() {
            return Err(SessionError::WrongDirection(MessageType::RESPONSE));
        }
        let id = [resp.call_id(), resp.session_id.as_deref()]
            .into_iter()
            .flatten()
            .find(|id| self.inbound.contains(*id))
            .map(str::to_owned)
            .ok_or(SessionError::UnknownCall)?;
        let is_final = resp.is_final();
        Message::Response(resp).encode(&mut self.tx)?;
        if is_final {
            self.inbound.remove(&id);
        }
        if let State::Draining { by_peer, .. } = self.state {
            if self.inbound.is_empty() {
                self.finish_close(by_peer);
            }
        }
        Ok(())
    }

    /// Answers one [`Event::Discover`] (server, task connection).
    ///
    /// # Errors
    /// [`SessionError::Closed`] after the session ended, [`SessionError::WrongDirection`]
    /// on a client or relay connection, [`SessionError::UnknownCall`] when every DISCOVER
    /// was already answered, [`SessionError::Frame`] when the reply exceeds the frame
    /// limit (the DISCOVER stays unanswered: send a shorter list).
    pub fn send_discover_reply(&mut self, reply: &DiscoverReply) -> Result<(), SessionError> {
        if self.state == State::Closed {
            return Err(SessionError::Closed);
        }
        if self.config.role != Role::Server || self.config.channel != Channel::Task {
            return Err(SessionError::WrongDirection(MessageType::RESPONSE));
        }
        if self.discovers == 0 {
            return Err(SessionError::UnknownCall);
        }
        reply.encode_frame(&mut self.tx)?;
        self.discovers -= 1;
        Ok(())
    }

    /// Sends a PING with optional echo data (≤ 64 bytes).
    pub fn ping(&mut self, echo: Option<Vec<u8>>) -> Result<(), SessionError> {
        self.check_open_or_handshake()?;
        Message::Ping(Ping {
            echo: echo.map(Into::into),
        })
        .encode(&mut self.tx)?;
        Ok(())
    }

    /// Sends any other message (RELAY_BIND, RELAY_ACK, FEEDBACK, …). CALL, RESPONSE,
    /// INIT, ACK and CLOSE have their own methods and are refused here.
    pub fn send(&mut self, msg: Message) -> Result<(), SessionError> {
        self.check_open_or_handshake()?;
        match msg {
            Message::Call(_)
            | Message::Response(_)
            | Message::Init(_)
            | Message::Ack(_)
            | Message::Close(_) => Err(SessionError::WrongDirection(msg.msg_type())),
            other => {
                other.encode(&mut self.tx)?;
                Ok(())
            }
        }
    }

    /// Starts a graceful close: answers to in-flight calls still go out (up to the drain
    /// timeout), then CLOSE `graceful` is sent.
    pub fn close(&mut self, now: Instant) {
        match self.state {
            State::Closed | State::Draining { .. } => {}
            _ if !self.inbound.is_empty() => {
                self.state = State::Draining {
                    deadline: now + self.config.drain_timeout,
                    by_peer: false,
                };
            }
            _ => self.finish_close(false),
        }
    }

    /// Closes at once with an error reason (one CLOSE frame, then the transport).
    pub fn abort(&mut self, reason: CloseReason, message: Option<&str>) {
        self.close_with(reason, message);
    }

    fn finish_close(&mut self, by_peer: bool) {
        self.queue(&Message::Close(Close::with_reason(CloseReason::Graceful)));
        if !by_peer {
            self.events.push_back(Event::Closed {
                reason: CloseReason::Graceful.as_str().to_owned(),
                by_peer: false,
            });
        }
        self.outbound.clear();
        self.state = State::Closed;
    }

    fn check_open(&self) -> Result<(), SessionError> {
        match self.state {
            State::Open => Ok(()),
            // calls may be pipelined behind our INIT
            State::Handshake if self.config.role == Role::Client => Ok(()),
            State::Handshake => Err(SessionError::WrongDirection(MessageType::CALL)),
            State::Draining { .. } | State::Closed => Err(SessionError::Closed),
        }
    }

    fn check_open_or_handshake(&self) -> Result<(), SessionError> {
        match self.state {
            State::Closed | State::Draining { .. } => Err(SessionError::Closed),
            _ => Ok(()),
        }
    }

    fn queue(&mut self, msg: &Message) {
        // our own messages are small and bounded; the frame limit cannot be hit here
        let _ = msg.encode(&mut self.tx);
    }

    fn close_with(&mut self, reason: CloseReason, message: Option<&str>) {
        if self.state == State::Closed {
            return;
        }
        let close = Close {
            reason: Some(reason.as_str().to_owned()),
            message: message.map(str::to_owned),
            session_id: None,
        };
        self.queue(&Message::Close(close));
        self.close_silently(reason.as_str(), false);
    }

    fn close_silently(&mut self, reason: &str, by_peer: bool) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.outbound.clear();
        self.inbound.clear();
        self.partial_since = None;
        self.events.push_back(Event::Closed {
            reason: reason.to_owned(),
            by_peer,
        });
    }
}
