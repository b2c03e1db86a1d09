//! What ranking needs, apart from the nodes: the selection a query asks for, the §9.1
//! score from its factors, and availability windows — shared by the straightforward
//! filter and score of `view` (on a node) and the scan index of `state::scan` (on its
//! dense records), so that the two cannot drift.

use iicp_proto::directory::AvailabilityWindow;

/// Everything a selection needs besides the node.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selection<'a> {
    pub(crate) intent: &'a str,
    pub(crate) region: Option<&'a str>,
    pub(crate) model: Option<&'a str>,
    pub(crate) min_reputation: Option<f64>,
    pub(crate) max_multiplier: Option<f64>,
    pub(crate) min_quality_score: Option<f64>,
    pub(crate) cip_capable: bool,
    pub(crate) modality: Option<&'a str>,
    pub(crate) relay_capable: Option<bool>,
    pub(crate) realtime: bool,
    pub(crate) exclude_prefixes: &'a [String],
    pub(crate) node_id: Option<&'a str>,
    pub(crate) node_id_prefix: Option<&'a str>,
}

/// The factors of the §9.1 score, each 0–1.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScoreInputs {
    pub(crate) availability: f64,
    pub(crate) load: f64,
    pub(crate) capacity: f64,
    /// 1 in the requested region, 0 outside it, 0.5 without a region preference.
    pub(crate) region: f64,
    /// Clamped to 0–1.
    pub(crate) reputation: f64,
    /// With a requested model (Phase 5 weights): whether the node serves it, and the
    /// node's credit cost multiplier.
    pub(crate) model: Option<(bool, f64)>,
}

/// The §9.1 score from its factors, rounded to 4 decimals: the one formula of
/// [`Node::score`] and of the scan index.
pub(crate) fn score_from(f: &ScoreInputs) -> f64 {
    let score = match f.model {
        Some((model_match, multiplier)) => {
            let price = (1.0 / multiplier.max(1.0)).clamp(0.0, 1.0);
            0.25 * f.availability
                + 0.20 * (1.0 - f.load)
                + 0.15 * f.capacity
                + 0.10 * f.region
                + 0.10 * f.reputation
                + 0.10 * if model_match { 1.0 } else { 0.0 }
                + 0.10 * price
        }
        None => {
            0.35 * f.availability
                + 0.28 * (1.0 - f.load)
                + 0.18 * f.capacity
                + 0.09 * f.region
                + 0.10 * f.reputation
        }
    };
    (score * 10_000.0).round() / 10_000.0
}

/// An availability window as (start, end) minutes of the day; `None` when a time does
/// not parse as `H:MM` (such a window never contains the current minute).
pub(crate) fn availability_window(w: &AvailabilityWindow) -> Option<(u32, u32)> {
    let parse = |t: &str| -> Option<u32> {
        let (h, m) = t.split_once(':')?;
        let h = h.trim().parse::<u32>().ok()?;
        let m = m.trim().parse::<u32>().ok()?;
        h.checked_mul(60)?.checked_add(m)
    };
    Some((parse(&w.start)?, parse(&w.end)?))
}

/// Whether `minute` of the day lies in the window from `a` to `b` (across midnight
/// when `b < a`).
pub(crate) fn window_contains(a: u32, b: u32, minute: u32) -> bool {
    if a <= b {
        (a..b).contains(&minute)
    } else {
        minute >= a || minute < b
    }
}
