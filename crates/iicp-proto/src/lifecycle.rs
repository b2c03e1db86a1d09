//! The service-lifecycle profile's vocabulary (PROTOCOL.md §11; `[life]` §2–§6;
//! ADR 0013): the profile URN, negotiation, the event kinds and how they map onto the
//! RESPONSE status, and the event object that the HTTP event stream and the relay carry.
//!
//! A lifecycle task answers with ordered events: optionally `accepted`, then `partial`
//! chunks (incremental: concatenated in sequence order), then exactly one terminal
//! (`completed` with the last chunk, or `failed`/`cancelled`/`timed_out` without a
//! result). Sequences are 0-based and strictly increasing per task id; `tokens_used` is
//! cumulative and only the terminal value counts.
//!
//! On the native transport each event is one RESPONSE with the key-13 envelope
//! ([`crate::message::Lifecycle`]); the deployed validators (PROTOCOL.md §11.6) accept
//! only `partial` and terminal frames there, so native streams start with the first
//! partial at sequence 0 and never carry `accepted`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::result::ResultJson;
use crate::task::{Constraints, ErrorObject, Metrics};

/// The profile URN (`urn:iicp:profile:service-lifecycle:v1`).
pub const PROFILE: &str = "urn:iicp:profile:service-lifecycle:v1";

/// The CONTROL action that cancels a lifecycle task (ADR 0013: the spec assigns no
/// keys; ours are `{1: "cancel", 5: reason, 24: task_id}`).
pub const CANCEL_ACTION: &str = "cancel";

/// The IICP-CX feature of nodes that seal streamed chunks one by one (ADR 0013).
pub use crate::constants::CX_STREAM_V1;

/// Whether `constraints` ask for the lifecycle profile (required or optional).
pub fn requested(constraints: &Constraints) -> bool {
    let has = |p: &Option<Vec<String>>| p.as_ref().is_some_and(|v| v.iter().any(|u| u == PROFILE));
    has(&constraints.required_profiles) || has(&constraints.optional_profiles)
}

/// The required profiles `constraints` name that `supported` lacks (unknown optional
/// profiles are ignored, `[life]` §2).
pub fn missing_required<'a>(constraints: &'a Constraints, supported: &[&str]) -> Vec<&'a str> {
    constraints
        .required_profiles
        .iter()
        .flatten()
        .map(String::as_str)
        .filter(|p| !supported.contains(p))
        .collect()
}

/// A lifecycle event name (`[life]` §3, §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The provider committed to one execution.
    Accepted,
    /// An incremental result chunk.
    Partial,
    /// Final success, carrying the last chunk (maybe empty).
    Completed,
    /// Final failure.
    Failed,
    /// Cancellation was accepted.
    Cancelled,
    /// The deadline passed.
    TimedOut,
    /// The provider did not accept the work (cancelled before acceptance).
    Rejected,
}

impl EventKind {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Accepted => "accepted",
            EventKind::Partial => "partial",
            EventKind::Completed => "completed",
            EventKind::Failed => "failed",
            EventKind::Cancelled => "cancelled",
            EventKind::TimedOut => "timed_out",
            EventKind::Rejected => "rejected",
        }
    }

    /// Parses a wire event name.
    pub fn parse(s: &str) -> Option<EventKind> {
        Some(match s {
            "accepted" => EventKind::Accepted,
            "partial" => EventKind::Partial,
            "completed" => EventKind::Completed,
            "failed" => EventKind::Failed,
            "cancelled" => EventKind::Cancelled,
            "timed_out" => EventKind::TimedOut,
            "rejected" => EventKind::Rejected,
            _ => return None,
        })
    }

    /// Whether nothing may follow this event.
    pub fn is_terminal(self) -> bool {
        !matches!(self, EventKind::Accepted | EventKind::Partial)
    }

    /// The RESPONSE status (key 4) this event travels with (§11.3): `partial`,
    /// `success`, `error` or `timeout`.
    pub fn status(self) -> &'static str {
        match self {
            EventKind::Accepted | EventKind::Partial => "partial",
            EventKind::Completed => "success",
            EventKind::Failed | EventKind::Cancelled | EventKind::Rejected => "error",
            EventKind::TimedOut => "timeout",
        }
    }

    /// Whether a RESPONSE `status` agrees with this event (`partial`↔`partial`,
    /// `success`↔`completed`, `error`↔`failed`/`cancelled`/`rejected`,
    /// `timeout`↔`timed_out`).
    pub fn agrees_with_status(self, status: &str) -> bool {
        match status {
            "partial" => matches!(self, EventKind::Partial | EventKind::Accepted),
            "success" | "completed" => self == EventKind::Completed,
            "error" | "failed" => matches!(
                self,
                EventKind::Failed | EventKind::Cancelled | EventKind::Rejected
            ),
            "timeout" => self == EventKind::TimedOut,
            _ => false,
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One lifecycle event as a JSON object: the `data` of the HTTP event stream
/// (`GET /v1/tasks/{task_id}/events`) and a relayed event.
///
/// Under IICP-CX response encryption an event that carries a result has `status:
/// "encrypted"` and `iicp_conf_resp` instead of `result`: the sealed JSON text of the
/// result, with the sequence bound in the AAD (`ResponseKey::seal_chunk`, ADR 0013).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The task.
    pub task_id: String,
    /// 0-based, strictly increasing per task.
    pub sequence: u64,
    /// What happened.
    pub event: EventKind,
    /// The RESPONSE status: `partial`, `success`, `error`, `timeout`, or `encrypted`.
    pub status: String,
    /// Only true on the terminal event.
    pub is_final: bool,
    /// The incremental chunk (partial, completed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultJson>,
    /// The sealed chunk (`status: "encrypted"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iicp_conf_resp: Option<Value>,
    /// Why a terminal failed (no payload echo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorObject>,
    /// Cumulative tokens; the terminal value is authoritative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_used: Option<u64>,
    /// The model (terminal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_used: Option<String>,
    /// Node-side metrics (terminal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// `true` on a completed AI result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_by_ai: Option<bool>,
    /// Other members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Event {
    /// An event of `kind` with its status and finality filled in.
    pub fn new(task_id: impl Into<String>, sequence: u64, kind: EventKind) -> Self {
        Self {
            task_id: task_id.into(),
            sequence,
            event: kind,
            status: kind.status().to_owned(),
            is_final: kind.is_terminal(),
            result: None,
            iicp_conf_resp: None,
            error: None,
            tokens_used: None,
            model_used: None,
            metrics: None,
            generated_by_ai: None,
            extra: Map::new(),
        }
    }

    /// A copy of this event without its `result` (to put a sealed one in its place,
    /// without copying the plaintext).
    pub fn without_result(&self) -> Self {
        Self {
            task_id: self.task_id.clone(),
            sequence: self.sequence,
            event: self.event,
            status: self.status.clone(),
            is_final: self.is_final,
            result: None,
            iicp_conf_resp: self.iicp_conf_resp.clone(),
            error: self.error.clone(),
            tokens_used: self.tokens_used,
            model_used: self.model_used.clone(),
            metrics: self.metrics.clone(),
            generated_by_ai: self.generated_by_ai,
            extra: self.extra.clone(),
        }
    }

    /// Whether the result is sealed.
    pub fn is_encrypted(&self) -> bool {
        self.status == "encrypted"
    }
}

/// The state a lifecycle task resource reports (`GET /v1/tasks/{task_id}`, the answer
/// to `POST /v1/tasks` and to a cancel).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskState {
    /// Always [`PROFILE`].
    pub profile: String,
    /// The task.
    pub task_id: String,
    /// `accepted`, `streaming`, or the terminal event's name.
    pub state: String,
    /// The last event's sequence.
    pub latest_sequence: u64,
    /// Whether the task has ended.
    pub is_final: bool,
    /// Where its events stream (`text/event-stream`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_url: Option<String>,
    /// Where it is cancelled (`POST`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_url: Option<String>,
    /// Other members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The HTTP resources a node advertises with the profile (`[life]` §6: a provider
/// claiming the profile advertises its event-stream and cancel resources), in a
/// capability's `extensions.service_lifecycle`.
pub const HTTP_SUBMIT_PATH: &str = "/v1/tasks";
/// Event stream path template.
pub const HTTP_EVENTS_PATH: &str = "/v1/tasks/{task_id}/events";
/// Cancel path template.
pub const HTTP_CANCEL_PATH: &str = "/v1/tasks/{task_id}/cancel";
/// Status path template.
pub const HTTP_STATUS_PATH: &str = "/v1/tasks/{task_id}";
/// Submit-and-stream: the body of `POST /v1/tasks`, answered with the task's event
/// stream itself (`text/event-stream`, from `accepted` on) instead of 202 and a second
/// request for the events; refusals and buffered answers as `POST /v1/tasks` gives
/// them. Ours (ADR 0019), advertised as `submit_stream` beside the reference resources.
pub const HTTP_SUBMIT_STREAM_PATH: &str = "/v1/tasks/stream";

/// The capability extension naming the HTTP resources.
pub fn http_resources() -> Value {
    serde_json::json!({
        "submit": HTTP_SUBMIT_PATH,
        "events": HTTP_EVENTS_PATH,
        "cancel": HTTP_CANCEL_PATH,
        "status": HTTP_STATUS_PATH,
        "submit_stream": HTTP_SUBMIT_STREAM_PATH,
        "events_media_type": "text/event-stream",
    })
}

// ---------------------------------------------------------------------------
// Receiver-side validation (`[life]` §4, PROTOCOL.md §11.3, §11.6)
// ---------------------------------------------------------------------------

/// Why a lifecycle stream is invalid: a protocol error, never a success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// A native RESPONSE names another call id than the CALL.
    #[error("lifecycle response names another call id")]
    CallIdDrift,
    /// A native RESPONSE names another session id than the CALL.
    #[error("lifecycle response names another session id")]
    SessionIdDrift,
    /// An event names another task id.
    #[error("lifecycle event names another task id")]
    TaskIdDrift,
    /// An event skips a sequence number.
    #[error("lifecycle sequence gap: expected {expected}, got {got}")]
    SequenceGap {
        /// The next sequence due.
        expected: u64,
        /// What came.
        got: u64,
    },
    /// An event after the terminal one.
    #[error("lifecycle event after the terminal event")]
    AfterTerminal,
    /// The RESPONSE `is_final` (key 12) and the envelope's disagree, or a terminal event
    /// is not marked final.
    #[error("lifecycle finality disagrees")]
    FinalityDisagreement,
    /// The RESPONSE status does not map to the event.
    #[error("lifecycle status {status:?} contradicts event {event}")]
    StatusEventDisagreement {
        /// The status.
        status: String,
        /// The event.
        event: EventKind,
    },
    /// A non-terminal event is marked final.
    #[error("non-terminal lifecycle event marked final")]
    PartialMarkedFinal,
    /// The stream ended without a terminal event (ambiguous failure).
    #[error("lifecycle stream ended without a terminal event")]
    MissingTerminal,
    /// The event lacks a member it needs (envelope, sequence, a known event name).
    #[error("malformed lifecycle event: {0}")]
    Malformed(&'static str),
}

impl Violation {
    /// A stable snake_case name (`call_id_drift`, `sequence_gap`, …).
    pub fn code(&self) -> &'static str {
        match self {
            Violation::CallIdDrift => "call_id_drift",
            Violation::SessionIdDrift => "session_id_drift",
            Violation::TaskIdDrift => "task_id_drift",
            Violation::SequenceGap { .. } => "sequence_gap",
            Violation::AfterTerminal => "after_terminal",
            Violation::FinalityDisagreement => "finality_disagreement",
            Violation::StatusEventDisagreement { .. } => "status_event_disagreement",
            Violation::PartialMarkedFinal => "partial_marked_final",
            Violation::MissingTerminal => "missing_terminal",
            Violation::Malformed(_) => "malformed",
        }
    }
}

/// What to do with an event that passed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// New: use it (it is the terminal when its kind is terminal).
    Accept(EventKind),
    /// A repeat (its sequence is not above the last accepted one): ignore it.
    Discard,
}

/// One event as the wire carried it, whichever transport: the common input of
/// [`Tracker::accept`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed<'a> {
    /// RESPONSE key 2 (native only).
    pub session_id: Option<&'a str>,
    /// RESPONSE key 3/15 (native only).
    pub call_id: Option<&'a str>,
    /// RESPONSE status / event `status`, when carried. `encrypted` is read as the
    /// event's own status.
    pub status: Option<&'a str>,
    /// RESPONSE key 12 (native only).
    pub envelope_final: Option<bool>,
    /// The task id of the event.
    pub task_id: Option<&'a str>,
    /// The event's sequence.
    pub sequence: u64,
    /// The event name as sent.
    pub event: &'a str,
    /// The event's own `is_final`.
    pub is_final: bool,
}

impl<'a> Observed<'a> {
    /// A native lifecycle RESPONSE (key 13 envelope required).
    ///
    /// # Errors
    /// [`Violation::Malformed`] without the envelope, its sequence or its event name.
    pub fn from_response(resp: &'a crate::message::Response) -> Result<Self, Violation> {
        let env = resp.lifecycle.as_ref().ok_or(Violation::Malformed(
            "RESPONSE without a lifecycle envelope",
        ))?;
        Ok(Self {
            session_id: resp.session_id.as_deref(),
            call_id: resp.call_id(),
            status: resp.status.as_deref(),
            envelope_final: Some(resp.is_final()),
            task_id: env.task_id.as_deref(),
            sequence: env.sequence.ok_or(Violation::Malformed(
                "lifecycle envelope without a sequence",
            ))?,
            event: env
                .event
                .as_deref()
                .ok_or(Violation::Malformed("lifecycle envelope without an event"))?,
            is_final: env.is_final.unwrap_or(false),
        })
    }

    /// An HTTP (or relayed) event object.
    pub fn from_event(event: &'a Event) -> Self {
        Self {
            session_id: None,
            call_id: None,
            status: Some(event.status.as_str()),
            envelope_final: None,
            task_id: Some(event.task_id.as_str()),
            sequence: event.sequence,
            event: event.event.as_str(),
            is_final: event.is_final,
        }
    }
}

/// The receiver's validator of one lifecycle task's events (`[life]` §4): ids stay the
/// CALL's, sequences start at 0 (or after a resume point) and grow by one, a repeat is
/// discarded, status, event and finality agree, exactly one terminal ends the stream and
/// nothing follows it; [`Tracker::finish`] says whether the stream may end now.
///
/// ```
/// use iicp_proto::lifecycle::{Event, EventKind, Step, Tracker, Violation};
///
/// let mut t = Tracker::new("t-1");
/// let p0 = Event::new("t-1", 0, EventKind::Partial);
/// assert_eq!(t.accept_event(&p0), Ok(Step::Accept(EventKind::Partial)));
/// assert_eq!(t.accept_event(&p0), Ok(Step::Discard));
/// assert_eq!(t.finish(), Err(Violation::MissingTerminal));
/// let done = Event::new("t-1", 1, EventKind::Completed);
/// assert_eq!(t.accept_event(&done), Ok(Step::Accept(EventKind::Completed)));
/// assert_eq!(t.finish(), Ok(()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    task_id: String,
    call_id: Option<String>,
    session_id: Option<String>,
    /// The last accepted sequence.
    last: Option<u64>,
    terminal: Option<EventKind>,
    accepted: usize,
}

impl Tracker {
    /// Tracks the events of `task_id` (HTTP, relayed, or native without id checks).
    pub fn new(task_id: impl Into<String>) -> Self {
        Self {
            task_id: task_id.into(),
            call_id: None,
            session_id: None,
            last: None,
            terminal: None,
            accepted: 0,
        }
    }

    /// Tracks the RESPONSEs of a native CALL with these ids: a RESPONSE naming another
    /// call id (or session id) is drift.
    pub fn native(
        task_id: impl Into<String>,
        call_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Self {
        Self {
            call_id: call_id.map(str::to_owned),
            session_id: session_id.map(str::to_owned),
            ..Self::new(task_id)
        }
    }

    /// Continues after `sequence` (an HTTP resume with `after_sequence`).
    #[must_use]
    pub fn resumed_after(mut self, sequence: u64) -> Self {
        self.last = Some(sequence);
        self
    }

    /// The task id.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// The last accepted sequence.
    pub fn last_sequence(&self) -> Option<u64> {
        self.last
    }

    /// The terminal event, once accepted.
    pub fn terminal(&self) -> Option<EventKind> {
        self.terminal
    }

    /// How many events were accepted (repeats not counted).
    pub fn accepted(&self) -> usize {
        self.accepted
    }

    /// Validates a native lifecycle RESPONSE.
    ///
    /// # Errors
    /// The [`Violation`]; the stream is then broken.
    pub fn accept_response(&mut self, resp: &crate::message::Response) -> Result<Step, Violation> {
        self.accept(&Observed::from_response(resp)?)
    }

    /// Validates an HTTP event object.
    ///
    /// # Errors
    /// The [`Violation`]; the stream is then broken.
    pub fn accept_event(&mut self, event: &Event) -> Result<Step, Violation> {
        self.accept(&Observed::from_event(event))
    }

    /// Validates one event.
    ///
    /// # Errors
    /// The [`Violation`]; the stream is then broken.
    pub fn accept(&mut self, o: &Observed<'_>) -> Result<Step, Violation> {
        if let (Some(want), Some(got)) = (self.call_id.as_deref(), o.call_id) {
            if want != got {
                return Err(Violation::CallIdDrift);
            }
        }
        if self.call_id.is_some() && o.call_id.is_none() && o.session_id.is_none() {
            return Err(Violation::CallIdDrift);
        }
        if let (Some(want), Some(got)) = (self.session_id.as_deref(), o.session_id) {
            if want != got {
                return Err(Violation::SessionIdDrift);
            }
        }
        if o.task_id.is_some_and(|t| t != self.task_id) {
            return Err(Violation::TaskIdDrift);
        }
        let kind = EventKind::parse(o.event).ok_or(Violation::Malformed("unknown event name"))?;
        if self.last.is_some_and(|last| o.sequence <= last) {
            return Ok(Step::Discard);
        }
        if self.terminal.is_some() {
            return Err(Violation::AfterTerminal);
        }
        let expected = self.last.map_or(0, |l| l.saturating_add(1));
        if o.sequence != expected {
            return Err(Violation::SequenceGap {
                expected,
                got: o.sequence,
            });
        }
        if let Some(status) = o.status.filter(|s| *s != "encrypted") {
            if !kind.agrees_with_status(status) {
                return Err(Violation::StatusEventDisagreement {
                    status: status.to_owned(),
                    event: kind,
                });
            }
        }
        if o.envelope_final.is_some_and(|f| f != o.is_final) {
            return Err(Violation::FinalityDisagreement);
        }
        match (kind.is_terminal(), o.is_final) {
            (false, true) => return Err(Violation::PartialMarkedFinal),
            (true, false) => return Err(Violation::FinalityDisagreement),
            _ => {}
        }
        self.last = Some(o.sequence);
        self.accepted += 1;
        if kind.is_terminal() {
            self.terminal = Some(kind);
        }
        Ok(Step::Accept(kind))
    }

    /// Whether the stream may end here: only after its terminal event.
    ///
    /// # Errors
    /// [`Violation::MissingTerminal`] before it (an ambiguous failure, never success).
    pub fn finish(&self) -> Result<(), Violation> {
        match self.terminal {
            Some(_) => Ok(()),
            None => Err(Violation::MissingTerminal),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_onto_statuses() {
        for (kind, status, terminal) in [
            (EventKind::Accepted, "partial", false),
            (EventKind::Partial, "partial", false),
            (EventKind::Completed, "success", true),
            (EventKind::Failed, "error", true),
            (EventKind::Cancelled, "error", true),
            (EventKind::TimedOut, "timeout", true),
            (EventKind::Rejected, "error", true),
        ] {
            assert_eq!(kind.status(), status);
            assert_eq!(kind.is_terminal(), terminal);
            assert!(kind.agrees_with_status(status));
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert!(!EventKind::Completed.agrees_with_status("partial"));
        assert!(!EventKind::Partial.agrees_with_status("success"));
        assert!(!EventKind::TimedOut.agrees_with_status("error"));
        assert_eq!(EventKind::parse("expired"), None);
    }

    #[test]
    fn negotiation_reads_required_and_optional() {
        let mut c = Constraints::default();
        assert!(!requested(&c));
        c.optional_profiles = Some(vec![PROFILE.into()]);
        assert!(requested(&c));
        c.optional_profiles = None;
        c.required_profiles = Some(vec!["urn:iicp:profile:unknown:v1".into(), PROFILE.into()]);
        assert!(requested(&c));
        assert_eq!(
            missing_required(&c, &[PROFILE]),
            vec!["urn:iicp:profile:unknown:v1"]
        );
        assert!(missing_required(&Constraints::default(), &[]).is_empty());
    }

    #[test]
    fn the_cancel_control_uses_the_cancel_action() {
        let c = crate::message::Control::cancel("t-1", "client_cancelled");
        assert_eq!(c.action.as_deref(), Some(CANCEL_ACTION));
        assert_eq!(c.task_id.as_deref(), Some("t-1"));
        assert_eq!(c.reason.as_deref(), Some("client_cancelled"));
        // {1: "cancel", 5: reason, 24: task_id} and nothing else
        let frame = crate::message::Message::Control(c)
            .to_frame()
            .expect("frame");
        let v = crate::message::RawCbor(frame[12..].to_vec())
            .to_json()
            .expect("cbor");
        assert_eq!(
            v,
            serde_json::json!({"1": "cancel", "5": "client_cancelled", "24": "t-1"})
        );
    }

    #[test]
    fn the_relay_cancel_is_an_observe_standing_for_the_control() {
        use crate::message::{Control, Observe};
        let o = Observe::cancel("t-1", "caller");
        assert_eq!(o.as_cancel(), Some(Control::cancel("t-1", "caller")));
        // other OBSERVEs are not cancels
        let mut other = o.clone();
        other.event_type = Some("update".into());
        assert_eq!(other.as_cancel(), None);
        let mut other = o.clone();
        other.subject = Some("session".into());
        assert_eq!(other.as_cancel(), None);
        let mut other = o;
        other.data = Some(crate::message::RawCbor(crate::cbor::json_to_vec(
            &serde_json::json!({"action": "pause"}),
        )));
        assert_eq!(other.as_cancel(), None);
        assert_eq!(Observe::default().as_cancel(), None);
    }

    #[test]
    fn events_round_trip_as_json() {
        let mut e = Event::new("t-1", 2, EventKind::Partial);
        e.result = Some(serde_json::json!("lo").into());
        e.tokens_used = Some(2);
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(
            text,
            r#"{"task_id":"t-1","sequence":2,"event":"partial","status":"partial","is_final":false,"result":"lo","tokens_used":2}"#
        );
        let back: Event = serde_json::from_str(&text).unwrap();
        assert_eq!(back, e);
        let t: Event = serde_json::from_str(
            r#"{"task_id":"t","sequence":3,"event":"timed_out","status":"timeout","is_final":true,"error":{"code":"task_timeout","message":"x"}}"#,
        )
        .unwrap();
        assert!(t.event.is_terminal() && t.is_final);
    }

    #[test]
    fn an_event_carries_a_text_result_as_it_came() {
        let text = r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"Hi"}}],"model":"m"}"#;
        let raw = ResultJson::from_text(text.to_owned()).expect("json");
        let value = ResultJson::from(serde_json::from_str::<Value>(text).expect("json"));
        let mut e = Event::new("t", 1, EventKind::Partial);
        e.result = Some(raw);
        let wire = serde_json::to_string(&e).expect("serialise");
        assert!(wire.contains(text), "{wire}");
        let back: Event = serde_json::from_str(&wire).expect("parse");
        assert_eq!(
            back.result.as_ref().and_then(ResultJson::as_value),
            value.as_value()
        );
    }
}
