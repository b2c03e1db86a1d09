//! The directory agent: registration with retry and backoff, heartbeats every
//! `next_heartbeat_ms` answering the HMAC `challenge`, re-registration with
//! `current_node_token` when the directory answers 401/404/410, and patience through
//! directory outages (PROTOCOL.md §8.2, §8.2.4, §8.3; SEED-SDK.md §1.9).
//!
//! One loop per served node. Failures back off exponentially (±20 % jitter) up to the
//! configured maximum, never sooner than a `Retry-After`; after
//! [`Breaker::failures`](crate::Breaker) failures in a row (registration or heartbeat)
//! the circuit breaker opens and no directory call is made for at least
//! [`Breaker::open_for`](crate::Breaker) (ADR 0009). The node keeps serving tasks
//! meanwhile. Every failure is recorded with the directory's code and message
//! ([`crate::Node::directory_status`]) and logged, scrubbed of the node's secrets.
//! Heartbeat `metrics` are sent as a batch with a `metrics_batch_id` until the directory
//! acknowledges it (or does not speak batch ids at all).

use std::sync::Arc;
use std::time::Duration;

use iicp_proto::crypto::mac::challenge_response;
use iicp_proto::directory::{HeartbeatMetrics, HeartbeatRequest};
use iicp_transport::shutdown::Shutdown;
use rand_core::RngCore;

use crate::access::AuthMode;
use crate::directory::DirectoryError;
use crate::event::EventKind;
use crate::state::{Counters, Shared};

/// Shortest and longest heartbeat interval accepted from `next_heartbeat_ms`.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
const MAX_INTERVAL: Duration = Duration::from_secs(600);

struct State {
    challenge: Option<String>,
    backoff: Option<Duration>,
    batch: Option<(String, HeartbeatMetrics)>,
    interval: Duration,
}

/// Runs until `stop` fires.
pub(crate) async fn run(shared: Arc<Shared>, stop: Shutdown) {
    let mut st = State {
        challenge: None,
        backoff: None,
        batch: None,
        interval: shared.cfg.heartbeat_interval,
    };
    let mut first = true;
    loop {
        if stop.is_cancelled() {
            return;
        }
        if shared.advert.lock().withheld {
            // no public route yet (reachability plans again): nothing to register
            tokio::select! {
                () = tokio::time::sleep(WITHHELD_RECHECK) => continue,
                () = stop.cancelled() => return,
            }
        }
        let delay = if first && shared.token().is_some() {
            // serving with a token from an earlier registration: beat after an interval
            first = false;
            st.interval
        } else {
            first = false;
            tokio::select! {
                d = step(&shared, &mut st) => d,
                () = stop.cancelled() => return,
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// How often a node without a public route looks whether reachability found one.
const WITHHELD_RECHECK: Duration = Duration::from_millis(500);

fn jitter(d: Duration) -> Duration {
    let r = rand_core::OsRng.next_u32() % 401; // 0..=400 → 0.8..=1.2
    d.mul_f64(0.8 + f64::from(r) / 1000.0)
}

/// Upward-only jitter (1.0..=1.2): an open breaker is never shortened.
fn jitter_up(d: Duration) -> Duration {
    let r = rand_core::OsRng.next_u32() % 201; // 0..=200 → 1.0..=1.2
    d.mul_f64(1.0 + f64::from(r) / 1000.0)
}

fn next_backoff(shared: &Shared, st: &mut State) -> Duration {
    let b = shared.cfg.directory_backoff;
    let next = match st.backoff {
        None => b.initial,
        Some(prev) => prev.saturating_mul(2).min(b.max),
    };
    st.backoff = Some(next);
    jitter(next)
}

/// Longest `Retry-After` honoured; a directory asking for more is retried after this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// The back-off after a failed call, but never sooner than the directory asked
/// (`Retry-After` on 429/503, PROTOCOL.md §5.3, §6.3).
fn delay_after(shared: &Shared, st: &mut State, e: Option<&DirectoryError>) -> Duration {
    let backoff = next_backoff(shared, st);
    match e.and_then(DirectoryError::retry_after) {
        Some(asked) => backoff.max(asked.min(MAX_RETRY_AFTER)),
        None => backoff,
    }
}

/// The delay after a failed call that made `failures` in a row: the backoff, or — from
/// the breaker's threshold on — at least the breaker's open time, during which no
/// directory call is made. Opening is announced once (`directory_unavailable`).
fn after_failure(
    shared: &Shared,
    st: &mut State,
    e: Option<&DirectoryError>,
    failures: u32,
) -> Duration {
    let delay = delay_after(shared, st, e);
    let breaker = shared.cfg.directory_breaker;
    if breaker.failures == 0 || failures < breaker.failures {
        return delay;
    }
    let delay = delay.max(jitter_up(breaker.open_for));
    let until = shared
        .unix_ms()
        .saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
    shared.set_breaker(Some(until));
    let error = e.map_or_else(|| "registration failed".to_owned(), ToString::to_string);
    if failures == breaker.failures {
        tracing::warn!(
            failures,
            retry_in_ms = delay.as_millis() as u64,
            last_error = %error,
            "directory unavailable: circuit breaker open, no directory calls until it closes; still serving tasks"
        );
        shared.emit(EventKind::DirectoryUnavailable {
            directory_url: shared.cfg.directory_url.clone(),
            failures,
            retry_in: delay,
            error,
        });
    } else {
        tracing::info!(
            failures,
            retry_in_ms = delay.as_millis() as u64,
            "directory still unavailable; circuit breaker open again"
        );
    }
    delay
}

fn failure_reason(e: &DirectoryError) -> &'static str {
    match e.status_code() {
        Some(401 | 404 | 410) => "registration_lost",
        Some(429) => "rate_limited",
        Some(s) if s >= 500 => "server_error",
        Some(_) => "rejected",
        None if e.is_retryable() => "transport",
        None => "invalid_reply",
    }
}

/// One attempt: register when no token is held, else heartbeat. Returns the delay to
/// the next attempt.
async fn step(shared: &Shared, st: &mut State) -> Duration {
    if shared.token().is_none() {
        return register(shared, st).await;
    }
    if delegation_due(shared) {
        tracing::info!("operator delegation expires soon; registering again to renew it");
        return register(shared, st).await;
    }
    if shared
        .models_dirty
        .swap(false, std::sync::atomic::Ordering::Relaxed)
    {
        tracing::info!("the advertised models changed; registering again");
        let (delay, registered) = register_once(shared, st).await;
        if !registered {
            // not registered with the new list yet: try again next time
            shared
                .models_dirty
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        return delay;
    }
    match heartbeat(shared, st).await {
        Ok(interval) => {
            st.backoff = None;
            st.interval = interval;
            shared.directory_ok();
            fetch_directory_key(shared).await;
            interval
        }
        Err(e) if e.is_registration_lost() => {
            tracing::warn!(status = ?e.status_code(), code = ?e.code_str(), "directory lost our registration; registering again");
            shared.metrics.heartbeat_failure("registration_lost");
            st.challenge = None;
            register(shared, st).await
        }
        Err(e) => {
            tracing::warn!(
                status = ?e.status_code(),
                code = ?e.code_str(),
                error = %e,
                "heartbeat failed; will retry"
            );
            shared.metrics.heartbeat_failure(failure_reason(&e));
            let failures = shared.directory_failed(&e);
            after_failure(shared, st, Some(&e), failures)
        }
    }
}

async fn register(shared: &Shared, st: &mut State) -> Duration {
    register_once(shared, st).await.0
}

/// One registration: the delay to the next attempt, and whether it succeeded.
async fn register_once(shared: &Shared, st: &mut State) -> (Duration, bool) {
    match crate::registration::register(shared).await {
        Ok(_) => {
            st.backoff = None;
            st.challenge = None;
            fetch_directory_key(shared).await;
            (st.interval, true)
        }
        Err(e) => {
            let directory_error = match &e {
                crate::Error::Directory(d) => Some(d),
                _ => None,
            };
            tracing::warn!(
                status = ?directory_error.and_then(DirectoryError::status_code),
                code = ?directory_error.and_then(DirectoryError::code_str),
                error = %e,
                "registration failed; will retry"
            );
            shared
                .metrics
                .heartbeat_failure(directory_error.map_or("rejected", failure_reason));
            // Node::register counted the failure
            let failures = shared.dir_status.lock().consecutive_failures;
            (after_failure(shared, st, directory_error, failures), false)
        }
    }
}

/// Whether the operator delegation sent at the last REGISTER is in the last fifth of
/// its lifetime (§17.2: re-issue before expiry and re-register).
fn delegation_due(shared: &Shared) -> bool {
    let Some(op) = &shared.cfg.operator else {
        return false;
    };
    let not_after = shared
        .delegation_not_after
        .load(std::sync::atomic::Ordering::Relaxed);
    if not_after == 0 {
        return false;
    }
    let margin = (op.delegation_ttl().as_secs() / 5).max(1);
    shared.unix_secs().saturating_add(margin) >= not_after
}

async fn fetch_directory_key(shared: &Shared) {
    if shared.cfg.auth != AuthMode::Consumer || shared.directory_key().is_some() {
        return;
    }
    let Some(dir) = shared.cfg.directory.clone() else {
        return;
    };
    match tokio::time::timeout(shared.cfg.directory_timeout, dir.directory_key()).await {
        Ok(Ok(Some(key))) => {
            shared.set_directory_key(key);
            tracing::info!("directory key fetched: consumer tokens accepted");
        }
        Ok(Ok(None)) => tracing::debug!("directory has no signing key"),
        Ok(Err(e)) => tracing::debug!(error = %e, "directory key fetch failed"),
        Err(_) => tracing::debug!("directory key fetch timed out"),
    }
}

async fn heartbeat(shared: &Shared, st: &mut State) -> Result<Duration, DirectoryError> {
    let dir = shared
        .cfg
        .directory
        .clone()
        .ok_or_else(|| DirectoryError::unsupported("heartbeat"))?;
    let (token, node_id) = {
        let c = shared.creds.lock();
        (c.token.clone(), c.node_id.clone())
    };
    let (Some(token), Some(node_id)) = (token, node_id) else {
        return Err(DirectoryError::status("heartbeat", 404, None));
    };
    if st.batch.is_none() {
        let c = std::mem::take(&mut *shared.counters.lock());
        if c.success + c.failed > 0 {
            st.batch = Some((batch_id(), batch_metrics(c)));
        }
    }
    let active = shared.active_jobs();
    let max = shared.cfg.max_concurrent;
    let available = active < max && !shared.draining.load(std::sync::atomic::Ordering::Relaxed);
    let mut req = HeartbeatRequest::new(node_id);
    req.node_token = Some(token.clone());
    req.load = Some((f64::from(active) / f64::from(max.max(1))).min(1.0));
    req.active_jobs = Some(active);
    req.available = Some(available);
    req.status = Some("available".to_owned());
    req.max_concurrent = Some(max);
    req.health_models.clone_from(&shared.health_models.lock());
    let recovery = shared.recovery_now();
    req.recovery_state = Some(recovery.state.as_str().to_owned());
    req.recovery_action = Some(recovery.action.as_str().to_owned());
    if let Some((id, m)) = &st.batch {
        req.metrics_batch_id = Some(id.clone());
        req.metrics = Some(m.clone());
    }
    if let (Some(ch), Some(key)) = (&st.challenge, shared.hmac_key()) {
        req.challenge_response = Some(challenge_response(key.expose(), ch));
    }
    let pong = tokio::time::timeout(shared.cfg.directory_timeout, dir.heartbeat(&token, &req))
        .await
        .map_err(|_| DirectoryError::transport("heartbeat", TimedOut))?
        .map_err(|e| {
            let secrets = shared.secrets();
            e.redact(&secrets.iter().collect::<Vec<_>>())
        })?;
    if let Some((id, _)) = &st.batch {
        let acked = pong
            .metrics_batch_accepted
            .as_deref()
            .is_none_or(|a| a == id);
        if acked {
            st.batch = None;
        }
    }
    st.challenge = pong.challenge.filter(|c| !c.is_empty());
    let interval = pong
        .next_heartbeat_ms
        .map_or(shared.cfg.heartbeat_interval, Duration::from_millis)
        .clamp(MIN_INTERVAL, MAX_INTERVAL);
    Ok(interval)
}

fn batch_id() -> String {
    let mut b = [0u8; 8];
    rand_core::OsRng.fill_bytes(&mut b);
    format!("mb-{}", hex::encode(b))
}

fn batch_metrics(c: Counters) -> HeartbeatMetrics {
    let n = c.success + c.failed;
    let avg = if n == 0 {
        0.0
    } else {
        ((c.latency_sum_ms as f64 / n as f64) * 100.0).round() / 100.0
    };
    HeartbeatMetrics {
        tasks_success: Some(c.success),
        tasks_failed: Some(c.failed),
        avg_latency_ms: Some(avg),
        ..HeartbeatMetrics::default()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("directory call timed out")]
struct TimedOut;

#[cfg(test)]
mod tests {
    use crate::Node;
    use parking_lot::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use iicp_proto::crypto::token::DirectoryPublicKey;
    use iicp_proto::directory::{HeartbeatResponse, RegisterAck, RegisterRequest};
    use iicp_proto::error::ErrorCode;
    use iicp_proto::secret::Secret;
    use tokio::time::Instant;

    use super::*;
    use crate::config::{Backoff, Breaker};
    use crate::directory::DirectoryApi;
    use crate::event::EventKind;
    use crate::handler::BoxFuture;

    const TOKEN: &str = "tok-secret-1234";
    const HMAC: &str = "hmac-secret-5678";

    /// A directory that refuses (503, or 429 with a `Retry-After`) while `down`,
    /// recording when each call came (tokio's clock, paused in these tests).
    #[derive(Debug, Default)]
    struct Outage {
        down: AtomicBool,
        retry_after: Option<Duration>,
        calls: Mutex<Vec<(&'static str, Instant)>>,
        /// The models of the last REGISTER's capabilities.
        registered_models: Mutex<Vec<String>>,
        /// The last heartbeat body.
        last_heartbeat: Mutex<Option<HeartbeatRequest>>,
    }

    impl Outage {
        fn call(&self, op: &'static str) -> Result<(), DirectoryError> {
            self.calls.lock().push((op, Instant::now()));
            if !self.down.load(Ordering::Relaxed) {
                return Ok(());
            }
            Err(match self.retry_after {
                Some(after) => DirectoryError::status(op, 429, Some(ErrorCode::E034))
                    .with_retry_after(Some(after))
                    .with_message("too many registrations"),
                // a directory echoing the HMAC key it was sent: scrubbed before it is kept
                None => DirectoryError::status(op, 503, Some(ErrorCode::TemporarilyUnavailable))
                    .with_message(&format!("down for maintenance \u{1b}[31m(key {HMAC})")),
            })
        }

        fn times(&self) -> Vec<Instant> {
            self.calls.lock().iter().map(|(_, t)| *t).collect()
        }
    }

    impl DirectoryApi for Outage {
        fn register(
            &self,
            req: &RegisterRequest,
        ) -> BoxFuture<'static, Result<RegisterAck, DirectoryError>> {
            *self.registered_models.lock() = req
                .capabilities
                .iter()
                .flat_map(|c| c.models.iter().cloned())
                .collect();
            let r = self.call("register").map(|()| RegisterAck {
                node_id: "node-1".into(),
                node_token: Some(Secret::new(TOKEN)),
                ..RegisterAck::default()
            });
            Box::pin(async move { r })
        }

        fn heartbeat(
            &self,
            _: &Secret,
            req: &HeartbeatRequest,
        ) -> BoxFuture<'static, Result<HeartbeatResponse, DirectoryError>> {
            *self.last_heartbeat.lock() = Some(req.clone());
            let r = self
                .call("heartbeat")
                .map(|()| HeartbeatResponse::default());
            Box::pin(async move { r })
        }

        fn deregister(
            &self,
            _: &Secret,
            _: &str,
        ) -> BoxFuture<'static, Result<(), DirectoryError>> {
            Box::pin(async { Ok(()) })
        }

        fn directory_key(
            &self,
        ) -> BoxFuture<'static, Result<Option<DirectoryPublicKey>, DirectoryError>> {
            Box::pin(async { Ok(None) })
        }
    }

    fn node(dir: Arc<Outage>) -> Node {
        Node::builder()
            .endpoint("http://127.0.0.1:9484")
            .intent("urn:iicp:intent:llm:chat:v1")
            .model("m")
            .node_hmac_key(HMAC)
            .directory(dir)
            .build()
            .expect("node")
    }

    /// Lets the paused clock run until `dir` saw `n` calls (or an hour passed).
    async fn until_calls(dir: &Outage, n: usize) {
        let start = Instant::now();
        while dir.calls.lock().len() < n {
            assert!(start.elapsed() < Duration::from_secs(3600), "no call {n}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_carry_recovery_and_health_models_and_new_models_register_again() {
        let dir = Arc::new(Outage::default());
        let node = node(Arc::clone(&dir));
        let shared = Arc::clone(&node.shared);
        shared.recovery.registering.store(true, Ordering::Relaxed);
        *shared.health_models.lock() = Some(vec!["m".to_owned()]);
        let (tx, rx) = iicp_transport::shutdown::channel();
        let agent = tokio::spawn(run(Arc::clone(&shared), rx));
        until_calls(&dir, 2).await;
        assert_eq!(*dir.registered_models.lock(), ["m"]);
        let hb = dir.last_heartbeat.lock().clone().expect("a heartbeat");
        assert_eq!(hb.recovery_state.as_deref(), Some("healthy"));
        assert_eq!(hb.recovery_action.as_deref(), Some("none"));
        assert_eq!(hb.health_models, Some(vec!["m".to_owned()]));

        // the backend's list drifted: the next step registers with the new models
        shared.set_models(vec!["m".to_owned(), "n".to_owned()]);
        until_calls(&dir, 3).await;
        assert_eq!(dir.calls.lock()[2].0, "register");
        assert_eq!(*dir.registered_models.lock(), ["m", "n"]);
        assert!(!shared.models_dirty.load(Ordering::Relaxed));
        // then heartbeats again; a failing backend shows in them
        shared.recovery.backend_read(false);
        until_calls(&dir, 4).await;
        assert_eq!(dir.calls.lock()[3].0, "heartbeat");
        let hb = dir.last_heartbeat.lock().clone().expect("a heartbeat");
        assert_eq!(hb.recovery_state.as_deref(), Some("backend_attention"));
        tx.fire();
        agent.await.expect("agent");
    }

    #[tokio::test(start_paused = true)]
    async fn five_failures_open_the_breaker_for_thirty_seconds_then_a_probe_closes_it() {
        let dir = Arc::new(Outage::default());
        dir.down.store(true, Ordering::Relaxed);
        let node = node(Arc::clone(&dir));
        let mut events = node.subscribe();
        let (tx, rx) = iicp_transport::shutdown::channel();
        let agent = tokio::spawn(run(Arc::clone(&node.shared), rx));

        until_calls(&dir, 7).await;
        let t = dir.times();
        // the plain backoff (1 s doubling, ±20 %) until the fifth failure …
        for (i, gap) in t.windows(2).take(4).map(|w| w[1] - w[0]).enumerate() {
            let base = Duration::from_secs(1 << i);
            assert!(
                gap >= base.mul_f64(0.8) && gap <= base.mul_f64(1.2),
                "{i}: {gap:?}"
            );
        }
        // … then the breaker: no call for at least 30 s, and each failed probe opens it
        // again (for at least 30 s, or the grown backoff)
        assert!(t[5] - t[4] >= Duration::from_secs(30), "{:?}", t[5] - t[4]);
        assert!(t[6] - t[5] >= Duration::from_secs(30), "{:?}", t[6] - t[5]);
        // never more than 5 calls in any 30 s
        for (i, &start) in t.iter().enumerate() {
            let within = t[i..]
                .iter()
                .filter(|&&c| c - start < Duration::from_secs(30))
                .count();
            assert!(within <= 5, "{within} calls in 30 s from call {i}");
        }
        let st = node.directory_status();
        assert_eq!(st.state(), "breaker_open");
        assert_eq!(st.consecutive_failures, 7);
        assert!(st.breaker_open_until_unix_ms.is_some());
        let last = st.last_error.expect("last error");
        assert_eq!(
            (last.operation, last.status, last.code.as_deref()),
            ("register", Some(503), Some("temporarily_unavailable"))
        );
        let message = last.message.expect("message");
        assert!(message.starts_with("down for maintenance"), "{message}");
        assert!(message.contains("<redacted>"), "{message}");
        assert!(
            !message.contains(HMAC) && !message.contains('\u{1b}'),
            "{message}"
        );

        // announced once, when it opened
        let mut opened = Vec::new();
        while let Ok(ev) = events.try_recv() {
            match ev.kind {
                EventKind::DirectoryUnavailable {
                    failures, retry_in, ..
                } => opened.push((failures, retry_in)),
                EventKind::RegisterFailed { code, message, .. } => {
                    assert_eq!(code.as_deref(), Some("temporarily_unavailable"));
                    assert!(message.is_some_and(|m| !m.contains(HMAC)));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(opened.len(), 1, "{opened:?}");
        assert_eq!(opened[0].0, 5);
        assert!(opened[0].1 >= Duration::from_secs(30));

        // the directory is back: the next probe registers and closes the breaker
        dir.down.store(false, Ordering::Relaxed);
        until_calls(&dir, 8).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        let st = node.directory_status();
        assert_eq!(
            (st.state(), st.consecutive_failures, st.registered),
            ("registered", 0, true)
        );
        assert!(st.breaker_open_until_unix_ms.is_none());
        let kinds: Vec<&str> = std::iter::from_fn(|| events.try_recv().ok())
            .map(|e| e.kind.name())
            .collect();
        assert_eq!(
            kinds,
            ["node_token_changed", "directory_recovered", "register_ok"]
        );
        // heartbeats follow at the configured interval
        until_calls(&dir, 9).await;
        assert_eq!(dir.calls.lock()[8].0, "heartbeat");
        tx.fire();
        agent.await.expect("agent");
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_failures_count_too_and_retry_after_is_honoured() {
        let dir = Arc::new(Outage {
            retry_after: Some(Duration::from_secs(45)),
            ..Outage::default()
        });
        let node = Node::builder()
            .endpoint("http://127.0.0.1:9484")
            .intent("urn:iicp:intent:llm:chat:v1")
            .model("m")
            .directory(Arc::clone(&dir) as Arc<dyn DirectoryApi>)
            .heartbeat_interval(Duration::from_millis(500))
            .directory_backoff(Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(1),
            })
            .directory_breaker(Breaker {
                failures: 3,
                open_for: Duration::from_secs(2),
            })
            .build()
            .expect("node");
        let (tx, rx) = iicp_transport::shutdown::channel();
        let agent = tokio::spawn(run(Arc::clone(&node.shared), rx));
        until_calls(&dir, 2).await; // register, then a heartbeat after 500 ms
        let t = dir.times();
        assert!(t[1] - t[0] >= Duration::from_millis(500));
        dir.down.store(true, Ordering::Relaxed);
        until_calls(&dir, 6).await;
        let t = dir.times();
        let ops: Vec<&str> = dir.calls.lock().iter().map(|(op, _)| *op).collect();
        assert_eq!(ops[1..], ["heartbeat"; 5]);
        // every delay honours the 45 s Retry-After, above the backoff and the breaker
        for w in t[2..].windows(2) {
            assert!(w[1] - w[0] >= Duration::from_secs(45), "{:?}", w[1] - w[0]);
        }
        let st = node.directory_status();
        assert_eq!(st.state(), "breaker_open");
        assert_eq!(st.consecutive_failures, 4);
        assert_eq!(
            st.last_error.and_then(|e| e.code),
            Some("IICP-E034".to_owned())
        );
        tx.fire();
        agent.await.expect("agent");
    }
}
