//! Lifecycle tasks in flight and just finished (PROTOCOL.md §11, ADR 0013).
//!
//! A [`StreamTask`] is a task's [`EventLog`] (numbered events, one terminal, readers that
//! wait; `iicp_transport::events`) plus what the node needs to serve it: who submitted
//! it, its duplicate fingerprint, the response key when the caller asked for encrypted
//! results. The pipeline appends the events; the native connection of the CALL, the
//! HTTP event stream (which may start after the task has ended, or resume after a
//! sequence) and the relay worker read them. [`Streams`] finds a task by id for the
//! event stream, the status and cancel resources and the native cancel CONTROL.

use std::net::IpAddr;

use iicp_proto::crypto::cx::ResponseKey;
use iicp_proto::lifecycle::Event;
use iicp_transport::events::{EventLog, HasLog, Registry};

/// One lifecycle task.
pub(crate) struct StreamTask {
    pub(crate) log: EventLog,
    pub(crate) task_id: String,
    /// The task's intent (what a consumer token must be valid for to observe it).
    pub(crate) intent: String,
    /// Duplicate fingerprint of the request (a resubmission attaches only when equal).
    pub(crate) fingerprint: [u8; 32],
    /// Who submitted it (cancel and observation from another address are refused in
    /// open mode).
    pub(crate) owner: IpAddr,
    /// The response key when the caller asked for encrypted results.
    pub(crate) seal_key: Option<ResponseKey>,
    pub(crate) trace_id: String,
}

/// The lifecycle tasks of a node.
pub(crate) type Streams = Registry<StreamTask>;

impl HasLog for StreamTask {
    fn log(&self) -> &EventLog {
        &self.log
    }
}

impl std::fmt::Debug for StreamTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTask")
            .field("task_id", &self.task_id)
            .field("finished", &self.log.is_finished())
            .finish_non_exhaustive()
    }
}

impl StreamTask {
    pub(crate) fn new(
        log: EventLog,
        intent: String,
        fingerprint: [u8; 32],
        owner: IpAddr,
        seal_key: Option<ResponseKey>,
        trace_id: String,
    ) -> Self {
        Self {
            task_id: log.task_id().to_owned(),
            log,
            intent,
            fingerprint,
            owner,
            seal_key,
            trace_id,
        }
    }

    /// `event` as this task's caller receives it at position `index` of its
    /// transport's sequence, when that differs from the event itself: with response
    /// encryption, a result is replaced by its sealed JSON text (`status: "encrypted"`,
    /// `iicp_conf_resp`, ADR 0013). `None`: the event goes as it is. A chunk that cannot
    /// be sealed is dropped from the event rather than sent in clear.
    pub(crate) fn sealed(&self, event: &Event, index: u64) -> Option<Event> {
        let key = self.seal_key.as_ref()?;
        let result = event.result.as_ref()?;
        let mut sealed = event.without_result();
        let text = result.to_json_bytes();
        match key.seal_chunk(&mut iicp_transport::random::PooledRng, index, &text) {
            Ok(envelope) => {
                "encrypted".clone_into(&mut sealed.status);
                sealed.iicp_conf_resp = Some(envelope.to_value());
            }
            Err(e) => tracing::error!(reason = %e, "CX chunk encryption failed; chunk withheld"),
        }
        Some(sealed)
    }
}
