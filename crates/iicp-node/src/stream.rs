//! Lifecycle tasks in flight and just finished (PROTOCOL.md §11, ADR 0013).
//!
//! A [`StreamTask`] is the one place a lifecycle task's events live: the pipeline
//! appends them ([`StreamTask::emit`] numbers them and refuses anything after the
//! terminal), and every transport reads them from there — the native connection of the
//! CALL, the HTTP event stream (which may start after the task has ended, or resume
//! after a sequence), the relay. Readers wait for new events without polling.
//!
//! [`Streams`] finds a task by id for the event stream, the status and the cancel
//! resources and the native cancel CONTROL. It is bounded: running tasks hold a slot of
//! the node's `max_concurrent` anyway, finished ones are kept for [`RETAIN`] (a client
//! that submits and then subscribes must find the events even when the task was
//! faster) and at most [`MAX_FINISHED`] of them, oldest first out.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use iicp_proto::crypto::cx::ResponseKey;
use iicp_proto::lifecycle::{Event, EventKind, TaskState, PROFILE};
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a finished task's events stay readable.
pub(crate) const RETAIN: Duration = Duration::from_secs(120);
/// Most finished tasks kept.
pub(crate) const MAX_FINISHED: usize = 1024;

/// One lifecycle task's events.
pub(crate) struct StreamTask {
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
    cancel: CancellationToken,
    log: Mutex<Log>,
    changed: tokio::sync::watch::Sender<usize>,
}

struct Log {
    events: Vec<Event>,
    finished_at: Option<Instant>,
}

impl StreamTask {
    pub(crate) fn new(
        task_id: String,
        intent: String,
        fingerprint: [u8; 32],
        owner: IpAddr,
        seal_key: Option<ResponseKey>,
        trace_id: String,
    ) -> Self {
        Self {
            task_id,
            intent,
            fingerprint,
            owner,
            seal_key,
            trace_id,
            cancel: CancellationToken::new(),
            log: Mutex::new(Log {
                events: Vec::new(),
                finished_at: None,
            }),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }

    /// A finished task made of stored events (a duplicate's replay).
    pub(crate) fn replayed(
        task_id: String,
        intent: String,
        owner: IpAddr,
        seal_key: Option<ResponseKey>,
        trace_id: String,
        events: &[Event],
    ) -> Self {
        let t = Self::new(task_id, intent, [0; 32], owner, seal_key, trace_id);
        {
            let mut log = t.log.lock();
            log.events = events.to_vec();
            log.finished_at = Some(Instant::now());
        }
        t.changed.send_replace(events.len());
        t
    }

    /// Appends the next event of `kind`, filled by `fill`, with its sequence; `false`
    /// (and nothing appended) once the terminal was sent.
    pub(crate) fn emit(&self, kind: EventKind, fill: impl FnOnce(&mut Event)) -> bool {
        let mut log = self.log.lock();
        if log.finished_at.is_some() {
            return false;
        }
        let mut e = Event::new(self.task_id.clone(), log.events.len() as u64, kind);
        fill(&mut e);
        // whatever `fill` did, the envelope stays consistent
        e.sequence = log.events.len() as u64;
        e.event = kind;
        e.is_final = kind.is_terminal();
        if kind.is_terminal() {
            log.finished_at = Some(Instant::now());
        }
        log.events.push(e);
        let n = log.events.len();
        drop(log);
        self.changed.send_replace(n);
        true
    }

    /// Asks the running task to stop (it ends with `cancelled`, or the terminal it
    /// had already committed).
    pub(crate) fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Fires when [`StreamTask::cancel`] was called.
    pub(crate) async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// Whether the terminal was sent.
    pub(crate) fn is_finished(&self) -> bool {
        self.log.lock().finished_at.is_some()
    }

    fn finished_at(&self) -> Option<Instant> {
        self.log.lock().finished_at
    }

    /// Every event so far (for the duplicate store once finished).
    pub(crate) fn events(&self) -> Vec<Event> {
        self.log.lock().events.clone()
    }

    /// The events after the first `from` ones, waiting until there is at least one;
    /// empty only when the task ended and `from` covers all of it.
    pub(crate) async fn next_events(&self, from: usize) -> Vec<Event> {
        let mut rx = self.changed.subscribe();
        loop {
            {
                let log = self.log.lock();
                if log.events.len() > from {
                    return log.events[from..].to_vec();
                }
                if log.finished_at.is_some() {
                    return Vec::new();
                }
            }
            if rx.changed().await.is_err() {
                return Vec::new();
            }
        }
    }

    /// The task's state resource.
    pub(crate) fn state(&self, base: Option<&str>) -> TaskState {
        let log = self.log.lock();
        let last = log.events.last();
        let state = match last.map(|e| e.event) {
            None | Some(EventKind::Accepted) => "accepted",
            Some(EventKind::Partial) => "streaming",
            Some(k) => k.as_str(),
        };
        let url = |suffix: &str| base.map(|b| format!("{b}/v1/tasks/{}{suffix}", self.task_id));
        TaskState {
            profile: PROFILE.to_owned(),
            task_id: self.task_id.clone(),
            state: state.to_owned(),
            latest_sequence: last.map_or(0, |e| e.sequence),
            is_final: log.finished_at.is_some(),
            events_url: url("/events"),
            cancel_url: url("/cancel"),
            extra: serde_json::Map::new(),
        }
    }
}

impl std::fmt::Debug for StreamTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTask")
            .field("task_id", &self.task_id)
            .field("events", &self.log.lock().events.len())
            .field("finished", &self.is_finished())
            .finish_non_exhaustive()
    }
}

impl StreamTask {
    /// `event` as this task's caller receives it at position `index` of its
    /// transport's sequence: with response encryption, a result is replaced by its
    /// sealed JSON text (`status: "encrypted"`, `iicp_conf_resp`, ADR 0013). A chunk
    /// that cannot be sealed is dropped from the event rather than sent in clear.
    pub(crate) fn for_caller(&self, mut event: Event, index: u64) -> Event {
        let Some(key) = &self.seal_key else {
            return event;
        };
        let Some(result) = event.result.take() else {
            return event;
        };
        let text = serde_json::to_vec(&result).unwrap_or_default();
        match key.seal_chunk(&mut rand_core::OsRng, index, &text) {
            Ok(sealed) => {
                event.status = "encrypted".to_owned();
                event.iicp_conf_resp =
                    Some(iicp_proto::crypto::cx::IicpConfResp::to_value(&sealed));
            }
            Err(e) => tracing::error!(reason = %e, "CX chunk encryption failed; chunk withheld"),
        }
        event
    }
}

/// Lifecycle tasks by id.
#[derive(Default)]
pub(crate) struct Streams {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    tasks: HashMap<String, Arc<StreamTask>>,
    /// Ids in insertion order, for expiry of finished tasks.
    order: VecDeque<String>,
}

impl Streams {
    /// The task with `task_id`, if known.
    pub(crate) fn get(&self, task_id: &str) -> Option<Arc<StreamTask>> {
        self.inner.lock().tasks.get(task_id).cloned()
    }

    /// Registers `task`, replacing a finished one with the same id; `Err` with the
    /// one already there when it is still running.
    pub(crate) fn insert(&self, task: Arc<StreamTask>) -> Result<(), Arc<StreamTask>> {
        let mut g = self.inner.lock();
        g.expire(Instant::now());
        if let Some(old) = g.tasks.get(&task.task_id) {
            if !old.is_finished() {
                return Err(Arc::clone(old));
            }
        }
        g.order.push_back(task.task_id.clone());
        g.tasks.insert(task.task_id.clone(), task);
        Ok(())
    }

    /// How many tasks are registered (running and kept).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().tasks.len()
    }
}

impl Inner {
    /// Drops finished tasks past [`RETAIN`], and the oldest finished ones beyond
    /// [`MAX_FINISHED`]; running tasks stay.
    fn expire(&mut self, now: Instant) {
        let finished = |t: &StreamTask| t.finished_at();
        let mut kept_finished = self
            .tasks
            .values()
            .filter(|t| finished(t).is_some())
            .count();
        let mut keep = VecDeque::with_capacity(self.order.len());
        while let Some(id) = self.order.pop_front() {
            let Some(t) = self.tasks.get(&id) else {
                continue;
            };
            match finished(t) {
                Some(at) if now.duration_since(at) >= RETAIN || kept_finished > MAX_FINISHED => {
                    self.tasks.remove(&id);
                    kept_finished -= 1;
                }
                _ => keep.push_back(id),
            }
        }
        self.order = keep;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn task(id: &str) -> Arc<StreamTask> {
        Arc::new(StreamTask::new(
            id.into(),
            "urn:iicp:intent:llm:chat:v1".into(),
            [0; 32],
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            None,
            "t".into(),
        ))
    }

    #[tokio::test]
    async fn events_are_numbered_and_nothing_follows_the_terminal() {
        let t = task("a");
        assert!(t.emit(EventKind::Accepted, |_| {}));
        assert!(t.emit(EventKind::Partial, |e| {
            e.result = Some(serde_json::json!("he"));
            e.sequence = 99; // ignored: the log numbers events
        }));
        assert!(t.emit(EventKind::Completed, |_| {}));
        assert!(!t.emit(EventKind::Partial, |_| {}));
        assert!(!t.emit(EventKind::Failed, |_| {}));
        let ev = t.next_events(0).await;
        assert_eq!(
            ev.iter()
                .map(|e| (e.sequence, e.event, e.is_final))
                .collect::<Vec<_>>(),
            vec![
                (0, EventKind::Accepted, false),
                (1, EventKind::Partial, false),
                (2, EventKind::Completed, true)
            ]
        );
        assert!(t.next_events(3).await.is_empty());
        assert_eq!(t.state(None).state, "completed");
        assert!(t.state(None).is_final);
    }

    #[tokio::test]
    async fn readers_wait_for_the_next_event() {
        let t = task("b");
        t.emit(EventKind::Accepted, |_| {});
        let reader = {
            let t = Arc::clone(&t);
            tokio::spawn(async move { t.next_events(1).await })
        };
        tokio::task::yield_now().await;
        assert!(!reader.is_finished());
        t.emit(EventKind::Partial, |_| {});
        let got = reader.await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].sequence, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn finished_tasks_expire_running_ones_stay() {
        let s = Streams::default();
        let running = task("run");
        s.insert(Arc::clone(&running)).unwrap();
        assert!(
            s.insert(task("run")).is_err(),
            "a running id is not replaced"
        );
        let done = task("done");
        done.emit(EventKind::Completed, |_| {});
        s.insert(done).unwrap();
        let again = task("done");
        s.insert(again).unwrap();
        assert_eq!(s.len(), 2);
        tokio::time::advance(RETAIN + Duration::from_secs(1)).await;
        s.insert(task("new")).unwrap();
        assert!(s.get("run").is_some());
        assert!(s.get("new").is_some());
        // "done" was replaced by a task that never finished: still there
        assert!(s.get("done").is_some());
        s.get("done").unwrap().emit(EventKind::Failed, |_| {});
        tokio::time::advance(RETAIN + Duration::from_secs(1)).await;
        s.insert(task("later")).unwrap();
        assert!(s.get("done").is_none());
        assert_eq!(s.len(), 3);
    }
}
