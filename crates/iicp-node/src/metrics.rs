//! Prometheus metrics of `GET /metrics` (PROTOCOL.md §5.1 [conf METRICS-01..08]):
//! `iicp_tasks_total{status,intent,qos}`, `iicp_task_latency_ms{intent,qos}` (buckets
//! 10…30000 ms), `iicp_tokens_used_total{intent}`, `iicp_tasks_in_flight`,
//! `iicp_peers_active`, `iicp_heartbeat_failures_total{reason}`.
//!
//! Kept with `prometheus-client`; served as Prometheus text 0.0.4 (the OpenMetrics
//! output is converted: counter families named with `_total`, no `# EOF`). Label values
//! are bounded: intents are the node's own (anything else is `other`), statuses and QoS
//! classes are fixed sets, heartbeat failure reasons are a fixed set.

use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Histogram buckets of `iicp_task_latency_ms` (§5.1).
pub(crate) const LATENCY_BUCKETS_MS: [f64; 9] = [
    10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 30000.0,
];

type TaskLabels = [(&'static str, String); 3];
type IntentQos = [(&'static str, String); 2];
type One = [(&'static str, String); 1];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_MS)
}

/// The node's metric set.
pub(crate) struct Metrics {
    registry: Registry,
    tasks: Family<TaskLabels, Counter>,
    latency: Family<IntentQos, Histogram, fn() -> Histogram>,
    tokens: Family<One, Counter>,
    in_flight: Gauge,
    heartbeat_failures: Family<One, Counter>,
    /// The series a task outcome counts in, by its labels, looked up once: a family
    /// lookup hashes every label and allocates each value anew. The label values are
    /// bounded (see the module head), so this list is short.
    seen: RwLock<Vec<Arc<Series>>>,
}

/// The series of one `(status, intent, qos)`. The latency and token series are
/// made when first used, as the families would make them.
struct Series {
    status: &'static str,
    intent: Box<str>,
    qos: &'static str,
    tasks: Counter,
    latency: OnceLock<Histogram>,
    tokens: OnceLock<Counter>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let tasks = Family::<TaskLabels, Counter>::default();
        let latency = Family::<IntentQos, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let tokens = Family::<One, Counter>::default();
        let in_flight = Gauge::default();
        let peers: Gauge = Gauge::default();
        let heartbeat_failures = Family::<One, Counter>::default();
        registry.register("iicp_tasks", "Tasks answered, by outcome", tasks.clone());
        registry.register(
            "iicp_task_latency_ms",
            "Task latency in milliseconds",
            latency.clone(),
        );
        registry.register("iicp_tokens_used", "Tokens used by tasks", tokens.clone());
        registry.register(
            "iicp_tasks_in_flight",
            "Tasks executing now",
            in_flight.clone(),
        );
        registry.register("iicp_peers_active", "Known live mesh peers", peers);
        registry.register(
            "iicp_heartbeat_failures",
            "Failed directory heartbeats, by reason",
            heartbeat_failures.clone(),
        );
        Self {
            registry,
            tasks,
            latency,
            tokens,
            in_flight,
            heartbeat_failures,
            seen: RwLock::new(Vec::new()),
        }
    }

    /// The series of `(status, intent, qos)`.
    fn series(&self, status: &'static str, intent: &str, qos: &'static str) -> Arc<Series> {
        let find = |seen: &[Arc<Series>]| {
            seen.iter()
                .find(|s| s.status == status && s.qos == qos && *s.intent == *intent)
                .cloned()
        };
        if let Some(s) = find(&self.seen.read()) {
            return s;
        }
        let mut seen = self.seen.write();
        if let Some(s) = find(&seen) {
            return s;
        }
        let s = Arc::new(Series {
            status,
            intent: intent.into(),
            qos,
            tasks: self
                .tasks
                .get_or_create(&[
                    ("status", status.to_owned()),
                    ("intent", intent.to_owned()),
                    ("qos", qos.to_owned()),
                ])
                .clone(),
            latency: OnceLock::new(),
            tokens: OnceLock::new(),
        });
        seen.push(Arc::clone(&s));
        s
    }

    /// Counts a finished task; `latency_ms` only for executed tasks.
    pub(crate) fn task(
        &self,
        status: &'static str,
        intent: &str,
        qos: &'static str,
        latency_ms: Option<u64>,
        tokens: u64,
    ) {
        let series = self.series(status, intent, qos);
        series.tasks.inc();
        if let Some(ms) = latency_ms {
            series
                .latency
                .get_or_init(|| {
                    self.latency
                        .get_or_create(&[("intent", intent.to_owned()), ("qos", qos.to_owned())])
                        .clone()
                })
                .observe(ms as f64);
        }
        if tokens > 0 {
            series
                .tokens
                .get_or_init(|| {
                    self.tokens
                        .get_or_create(&[("intent", intent.to_owned())])
                        .clone()
                })
                .inc_by(tokens);
        }
    }

    pub(crate) fn in_flight(&self, delta: i64) {
        self.in_flight.inc_by(delta);
    }

    pub(crate) fn heartbeat_failure(&self, reason: &'static str) {
        self.heartbeat_failures
            .get_or_create(&[("reason", reason.to_owned())])
            .inc();
    }

    /// The Prometheus text (0.0.4) exposition.
    pub(crate) fn render(&self) -> String {
        let mut open = String::new();
        if prometheus_client::encoding::text::encode_registry(&mut open, &self.registry).is_err() {
            return String::new();
        }
        to_prometheus_text(&open)
    }
}

/// Converts OpenMetrics text to Prometheus text 0.0.4: counter families take their
/// `_total` sample name in `# HELP`/`# TYPE`, `# UNIT` and `# EOF` lines are dropped.
pub(crate) fn to_prometheus_text(open: &str) -> String {
    let counters: Vec<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len() + 64);
    for line in open.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition() {
        let m = Metrics::new();
        m.task(
            "success",
            "urn:iicp:intent:llm:chat:v1",
            "best-effort",
            Some(42),
            7,
        );
        m.heartbeat_failure("transport");
        m.in_flight(1);
        let text = m.render();
        assert!(text.contains("# TYPE iicp_tasks_total counter"), "{text}");
        assert!(text.contains(
            "iicp_tasks_total{status=\"success\",intent=\"urn:iicp:intent:llm:chat:v1\",qos=\"best-effort\"} 1"
        ), "{text}");
        assert!(text.contains("# TYPE iicp_task_latency_ms histogram"));
        assert!(text.contains("iicp_task_latency_ms_bucket{le=\"50.0\",intent=\"urn:iicp:intent:llm:chat:v1\",qos=\"best-effort\"} 1"), "{text}");
        assert!(text.contains("iicp_tokens_used_total{intent=\"urn:iicp:intent:llm:chat:v1\"} 7"));
        assert!(text.contains("iicp_tasks_in_flight 1"));
        assert!(text.contains("iicp_peers_active 0"));
        assert!(text.contains("iicp_heartbeat_failures_total{reason=\"transport\"} 1"));
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn series_are_shared_and_made_when_first_used() {
        let m = Metrics::new();
        let chat = "urn:iicp:intent:llm:chat:v1";
        // a refusal: no latency, no tokens, so neither series exists yet
        m.task("rejected", chat, "interactive", None, 0);
        let text = m.render();
        assert!(text.contains(&format!(
            "iicp_tasks_total{{status=\"rejected\",intent=\"{chat}\",qos=\"interactive\"}} 1"
        )));
        assert!(!text.contains("iicp_task_latency_ms_count{"), "{text}");
        assert!(!text.contains("iicp_tokens_used_total{"), "{text}");
        for _ in 0..3 {
            m.task("success", chat, "interactive", Some(5), 2);
        }
        m.task("success", "other", "interactive", Some(700), 0);
        m.task("error", chat, "batch", Some(20), 0);
        let text = m.render();
        for want in [
            format!(
                "iicp_tasks_total{{status=\"rejected\",intent=\"{chat}\",qos=\"interactive\"}} 1"
            ),
            format!(
                "iicp_tasks_total{{status=\"success\",intent=\"{chat}\",qos=\"interactive\"}} 3"
            ),
            "iicp_tasks_total{status=\"success\",intent=\"other\",qos=\"interactive\"} 1"
                .to_owned(),
            format!("iicp_tasks_total{{status=\"error\",intent=\"{chat}\",qos=\"batch\"}} 1"),
            // rejected and success share the (intent, qos) latency series
            format!("iicp_task_latency_ms_count{{intent=\"{chat}\",qos=\"interactive\"}} 3"),
            format!("iicp_task_latency_ms_count{{intent=\"{chat}\",qos=\"batch\"}} 1"),
            "iicp_task_latency_ms_bucket{le=\"1000.0\",intent=\"other\",qos=\"interactive\"} 1"
                .to_owned(),
            format!("iicp_tokens_used_total{{intent=\"{chat}\"}} 6"),
        ] {
            assert!(text.contains(&want), "{want} in {text}");
        }
        assert!(
            !text.contains("iicp_tokens_used_total{intent=\"other\"}"),
            "{text}"
        );
        assert_eq!(m.seen.read().len(), 4, "one entry per label set");
    }
}
