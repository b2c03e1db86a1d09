//! Directory (IICP-DIR) request and response bodies.
//!
//! Implements PROTOCOL.md §8.2 (REGISTER and ACK, implementation metadata §8.2.3), §8.3
//! (HEARTBEAT and PONG), §8.4 (DISCOVER query and NODELIST), §8.5 (dispatch ticket),
//! §8.6 (DEREGISTER), §8.10 (consumer token, directory key), §12 (capability objects) and
//! the key advertisement of §16.1, following §19 T9, T19 and T20 (tolerant parsing,
//! `#[serde(default)]` everywhere, `Value` for evidence fields).
//!
//! Every body keeps unknown members in an `extra` map. Credentials are [`Secret`]s, so
//! `Debug` output never contains them. `operator_delegation`, `policy_manifest`,
//! `policy` and `pricing` are carried as [`serde_json::Value`]: `crypto::sign` owns the
//! delegation's typed form and its canonical signing bytes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::intent::{Intent, IntentError};
use crate::secret::Secret;
use crate::task::{lenient, Qos};

/// Default `limit` of a DISCOVER query.
pub const DEFAULT_DISCOVER_LIMIT: u32 = 10;
/// Largest `limit` of a DISCOVER query; larger values are clamped.
pub const MAX_DISCOVER_LIMIT: u32 = 50;
/// Most `exclude_node_id_prefixes` a dispatch-ticket request may carry.
pub const MAX_EXCLUDED_PREFIXES: usize = 10;
/// Longest `region`, in characters.
pub const MAX_REGION_LEN: usize = 64;

/// Members whose presence makes a dispatch-ticket request carry task material (§8.5).
pub const PROMPT_MATERIAL_MEMBERS: [&str; 9] = [
    "prompt",
    "messages",
    "payload",
    "input",
    "chat",
    "content",
    "response",
    "iicp_conf",
    "task",
];

// ---------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------

/// An IICP-CX key advertisement (`cx_public_key`, §16.1) as it appears in REGISTER,
/// NODELIST and dispatch routes. The key bytes stay base64url text here; `crypto::cx`
/// decodes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CxPublicKey {
    /// `X25519`.
    #[serde(default)]
    pub algorithm: String,
    /// `base64url`.
    #[serde(default)]
    pub encoding: String,
    /// The 32-byte public key, base64url without padding.
    #[serde(default)]
    pub key: String,
    /// Opaque key label; echo it, never recompute it.
    #[serde(default)]
    pub key_id: String,
    /// Expiry (ISO-8601 UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// Reserved for hybrid post-quantum keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hybrid_pq: Option<Value>,
    /// Features such as `response_encryption_v1`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// Other members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl CxPublicKey {
    /// Feature name for encrypted responses (§16.4).
    pub const RESPONSE_ENCRYPTION_V1: &'static str = "response_encryption_v1";

    /// True when the node can encrypt responses.
    pub fn supports_response_encryption(&self) -> bool {
        self.features
            .iter()
            .any(|f| f == Self::RESPONSE_ENCRYPTION_V1)
    }
}

/// A capability object (§12.1 base fields, §12 LLM/embedding/MCP fields). Unknown
/// members are kept in `extra` so nothing the node sends is lost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Capability {
    /// Full intent URN (see [`Capability::parsed_intent`]).
    #[serde(default)]
    pub intent: String,
    /// Capability version (`"1"` if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Minimum IICP phase.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub phase: Option<u32>,
    /// Node-scoped variant id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant_id: Option<String>,
    /// Models served (required by current directories, T19).
    #[serde(default)]
    pub models: Vec<String>,
    /// Output token bound (required by current directories, T19).
    #[serde(
        default,
        deserialize_with = "lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_tokens: Option<u32>,
    /// `text`, `image`, `audio`, `video` (default `["text"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_modalities: Option<Vec<String>>,
    /// Output modalities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_modalities: Option<Vec<String>>,
    /// Features such as `tool_calling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    /// Execution capabilities such as `tool_execution`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_capabilities: Option<Vec<String>>,
    /// Typed `{value, unit}` limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Value>,
    /// Supported profile URNs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supported_profiles: Option<Vec<String>>,
    /// Claim provenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_provenance: Option<Value>,
    /// Namespaced extensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Value>,
    /// Context window.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub context_length: Option<u32>,
    /// Streaming support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supports_streaming: Option<bool>,
    /// Advisory quantization (`q4_k_m`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
    /// Advisory engine (`vllm`, `llama.cpp`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_engine: Option<String>,
    /// `cuda`, `metal`, `cpu`, `rocm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<String>,
    /// Throughput hint.
    #[serde(
        default,
        deserialize_with = "lenient::opt_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub avg_tokens_per_second: Option<f64>,
    /// Embedding dimensions.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub dimensions: Option<u32>,
    /// Embedding batch size.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub batch_size: Option<u32>,
    /// MCP tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_tools: Option<Value>,
    /// MCP version (ISO date).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_version: Option<String>,
    /// Other members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The capability extension in which a node that is not open says how callers
/// authenticate (`{"iicp_auth": {"mode": "token" | "consumer"}}`), so that a client can
/// bring the right credential, or skip the node, without a refused attempt.
pub const AUTH_EXTENSION: &str = "iicp_auth";

impl Capability {
    /// The auth mode the node advertises in [`AUTH_EXTENSION`] (`None`: open, or not
    /// said).
    pub fn auth_mode(&self) -> Option<&str> {
        self.extensions
            .as_ref()?
            .get(AUTH_EXTENSION)?
            .get("mode")?
            .as_str()
    }

    /// Sets (`Some`) or removes (`None`) the [`AUTH_EXTENSION`] advertisement, keeping
    /// any other extension.
    pub fn set_auth_mode(&mut self, mode: Option<&str>) {
        let mut ext = match self.extensions.take() {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        match mode {
            Some(m) => {
                ext.insert(AUTH_EXTENSION.to_owned(), serde_json::json!({ "mode": m }));
            }
            None => {
                ext.remove(AUTH_EXTENSION);
            }
        }
        self.extensions = (!ext.is_empty()).then_some(Value::Object(ext));
    }
}

impl Capability {
    /// An LLM capability with the fields current directories require (T19).
    pub fn llm(intent: &Intent, models: Vec<String>, max_tokens: u32) -> Self {
        Self {
            intent: intent.as_str().to_owned(),
            models,
            max_tokens: Some(max_tokens),
            ..Self::default()
        }
    }

    /// The intent, validated.
    pub fn parsed_intent(&self) -> Result<Intent, IntentError> {
        Intent::new(self.intent.as_str())
    }

    /// Input modalities, defaulting to `["text"]`.
    pub fn modalities(&self) -> Vec<String> {
        self.input_modalities
            .clone()
            .unwrap_or_else(|| vec!["text".to_owned()])
    }
}

/// `limits` of REGISTER (§8.2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// 1–256.
    #[serde(default)]
    pub max_concurrent: u32,
    /// > 0 (send it, T19; `0` on input means "not sent").
    #[serde(default)]
    pub tokens_per_min: u64,
    /// Other members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One availability window of REGISTER (`{start:"HH:MM", end:"HH:MM", share}`, UTC).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AvailabilityWindow {
    /// Start, `HH:MM` UTC.
    #[serde(default)]
    pub start: String,
    /// End, `HH:MM` UTC.
    #[serde(default)]
    pub end: String,
    /// Share of capacity, 0–1.
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub share: Option<f64>,
    /// Other members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

// ---------------------------------------------------------------------------
// REGISTER
// ---------------------------------------------------------------------------

/// Why a REGISTER body is invalid (§8.2, §8.2.1, §8.2.3). Directories answer 422
/// `validation_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// `endpoint` is missing or empty.
    #[error("`endpoint` is required")]
    MissingEndpoint,
    /// `region` is longer than 64 characters.
    #[error("`region` is longer than {MAX_REGION_LEN} characters")]
    RegionTooLong,
    /// No capability.
    #[error("`capabilities` must contain at least one capability")]
    NoCapabilities,
    /// A capability's intent is invalid.
    #[error("capability {index}: invalid intent: {source}")]
    CapabilityIntent {
        /// Index of the capability.
        index: usize,
        /// Why the intent is invalid.
        #[source]
        source: IntentError,
    },
    /// A capability lists no model (required by current directories).
    #[error("capability {index}: `models` must list at least one model")]
    CapabilityModels {
        /// Index of the capability.
        index: usize,
    },
    /// A capability's `max_tokens` is missing or 0.
    #[error("capability {index}: `max_tokens` must be a positive integer")]
    CapabilityMaxTokens {
        /// Index of the capability.
        index: usize,
    },
    /// `limits.max_concurrent` is outside 1–256.
    #[error("`limits.max_concurrent` must be within 1..=256")]
    MaxConcurrent,
    /// `sdk_version` and `sdk_compatibility_version` are both set and differ.
    #[error("`sdk_version` and `sdk_compatibility_version` disagree")]
    SdkVersionConflict,
    /// `implementation_name` does not match its grammar.
    #[error("`implementation_name` does not match ^[A-Za-z0-9@][A-Za-z0-9._/@+-]{{0,63}}$")]
    ImplementationName,
    /// A version field does not match the version grammar.
    #[error("`{field}` does not match ^[0-9A-Za-z][0-9A-Za-z._+-]{{0,31}}$")]
    VersionGrammar {
        /// The offending field.
        field: &'static str,
    },
}

/// A REGISTER body (`POST /v1/register`, §8.2). Every member of the §8.2 tables is a
/// field; unset optionals are omitted on output. `Debug` shows no credential.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Routable URL of the node's HTTP control plane.
    #[serde(default)]
    pub endpoint: String,
    /// Region (≤ 64 chars).
    #[serde(default)]
    pub region: String,
    /// At least one capability.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// Concurrency and rate limits.
    #[serde(default)]
    pub limits: Limits,
    /// Persisted node id (UUID v4); the directory assigns one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Proof of ownership on re-registration (§8.2.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_node_token: Option<Secret>,
    /// Ed25519 gossip key (not the CX key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Availability windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability: Option<Vec<AvailabilityWindow>>,
    /// Native endpoint `iicp://host:port` / `iicpsec://host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_endpoint: Option<String>,
    /// `direct`, `upnp_mapped`, `stun_hole_punch`, `turn_relay`, `external_tunnel`,
    /// `webrtc_datachannel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_method: Option<String>,
    /// ICE-style candidates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_candidates: Option<Vec<Value>>,
    /// Relay endpoint (with `transport_method = turn_relay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_endpoint: Option<String>,
    /// NAT type (observability only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_type: Option<String>,
    /// Transport metadata (relay binding, WebRTC, detection tier, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_metadata: Option<Value>,
    /// ADR-043 exposure mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposure_mode: Option<String>,
    /// Node offers relay service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_capable: Option<bool>,
    /// Relay accept port (default 9485).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_accept_port: Option<u16>,
    /// IICP-CX key advertisement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cx_public_key: Option<CxPublicKey>,
    /// Operator delegation `{node_id, operator_pub, not_after, sig}` (§17.2), opaque here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_delegation: Option<Value>,
    /// Operator display name (bound if the delegation verifies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_display_name: Option<String>,
    /// Operator identity creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_created_at: Option<String>,
    /// Operator integrity hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_integrity_hash: Option<String>,
    /// Public data-handling declaration (§17.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_manifest: Option<Value>,
    /// CIP provider policy (§12.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Value>,
    /// Pricing declaration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Value>,
    /// Operator-provisioned HMAC key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_hmac_key: Option<Secret>,
    /// Backend family (advisory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// SDK language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk_language: Option<String>,
    /// SDK version (legacy alias of the compatibility version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk_version: Option<String>,
    /// Implementation name (§8.2.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implementation_name: Option<String>,
    /// Implementation version (§8.2.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implementation_version: Option<String>,
    /// SDK compatibility version (§8.2.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk_compatibility_version: Option<String>,
    /// Updater evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_update_enabled: Option<bool>,
    /// Updater evidence.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub auto_update_interval_s: Option<u64>,
    /// Updater evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk_latest_seen: Option<String>,
    /// Updater evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk_update_last_checked_at: Option<String>,
    /// Updater evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk_update_error_class: Option<String>,
    /// Receipt profiles (pre-normative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supported_receipt_profiles: Option<Vec<String>>,
    /// Identity slot URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Identity slot signature (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_signature: Option<String>,
    /// Other members (`message_type`, further updater fields, …), kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn matches_implementation_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_alphanumeric() || b[0] == b'@')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._/@+-".contains(c))
}

fn matches_version_grammar(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._+-".contains(c))
}

impl RegisterRequest {
    /// A request with the four required members set.
    pub fn new(
        endpoint: impl Into<String>,
        region: impl Into<String>,
        capabilities: Vec<Capability>,
        limits: Limits,
    ) -> Self {
        Self {
            endpoint: endpoint.into(),
            region: region.into(),
            capabilities,
            limits,
            ..Self::default()
        }
    }

    /// The checks of §8.2/§8.2.1/§8.2.3 that do not need network access. An absent
    /// `limits.tokens_per_min` is tolerated ([dir §3.1] lists it as optional).
    pub fn validate(&self) -> Result<(), RegisterError> {
        if self.endpoint.trim().is_empty() {
            return Err(RegisterError::MissingEndpoint);
        }
        if self.region.chars().count() > MAX_REGION_LEN {
            return Err(RegisterError::RegionTooLong);
        }
        if self.capabilities.is_empty() {
            return Err(RegisterError::NoCapabilities);
        }
        for (index, cap) in self.capabilities.iter().enumerate() {
            Intent::check(&cap.intent)
                .map_err(|source| RegisterError::CapabilityIntent { index, source })?;
            if cap.models.is_empty() {
                return Err(RegisterError::CapabilityModels { index });
            }
            if cap.max_tokens.unwrap_or(0) == 0 {
                return Err(RegisterError::CapabilityMaxTokens { index });
            }
        }
        if !(1..=256).contains(&self.limits.max_concurrent) {
            return Err(RegisterError::MaxConcurrent);
        }
        if let Some(name) = &self.implementation_name {
            if !matches_implementation_name(name) {
                return Err(RegisterError::ImplementationName);
            }
        }
        if let Some(v) = &self.implementation_version {
            if !matches_version_grammar(v) {
                return Err(RegisterError::VersionGrammar {
                    field: "implementation_version",
                });
            }
        }
        if let Some(v) = &self.sdk_compatibility_version {
            if !matches_version_grammar(v) {
                return Err(RegisterError::VersionGrammar {
                    field: "sdk_compatibility_version",
                });
            }
        }
        if let (Some(a), Some(b)) = (&self.sdk_version, &self.sdk_compatibility_version) {
            if a != b {
                return Err(RegisterError::SdkVersionConflict);
            }
        }
        Ok(())
    }

    /// The effective compatibility version: `sdk_compatibility_version ?? sdk_version`.
    pub fn effective_sdk_version(&self) -> Option<&str> {
        self.sdk_compatibility_version
            .as_deref()
            .or(self.sdk_version.as_deref())
    }
}

/// The REGISTER acknowledgement (HTTP 201, §8.2). Accepts `token` as a spelling of
/// `node_token` (ref-py). `Debug` redacts every credential (they are [`Secret`]s).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "RegisterAckWire")]
pub struct RegisterAck {
    /// The node id (echoed or assigned).
    pub node_id: String,
    /// The node's bearer credential, returned once. Persist before use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_token: Option<Secret>,
    /// HMAC key for heartbeat challenges and credit receipts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_hmac_key: Option<Secret>,
    /// Telemetry-only token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_token: Option<Secret>,
    /// HS256 JWT (`sub = node_id`), usable as a self-identifying bearer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_token: Option<Secret>,
    /// JWT expiry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_expires_at: Option<String>,
    /// Token expiry (usually null).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Value>,
    /// Directory name or URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    /// Source IP the directory saw (§8.7).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_source_ip: Option<String>,
    /// Node was known before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// Lifetime jobs on record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifetime_jobs: Option<u64>,
    /// Directory-observed reachability.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_reachable: Option<bool>,
    /// Other members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Deserialize)]
struct RegisterAckWire {
    #[serde(default)]
    node_id: String,
    #[serde(default)]
    node_token: Option<Secret>,
    #[serde(default)]
    token: Option<Secret>,
    #[serde(default)]
    node_hmac_key: Option<Secret>,
    #[serde(default)]
    proxy_token: Option<Secret>,
    #[serde(default)]
    jwt_token: Option<Secret>,
    #[serde(default)]
    jwt_expires_at: Option<String>,
    #[serde(default)]
    expires_at: Option<Value>,
    #[serde(default)]
    directory: Option<String>,
    #[serde(default)]
    observed_source_ip: Option<String>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    lifetime_jobs: Option<u64>,
    #[serde(default)]
    public_reachable: Option<bool>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

impl From<RegisterAckWire> for RegisterAck {
    fn from(w: RegisterAckWire) -> Self {
        RegisterAck {
            node_id: w.node_id,
            node_token: w.node_token.or(w.token),
            node_hmac_key: w.node_hmac_key,
            proxy_token: w.proxy_token,
            jwt_token: w.jwt_token,
            jwt_expires_at: w.jwt_expires_at,
            expires_at: w.expires_at.filter(|v| !v.is_null()),
            directory: w.directory,
            observed_source_ip: w.observed_source_ip,
            recovered: w.recovered,
            lifetime_jobs: w.lifetime_jobs,
            public_reachable: w.public_reachable,
            extra: w.extra,
        }
    }
}

// ---------------------------------------------------------------------------
// HEARTBEAT
// ---------------------------------------------------------------------------

/// Counters of a heartbeat `metrics` batch (§8.3).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatMetrics {
    /// Successful tasks since the last acknowledged batch.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub tasks_success: Option<u64>,
    /// Failed tasks since the last acknowledged batch.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub tasks_failed: Option<u64>,
    /// Average latency in ms.
    #[serde(
        default,
        deserialize_with = "lenient::opt_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub avg_latency_ms: Option<f64>,
    /// Other members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl HeartbeatMetrics {
    /// True when no counter is set (ref-rs sends `"metrics": {}`).
    pub fn is_empty(&self) -> bool {
        self.tasks_success.is_none()
            && self.tasks_failed.is_none()
            && self.avg_latency_ms.is_none()
            && self.extra.is_empty()
    }
}

/// Why a heartbeat body is invalid (§8.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeartbeatError {
    /// `node_id` is missing or empty.
    #[error("`node_id` is required")]
    MissingNodeId,
    /// `load` is outside 0–1.
    #[error("`load` must be within 0..=1")]
    Load,
    /// Non-empty `metrics` without a `metrics_batch_id`.
    #[error("`metrics_batch_id` is required when `metrics` is present")]
    MissingBatchId,
    /// `metrics_batch_id` is not 1–64 printable ASCII characters.
    #[error("`metrics_batch_id` must be 1-64 printable ASCII characters")]
    BatchId,
    /// `challenge_response` is not lowercase hex.
    #[error("`challenge_response` must be lowercase hex")]
    ChallengeResponse,
}

/// A HEARTBEAT body (`POST /v1/heartbeat`, §8.3), including the ref-SDK extras.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// Registered node id.
    #[serde(default)]
    pub node_id: String,
    /// `active_jobs / max_concurrent`, 0–1.
    #[serde(
        default,
        deserialize_with = "lenient::opt_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub load: Option<f64>,
    /// Tasks in flight.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub active_jobs: Option<u32>,
    /// Accepting work; absent means `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<bool>,
    /// Declared p95 latency SLA in ms.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub sla_p95_ms: Option<u64>,
    /// Metrics batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<HeartbeatMetrics>,
    /// Opaque id of the metrics batch (required with `metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_batch_id: Option<String>,
    /// Lowercase hex HMAC-SHA256 of the previous PONG's challenge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge_response: Option<String>,
    /// Legacy copy of the bearer token in the body (ref SDKs). Prefer the header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_token: Option<Secret>,
    /// `available` / `recovering` (ref SDKs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Effective concurrency (ref SDKs).
    #[serde(
        default,
        deserialize_with = "lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_concurrent: Option<u32>,
    /// Live model list from the backend (ref SDKs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_models: Option<Vec<String>>,
    /// Backend stability summary (ref SDKs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_stability: Option<Value>,
    /// Updater evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_update_enabled: Option<bool>,
    /// Updater evidence.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub auto_update_interval_s: Option<u64>,
    /// Updater evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk_latest_seen: Option<String>,
    /// Updater evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk_update_last_checked_at: Option<String>,
    /// Updater evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk_update_error_class: Option<String>,
    /// Route-recovery summary (§13.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_state: Option<String>,
    /// Route-recovery summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_recovery_hint: Option<String>,
    /// Route-recovery summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_action: Option<String>,
    /// Route-recovery summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_next_retry_at: Option<String>,
    /// Route-recovery summary.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub recovery_attempt: Option<u32>,
    /// Route-recovery summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_supervised: Option<bool>,
    /// Identity slot URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Identity slot signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_signature: Option<String>,
    /// Other members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl HeartbeatRequest {
    /// A heartbeat for `node_id` with nothing else set.
    pub fn new(node_id: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            ..Self::default()
        }
    }

    /// The §8.3 rules a directory checks.
    pub fn validate(&self) -> Result<(), HeartbeatError> {
        if self.node_id.is_empty() {
            return Err(HeartbeatError::MissingNodeId);
        }
        if let Some(load) = self.load {
            if !(0.0..=1.0).contains(&load) {
                return Err(HeartbeatError::Load);
            }
        }
        if let Some(id) = &self.metrics_batch_id {
            if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err(HeartbeatError::BatchId);
            }
        } else if self.metrics.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(HeartbeatError::MissingBatchId);
        }
        if let Some(r) = &self.challenge_response {
            if r.is_empty()
                || !r
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(HeartbeatError::ChallengeResponse);
            }
        }
        Ok(())
    }
}

/// The PONG (§8.3).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// Acknowledged.
    #[serde(default)]
    pub ok: bool,
    /// When to send the next heartbeat.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub next_heartbeat_ms: Option<u64>,
    /// Current reputation.
    #[serde(
        default,
        deserialize_with = "lenient::opt_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub reputation_score: Option<f64>,
    /// Reputation model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reputation_model: Option<String>,
    /// Reputation epoch (opaque).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reputation_epoch: Option<String>,
    /// The metrics batch id the directory accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_batch_accepted: Option<String>,
    /// Nonce to answer with `challenge_response` next time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<String>,
    /// Free credits awarded.
    #[serde(
        default,
        deserialize_with = "lenient::opt_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub free_credits_awarded: Option<f64>,
    /// Other members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

// ---------------------------------------------------------------------------
// DISCOVER
// ---------------------------------------------------------------------------

/// `view` of a DISCOVER query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscoverView {
    /// Route-bearing (default).
    Dispatch,
    /// Presentation-safe, redacted.
    Public,
}

impl DiscoverView {
    /// The wire spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            DiscoverView::Dispatch => "dispatch",
            DiscoverView::Public => "public",
        }
    }
}

/// Why DISCOVER query parameters are invalid (§8.4; 422 `validation_error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoverQueryError {
    /// `intent` is missing.
    #[error("intent is required")]
    MissingIntent,
    /// `intent` is not a valid URN.
    #[error("invalid intent: {0}")]
    Intent(#[source] IntentError),
    /// A parameter has a malformed or out-of-range value (never echoed).
    #[error("`{param}` has an invalid value: {expected}")]
    InvalidParam {
        /// The parameter name.
        param: &'static str,
        /// What was expected.
        expected: &'static str,
    },
}

/// DISCOVER query parameters (`GET /v1/discover`, §8.4).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiscoverQuery {
    /// Full intent URN (required).
    pub intent: String,
    /// QoS class.
    pub qos: Option<Qos>,
    /// Region preference (not exclusion).
    pub region: Option<String>,
    /// Max nodes (default 10, max 50).
    pub limit: Option<u32>,
    /// Minimum reputation, 0–1.
    pub min_reputation: Option<f64>,
    /// Maximum credit cost multiplier.
    pub max_multiplier: Option<f64>,
    /// Minimum quality score, 0–1.
    pub min_quality_score: Option<f64>,
    /// Only CIP-capable nodes.
    pub cip_capable: Option<bool>,
    /// Required input modality.
    pub modality: Option<String>,
    /// Model (switches to model-aware weights).
    pub model: Option<String>,
    /// `dispatch` or `public`.
    pub view: Option<DiscoverView>,
    /// Only relay-capable nodes (relay election).
    pub relay_capable: Option<bool>,
    /// Profile negotiation (pre-normative).
    pub profile_id: Option<String>,
    /// Profile negotiation (pre-normative).
    pub profile_version: Option<String>,
    /// Profile negotiation (pre-normative).
    pub profile_fixture_sha256: Option<String>,
    /// Profile negotiation (pre-normative).
    pub profile_required: Option<bool>,
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

fn parse_unit(v: &str, param: &'static str) -> Result<f64, DiscoverQueryError> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite() && (0.0..=1.0).contains(f))
        .ok_or(DiscoverQueryError::InvalidParam {
            param,
            expected: "a number in [0, 1]",
        })
}

impl DiscoverQuery {
    /// A query for `intent` with nothing else set.
    pub fn new(intent: &Intent) -> Self {
        Self {
            intent: intent.as_str().to_owned(),
            ..Self::default()
        }
    }

    /// The `limit` the directory applies: default 10, clamped to 1–50.
    pub fn effective_limit(&self) -> u32 {
        self.limit
            .unwrap_or(DEFAULT_DISCOVER_LIMIT)
            .clamp(1, MAX_DISCOVER_LIMIT)
    }

    /// Query pairs for URL building, unencoded, in a stable order; unset parameters are
    /// omitted.
    pub fn to_query_pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("intent", self.intent.clone())];
        let mut push = |k: &'static str, v: Option<String>| {
            if let Some(v) = v {
                out.push((k, v));
            }
        };
        push("qos", self.qos.map(|q| q.as_str().to_owned()));
        push("region", self.region.clone());
        push("limit", self.limit.map(|l| l.to_string()));
        push("min_reputation", self.min_reputation.map(|f| f.to_string()));
        push("max_multiplier", self.max_multiplier.map(|f| f.to_string()));
        push(
            "min_quality_score",
            self.min_quality_score.map(|f| f.to_string()),
        );
        push("cip_capable", self.cip_capable.map(|b| b.to_string()));
        push("modality", self.modality.clone());
        push("model", self.model.clone());
        push("view", self.view.map(|v| v.as_str().to_owned()));
        push("relay_capable", self.relay_capable.map(|b| b.to_string()));
        push("profile_id", self.profile_id.clone());
        push("profile_version", self.profile_version.clone());
        push(
            "profile_fixture_sha256",
            self.profile_fixture_sha256.clone(),
        );
        push(
            "profile_required",
            self.profile_required.map(|b| b.to_string()),
        );
        out
    }

    /// Server side: builds a query from decoded pairs. Unknown parameters are ignored;
    /// for repeated parameters the first wins. `intent` must be present and valid
    /// (custom `x.` intents included); `limit` must be a positive integer (values above
    /// 50 are clamped); `min_reputation` and `min_quality_score` must be in [0, 1];
    /// `max_multiplier` ≥ 0; `qos` one of the four classes; `view` `dispatch`/`public`;
    /// booleans `true/false/1/0`.
    pub fn from_query_pairs<I, K, V>(pairs: I) -> Result<Self, DiscoverQueryError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut q = DiscoverQuery::default();
        let mut seen_intent = false;
        let mut seen: Vec<String> = Vec::new();
        for (k, v) in pairs {
            let (k, v) = (k.as_ref(), v.as_ref());
            if seen.iter().any(|s| s == k) {
                continue;
            }
            if seen.len() < 64 {
                seen.push(k.to_owned());
            }
            let bad = |param: &'static str, expected: &'static str| {
                DiscoverQueryError::InvalidParam { param, expected }
            };
            match k {
                "intent" => {
                    if v.is_empty() {
                        return Err(DiscoverQueryError::MissingIntent);
                    }
                    Intent::check(v).map_err(DiscoverQueryError::Intent)?;
                    q.intent = v.to_owned();
                    seen_intent = true;
                }
                "qos" => {
                    q.qos = Some(Qos::parse(v).ok_or(bad(
                        "qos",
                        "one of realtime, interactive, batch, best-effort",
                    ))?);
                }
                "region" => q.region = Some(v.to_owned()),
                "limit" => {
                    let n: u32 = v
                        .trim()
                        .parse()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or(bad("limit", "a positive integer"))?;
                    q.limit = Some(n.min(MAX_DISCOVER_LIMIT));
                }
                "min_reputation" => q.min_reputation = Some(parse_unit(v, "min_reputation")?),
                "min_quality_score" => {
                    q.min_quality_score = Some(parse_unit(v, "min_quality_score")?)
                }
                "max_multiplier" => {
                    q.max_multiplier = Some(
                        v.trim()
                            .parse::<f64>()
                            .ok()
                            .filter(|f| f.is_finite() && *f >= 0.0)
                            .ok_or(bad("max_multiplier", "a non-negative number"))?,
                    );
                }
                "cip_capable" => {
                    q.cip_capable = Some(parse_bool(v).ok_or(bad("cip_capable", "a boolean"))?)
                }
                "modality" => q.modality = Some(v.to_owned()),
                "model" => q.model = Some(v.to_owned()),
                "view" => {
                    q.view = Some(match v {
                        "dispatch" => DiscoverView::Dispatch,
                        "public" => DiscoverView::Public,
                        _ => return Err(bad("view", "dispatch or public")),
                    })
                }
                "relay_capable" => {
                    q.relay_capable = Some(parse_bool(v).ok_or(bad("relay_capable", "a boolean"))?)
                }
                "profile_id" => q.profile_id = Some(v.to_owned()),
                "profile_version" => q.profile_version = Some(v.to_owned()),
                "profile_fixture_sha256" => q.profile_fixture_sha256 = Some(v.to_owned()),
                "profile_required" => {
                    q.profile_required =
                        Some(parse_bool(v).ok_or(bad("profile_required", "a boolean"))?)
                }
                _ => {}
            }
        }
        if !seen_intent {
            return Err(DiscoverQueryError::MissingIntent);
        }
        Ok(q)
    }
}

/// One node of a NODELIST (§8.4). Every member is optional on input (T20); evidence
/// members are kept as [`Value`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Node id (dispatch view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// 8-hex prefix (public view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id_prefix: Option<String>,
    /// HTTP base URL (`{endpoint}/v1/task`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Native endpoint; preferred when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_endpoint: Option<String>,
    /// Region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Directory score 0.1–1.
    #[serde(
        default,
        deserialize_with = "lenient::opt_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub score: Option<f64>,
    /// Available (see [`NodeEntry::is_available`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<bool>,
    /// Load 0–1.
    #[serde(
        default,
        deserialize_with = "lenient::opt_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub load: Option<f64>,
    /// Tasks in flight.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub active_jobs: Option<u32>,
    /// Concurrency limit.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_concurrent: Option<u32>,
    /// Reputation (default 0.5).
    #[serde(
        default,
        deserialize_with = "lenient::opt_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub reputation_score: Option<f64>,
    /// `bronze`/`silver`/`gold`/`platinum`/`none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reputation_tier: Option<String>,
    /// Latency estimate in ms.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub latency_estimate_ms: Option<u64>,
    /// Completed tasks.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub completed_tasks_count: Option<u64>,
    /// IICP-CX key (see [`NodeEntry::cx_key`] for the `public_key` fallback). A
    /// malformed key reads as `None`.
    #[serde(
        default,
        deserialize_with = "lenient::opt_or_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub cx_public_key: Option<CxPublicKey>,
    /// `direct` or `relay` (or other directory labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachability_tier: Option<String>,
    /// Offers relay service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_capable: Option<bool>,
    /// Relay accept port.
    #[serde(
        default,
        deserialize_with = "lenient::opt_or_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub relay_accept_port: Option<u16>,
    /// Load of its relay service 0–1 (gossip and some directories; relay election
    /// falls back to `load`).
    #[serde(
        default,
        deserialize_with = "lenient::opt_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub relay_load: Option<f64>,
    /// Input modalities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_modalities: Option<Vec<String>>,
    /// Models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Quantization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
    /// Inference engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_engine: Option<String>,
    /// Capabilities (malformed entries are skipped).
    #[serde(
        default,
        deserialize_with = "lenient::vec_skip_invalid",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub capabilities: Vec<Capability>,
    /// Transports (`http`, `iicp-native`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Vec<String>>,
    /// CIP policy summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cip_policy: Option<Value>,
    /// CIP conformance level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cip_conformance_level: Option<String>,
    /// Pricing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Value>,
    /// Node policy manifest with verification evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_policy_manifest: Option<Value>,
    /// Health label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_label: Option<String>,
    /// Exposure mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposure_mode: Option<String>,
    /// Route evidence (string or array; T20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_evidence: Option<Value>,
    /// Probe source evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_source: Option<Value>,
    /// Transport method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_method: Option<String>,
    /// NAT type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_type: Option<String>,
    /// Transport metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_metadata: Option<Value>,
    /// Relay endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_endpoint: Option<String>,
    /// `ipv4`/`ipv6`/`dual`/`hostname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_family: Option<String>,
    /// Usable from HTTPS browsers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser_usable: Option<bool>,
    /// Route hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_hint: Option<String>,
    /// Directory-observed reachability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_reachable: Option<bool>,
    /// Backend family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// `current`/`downlevel`/`unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk_status: Option<String>,
    /// SDK language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk_language: Option<String>,
    /// SDK version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk_version: Option<String>,
    /// SDK compatibility version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk_compatibility_version: Option<String>,
    /// Implementation name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implementation_name: Option<String>,
    /// Implementation version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implementation_version: Option<String>,
    /// Upgrade required (demotion signal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_required: Option<bool>,
    /// CX key present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ready: Option<bool>,
    /// `key_ready`/`transitional`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy_routing_status: Option<String>,
    /// Operator display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_display_name: Option<String>,
    /// Operator fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_fingerprint: Option<String>,
    /// Other members (including the retired `public_key`), kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl NodeEntry {
    /// The CX key: `cx_public_key`, else the retired `public_key` alias when it holds a
    /// key object (read-fallback, §16.1).
    pub fn cx_key(&self) -> Option<CxPublicKey> {
        self.cx_public_key.clone().or_else(|| {
            self.extra
                .get("public_key")
                .filter(|v| v.is_object())
                .and_then(|v| serde_json::from_value(v.clone()).ok())
        })
    }

    /// `available`, defaulting to true (directories list only eligible nodes).
    pub fn is_available(&self) -> bool {
        self.available.unwrap_or(true)
    }

    /// True when some capability (or, lacking capabilities, nothing contradicts it)
    /// serves `intent` exactly.
    pub fn serves(&self, intent: &str) -> bool {
        self.capabilities.is_empty() || self.capabilities.iter().any(|c| c.intent == intent)
    }
}

/// The DISCOVER response (`schemas/nodelist.json`, §8.4). Every member is optional on
/// input (T20); a node entry that does not parse is skipped instead of failing the
/// whole list.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeList {
    /// Nodes, score-descending.
    #[serde(default, deserialize_with = "lenient::vec_skip_invalid")]
    pub nodes: Vec<NodeEntry>,
    /// Number of nodes.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub count: Option<u64>,
    /// Query latency in ms.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub query_ms: Option<u64>,
    /// Some candidate is relay-capable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_available: Option<bool>,
    /// `dispatch` or `public`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
    /// `route_dispatch` or `public_presentation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_class: Option<String>,
    /// Route fields present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_fields_present: Option<bool>,
    /// Redaction summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redaction: Option<Value>,
    /// Relative dispatch-ticket endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch_ticket_endpoint: Option<String>,
    /// Directory supports ticketed dispatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticketed_dispatch_available: Option<bool>,
    /// Profile negotiation echo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_negotiation: Option<Value>,
    /// Diversity evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diversity_evidence: Option<Value>,
    /// Other members (`total`, `intent` of the cbor-draft shape, …), kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

// ---------------------------------------------------------------------------
// Dispatch ticket
// ---------------------------------------------------------------------------

/// Why a dispatch-ticket request is refused (§8.5; 422 `validation_error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchTicketError {
    /// The body carries task material; the value is never echoed.
    #[error("dispatch ticket issuance is control-plane only; member `{member}` is not accepted")]
    PromptMaterial {
        /// The offending member name.
        member: &'static str,
    },
    /// The intent is invalid.
    #[error("invalid intent: {0}")]
    Intent(#[source] IntentError),
    /// Both `node_id` and `node_id_prefix` are set.
    #[error("`node_id` and `node_id_prefix` are mutually exclusive")]
    NodeSelectorConflict,
    /// More than 10 excluded prefixes.
    #[error("at most {MAX_EXCLUDED_PREFIXES} `exclude_node_id_prefixes` are allowed")]
    TooManyExclusions,
    /// `limit` is 0 or above 50.
    #[error("`limit` must be within 1..=50")]
    Limit,
    /// `min_reputation` outside [0, 1].
    #[error("`min_reputation` must be in [0, 1]")]
    MinReputation,
}

/// `POST /v1/dispatch/ticket` request (§8.5). Task material lands in `extra`, where
/// [`DispatchTicketRequest::prompt_material_member`] finds it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DispatchTicketRequest {
    /// Intent URN.
    #[serde(default)]
    pub intent: String,
    /// Prefixes of nodes that already failed (≤ 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_node_id_prefixes: Vec<String>,
    /// Candidate limit.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub limit: Option<u32>,
    /// Region preference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// QoS class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<Qos>,
    /// Model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Minimum reputation.
    #[serde(
        default,
        deserialize_with = "lenient::opt_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_reputation: Option<f64>,
    /// Select this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Select the node with this prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id_prefix: Option<String>,
    /// Other members, kept (and screened for task material).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl DispatchTicketRequest {
    /// A request for `intent` with nothing else set.
    pub fn new(intent: &Intent) -> Self {
        Self {
            intent: intent.as_str().to_owned(),
            ..Self::default()
        }
    }

    /// The first member that carries task material (`prompt`, `messages`, `payload`,
    /// `input`, `chat`, `content`, `response`, `iicp_conf`, `task`; case-insensitive),
    /// if any.
    pub fn prompt_material_member(&self) -> Option<&'static str> {
        self.extra.keys().find_map(|k| {
            PROMPT_MATERIAL_MEMBERS
                .iter()
                .copied()
                .find(|m| k.eq_ignore_ascii_case(m))
        })
    }

    /// The §8.5 checks, task material first.
    pub fn validate(&self) -> Result<Intent, DispatchTicketError> {
        if let Some(member) = self.prompt_material_member() {
            return Err(DispatchTicketError::PromptMaterial { member });
        }
        let intent = Intent::new(self.intent.as_str()).map_err(DispatchTicketError::Intent)?;
        if self.node_id.is_some() && self.node_id_prefix.is_some() {
            return Err(DispatchTicketError::NodeSelectorConflict);
        }
        if self.exclude_node_id_prefixes.len() > MAX_EXCLUDED_PREFIXES {
            return Err(DispatchTicketError::TooManyExclusions);
        }
        if let Some(limit) = self.limit {
            if !(1..=MAX_DISCOVER_LIMIT).contains(&limit) {
                return Err(DispatchTicketError::Limit);
            }
        }
        if let Some(r) = self.min_reputation {
            if !(0.0..=1.0).contains(&r) {
                return Err(DispatchTicketError::MinReputation);
            }
        }
        Ok(intent)
    }
}

/// `POST /v1/dispatch/ticket` response (HTTP 201, §8.5). The ticket is a [`Secret`]
/// (log only its prefix).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DispatchTicketResponse {
    /// `<b64url payload>.<hex sig>`.
    #[serde(default)]
    pub ticket: Secret,
    /// Loggable ticket prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_id_prefix: Option<String>,
    /// Expiry, unix seconds.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<u64>,
    /// Intent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    /// Selected node id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Selected node id prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id_prefix: Option<String>,
    /// The route (a node entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<NodeEntry>,
    /// `ed25519`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// `ticketed_route_dispatch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_class: Option<String>,
    /// Route fields present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_fields_present: Option<bool>,
    /// Always false: the directory never accepts prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_payload_accepted: Option<bool>,
    /// Other members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

// ---------------------------------------------------------------------------
// DEREGISTER, consumer token, directory key
// ---------------------------------------------------------------------------

/// `DELETE /v1/register` body (§8.6).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeregisterRequest {
    /// The node to remove.
    #[serde(default)]
    pub node_id: String,
    /// Other members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `DELETE /v1/register` response (§8.6): `{"deregistered": true}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeregisterResponse {
    /// True when removed.
    #[serde(default)]
    pub deregistered: bool,
    /// Other members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `POST /v1/consumer-token` request (§8.10).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerTokenRequest {
    /// The provider node the token is for.
    #[serde(default)]
    pub target_node_id: String,
    /// Intent URN or `*`.
    #[serde(default)]
    pub intent: String,
    /// Other members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `POST /v1/consumer-token` response (HTTP 201, §8.10).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerTokenResponse {
    /// `<b64url claims>.<hex sig>`, sent as `X-IICP-Consumer-Token`.
    #[serde(default)]
    pub token: Secret,
    /// Expiry, unix seconds.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<u64>,
    /// Caller node id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_node_id: Option<String>,
    /// Target node id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node_id: Option<String>,
    /// Intent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    /// Other members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Why a directory key is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryKeyError {
    /// The algorithm is not Ed25519.
    #[error("directory key algorithm is not ed25519")]
    Algorithm,
    /// `public_key` is not 64 hex characters.
    #[error("directory public_key is not 64 hex characters")]
    Encoding,
}

/// `GET /v1/directory-key` response (§8.10).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryKey {
    /// 64-char hex raw Ed25519 public key.
    #[serde(default)]
    pub public_key: String,
    /// `ed25519`.
    #[serde(default)]
    pub algorithm: String,
    /// Other members, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl DirectoryKey {
    /// The raw 32-byte key (algorithm must be Ed25519, case-insensitive).
    pub fn key_bytes(&self) -> Result<[u8; 32], DirectoryKeyError> {
        if !self.algorithm.eq_ignore_ascii_case("ed25519") {
            return Err(DirectoryKeyError::Algorithm);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(self.public_key.trim(), &mut out)
            .map_err(|_| DirectoryKeyError::Encoding)?;
        Ok(out)
    }
}
