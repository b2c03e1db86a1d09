//! What a run produced: one [`CaseReport`] per case, printed one line each, and the
//! JSON report in the shape of the public directory runner's `iicp.conformance_result.v1`
//! (`iicp-conformance` 0.3.0 on PyPI): `schema`, `runner_version`, `suite_version`,
//! `profile`, `fixture_digest`, `target_role`, `evidence_class`, `started_at`,
//! `finished_at`, `summary`, `results[{test_id, outcome, reason, observed_status,
//! duration_ms}]`, `content_free: true`.
//!
//! Two extensions, both documented in `docs/conformance.md`: `outcome` may be `skip`
//! (reason `not_applicable`) for a case whose prerequisite the invocation did not give,
//! and `summary` also counts `skipped`. Failure details go to the console only: the
//! JSON stays content-free (no endpoints, node ids, tokens or payloads).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The result schema the public runner emits.
pub const RESULT_SCHEMA: &str = "iicp.conformance_result.v1";

/// Why a case failed, in the public runner's vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The request could not be made or no answer came.
    RequestFailed,
    /// The answer had another status than the spec requires.
    UnexpectedStatus,
    /// The answer arrived with the expected status but the wrong content.
    AssertionFailed,
}

impl Reason {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequestFailed => "request_failed",
            Self::UnexpectedStatus => "unexpected_status",
            Self::AssertionFailed => "assertion_failed",
        }
    }
}

/// The verdict of one case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The target did what the spec requires.
    Pass,
    /// It did not.
    Fail {
        /// Why, in the public vocabulary.
        reason: Reason,
        /// A short human explanation (console only).
        detail: String,
    },
    /// The case could not run with what this invocation provided.
    Skip {
        /// What is missing.
        detail: String,
    },
}

impl Verdict {
    /// `PASS`, `FAIL` or `SKIP`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Fail { .. } => "FAIL",
            Self::Skip { .. } => "SKIP",
        }
    }

    /// Whether this is a failure.
    pub fn is_fail(&self) -> bool {
        matches!(self, Self::Fail { .. })
    }
}

/// One case's outcome.
#[derive(Clone, Debug)]
pub struct CaseReport {
    /// The case id.
    pub id: &'static str,
    /// Its one-line description.
    pub title: &'static str,
    /// The verdict.
    pub verdict: Verdict,
    /// The last HTTP status the case observed, if any.
    pub observed_status: Option<u16>,
    /// How long it ran.
    pub duration: Duration,
}

impl fmt::Display for CaseReport {
    /// `PASS  NODE-TASK-01  description` with `(detail)` on failure or skip.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}  {}  {}", self.verdict.label(), self.id, self.title)?;
        match &self.verdict {
            Verdict::Pass => Ok(()),
            Verdict::Fail { detail, .. } | Verdict::Skip { detail } => write!(f, "  ({detail})"),
        }
    }
}

/// Counts of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Cases run.
    pub total: usize,
    /// Passed.
    pub passed: usize,
    /// Failed.
    pub failed: usize,
    /// Skipped.
    pub skipped: usize,
}

/// Counts `reports`.
pub fn summarize(reports: &[CaseReport]) -> Summary {
    let mut s = Summary {
        total: reports.len(),
        ..Summary::default()
    };
    for r in reports {
        match r.verdict {
            Verdict::Pass => s.passed += 1,
            Verdict::Fail { .. } => s.failed += 1,
            Verdict::Skip { .. } => s.skipped += 1,
        }
    }
    s
}

/// The descriptive fields of a report that are not per-case.
#[derive(Clone, Debug)]
pub struct ReportMeta {
    /// e.g. `iicp-rs-node-http-v1`.
    pub profile: String,
    /// `node_http`, `node_native`, `directory`, `client` or `mixed`.
    pub target_role: String,
    /// The catalogue of the cases that ran (id + spec citation), hashed into
    /// `fixture_digest` so two reports of the same case set are comparable.
    pub catalogue: Vec<(String, String)>,
    /// When the run started.
    pub started_at: SystemTime,
    /// When it ended.
    pub finished_at: SystemTime,
}

/// The `iicp.conformance_result.v1`-shaped JSON of a run.
pub fn to_json(meta: &ReportMeta, reports: &[CaseReport]) -> Value {
    let s = summarize(reports);
    let mut hasher = Sha256::new();
    for (id, spec) in &meta.catalogue {
        hasher.update(id.as_bytes());
        hasher.update(b"\t");
        hasher.update(spec.as_bytes());
        hasher.update(b"\n");
    }
    let results: Vec<Value> = reports
        .iter()
        .map(|r| {
            let (outcome, reason) = match &r.verdict {
                Verdict::Pass => ("pass", "passed"),
                Verdict::Fail { reason, .. } => ("fail", reason.as_str()),
                Verdict::Skip { .. } => ("skip", "not_applicable"),
            };
            json!({
                "test_id": r.id,
                "outcome": outcome,
                "reason": reason,
                "observed_status": r.observed_status,
                "duration_ms": (r.duration.as_secs_f64() * 1_000_000.0).round() / 1000.0,
            })
        })
        .collect();
    json!({
        "schema": RESULT_SCHEMA,
        "runner_version": env!("CARGO_PKG_VERSION"),
        "suite_version": env!("CARGO_PKG_VERSION"),
        "profile": meta.profile,
        "fixture_digest": format!("sha256:{}", hex::encode(hasher.finalize())),
        "target_role": meta.target_role,
        "evidence_class": "self-attested",
        "started_at": rfc3339(meta.started_at),
        "finished_at": rfc3339(meta.finished_at),
        "summary": {"total": s.total, "passed": s.passed, "failed": s.failed, "skipped": s.skipped},
        "results": results,
        "content_free": true,
    })
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC), as the public runner writes timestamps.
pub fn rfc3339(t: SystemTime) -> String {
    iicp_proto::time::iso8601_micros(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_764_085_353) + Duration::from_micros(7);
        assert_eq!(rfc3339(t), "2025-11-25T15:42:33.000007Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000000Z");
    }
}
