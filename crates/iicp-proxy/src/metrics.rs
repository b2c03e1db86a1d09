//! What `GET /metrics` and `GET /status` report: requests by surface and status, their
//! latency, failures of the mesh by IICP code, requests in flight, and the last mesh
//! errors. Label values are bounded: surfaces and HTTP statuses are fixed sets, and at
//! most [`MAX_CODES`] distinct IICP codes get a series (the rest count as `other`).

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};

/// Latency buckets in seconds (1 ms … 120 s, the longest deadline).
const LATENCY_BUCKETS_S: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0,
];
/// Distinct IICP codes with a series of their own.
pub(crate) const MAX_CODES: usize = 32;
/// Mesh errors kept for `/status`.
const LAST_ERRORS: usize = 16;

type Request = [(&'static str, String); 2];
type One = [(&'static str, String); 1];

fn histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_S)
}

/// The proxy's counters.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<Request, Counter>,
    latency: Family<One, Histogram, fn() -> Histogram>,
    failures: Family<One, Counter>,
    in_flight: Gauge,
    codes: Mutex<HashSet<String>>,
    last_errors: Mutex<VecDeque<Value>>,
}

impl Metrics {
    /// Registers every family.
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<Request, Counter>::default();
        let latency = Family::<One, Histogram, fn() -> Histogram>::new_with_constructor(histogram);
        let failures = Family::<One, Counter>::default();
        let in_flight = Gauge::default();
        registry.register(
            "iicp_proxy_requests",
            "Requests answered, by surface and HTTP status",
            requests.clone(),
        );
        registry.register(
            "iicp_proxy_request_duration_seconds",
            "Time to answer a request, by surface",
            latency.clone(),
        );
        registry.register(
            "iicp_proxy_upstream_failures",
            "Requests the mesh failed (no node, every node failed, timeout, capacity), by IICP code",
            failures.clone(),
        );
        registry.register(
            "iicp_proxy_requests_in_flight",
            "Requests being answered now",
            in_flight.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            failures,
            in_flight,
            codes: Mutex::new(HashSet::new()),
            last_errors: Mutex::new(VecDeque::with_capacity(LAST_ERRORS)),
        }
    }

    /// A request began (`+1`) or ended (`-1`).
    pub(crate) fn in_flight(&self, delta: i64) {
        self.in_flight.inc_by(delta);
    }

    /// One answered request.
    pub(crate) fn request(&self, surface: &'static str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&[
                ("surface", surface.to_owned()),
                ("status", status.to_string()),
            ])
            .inc();
        self.latency
            .get_or_create(&[("surface", surface.to_owned())])
            .observe(took.as_secs_f64());
    }

    /// A failure of the mesh: counted by code, kept among the last errors.
    pub(crate) fn upstream_failure(
        &self,
        surface: &'static str,
        status: u16,
        code: &str,
        at_unix: u64,
    ) {
        let label = {
            let mut codes = self.codes.lock();
            if codes.contains(code) || codes.len() < MAX_CODES {
                codes.insert(code.to_owned());
                code.to_owned()
            } else {
                "other".to_owned()
            }
        };
        self.failures.get_or_create(&[("code", label)]).inc();
        let mut last = self.last_errors.lock();
        if last.len() == LAST_ERRORS {
            last.pop_front();
        }
        last.push_back(json!({
            "at": iicp_proto::time::iso8601(at_unix),
            "surface": surface,
            "status": status,
            "code": code.chars().take(64).collect::<String>(),
        }));
    }

    /// The last mesh errors, oldest first.
    pub(crate) fn last_errors(&self) -> Vec<Value> {
        self.last_errors.lock().iter().cloned().collect()
    }

    /// The OpenMetrics text of every family.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            return String::new();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_bounds_codes() {
        let m = Metrics::new();
        m.request("openai", 200, Duration::from_millis(3));
        m.request("openai", 502, Duration::from_millis(3));
        for i in 0..(MAX_CODES + 5) {
            m.upstream_failure("ollama", 502, &format!("code-{i}"), 0);
        }
        let text = m.render();
        assert!(
            text.contains(r#"iicp_proxy_requests_total{surface="openai",status="200"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("iicp_proxy_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains(r#"iicp_proxy_upstream_failures_total{code="other"} 5"#),
            "{text}"
        );
        assert_eq!(m.last_errors().len(), LAST_ERRORS);
        assert_eq!(
            m.last_errors()[LAST_ERRORS - 1]["code"],
            format!("code-{}", MAX_CODES + 4)
        );
    }
}
