//! Candidate selection after the hard eligibility gates (PROTOCOL.md §9.2 step 5, §9.3,
//! §19 T25).
//!
//! The default, [`Strategy::Deterministic`], keeps the directory's order (score
//! descending). Two declared, opt-in profiles may reorder within the eligible set:
//! [`Strategy::WeightedV1`] (`selection-v1.json`: weight `max(score, 0.01) / (1 +
//! clamp(load, 0, 1))` over the first `top_k`, one weighted draw picks the first
//! candidate, the others keep directory order) and [`Strategy::Epsilon`] (with
//! probability ε a uniformly random eligible node goes first). The profile name is
//! reported in the result ([`TaskResult::selection_profile`](crate::TaskResult)), and
//! local weights are never presented as the directory score.

use iicp_proto::directory::NodeEntry;

use crate::time::Random;

/// Most candidates one submit tries (DESIGN §4.9).
pub const MAX_CANDIDATES: usize = 3;

/// How candidates are ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub enum Strategy {
    /// Directory order (the default).
    #[default]
    Deterministic,
    /// With probability `epsilon` (clamped to `[0, 1]`) a uniformly random eligible node
    /// goes first; the rest keep directory order.
    Epsilon {
        /// Exploration probability.
        epsilon: f64,
    },
    /// The `weighted_v1` profile over the first `top_k` (≥ 1) eligible nodes.
    WeightedV1 {
        /// Size of the sampling pool.
        top_k: usize,
    },
}

impl Strategy {
    /// `weighted_v1` with the fixture's `top_k` of 3.
    pub fn weighted_v1() -> Self {
        Self::WeightedV1 { top_k: 3 }
    }

    /// The profile name reported in results: `deterministic`, `epsilon`, `weighted_v1`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Deterministic => "deterministic",
            Self::Epsilon { .. } => "epsilon",
            Self::WeightedV1 { .. } => "weighted_v1",
        }
    }

    /// Orders `nodes` (already eligible, in directory order) and returns the indices of
    /// at most `max` candidates.
    pub fn order(&self, nodes: &[NodeEntry], max: usize, random: &dyn Random) -> Vec<usize> {
        let n = nodes.len();
        let mut order: Vec<usize> = match *self {
            Self::Deterministic => (0..n).collect(),
            Self::Epsilon { epsilon } => {
                let eps = if epsilon.is_finite() {
                    epsilon.clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let mut order: Vec<usize> = (0..n).collect();
                if n > 1 && random.next_f64() < eps {
                    let pick = ((random.next_f64() * n as f64) as usize).min(n - 1);
                    order.remove(pick);
                    order.insert(0, pick);
                }
                order
            }
            Self::WeightedV1 { top_k } => {
                let weights: Vec<(f64, f64)> = nodes
                    .iter()
                    .map(|e| (e.score.unwrap_or(0.0), e.load.unwrap_or(0.0)))
                    .collect();
                weighted_v1(&weights, top_k, random.next_f64())
            }
        };
        order.truncate(max);
        order
    }
}

/// The `weighted_v1` weight of one node: `max(score, 0.01) / (1 + clamp(load, 0, 1))`.
/// Non-finite inputs count as score 0 and load 1.
pub fn weighted_v1_weight(score: f64, load: f64) -> f64 {
    let score = if score.is_finite() { score } else { 0.0 };
    let load = if load.is_finite() { load } else { 1.0 };
    score.max(0.01) / (1.0 + load.clamp(0.0, 1.0))
}

/// The `weighted_v1` order of `(score, load)` pairs for the uniform draw `random` in
/// `[0, 1)`: the pool is the first `top_k` (at least 1); the first candidate is the
/// first pool member whose cumulative weight exceeds `random × total`; every other node
/// keeps its position relative to the others. Returns indices into `nodes`.
pub fn weighted_v1(nodes: &[(f64, f64)], top_k: usize, random: f64) -> Vec<usize> {
    let n = nodes.len();
    let pool = top_k.max(1).min(n);
    let mut order: Vec<usize> = (0..n).collect();
    if pool <= 1 {
        return order;
    }
    let weights: Vec<f64> = nodes[..pool]
        .iter()
        .map(|&(s, l)| weighted_v1_weight(s, l))
        .collect();
    let total: f64 = weights.iter().sum();
    let r = if random.is_finite() {
        random.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let target = r * total;
    let mut acc = 0.0;
    let mut pick = pool - 1;
    for (i, w) in weights.iter().enumerate() {
        acc += w;
        if target < acc {
            pick = i;
            break;
        }
    }
    order.remove(pick);
    order.insert(0, pick);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(f64);
    impl Random for Fixed {
        fn next_f64(&self) -> f64 {
            self.0
        }
    }

    fn node(score: f64, load: f64) -> NodeEntry {
        NodeEntry {
            score: Some(score),
            load: Some(load),
            ..NodeEntry::default()
        }
    }

    #[test]
    fn deterministic_keeps_order_and_caps() {
        let nodes: Vec<NodeEntry> = (0..5).map(|_| node(0.5, 0.0)).collect();
        let o = Strategy::Deterministic.order(&nodes, MAX_CANDIDATES, &Fixed(0.3));
        assert_eq!(o, vec![0, 1, 2]);
    }

    #[test]
    fn epsilon_explores() {
        let nodes: Vec<NodeEntry> = (0..4).map(|_| node(0.5, 0.0)).collect();
        // first draw 0.3 < 0.5 → explore; second draw 0.3 × 4 → index 1
        let o = Strategy::Epsilon { epsilon: 0.5 }.order(&nodes, 3, &Fixed(0.3));
        assert_eq!(o, vec![1, 0, 2]);
        let o = Strategy::Epsilon { epsilon: 0.1 }.order(&nodes, 3, &Fixed(0.3));
        assert_eq!(o, vec![0, 1, 2]);
    }

    #[test]
    fn weighted_picks_low_load() {
        let nodes = [(0.9, 0.9), (0.8, 0.0), (0.7, 0.5)];
        assert_eq!(weighted_v1(&nodes, 3, 0.5), vec![1, 0, 2]);
        assert_eq!(weighted_v1(&nodes, 3, 0.0), vec![0, 1, 2]);
        assert_eq!(weighted_v1(&nodes, 3, 0.9999), vec![2, 0, 1]);
        assert_eq!(weighted_v1(&nodes, 1, 0.9), vec![0, 1, 2]);
    }
}
