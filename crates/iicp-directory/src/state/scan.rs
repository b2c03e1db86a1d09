//! The dense scan index of the working set: what a DISCOVER selection reads for every
//! candidate node, kept in one compact record per node (~64 bytes) beside the
//! [`Registry`](crate::state::Registry), so that scoring 100 000 nodes reads a few
//! megabytes sequentially instead of following pointers from each `Node` to its
//! registration, its capability list and the intent string (docs/PERFORMANCE.md,
//! "Discover with 100 000 nodes").
//!
//! * Intents, regions, models and input modalities are interned to small integer ids.
//! * Each node has a slot: its [`ScanRecord`] (eligibility inputs, load, capacity,
//!   reputation, price multiplier, region id, flags, the first bytes of its id for
//!   tie-breaks), its parsed availability windows and its id.
//! * Each intent has the list of the slots that serve it, with the models and input
//!   modalities of the node's (first) capability for it.
//!
//! The registry updates the index where the node set or a node's state changes
//! (`insert`, `remove`, `replace_state`); [`ScanIndex::select`] filters, scores and keeps
//! the best `k` (a bounded sorted list, not a sort of every candidate) on these records
//! alone, and gives exactly the ranking of `Node::matches` + `Node::score` (tested
//! against that straightforward scan on random registries). Filters the records cannot
//! answer (node id, id prefix, excluded prefixes) are checked on the node id of the slot.

use std::cmp::Ordering;
use std::collections::HashMap;

use super::{Node, Settings, PROBATION_TASKS};
use crate::rank::{availability_window, score_from, window_contains, ScoreInputs, Selection};

/// The node is accepting work (`state.available`).
const AVAILABLE: u8 = 1;
/// The directory's probe verified its endpoint.
const VERIFIED: u8 = 1 << 1;
/// Its policy allows remote inference (CIP).
const CIP_REMOTE: u8 = 1 << 2;
/// It offers relay service.
const RELAY: u8 = 1 << 3;
/// Out of probation (enough completed tasks for realtime QoS).
const SEASONED: u8 = 1 << 4;
/// It declared availability windows (the factor then depends on the time of day).
const HAS_WINDOWS: u8 = 1 << 5;

/// Interned names an index may gain beyond twice what its last build held before it is
/// rebuilt from the live nodes (names of departed nodes are not kept forever; doubling
/// keeps the rebuilds' cost linear in the names interned, whatever their number).
const INTERN_SLACK: usize = 4_096;

/// The compact per-node record a scan reads.
#[derive(Debug, Clone, Copy, Default)]
struct ScanRecord {
    last_seen_ms: u64,
    updated_at_ms: u64,
    /// `state.reputation`, unclamped (the filters compare it raw).
    reputation: f64,
    /// [`Node::load`].
    load: f64,
    /// Free capacity, 0–1 (`(max_concurrent - active_jobs) / max_concurrent`).
    capacity: f64,
    /// [`Node::multiplier`].
    multiplier: f64,
    /// The first 8 bytes of the node id, big-endian, zero-padded: orders ties as the
    /// id does, except when equal (then the id itself decides).
    id_prefix: u64,
    /// Interned ASCII-lowercase region.
    region: u32,
    flags: u8,
}

impl ScanRecord {
    fn of(node: &Node, region: u32) -> Self {
        let mut flags = 0;
        if node.cip_remote() {
            flags |= CIP_REMOTE;
        }
        if node.reg.relay_capable.unwrap_or(false) {
            flags |= RELAY;
        }
        if node
            .reg
            .availability
            .as_ref()
            .is_some_and(|w| !w.is_empty())
        {
            flags |= HAS_WINDOWS;
        }
        let mut prefix = [0u8; 8];
        let id = node.record.node_id.as_bytes();
        let n = id.len().min(8);
        prefix[..n].copy_from_slice(&id[..n]);
        let mut rec = Self {
            updated_at_ms: node.record.updated_at_ms,
            multiplier: node.multiplier(),
            id_prefix: u64::from_be_bytes(prefix),
            region,
            flags,
            ..Self::default()
        };
        rec.set_state(node);
        rec
    }

    /// The fields a heartbeat or a probe result changes.
    fn set_state(&mut self, node: &Node) {
        let st = &node.record.state;
        self.last_seen_ms = st.last_seen_ms;
        self.reputation = st.reputation;
        self.load = node.load();
        self.capacity = node.capacity();
        let mut flags = self.flags & !(AVAILABLE | VERIFIED | SEASONED);
        if st.available {
            flags |= AVAILABLE;
        }
        if st.probe.verified {
            flags |= VERIFIED;
        }
        if node.completed_tasks() >= PROBATION_TASKS {
            flags |= SEASONED;
        }
        self.flags = flags;
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// [`Node::is_eligible`] on the record.
    fn is_eligible(&self, now_ms: u64, s: &Settings) -> bool {
        now_ms.saturating_sub(self.last_seen_ms) <= s.liveness_window_ms
            && self.has(AVAILABLE)
            && (self.has(VERIFIED)
                || !s.liveness_probe
                || now_ms.saturating_sub(self.updated_at_ms) <= s.unverified_grace_ms)
    }
}

/// Strings to dense ids.
#[derive(Debug, Default)]
struct Interner {
    ids: HashMap<String, u32>,
}

impl Interner {
    fn intern(&mut self, s: &str) -> u32 {
        if let Some(id) = self.ids.get(s) {
            return *id;
        }
        let id = u32::try_from(self.ids.len()).unwrap_or(u32::MAX);
        self.ids.insert(s.to_owned(), id);
        id
    }

    fn get(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    fn len(&self) -> usize {
        self.ids.len()
    }
}

/// What a node's (first) capability for an intent offers.
#[derive(Debug, Clone, Default)]
struct CapInfo {
    /// Interned model names (exact).
    models: Box<[u32]>,
    /// Interned ASCII-lowercase input modalities (`["text"]` when none were declared).
    modalities: Box<[u32]>,
}

/// The slots serving one intent; `caps[i]` belongs to `slots[i]`.
#[derive(Debug, Default)]
struct IntentList {
    slots: Vec<u32>,
    caps: Vec<CapInfo>,
}

/// One node's place in the index.
#[derive(Debug, Default)]
struct SlotInfo {
    id: String,
    /// Parsed availability windows (start, end in minutes of the day); unparsable ones
    /// are left out (they never contain the current minute).
    windows: Box<[(u32, u32)]>,
    /// (intent id, position in that intent's list).
    memberships: Vec<(u32, u32)>,
}

/// A candidate of a selection: what the ranking compares.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    score: f64,
    last_seen_ms: u64,
    id_prefix: u64,
    slot: u32,
}

/// The dense scan index (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct ScanIndex {
    intents: Interner,
    regions: Interner,
    models: Interner,
    modalities: Interner,
    slot_of: HashMap<String, u32>,
    free: Vec<u32>,
    records: Vec<ScanRecord>,
    slots: Vec<SlotInfo>,
    lists: Vec<IntentList>,
    /// Interned names right after the last [`ScanIndex::build`].
    names_at_build: usize,
}

impl ScanIndex {
    /// An index of `nodes`.
    pub(crate) fn build<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Self {
        let mut index = Self::default();
        for node in nodes {
            index.upsert(node);
        }
        index.names_at_build = index.names();
        index
    }

    /// Interned names, all kinds.
    fn names(&self) -> usize {
        self.intents.len() + self.regions.len() + self.models.len() + self.modalities.len()
    }

    /// Whether the interned names grew past twice those of the last build (plus
    /// [`INTERN_SLACK`]): then the registry rebuilds the index, which drops the names
    /// only departed nodes used.
    pub(crate) fn bloated(&self) -> bool {
        self.names() > INTERN_SLACK + 2 * self.names_at_build
    }

    /// Adds `node`, or replaces what the index holds for it (a new registration).
    pub(crate) fn upsert(&mut self, node: &Node) {
        self.remove(&node.record.node_id);
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.records.push(ScanRecord::default());
                self.slots.push(SlotInfo::default());
                u32::try_from(self.records.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let region = self.regions.intern(&node.reg.region.to_ascii_lowercase());
        let i = slot as usize;
        self.records[i] = ScanRecord::of(node, region);
        let windows = node
            .reg
            .availability
            .iter()
            .flatten()
            .filter_map(availability_window)
            .collect();
        let mut memberships: Vec<(u32, u32)> = Vec::new();
        for cap in &node.reg.capabilities {
            let intent = self.intents.intern(&cap.intent);
            // `Node::capability` finds the first capability of an intent
            if memberships.iter().any(|(t, _)| *t == intent) {
                continue;
            }
            let info = CapInfo {
                models: cap.models.iter().map(|m| self.models.intern(m)).collect(),
                modalities: cap
                    .modalities()
                    .iter()
                    .map(|m| self.modalities.intern(&m.to_ascii_lowercase()))
                    .collect(),
            };
            let t = intent as usize;
            if self.lists.len() <= t {
                self.lists.resize_with(t + 1, IntentList::default);
            }
            let list = &mut self.lists[t];
            let pos = u32::try_from(list.slots.len()).unwrap_or(u32::MAX);
            list.slots.push(slot);
            list.caps.push(info);
            memberships.push((intent, pos));
        }
        self.slots[i] = SlotInfo {
            id: node.record.node_id.clone(),
            windows,
            memberships,
        };
        self.slot_of.insert(node.record.node_id.clone(), slot);
    }

    /// Drops `node_id` from the index.
    pub(crate) fn remove(&mut self, node_id: &str) {
        let Some(slot) = self.slot_of.remove(node_id) else {
            return;
        };
        let info = std::mem::take(&mut self.slots[slot as usize]);
        for (intent, pos) in info.memberships {
            let list = &mut self.lists[intent as usize];
            let pos = pos as usize;
            list.slots.swap_remove(pos);
            list.caps.swap_remove(pos);
            // the entry moved into `pos` (if any) records its new position
            if let Some(&moved) = list.slots.get(pos) {
                if let Some(m) = self.slots[moved as usize]
                    .memberships
                    .iter_mut()
                    .find(|(t, _)| *t == intent)
                {
                    m.1 = u32::try_from(pos).unwrap_or(u32::MAX);
                }
            }
        }
        self.records[slot as usize] = ScanRecord::default();
        self.free.push(slot);
    }

    /// `node`'s state changed (heartbeat, probe result, reload of the state).
    pub(crate) fn update_state(&mut self, node: &Node) {
        if let Some(&slot) = self.slot_of.get(&node.record.node_id) {
            self.records[slot as usize].set_state(node);
        }
    }

    /// The best `limit` eligible nodes matching `sel` at `now_ms` with a score of at
    /// least `min_score`, best first (ties: most recently seen, then node id), as
    /// (node id, score): the ranking of `Node::matches` and `Node::score` over every
    /// node.
    pub(crate) fn select(
        &self,
        sel: &Selection<'_>,
        now_ms: u64,
        s: &Settings,
        min_score: f64,
        limit: usize,
    ) -> Vec<(&str, f64)> {
        if limit == 0 {
            return Vec::new();
        }
        let Some(list) = self
            .intents
            .get(sel.intent)
            .and_then(|t| self.lists.get(t as usize))
        else {
            return Vec::new();
        };
        // `None`: the query names something no node has (the filter then refuses all,
        // the score factor is 0 for all)
        let region = match sel.region {
            Some(r) if !r.is_empty() => Some(self.regions.get(&r.to_ascii_lowercase())),
            _ => None,
        };
        let model = sel.model.map(|m| self.models.get(m));
        let modality = match sel.modality {
            Some(m) => match self.modalities.get(&m.to_ascii_lowercase()) {
                Some(id) => Some(id),
                None => return Vec::new(),
            },
            None => None,
        };
        let by_id = sel.node_id.is_some()
            || sel.node_id_prefix.is_some()
            || sel.exclude_prefixes.iter().any(|p| !p.is_empty());
        let minute = ((now_ms / 60_000) % 1440) as u32;
        let mut top: Vec<Candidate> = Vec::with_capacity(limit.min(list.slots.len()) + 1);
        for (i, &slot) in list.slots.iter().enumerate() {
            let rec = &self.records[slot as usize];
            if !rec.is_eligible(now_ms, s)
                || sel.min_reputation.is_some_and(|m| rec.reputation < m)
                || sel.min_quality_score.is_some_and(|m| rec.reputation < m)
                || sel.max_multiplier.is_some_and(|m| rec.multiplier > m)
                || (sel.cip_capable && !rec.has(CIP_REMOTE))
                || sel.relay_capable.is_some_and(|want| want != rec.has(RELAY))
                || (sel.realtime && !rec.has(SEASONED))
            {
                continue;
            }
            if let Some(m) = modality {
                if !list.caps[i].modalities.contains(&m) {
                    continue;
                }
            }
            if by_id && !id_filters_pass(&self.slots[slot as usize].id, sel) {
                continue;
            }
            // 1 without windows or inside one, 0.5 outside (§9.1)
            let inside = !rec.has(HAS_WINDOWS)
                || self.slots[slot as usize]
                    .windows
                    .iter()
                    .any(|&(a, b)| window_contains(a, b, minute));
            let availability = if inside { 1.0 } else { 0.5 };
            let score = score_from(&ScoreInputs {
                availability,
                load: rec.load,
                capacity: rec.capacity,
                region: match region {
                    Some(want) => {
                        if want == Some(rec.region) {
                            1.0
                        } else {
                            0.0
                        }
                    }
                    None => 0.5,
                },
                reputation: rec.reputation.clamp(0.0, 1.0),
                model: model.map(|want| {
                    (
                        want.is_some_and(|m| list.caps[i].models.contains(&m)),
                        rec.multiplier,
                    )
                }),
            });
            if score < min_score {
                continue;
            }
            let c = Candidate {
                score,
                last_seen_ms: rec.last_seen_ms,
                id_prefix: rec.id_prefix,
                slot,
            };
            if top.len() == limit {
                let worst = top[top.len() - 1];
                if self.rank(&c, &worst) != Ordering::Less {
                    continue;
                }
                top.pop();
            }
            let at = top.partition_point(|x| self.rank(x, &c) == Ordering::Less);
            top.insert(at, c);
        }
        top.iter()
            .map(|c| (self.slots[c.slot as usize].id.as_str(), c.score))
            .collect()
    }

    /// Best first: higher score, then more recently seen, then the lower node id.
    fn rank(&self, a: &Candidate, b: &Candidate) -> Ordering {
        b.score
            .total_cmp(&a.score)
            .then(b.last_seen_ms.cmp(&a.last_seen_ms))
            .then(a.id_prefix.cmp(&b.id_prefix))
            .then_with(|| {
                self.slots[a.slot as usize]
                    .id
                    .cmp(&self.slots[b.slot as usize].id)
            })
    }

    /// Number of nodes in the index.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slot_of.len()
    }
}

/// The node-id filters of [`Node::matches`].
fn id_filters_pass(id: &str, sel: &Selection<'_>) -> bool {
    !(sel.node_id.is_some_and(|n| n != id)
        || sel.node_id_prefix.is_some_and(|p| !id.starts_with(p))
        || sel
            .exclude_prefixes
            .iter()
            .any(|p| !p.is_empty() && id.starts_with(p.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Registry;
    use crate::store::{NodeCredentials, NodeRecord, NodeState};
    use iicp_proto::secret::Secret;
    use serde_json::{json, Value};

    /// SplitMix64: a small deterministic generator, so a failure names its seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
            &xs[self.below(xs.len() as u64) as usize]
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    const NOW: u64 = 1_800_000_000_000 + 13 * 3_600_000;
    const INTENTS: [&str; 3] = [
        "urn:iicp:intent:llm:chat:v1",
        "urn:iicp:intent:llm:embed:v1",
        "urn:iicp:intent:vision:caption:v1",
    ];
    const REGIONS: [&str; 5] = ["eu-central", "EU-Central", "us-west", "ap-south", ""];
    const MODELS: [&str; 5] = ["m0", "m1", "M1", "m2", "m3"];
    const MODALITIES: [&str; 4] = ["text", "image", "Audio", "video"];

    fn settings(liveness_probe: bool) -> Settings {
        Settings {
            private_mesh: true,
            liveness_window_ms: 90_000,
            heartbeat_interval_ms: 30_000,
            liveness_probe,
            probe_timeout_ms: 1_000,
            unverified_grace_ms: 60_000,
            active_probe_interval_ms: 60_000,
            ticket_ttl_secs: 60,
            max_nodes: 100_000,
            node_retention_ms: 3_600_000,
            max_body_bytes: 1 << 20,
            trust_forwarded_headers: false,
            name: "test".into(),
            max_concurrent_probes: 4,
        }
    }

    /// Ids with shared 8-byte prefixes, short ones and long ones, so that ties reach
    /// the full id comparison.
    fn random_id(rng: &mut Rng) -> String {
        let stem = *rng.pick(&["aaaaaaaa", "aaaaaaab", "ab", "b", "0000000000"]);
        format!("{stem}{:x}", rng.below(4_000))
    }

    fn random_state(rng: &mut Rng) -> NodeState {
        let mut st = NodeState::new(NOW - rng.below(12) * 10_000 - rng.below(2) * 10);
        st.available = rng.chance(85);
        st.load = match rng.below(4) {
            0 => None,
            1 => Some(-0.5),
            _ => Some(rng.below(11) as f64 / 10.0),
        };
        st.active_jobs = rng.below(10) as u32;
        st.max_concurrent = [None, Some(0), Some(2), Some(8)][rng.below(4) as usize];
        st.reputation = *rng.pick(&[0.0, 0.3, 0.5, 0.5, 0.9, 1.2, -0.1]);
        st.tasks_success = rng.below(20);
        st.receipts = rng.below(15);
        st.probe.verified = rng.chance(50);
        st
    }

    fn random_registration(rng: &mut Rng) -> Value {
        let caps: Vec<Value> = (0..1 + rng.below(3))
            .map(|_| {
                let models: Vec<&str> = (0..rng.below(3)).map(|_| *rng.pick(&MODELS)).collect();
                let mut cap = json!({"intent": rng.pick(&INTENTS), "models": models});
                if rng.chance(40) {
                    let m: Vec<&str> = (0..1 + rng.below(2))
                        .map(|_| *rng.pick(&MODALITIES))
                        .collect();
                    cap["input_modalities"] = json!(m);
                }
                cap
            })
            .collect();
        let mut reg = json!({
            "endpoint": format!("http://10.0.{}.{}:9484", rng.below(200), rng.below(200)),
            "region": rng.pick(&REGIONS),
            "capabilities": caps,
            "limits": {"max_concurrent": rng.below(6), "tokens_per_min": 1000},
        });
        if rng.chance(50) {
            reg["pricing"] = json!({"credit_cost_multiplier":
                *rng.pick(&[json!(0.5), json!(1.0), json!(2.0), json!(3.5), json!("x"), json!(-1.0)])});
        }
        if rng.chance(50) {
            reg["policy"] = json!({"allow_remote_inference": rng.chance(50)});
        }
        if rng.chance(50) {
            reg["relay_capable"] = json!(rng.chance(50));
        }
        if rng.chance(40) {
            let w: Vec<Value> = (0..rng.below(3))
                .map(|_| {
                    let t = |rng: &mut Rng| {
                        rng.pick(&[
                            "00:00", "06:30", "12:00", "13:05", "23:59", "24:00", "x", "1:2:3",
                        ])
                        .to_string()
                    };
                    json!({"start": t(rng), "end": t(rng)})
                })
                .collect();
            reg["availability"] = json!(w);
        }
        reg
    }

    fn random_node(rng: &mut Rng, id: String) -> Node {
        let record = NodeRecord {
            node_id: id,
            registration: random_registration(rng),
            endpoint: String::new(),
            transport_endpoint: None,
            region: String::new(),
            cx_public_key: None,
            credentials: NodeCredentials {
                token_hash: format!("t{}", rng.next()),
                proxy_token_hash: format!("p{}", rng.next()),
                hmac_key: Secret::new("k".to_owned()),
            },
            registered_at_ms: NOW - 600_000,
            updated_at_ms: NOW - rng.below(4) * 40_000,
            state: random_state(rng),
            rev: 0,
        };
        Node::from_record(record).expect("a parsable registration")
    }

    /// The straightforward scan the index replaces: every node, `Node::matches` and
    /// `Node::score`, a full sort.
    fn reference(
        reg: &Registry,
        sel: &Selection<'_>,
        s: &Settings,
        limit: usize,
    ) -> Vec<(String, f64)> {
        let mut out: Vec<(&Node, f64)> = reg
            .nodes
            .values()
            .filter(|n| n.is_eligible(NOW, s) && n.matches(sel))
            .map(|n| (n, n.score(sel, NOW)))
            .filter(|(_, score)| *score >= 0.1)
            .collect();
        out.sort_by(|(a, sa), (b, sb)| {
            sb.total_cmp(sa)
                .then(
                    b.record
                        .state
                        .last_seen_ms
                        .cmp(&a.record.state.last_seen_ms),
                )
                .then(a.record.node_id.cmp(&b.record.node_id))
        });
        out.into_iter()
            .take(limit)
            .map(|(n, s)| (n.record.node_id.clone(), s))
            .collect()
    }

    /// Checks one random selection; whether it returned any node.
    fn random_selection_check(rng: &mut Rng, reg: &Registry, s: &Settings, seed: u64) -> bool {
        let excludes: Vec<String> = (0..rng.below(3))
            .map(|_| rng.pick(&["aaaaaaaa", "ab", "", "b1"]).to_string())
            .collect();
        let node_id = rng.chance(5).then(|| random_id(rng));
        let prefix = rng
            .chance(10)
            .then(|| rng.pick(&["aaaaaaaa", "ab", "0"]).to_string());
        let region = rng.chance(50).then(|| {
            rng.pick(&["EU-CENTRAL", "us-west", "", "nowhere"])
                .to_string()
        });
        let model = rng
            .chance(40)
            .then(|| rng.pick(&["m1", "M1", "m3", "absent"]).to_string());
        let modality = rng
            .chance(20)
            .then(|| rng.pick(&["TEXT", "image", "audio", "smell"]).to_string());
        let intent = if rng.chance(5) {
            "urn:iicp:intent:none:v1"
        } else {
            *rng.pick(&INTENTS)
        };
        let sel = Selection {
            intent,
            region: region.as_deref(),
            model: model.as_deref(),
            min_reputation: rng.chance(20).then(|| *rng.pick(&[0.3, 0.5, 0.9])),
            max_multiplier: rng.chance(20).then(|| *rng.pick(&[0.5, 1.0, 2.0])),
            min_quality_score: rng.chance(10).then_some(0.5),
            cip_capable: rng.chance(15),
            modality: modality.as_deref(),
            relay_capable: if rng.chance(20) {
                Some(rng.chance(50))
            } else {
                None
            },
            realtime: rng.chance(20),
            exclude_prefixes: &excludes,
            node_id: node_id.as_deref(),
            node_id_prefix: prefix.as_deref(),
        };
        let limit = *rng.pick(&[0usize, 1, 3, 10, 50, 1000]);
        let want = reference(reg, &sel, s, limit);
        let got: Vec<(String, f64)> = reg
            .scan
            .select(&sel, NOW, s, 0.1, limit)
            .into_iter()
            .map(|(id, score)| (id.to_owned(), score))
            .collect();
        assert_eq!(got.len(), want.len(), "seed {seed}: {sel:?} limit {limit}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.0, w.0, "seed {seed}: {sel:?} limit {limit}");
            assert_eq!(g.1.to_bits(), w.1.to_bits(), "seed {seed}: {sel:?}");
        }
        !want.is_empty()
    }

    #[test]
    fn the_index_ranks_exactly_as_the_straightforward_scan() {
        let (mut checked, mut found) = (0usize, 0usize);
        for seed in 0..40u64 {
            let mut rng = Rng(seed);
            let s = settings(rng.chance(50));
            let mut reg = Registry::default();
            let mut ids: Vec<String> = Vec::new();
            for _ in 0..(50 + rng.below(300)) {
                let id = random_id(&mut rng);
                reg.insert(random_node(&mut rng, id.clone()));
                ids.push(id);
            }
            for round in 0..6 {
                // heartbeats, removals, re-registrations (new capabilities, region,
                // windows) and new nodes
                for _ in 0..(20 + rng.below(200)) {
                    let id = rng.pick(&ids).clone();
                    match rng.below(10) {
                        0 => {
                            reg.remove(&id);
                        }
                        1 | 2 => reg.insert(random_node(&mut rng, id)),
                        3 => {
                            let id = random_id(&mut rng);
                            reg.insert(random_node(&mut rng, id.clone()));
                            ids.push(id);
                        }
                        _ => {
                            let st = random_state(&mut rng);
                            reg.set_state(&id, st, 0);
                        }
                    }
                }
                assert_eq!(reg.scan.len(), reg.nodes.len(), "seed {seed} round {round}");
                for _ in 0..40 {
                    checked += 1;
                    found += usize::from(random_selection_check(&mut rng, &reg, &s, seed));
                }
            }
        }
        // most selections return nodes: the comparison is not of empty lists
        assert!(found * 2 > checked, "{found} of {checked}");
    }

    #[test]
    fn rebuilds_are_rare_even_when_every_node_brings_new_names() {
        let mut reg = Registry::default();
        let mut builds = 0;
        let mut last = reg.scan.names_at_build;
        for i in 0..4_000 {
            let models: Vec<String> = (0..10).map(|m| format!("model-{i}-{m}")).collect();
            let mut node = random_node(&mut Rng(i), format!("n{i}"));
            node.reg.capabilities = vec![iicp_proto::directory::Capability {
                intent: INTENTS[0].into(),
                models,
                ..Default::default()
            }];
            reg.insert(node);
            if reg.scan.names_at_build != last {
                builds += 1;
                last = reg.scan.names_at_build;
            }
        }
        // 40 000 names: rebuilt when they pass 4 096, 12 288 and 28 672
        assert!((1..=4).contains(&builds), "{builds} rebuilds");
        // and departed nodes' names go at the next rebuild
        for i in 0..4_000 {
            reg.remove(&format!("n{i}"));
        }
        let index = ScanIndex::build(reg.nodes.values());
        assert_eq!(index.models.len(), 0);
    }

    #[test]
    fn a_rebuilt_index_answers_as_the_updated_one() {
        let mut rng = Rng(7);
        let s = settings(true);
        let mut reg = Registry::default();
        for _ in 0..200 {
            let id = random_id(&mut rng);
            reg.insert(random_node(&mut rng, id));
        }
        let sel = Selection {
            intent: INTENTS[0],
            region: Some("eu-central"),
            ..Selection::default()
        };
        let before: Vec<(String, f64)> = reg
            .scan
            .select(&sel, NOW, &s, 0.1, 50)
            .into_iter()
            .map(|(id, score)| (id.to_owned(), score))
            .collect();
        let rebuilt = ScanIndex::build(reg.nodes.values());
        let after: Vec<(String, f64)> = rebuilt
            .select(&sel, NOW, &s, 0.1, 50)
            .into_iter()
            .map(|(id, score)| (id.to_owned(), score))
            .collect();
        assert_eq!(before, after);
        assert!(!before.is_empty());
    }
}
