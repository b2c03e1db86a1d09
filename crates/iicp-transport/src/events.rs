//! The event log of one service-lifecycle task (PROTOCOL.md §11, ADR 0013), and a
//! bounded registry of them: the one place where a lifecycle task's events are
//! numbered, kept and waited for — by the node that runs the task and by a relay that
//! forwards one.
//!
//! [`EventLog::emit`] numbers events and refuses anything after the terminal;
//! [`EventLog::append`] takes events numbered elsewhere (a relayed stream) and refuses
//! gaps, regressions and events after the terminal. Readers call
//! [`EventLog::next_events`], which waits without polling. [`Registry`] finds tasks by
//! id and forgets finished ones after [`RETAIN`], keeping at most [`MAX_FINISHED`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use iicp_proto::lifecycle::{Event, EventKind, TaskState, PROFILE};
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a finished task's events stay readable.
pub const RETAIN: Duration = Duration::from_secs(120);
/// Most finished tasks a [`Registry`] keeps.
pub const MAX_FINISHED: usize = 1024;

/// One lifecycle task's events, in order.
#[derive(Debug)]
pub struct EventLog {
    task_id: String,
    cancel: CancellationToken,
    log: Mutex<Log>,
    changed: tokio::sync::watch::Sender<usize>,
}

#[derive(Debug)]
struct Log {
    /// Shared with the readers: a reader takes its events without copying them.
    events: Vec<Arc<Event>>,
    finished_at: Option<Instant>,
}

/// Why [`EventLog::append`] refused an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The terminal was already appended.
    #[error("an event after the terminal")]
    AfterTerminal,
    /// The sequence is not the next one.
    #[error("sequence {got} where {expected} was next")]
    OutOfOrder {
        /// The next sequence.
        expected: u64,
        /// The event's.
        got: u64,
    },
    /// The event names another task.
    #[error("an event of another task")]
    OtherTask,
}

impl EventLog {
    /// An empty log for `task_id`.
    pub fn new(task_id: impl Into<String>) -> Self {
        Self {
            task_id: task_id.into(),
            cancel: CancellationToken::new(),
            log: Mutex::new(Log {
                events: Vec::new(),
                finished_at: None,
            }),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }

    /// A finished log made of stored events (a duplicate's replay).
    pub fn replayed(task_id: impl Into<String>, events: &[Arc<Event>]) -> Self {
        let log = Self::new(task_id);
        {
            let mut g = log.log.lock();
            g.events = events.to_vec();
            g.finished_at = Some(Instant::now());
        }
        log.changed.send_replace(events.len());
        log
    }

    /// The task's id.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// Appends the next event of `kind`, filled by `fill`, numbered here; `false` (and
    /// nothing appended) once the terminal was sent.
    pub fn emit(&self, kind: EventKind, fill: impl FnOnce(&mut Event)) -> bool {
        let mut log = self.log.lock();
        if log.finished_at.is_some() {
            return false;
        }
        let sequence = log.events.len() as u64;
        let mut e = Event::new(self.task_id.clone(), sequence, kind);
        fill(&mut e);
        // whatever `fill` did, the envelope stays consistent
        e.task_id.clone_from(&self.task_id);
        e.sequence = sequence;
        e.event = kind;
        e.is_final = kind.is_terminal();
        Self::push(&mut log, e);
        let n = log.events.len();
        drop(log);
        self.changed.send_replace(n);
        true
    }

    /// Appends an event numbered elsewhere: it must be this task's, carry the next
    /// sequence and come before or as the terminal.
    ///
    /// # Errors
    /// [`AppendError`]; the log is unchanged.
    pub fn append(&self, e: Event) -> Result<(), AppendError> {
        let mut log = self.log.lock();
        if log.finished_at.is_some() {
            return Err(AppendError::AfterTerminal);
        }
        if e.task_id != self.task_id {
            return Err(AppendError::OtherTask);
        }
        let expected = log.events.len() as u64;
        if e.sequence != expected {
            return Err(AppendError::OutOfOrder {
                expected,
                got: e.sequence,
            });
        }
        Self::push(&mut log, e);
        let n = log.events.len();
        drop(log);
        self.changed.send_replace(n);
        Ok(())
    }

    fn push(log: &mut Log, e: Event) {
        if e.event.is_terminal() {
            log.finished_at = Some(Instant::now());
        }
        log.events.push(Arc::new(e));
    }

    /// Asks the task to stop (it ends with `cancelled`, or the terminal it had already
    /// committed).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Fires when [`EventLog::cancel`] was called.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// Whether the terminal was appended.
    pub fn is_finished(&self) -> bool {
        self.log.lock().finished_at.is_some()
    }

    fn finished_at(&self) -> Option<Instant> {
        self.log.lock().finished_at
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Arc<Event>> {
        self.log.lock().events.clone()
    }

    /// The events after the first `from` ones, waiting until there is at least one;
    /// empty only when the task ended and `from` covers all of it.
    pub async fn next_events(&self, from: usize) -> Vec<Arc<Event>> {
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

    /// Waits until the terminal was appended.
    pub async fn finished(&self) {
        let mut seen = 0;
        loop {
            let more = self.next_events(seen).await;
            if more.is_empty() {
                return;
            }
            seen += more.len();
        }
    }

    /// The task's state resource; with `base`, the URLs of its event stream and cancel
    /// resource under it (`""` for paths relative to the server).
    pub fn state(&self, base: Option<&str>) -> TaskState {
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

/// Something registered by task id that has an [`EventLog`].
pub trait HasLog: Send + Sync {
    /// The log.
    fn log(&self) -> &EventLog;
}

impl HasLog for EventLog {
    fn log(&self) -> &EventLog {
        self
    }
}

/// Lifecycle tasks by id, bounded: running ones stay, finished ones are kept for
/// [`RETAIN`] and at most [`MAX_FINISHED`] of them, oldest first out (while a task
/// older than all of them still runs, up to twice as many for at most a second, until
/// the next full pass).
pub struct Registry<T> {
    inner: Mutex<Inner<T>>,
}

struct Inner<T> {
    tasks: HashMap<String, Arc<T>>,
    /// Ids in insertion order, for expiry.
    order: VecDeque<String>,
    /// When finished tasks were last looked through.
    last_sweep: Option<Instant>,
}

/// How often an insert looks through the finished tasks (more often only at the bound).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                tasks: HashMap::new(),
                order: VecDeque::new(),
                last_sweep: None,
            }),
        }
    }
}

impl<T> std::fmt::Debug for Registry<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("tasks", &self.inner.lock().tasks.len())
            .finish()
    }
}

impl<T: HasLog> Registry<T> {
    /// The task with `task_id`, if known.
    pub fn get(&self, task_id: &str) -> Option<Arc<T>> {
        self.inner.lock().tasks.get(task_id).cloned()
    }

    /// Registers `task` under its log's id, replacing a finished one; `Err` with the
    /// one already there when it is still running.
    ///
    /// # Errors
    /// The running task with the same id.
    pub fn insert(&self, task: Arc<T>) -> Result<(), Arc<T>> {
        let mut g = self.inner.lock();
        g.expire(Instant::now());
        let id = task.log().task_id().to_owned();
        if let Some(old) = g.tasks.get(&id) {
            if !old.log().is_finished() {
                return Err(Arc::clone(old));
            }
        }
        g.order.push_back(id.clone());
        g.tasks.insert(id, task);
        Ok(())
    }

    /// How many tasks are registered (running and kept).
    pub fn len(&self) -> usize {
        self.inner.lock().tasks.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: HasLog> Inner<T> {
    fn expire(&mut self, now: Instant) {
        // over the count bound, the oldest finished tasks go first, from the front of the
        // insertion order: amortized O(1) per insert (a busy node is at the bound all
        // the time, and a full pass there cost every insert ~MAX_FINISHED lookups)
        while self.tasks.len() > MAX_FINISHED {
            let Some(front) = self.order.front() else {
                break;
            };
            match self
                .tasks
                .get(front)
                .map(|t| t.log().finished_at().is_some())
            {
                Some(false) => break, // running: the full pass below deals with the rest
                Some(true) => {
                    let id = self.order.pop_front().unwrap_or_default();
                    // a later entry of the same id (it was replaced) is the same task now
                    self.tasks.remove(&id);
                }
                None => {
                    self.order.pop_front();
                }
            }
        }
        // a full pass at most once a second, or when running tasks at the front kept the
        // cheap path from holding the bound twice over
        let swept_lately = self
            .last_sweep
            .is_some_and(|at| now.duration_since(at) < SWEEP_EVERY);
        if swept_lately && self.tasks.len() <= 2 * MAX_FINISHED {
            return;
        }
        self.last_sweep = Some(now);
        let mut finished = self
            .tasks
            .values()
            .filter(|t| t.log().finished_at().is_some())
            .count();
        let mut keep = VecDeque::with_capacity(self.order.len());
        let mut kept = std::collections::HashSet::with_capacity(self.tasks.len());
        while let Some(id) = self.order.pop_front() {
            let Some(t) = self.tasks.get(&id) else {
                continue;
            };
            match t.log().finished_at() {
                Some(at) if now.duration_since(at) >= RETAIN || finished > MAX_FINISHED => {
                    self.tasks.remove(&id);
                    finished -= 1;
                }
                _ => {
                    if kept.insert(id.clone()) {
                        keep.push_back(id);
                    }
                }
            }
        }
        self.order = keep;
    }
}

/// The sequence an event-stream request resumes after: `?after_sequence=N` (a negative
/// N: from the start), else the `Last-Event-ID: N` header.
pub fn resume_after(req: &crate::http::server::Request) -> Option<u64> {
    let from_query = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "after_sequence")
            .and_then(|(_, v)| v.parse::<i64>().ok())
    });
    match from_query {
        Some(n) => u64::try_from(n).ok(),
        None => req
            .headers()
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok()),
    }
}

/// A `text/event-stream` response of `task`'s events after sequence `after` (all of
/// them without), ending after the terminal (ADR 0013): one message per event, `id:`
/// the sequence, `event:` its name, `data:` the event object as `render` makes it for
/// this caller (sealing a result per chunk, say). Events are written as they come; a
/// reader that leaves stops the writer, not the task.
pub fn sse_response<T: HasLog + 'static>(
    task: Arc<T>,
    after: Option<u64>,
    render: impl Fn(&T, &Event) -> Option<Event> + Send + 'static,
) -> crate::http::server::Response {
    let next = after.map_or(0, |a| {
        usize::try_from(a.saturating_add(1)).unwrap_or(usize::MAX)
    });
    // written as the connection asks for them: no task or queue of its own, so an event
    // goes from the log to the socket without another hop
    let frames =
        futures_util::stream::unfold((task, next, render), |(task, next, render)| async move {
            let events = task.log().next_events(next).await;
            if events.is_empty() {
                return None;
            }
            let mut out = Vec::with_capacity(256 * events.len());
            for e in &events {
                let rendered = render(&task, e);
                write_sse(&mut out, rendered.as_ref().unwrap_or(e));
            }
            let frame = hyper::body::Frame::data(bytes::Bytes::from(out));
            let next = next + events.len();
            Some((
                Ok::<_, std::convert::Infallible>(frame),
                (task, next, render),
            ))
        });
    let body =
        crate::http::server::ResponseBody::streaming(http_body_util::StreamBody::new(frames));
    let mut r = crate::http::server::Response::new(body);
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    r
}

/// One SSE message for `e` (JSON has no raw newlines, so `data:` is one line).
pub fn write_sse(out: &mut Vec<u8>, e: &Event) {
    use std::io::Write;
    let _ = write!(out, "id: {}\nevent: {}\ndata: ", e.sequence, e.event);
    let _ = serde_json::to_writer(&mut *out, e);
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(id: &str) -> Arc<EventLog> {
        Arc::new(EventLog::new(id))
    }

    #[tokio::test]
    async fn events_are_numbered_and_nothing_follows_the_terminal() {
        let t = log("a");
        assert!(t.emit(EventKind::Accepted, |_| {}));
        assert!(t.emit(EventKind::Partial, |e| {
            e.result = Some(serde_json::json!("he").into());
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
        assert_eq!(
            t.state(Some("/r")).events_url.as_deref(),
            Some("/r/v1/tasks/a/events")
        );
    }

    #[test]
    fn appended_events_must_be_the_next_of_this_task() {
        let t = EventLog::new("a");
        let ev = |id: &str, seq, kind| Event::new(id, seq, kind);
        assert_eq!(
            t.append(ev("a", 1, EventKind::Partial)),
            Err(AppendError::OutOfOrder {
                expected: 0,
                got: 1
            })
        );
        assert_eq!(
            t.append(ev("b", 0, EventKind::Partial)),
            Err(AppendError::OtherTask)
        );
        t.append(ev("a", 0, EventKind::Partial)).unwrap();
        assert_eq!(
            t.append(ev("a", 0, EventKind::Partial)),
            Err(AppendError::OutOfOrder {
                expected: 1,
                got: 0
            })
        );
        t.append(ev("a", 1, EventKind::Failed)).unwrap();
        assert!(t.is_finished());
        assert_eq!(
            t.append(ev("a", 2, EventKind::Partial)),
            Err(AppendError::AfterTerminal)
        );
    }

    #[tokio::test]
    async fn readers_wait_for_the_next_event() {
        let t = log("b");
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

    #[test]
    fn sse_messages_are_one_line_of_json_each() {
        let mut e = Event::new("t", 3, EventKind::Partial);
        e.result = Some(serde_json::json!({"text": "a\nb"}).into());
        let mut out = Vec::new();
        write_sse(&mut out, &e);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("id: 3\nevent: partial\ndata: {"));
        assert!(text.ends_with("}\n\n"));
        assert_eq!(
            text.matches('\n').count(),
            4,
            "the newline in the chunk stays escaped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn finished_tasks_expire_running_ones_stay() {
        let s: Registry<EventLog> = Registry::default();
        s.insert(log("run")).unwrap();
        assert!(
            s.insert(log("run")).is_err(),
            "a running id is not replaced"
        );
        let done = log("done");
        done.emit(EventKind::Completed, |_| {});
        s.insert(done).unwrap();
        s.insert(log("done")).unwrap();
        assert_eq!(s.len(), 2);
        tokio::time::advance(RETAIN + Duration::from_secs(1)).await;
        s.insert(log("new")).unwrap();
        assert!(s.get("run").is_some());
        assert!(s.get("new").is_some());
        // "done" was replaced by a task that has not finished: still there
        assert!(s.get("done").is_some());
        s.get("done").unwrap().emit(EventKind::Failed, |_| {});
        tokio::time::advance(RETAIN + Duration::from_secs(1)).await;
        s.insert(log("later")).unwrap();
        assert!(s.get("done").is_none());
        assert_eq!(s.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_count_bound_the_oldest_finished_task_goes_and_running_ones_stay() {
        let s: Registry<EventLog> = Registry::default();
        let running = log("running-0");
        s.insert(Arc::clone(&running)).unwrap();
        for i in 0..MAX_FINISHED {
            let t = log(&format!("done-{i}"));
            t.emit(EventKind::Completed, |_| {});
            s.insert(t).unwrap();
        }
        assert_eq!(s.len(), MAX_FINISHED + 1);
        // within the sweep interval: the bound holds through the cheap path only, which
        // stops at the running task at the front
        let next = log("next");
        next.emit(EventKind::Completed, |_| {});
        s.insert(next).unwrap();
        assert_eq!(
            s.len(),
            MAX_FINISHED + 2,
            "the front task runs: nothing goes yet"
        );
        // once it has finished, inserts evict from the front, oldest first
        running.emit(EventKind::Completed, |_| {});
        let after = log("after");
        after.emit(EventKind::Completed, |_| {});
        s.insert(after).unwrap();
        // (the bound holds before each insert: at most MAX_FINISHED + the new one)
        assert_eq!(s.len(), MAX_FINISHED + 1);
        assert!(s.get("running-0").is_none() && s.get("done-0").is_none());
        assert!(s.get("done-1").is_some());
        assert!(s.get("after").is_some() && s.get("next").is_some());
        // many more inserts keep it at the bound, newest kept
        for i in 0..3 * MAX_FINISHED {
            let t = log(&format!("more-{i}"));
            t.emit(EventKind::Completed, |_| {});
            s.insert(t).unwrap();
            assert!(s.len() <= MAX_FINISHED + 1);
        }
        assert!(s.get(&format!("more-{}", 3 * MAX_FINISHED - 1)).is_some());
        assert!(s.get("after").is_none());
    }
}
