//! Selection and presentation: eligibility, the filters of PROTOCOL.md §8.4, the score
//! of §9.1, and the NODELIST / node-detail renderings (§8.4 dispatch and `view=public`
//! views, §8.5 `route`, §8.11 node detail).

use iicp_proto::crypto::manifest::{self, IdentityLevel, Status};
use iicp_proto::crypto::sign::OperatorPublicKey;
use iicp_proto::directory::{Capability, NodeEntry};
use serde_json::{json, Map, Value};

use crate::auth::iso8601;
use crate::net::address_family;
use crate::rank::{availability_window, score_from, window_contains, ScoreInputs, Selection};
use crate::state::{Node, Settings};
use crate::store::KeyStatus;

impl Node {
    /// Seen within the liveness window (§8.3: 90 s).
    pub(crate) fn is_fresh(&self, now_ms: u64, s: &Settings) -> bool {
        now_ms.saturating_sub(self.record.state.last_seen_ms) <= s.liveness_window_ms
    }

    /// Eligible for dispatch now (§8.12): fresh, available, and its endpoint verified
    /// or still within the grace period after registering.
    pub(crate) fn is_eligible(&self, now_ms: u64, s: &Settings) -> bool {
        self.is_fresh(now_ms, s)
            && self.record.state.available
            && (self.record.state.probe.verified
                || !s.liveness_probe
                || now_ms.saturating_sub(self.record.updated_at_ms) <= s.unverified_grace_ms)
    }

    pub(crate) fn capability(&self, intent: &str) -> Option<&Capability> {
        self.reg.capabilities.iter().find(|c| c.intent == intent)
    }

    pub(crate) fn completed_tasks(&self) -> u64 {
        self.record
            .state
            .tasks_success
            .max(self.record.state.receipts)
    }

    pub(crate) fn max_concurrent(&self) -> u32 {
        self.record
            .state
            .max_concurrent
            .filter(|m| *m > 0)
            .unwrap_or(self.reg.limits.max_concurrent)
            .max(1)
    }

    pub(crate) fn load(&self) -> f64 {
        let st = &self.record.state;
        st.load
            .unwrap_or_else(|| f64::from(st.active_jobs) / f64::from(self.max_concurrent()))
            .clamp(0.0, 1.0)
    }

    pub(crate) fn multiplier(&self) -> f64 {
        self.reg
            .pricing
            .as_ref()
            .and_then(|p| p.get("credit_cost_multiplier"))
            .and_then(Value::as_f64)
            .filter(|m| m.is_finite() && *m >= 0.0)
            .unwrap_or(1.0)
    }

    pub(crate) fn cip_remote(&self) -> bool {
        self.reg
            .policy
            .as_ref()
            .and_then(|p| p.get("allow_remote_inference"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// `availability_factor` of §9.1: 1 inside a declared window (or without windows),
    /// 0.5 outside.
    fn availability_factor(&self, now_ms: u64) -> f64 {
        let Some(windows) = self.reg.availability.as_ref().filter(|w| !w.is_empty()) else {
            return 1.0;
        };
        let minute = ((now_ms / 60_000) % 1440) as u32;
        let inside = windows
            .iter()
            .filter_map(availability_window)
            .any(|(a, b)| window_contains(a, b, minute));
        if inside {
            1.0
        } else {
            0.5
        }
    }

    /// Free capacity, 0–1: `(max_concurrent - active_jobs) / max_concurrent`.
    pub(crate) fn capacity(&self) -> f64 {
        let max = f64::from(self.max_concurrent());
        ((max - f64::from(self.record.state.active_jobs)) / max).clamp(0.0, 1.0)
    }

    /// Whether the node passes the filters of `sel` (intent match included): the
    /// straightforward filter that the scan index ([`crate::state::scan`]) answers from its
    /// records, kept as the reference its tests compare with.
    #[cfg(test)]
    pub(crate) fn matches(&self, sel: &Selection<'_>) -> bool {
        let Some(cap) = self.capability(sel.intent) else {
            return false;
        };
        let st = &self.record.state;
        if sel.min_reputation.is_some_and(|m| st.reputation < m)
            || sel.min_quality_score.is_some_and(|m| st.reputation < m)
            || sel.max_multiplier.is_some_and(|m| self.multiplier() > m)
            || (sel.cip_capable && !self.cip_remote())
            || sel
                .relay_capable
                .is_some_and(|want| want != self.reg.relay_capable.unwrap_or(false))
            || (sel.realtime && self.completed_tasks() < crate::state::PROBATION_TASKS)
        {
            return false;
        }
        if let Some(m) = sel.modality {
            if !cap.modalities().iter().any(|x| x.eq_ignore_ascii_case(m)) {
                return false;
            }
        }
        let id = self.record.node_id.as_str();
        if sel.node_id.is_some_and(|n| n != id)
            || sel.node_id_prefix.is_some_and(|p| !id.starts_with(p))
            || sel
                .exclude_prefixes
                .iter()
                .any(|p| !p.is_empty() && id.starts_with(p.as_str()))
        {
            return false;
        }
        true
    }

    /// The §9.1 score (Phase 3 weights, or Phase 5 weights with `model`).
    pub(crate) fn score(&self, sel: &Selection<'_>, now_ms: u64) -> f64 {
        let region = match sel.region {
            Some(r) if !r.is_empty() => {
                if self.reg.region.eq_ignore_ascii_case(r) {
                    1.0
                } else {
                    0.0
                }
            }
            _ => 0.5,
        };
        score_from(&ScoreInputs {
            availability: self.availability_factor(now_ms),
            load: self.load(),
            capacity: self.capacity(),
            region,
            reputation: self.record.state.reputation.clamp(0.0, 1.0),
            model: sel.model.map(|model| {
                let model_match = self
                    .capability(sel.intent)
                    .is_some_and(|c| c.models.iter().any(|m| m == model));
                (model_match, self.multiplier())
            }),
        })
    }

    fn reputation_tier(&self) -> &'static str {
        let r = self.record.state.reputation;
        let done = self.completed_tasks();
        if done >= 1000 && r >= 0.9 {
            "platinum"
        } else if done >= 100 && r >= 0.8 {
            "gold"
        } else if r >= 0.5 {
            "silver"
        } else if r > 0.0 {
            "bronze"
        } else {
            "none"
        }
    }

    /// Health of §8.11: 0–100 and its label.
    pub(crate) fn health(&self, now_ms: u64, s: &Settings) -> (u32, &'static str, Value) {
        let fresh = self.is_fresh(now_ms, s);
        let probe = &self.record.state.probe;
        let liveness: f64 = if fresh { 1.0 } else { 0.0 };
        let reachability = if probe.verified && probe.failures == 0 {
            1.0
        } else if probe.verified {
            0.6
        } else if probe.last_attempt_ms.is_none() {
            0.7
        } else {
            0.3
        };
        let latency = match probe.latency_ms {
            Some(ms) if ms <= 200 => 1.0,
            Some(ms) if ms <= 1000 => 0.7,
            Some(_) => 0.4,
            None => 0.7,
        };
        let v: f64 = 0.5 * liveness + 0.35 * reachability + 0.15 * latency;
        let label = if !fresh {
            "offline"
        } else if v >= 0.85 {
            "healthy"
        } else if v >= 0.65 {
            "degraded"
        } else if v >= 0.40 {
            "impaired"
        } else {
            "critical"
        };
        let score = (v * 100.0).round() as u32;
        let detail = json!({
            "score": score,
            "label": label,
            "observed": probe.last_attempt_ms.is_some(),
            "confidence": if probe.verified { "medium" } else { "low" },
            "evidence_level": if probe.verified { "directory_probe" } else { "self_reported" },
            "latency_ms_basis": if probe.latency_ms.is_some() { "directory_probe" } else { "none" },
            "components": {"liveness": liveness, "reachability": reachability, "latency": latency},
            "evaluated_at": iso8601(now_ms / 1000),
        });
        (score, label, detail)
    }

    /// `node_policy_manifest` (dir §3.4, ADR 0016): the manifest as the node registered
    /// it, signature included so that clients can check it themselves, plus the
    /// directory's evidence at `now_secs`: `verification`, `evidence`,
    /// `manifest_identity_level` (`operator_bound` when the policy key is the operator
    /// key of this node's verified delegation), `policy_key_fingerprint` and, when
    /// bound, `operator_fingerprint`.
    pub(crate) fn served_manifest(&self, now_secs: u64) -> Option<Value> {
        let original = self.reg.policy_manifest.as_ref()?.as_object()?;
        let check = self.manifest.as_ref()?;
        // the lifecycle registry outranks the signature: a revoked or rotated key
        let status = match (&self.key_status, check.at(now_secs)) {
            (Some(k), Status::SignedValid | Status::SignedExpired) => match k.status {
                KeyStatus::Revoked => Status::SignedRevoked,
                KeyStatus::Superseded => Status::SignedSuperseded,
            },
            (_, status) => status,
        };
        let bound_operator = self.record.state.operator_pub.as_deref().filter(|op| {
            let key = OperatorPublicKey::from_operator_id(op).ok();
            key.is_some() && key == check.public_key
        });
        let level = match status {
            Status::SelfAttested => Some(IdentityLevel::SelfAttested),
            Status::SignedValid if bound_operator.is_some() => Some(IdentityLevel::OperatorBound),
            Status::SignedValid => Some(IdentityLevel::SignedValid),
            Status::SignedRevoked => Some(IdentityLevel::Revoked),
            Status::SignedSuperseded => Some(IdentityLevel::Rotated),
            _ => None,
        };
        let mut out = original.clone();
        let mut verification = check.to_json();
        verification["status"] = status.as_str().into();
        out.insert("verification".into(), verification);
        out.insert("evidence".into(), status.evidence().into());
        out.insert(
            "manifest_identity_level".into(),
            level.map_or(Value::Null, |l| l.as_str().into()),
        );
        if let Some(key) = &check.public_key {
            out.insert(
                "policy_key_fingerprint".into(),
                manifest::policy_key_fingerprint(key).into(),
            );
        }
        if let Some(op) = bound_operator {
            out.insert(
                "operator_fingerprint".into(),
                operator_fingerprint(op).into(),
            );
        }
        if let Some(k) = &self.key_status {
            if k.status == KeyStatus::Revoked {
                out.insert("revoked_at".into(), iso8601(k.at_ms / 1000).into());
            }
            out.insert(
                "revocation_reason_class".into(),
                k.reason_class.clone().into(),
            );
            if let Some(epoch) = k.rotation_epoch {
                out.insert("rotation_epoch".into(), epoch.into());
            }
        }
        Some(Value::Object(out))
    }

    /// The dispatch-view NODELIST entry (§8.4); also the `route` of a ticket (§8.5).
    pub(crate) fn entry(&self, score: f64, intent: &str, now_ms: u64, s: &Settings) -> Value {
        let reg = &self.reg;
        let st = &self.record.state;
        let cap = self.capability(intent);
        let cx = reg.cx_public_key.clone();
        let mut transport = vec!["http".to_owned()];
        if reg.transport_endpoint.is_some() {
            transport.push("iicp-native".to_owned());
        }
        let (_, label, _) = self.health(now_ms, s);
        let entry = NodeEntry {
            node_id: Some(self.record.node_id.clone()),
            endpoint: Some(reg.endpoint.clone()),
            transport_endpoint: reg.transport_endpoint.clone(),
            region: Some(reg.region.clone()),
            score: Some(score),
            available: Some(st.available),
            load: Some(self.load()),
            active_jobs: Some(st.active_jobs),
            max_concurrent: Some(self.max_concurrent()),
            reputation_score: Some(st.reputation),
            reputation_tier: Some(self.reputation_tier().to_owned()),
            latency_estimate_ms: st
                .avg_latency_ms
                .map(|l| l.max(0.0).round() as u64)
                .or(st.probe.latency_ms),
            completed_tasks_count: Some(self.completed_tasks()),
            key_ready: Some(cx.is_some()),
            privacy_routing_status: Some(
                if cx.is_some() {
                    "key_ready"
                } else {
                    "transitional"
                }
                .to_owned(),
            ),
            cx_public_key: cx,
            reachability_tier: Some(
                if reg.transport_method.as_deref() == Some("turn_relay") {
                    "relay"
                } else {
                    "direct"
                }
                .to_owned(),
            ),
            relay_capable: Some(reg.relay_capable.unwrap_or(false)),
            relay_accept_port: reg
                .relay_accept_port
                .or(reg.relay_capable.filter(|c| *c).map(|_| 9485)),
            input_modalities: cap.map(Capability::modalities),
            models: cap.map(|c| c.models.clone()),
            quantization: cap.and_then(|c| c.quantization.clone()),
            inference_engine: cap.and_then(|c| c.inference_engine.clone()),
            capabilities: reg.capabilities.clone(),
            transport: Some(transport),
            cip_policy: Some(json!({
                "allow_remote_inference": self.cip_remote(),
                "allow_tool_execution": reg.policy.as_ref().and_then(|p| p.get("allow_tool_execution")).and_then(Value::as_bool).unwrap_or(false),
                "allow_file_access": reg.policy.as_ref().and_then(|p| p.get("allow_file_access")).and_then(Value::as_bool).unwrap_or(false),
                "pricing_credits_per_1000": reg.policy.as_ref().and_then(|p| p.get("pricing_credits_per_1000")).cloned().unwrap_or(Value::Null),
            })),
            pricing: Some(json!({
                "credit_cost_multiplier": self.multiplier(),
                "pricing_model": "per_token",
                "currency": "credits",
                "attested": false,
            })),
            node_policy_manifest: self.served_manifest(now_ms / 1000),
            health_label: Some(label.to_owned()),
            exposure_mode: reg.exposure_mode.clone(),
            route_evidence: Some(Value::String(
                if st.probe.verified {
                    "directory_probe"
                } else {
                    "self_reported"
                }
                .to_owned(),
            )),
            transport_method: reg.transport_method.clone(),
            nat_type: reg.nat_type.clone(),
            transport_metadata: reg.transport_metadata.clone(),
            relay_endpoint: reg.relay_endpoint.clone(),
            address_family: Some(address_family(&self.url).to_owned()),
            browser_usable: Some(self.url.scheme == "https"),
            public_reachable: Some(st.probe.verified),
            backend: reg.backend.clone(),
            sdk_language: reg.sdk_language.clone(),
            sdk_version: reg.sdk_version.clone(),
            sdk_compatibility_version: reg.effective_sdk_version().map(str::to_owned),
            sdk_status: Some(
                if reg.effective_sdk_version().is_some() {
                    "current"
                } else {
                    "unknown"
                }
                .to_owned(),
            ),
            implementation_name: reg.implementation_name.clone(),
            implementation_version: reg.implementation_version.clone(),
            upgrade_required: Some(false),
            operator_display_name: self.operator_name.clone(),
            operator_fingerprint: st.operator_pub.as_deref().map(operator_fingerprint),
            ..NodeEntry::default()
        };
        let mut v = serde_json::to_value(entry).unwrap_or_else(|_| Value::Object(Map::new()));
        if let Value::Object(m) = &mut v {
            m.entry("cx_public_key").or_insert(Value::Null);
            m.entry("transport_endpoint").or_insert(Value::Null);
            m.insert(
                "last_seen".into(),
                Value::String(iso8601(st.last_seen_ms / 1000)),
            );
        }
        v
    }

    /// The presentation-safe entry of `view=public` (§8.4): no route fields, no keys.
    pub(crate) fn public_entry(
        &self,
        score: f64,
        intent: &str,
        now_ms: u64,
        s: &Settings,
    ) -> Value {
        let mut v = self.entry(score, intent, now_ms, s);
        if let Value::Object(m) = &mut v {
            for k in [
                "node_id",
                "endpoint",
                "transport_endpoint",
                "transport_metadata",
                "cx_public_key",
                "relay_endpoint",
                "node_policy_manifest",
            ] {
                m.remove(k);
            }
            m.insert(
                "node_id_prefix".into(),
                Value::String(self.record.node_id.chars().take(8).collect()),
            );
            m.insert(
                "route_class".into(),
                Value::String(
                    m.get("reachability_tier")
                        .and_then(Value::as_str)
                        .unwrap_or("direct")
                        .to_owned(),
                ),
            );
        }
        v
    }
}

pub(crate) use iicp_proto::crypto::manifest::operator_fingerprint;
