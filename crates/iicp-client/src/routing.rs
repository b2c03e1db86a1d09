//! Remote-routing policy profiles (PROTOCOL.md §9.4; dir §3.4.1 and "strict
//! allowed-region profile"; ADR 0016).
//!
//! A profile is a hard eligibility gate applied after prompt-free discovery and before
//! any task byte leaves the client (§9.2 step 3). When it excludes every candidate the
//! submission fails with `IICP-POLICY-ROUTING` before anything is sent to a node, and
//! the error counts the nodes each rule excluded. Region in discovery stays a
//! preference except under these profiles.
//!
//! Policy manifests are checked here, not trusted from the directory: the node's
//! signature is verified over the manifest the directory serves
//! ([`manifest::signed_originals`]), its hash must equal the directory's
//! `verification.canonical_sha256` (and so the dispatch ticket's binding), and an
//! `operator_bound` claim must name the operator whose key signed the manifest. What
//! only the directory can know — that the signing key is the node's delegated operator
//! key, and revocations — comes from the directory and can only make a node less
//! eligible.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::OnceLock;

use iicp_proto::crypto::manifest::{self, IdentityLevel, Status};
use iicp_proto::directory::NodeEntry;
use serde_json::{Map, Value};

use crate::endpoint::host_port;

/// A routing profile (§9.4). `Standard` is the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RoutingProfile {
    /// Key-ready (IICP-CX) nodes; plaintext only under the client's explicit opt-in.
    #[default]
    Standard,
    /// Never send the prompt to a remote node: only a node on this machine (loopback or
    /// one of this machine's interface addresses, as an IP literal or `localhost`).
    Sensitive,
    /// Key-ready nodes in EU/EEA regions (`allowed_regions`, default `eu` and `eea`;
    /// `eea` also admits `eu-*`).
    EuRestricted,
    /// Key-ready nodes whose region is in `allowed_regions`; optionally a signed-valid
    /// manifest whose `jurisdiction` is in `jurisdiction_allowlist`.
    AllowedRegionsStrict,
    /// Key-ready nodes with a signed-valid manifest declaring no task-payload
    /// retention.
    StrictPolicy,
    /// Key-ready nodes whose manifest identity level is at least `operator_bound`.
    OperatorBoundPolicy,
    /// Explicit unsafe mode: plaintext to keyless nodes allowed, with a warning. Never
    /// the default.
    DebugOverride,
}

impl RoutingProfile {
    /// Every profile.
    pub const ALL: [RoutingProfile; 7] = [
        Self::Standard,
        Self::Sensitive,
        Self::EuRestricted,
        Self::AllowedRegionsStrict,
        Self::StrictPolicy,
        Self::OperatorBoundPolicy,
        Self::DebugOverride,
    ];

    /// The wire name (`standard`, `sensitive`, `eu_restricted`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Sensitive => "sensitive",
            Self::EuRestricted => "eu_restricted",
            Self::AllowedRegionsStrict => "allowed_regions_strict",
            Self::StrictPolicy => "strict_policy",
            Self::OperatorBoundPolicy => "operator_bound_policy",
            Self::DebugOverride => "debug_override",
        }
    }

    /// Whether every candidate must have an IICP-CX key whatever the client's
    /// encryption setting (every profile but `standard`, `sensitive` and
    /// `debug_override`).
    pub fn requires_key(self) -> bool {
        !matches!(self, Self::Standard | Self::Sensitive | Self::DebugOverride)
    }

    /// Whether the profile narrows the candidates beyond the client's defaults, so that
    /// every discovered node should be evaluated (list discovery rather than one
    /// ticket at a time).
    pub fn is_restrictive(self) -> bool {
        !matches!(self, Self::Standard | Self::DebugOverride)
    }
}

impl fmt::Display for RoutingProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown profile name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown routing profile `{0}` (expected one of standard, sensitive, eu_restricted, allowed_regions_strict, strict_policy, operator_bound_policy, debug_override)")]
pub struct UnknownProfile(pub String);

/// An unknown profile name is a configuration error (`invalid_config`), so that
/// `name.parse::<RoutingProfile>()?` works in code returning the client's [`Error`](crate::Error).
impl From<UnknownProfile> for crate::Error {
    fn from(e: UnknownProfile) -> Self {
        crate::Error::config(e.to_string())
    }
}

impl FromStr for RoutingProfile {
    type Err = UnknownProfile;

    /// Case-insensitive; `-` and `_` are the same.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == norm)
            .ok_or_else(|| UnknownProfile(s.to_owned()))
    }
}

/// A profile with its parameters.
///
/// ```
/// use iicp_client::{RoutingPolicy, RoutingProfile};
///
/// let p = RoutingPolicy::new(RoutingProfile::AllowedRegionsStrict)
///     .allowed_regions(["eu-central", "eu-west"])
///     .require_signed_policy_manifest(["DE", "FR"]);
/// assert!(p.validate().is_ok());
/// assert!(RoutingPolicy::new(RoutingProfile::AllowedRegionsStrict).validate().is_err());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutingPolicy {
    /// The profile.
    pub profile: RoutingProfile,
    /// Regions admitted by `allowed_regions_strict` and `eu_restricted` (a region
    /// matches an entry equal to it or to its prefix before `-`; `eea` admits `eu-*`).
    pub allowed_regions: Vec<String>,
    /// `allowed_regions_strict`: also require a signed-valid manifest.
    pub require_signed_policy_manifest: bool,
    /// With `require_signed_policy_manifest`: the manifest's `jurisdiction` must be one
    /// of these (case-insensitive); empty admits any jurisdiction.
    pub jurisdiction_allowlist: Vec<String>,
}

impl RoutingPolicy {
    /// The profile with no parameters.
    pub fn new(profile: RoutingProfile) -> Self {
        Self {
            profile,
            ..Self::default()
        }
    }

    /// Sets `allowed_regions`.
    pub fn allowed_regions<I, S>(mut self, regions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed_regions = regions.into_iter().map(Into::into).collect();
        self
    }

    /// Requires a signed-valid manifest whose jurisdiction is in `jurisdictions`
    /// (any jurisdiction when empty).
    pub fn require_signed_policy_manifest<I, S>(mut self, jurisdictions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.require_signed_policy_manifest = true;
        self.jurisdiction_allowlist = jurisdictions.into_iter().map(Into::into).collect();
        self
    }

    /// Checks the parameters: `allowed_regions_strict` needs at least one region;
    /// parameters of other profiles are refused rather than ignored.
    ///
    /// # Errors
    /// A message naming the problem.
    pub fn validate(&self) -> Result<(), String> {
        let regions = self.allowed_regions.iter().any(|r| !r.trim().is_empty());
        match self.profile {
            RoutingProfile::AllowedRegionsStrict if !regions => Err(
                "routing profile allowed_regions_strict needs at least one allowed region".into(),
            ),
            RoutingProfile::AllowedRegionsStrict => Ok(()),
            RoutingProfile::EuRestricted if self.require_signed_policy_manifest => {
                Err("require_signed_policy_manifest belongs to allowed_regions_strict".into())
            }
            RoutingProfile::EuRestricted => Ok(()),
            p if regions
                || self.require_signed_policy_manifest
                || !self.jurisdiction_allowlist.is_empty() =>
            {
                Err(format!(
                    "routing profile {p} takes no allowed regions or jurisdictions"
                ))
            }
            _ => Ok(()),
        }
    }

    /// The regions this policy admits, `None` when region is only a preference.
    fn region_allowlist(&self) -> Option<Vec<String>> {
        match self.profile {
            RoutingProfile::EuRestricted if self.allowed_regions.is_empty() => {
                Some(vec!["eu".into(), "eea".into()])
            }
            RoutingProfile::EuRestricted | RoutingProfile::AllowedRegionsStrict => {
                Some(self.allowed_regions.clone())
            }
            _ => None,
        }
    }
}

impl From<RoutingProfile> for RoutingPolicy {
    fn from(profile: RoutingProfile) -> Self {
        Self::new(profile)
    }
}

/// The rule that excluded a node; the name is the reason reported in refusals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Exclusion {
    /// `sensitive`: the node is not on this machine.
    RemoteExecutor,
    /// The node's region is outside the allowlist.
    RegionNotAllowed,
    /// The profile requires an IICP-CX key.
    MissingEncryptionKey,
    /// No policy manifest.
    MissingPolicyManifest,
    /// The manifest is unsigned, expired or its signature does not verify here.
    PolicyManifestNotSigned,
    /// The directory's evidence does not match the manifest it served (hash or
    /// operator fingerprint).
    PolicyManifestEvidenceMismatch,
    /// The manifest does not declare `retention.task_payload: none`.
    PayloadRetentionNotNone,
    /// The manifest's jurisdiction is outside the allowlist.
    JurisdictionNotAllowed,
    /// The manifest identity level is below the requirement.
    ManifestIdentityLevelTooLow,
    /// The policy key was revoked or rotated.
    PolicyKeyRevokedOrRotated,
}

impl Exclusion {
    /// The reason name (`remote_executor_disabled`, `region_not_allowed`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RemoteExecutor => "remote_executor_disabled",
            Self::RegionNotAllowed => "region_not_allowed",
            Self::MissingEncryptionKey => "missing_encryption_key",
            Self::MissingPolicyManifest => "missing_policy_manifest",
            Self::PolicyManifestNotSigned => "policy_manifest_not_signed",
            Self::PolicyManifestEvidenceMismatch => "policy_manifest_evidence_mismatch",
            Self::PayloadRetentionNotNone => "payload_retention_not_none",
            Self::JurisdictionNotAllowed => "jurisdiction_not_allowed",
            Self::ManifestIdentityLevelTooLow => "manifest_identity_level_too_low",
            Self::PolicyKeyRevokedOrRotated => "policy_manifest_revoked_or_rotated",
        }
    }
}

/// Whether `region` is admitted by `allowed`: equal (case-insensitive) to an entry or
/// starting with `entry-`; `eea` also admits `eu-*`.
pub fn region_allowed(region: &str, allowed: &[String]) -> bool {
    let value = region.trim().to_ascii_lowercase();
    if value.is_empty() {
        return false;
    }
    allowed.iter().any(|raw| {
        let item = raw.trim().to_ascii_lowercase();
        !item.is_empty()
            && (value == item
                || value.starts_with(&format!("{item}-"))
                || (item == "eea" && (value == "eu" || value.starts_with("eu-"))))
    })
}

/// What the client established about a node's manifest by itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestEvidence {
    /// The status the client computed, made worse (never better) by the directory's.
    pub status: Status,
    /// The identity level the client accepts.
    pub level: Option<IdentityLevel>,
    /// The manifest as the node signed it (directory members removed).
    pub manifest: Map<String, Value>,
    /// Hash of the canonical manifest.
    pub canonical_sha256: String,
    /// The directory's evidence contradicts the manifest.
    pub mismatch: bool,
}

/// Checks the manifest a directory served for a node at `now_unix` (see the module
/// docs). `None` when the node has none.
pub fn check_manifest(served: &Value, now_unix: u64) -> Option<ManifestEvidence> {
    let served = served.as_object()?;
    let candidates = manifest::signed_originals(served);
    let checked: Vec<_> = candidates
        .iter()
        .map(|m| (m, manifest::verify(m, now_unix)))
        .collect();
    let (original, v) = checked
        .iter()
        .find(|(_, v)| matches!(v.status, Status::SignedValid | Status::SignedExpired))
        .or_else(|| checked.first())?;
    let mut status = v.status;
    let directory = served.get("verification");
    let mut mismatch = false;
    if let Some(sha) = directory
        .and_then(|d| d.get("canonical_sha256"))
        .and_then(Value::as_str)
    {
        if sha != v.canonical_sha256 && status != Status::SelfAttested {
            mismatch = true;
        }
    }
    // the directory's verdict can only make things worse (revocations are its knowledge)
    if let Some(d) = directory
        .and_then(|d| d.get("status"))
        .and_then(Value::as_str)
        .and_then(Status::parse)
    {
        if matches!(
            d,
            Status::SignedInvalid
                | Status::SignedExpired
                | Status::SignedRevoked
                | Status::SignedSuperseded
        ) && status == Status::SignedValid
        {
            status = d;
        }
    }
    let claimed = served
        .get("manifest_identity_level")
        .and_then(Value::as_str)
        .and_then(IdentityLevel::parse);
    let level = match status {
        Status::SelfAttested => Some(IdentityLevel::SelfAttested),
        Status::SignedRevoked => Some(IdentityLevel::Revoked),
        Status::SignedSuperseded => Some(IdentityLevel::Rotated),
        Status::SignedValid => match claimed {
            Some(l @ (IdentityLevel::Rotated | IdentityLevel::Revoked)) => Some(l),
            Some(l @ (IdentityLevel::OperatorBound | IdentityLevel::KnownOperator)) => {
                // the operator fingerprint must be the signing key's
                let signer = v
                    .public_key
                    .map(|k| manifest::operator_fingerprint(&k.operator_id()));
                let served_fp = served.get("operator_fingerprint").and_then(Value::as_str);
                if signer.is_some() && signer.as_deref() == served_fp {
                    Some(l)
                } else {
                    mismatch = true;
                    Some(IdentityLevel::SignedValid)
                }
            }
            _ => Some(IdentityLevel::SignedValid),
        },
        _ => None,
    };
    Some(ManifestEvidence {
        status,
        level,
        manifest: (*original).clone(),
        canonical_sha256: v.canonical_sha256.clone(),
        mismatch,
    })
}

/// Addresses of this machine: loopback and every interface address (read once).
fn local_addresses() -> &'static HashSet<IpAddr> {
    static LOCAL: OnceLock<HashSet<IpAddr>> = OnceLock::new();
    LOCAL.get_or_init(|| {
        if_addrs::get_if_addrs()
            .map(|list| list.into_iter().map(|i| i.ip()).collect())
            .unwrap_or_default()
    })
}

/// Whether an endpoint URL names this machine: `localhost`, a loopback literal, or a
/// literal equal to one of this machine's interface addresses. Other names are remote
/// (no resolution: fail closed).
pub fn is_local_endpoint(url: &str) -> bool {
    let Some((host, _)) = host_port(url) else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || local_addresses().contains(&ip),
        Err(_) => false,
    }
}

/// Evaluates one discovered node against `policy` at `now_unix`. `endpoint` is the URL
/// the client would dial; `has_key` whether the node advertises a usable CX key.
///
/// # Errors
/// The first rule that excludes the node.
pub fn evaluate(
    policy: &RoutingPolicy,
    node: &NodeEntry,
    endpoint: &str,
    has_key: bool,
    now_unix: u64,
) -> Result<(), Exclusion> {
    let profile = policy.profile;
    if profile == RoutingProfile::Sensitive && !is_local_endpoint(endpoint) {
        return Err(Exclusion::RemoteExecutor);
    }
    if let Some(allowed) = policy.region_allowlist() {
        if !region_allowed(node.region.as_deref().unwrap_or(""), &allowed) {
            return Err(Exclusion::RegionNotAllowed);
        }
    }
    if profile.requires_key() && !has_key {
        return Err(Exclusion::MissingEncryptionKey);
    }
    let needs_manifest = matches!(
        profile,
        RoutingProfile::StrictPolicy | RoutingProfile::OperatorBoundPolicy
    ) || (profile == RoutingProfile::AllowedRegionsStrict
        && policy.require_signed_policy_manifest);
    if !needs_manifest {
        return Ok(());
    }
    let evidence = node
        .node_policy_manifest
        .as_ref()
        .and_then(|m| check_manifest(m, now_unix))
        .ok_or(Exclusion::MissingPolicyManifest)?;
    if evidence.mismatch {
        return Err(Exclusion::PolicyManifestEvidenceMismatch);
    }
    if matches!(
        evidence.level,
        Some(IdentityLevel::Rotated | IdentityLevel::Revoked)
    ) {
        return Err(Exclusion::PolicyKeyRevokedOrRotated);
    }
    match profile {
        RoutingProfile::OperatorBoundPolicy => {
            if !evidence
                .level
                .is_some_and(|l| l.satisfies(IdentityLevel::OperatorBound))
            {
                return Err(Exclusion::ManifestIdentityLevelTooLow);
            }
        }
        _ => {
            if evidence.status != Status::SignedValid {
                return Err(Exclusion::PolicyManifestNotSigned);
            }
        }
    }
    if profile == RoutingProfile::StrictPolicy {
        let retention = evidence
            .manifest
            .get("retention")
            .and_then(|r| r.get("task_payload"))
            .and_then(Value::as_str);
        if retention != Some("none") {
            return Err(Exclusion::PayloadRetentionNotNone);
        }
    }
    if profile == RoutingProfile::AllowedRegionsStrict && !policy.jurisdiction_allowlist.is_empty()
    {
        let jurisdiction = evidence
            .manifest
            .get("jurisdiction")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !policy
            .jurisdiction_allowlist
            .iter()
            .any(|j| j.trim().eq_ignore_ascii_case(jurisdiction.trim()))
        {
            return Err(Exclusion::JurisdictionNotAllowed);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use iicp_proto::crypto::sign::OperatorKey;
    use serde_json::json;

    const NOW: u64 = 1_893_456_000;

    fn node(region: &str, manifest: Option<Value>) -> NodeEntry {
        NodeEntry {
            region: Some(region.into()),
            node_policy_manifest: manifest,
            ..NodeEntry::default()
        }
    }

    fn declaration(retention: &str, jurisdiction: &str) -> Map<String, Value> {
        json!({"jurisdiction": jurisdiction, "retention": {"task_payload": retention}})
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    /// What our directory serves for a signed manifest.
    fn served(m: &Map<String, Value>, level: &str, operator: Option<&OperatorKey>) -> Value {
        let mut out = m.clone();
        let v = manifest::verify(m, NOW);
        out.insert("verification".into(), v.to_json());
        out.insert("manifest_identity_level".into(), level.into());
        if let Some(k) = operator {
            out.insert(
                "operator_fingerprint".into(),
                manifest::operator_fingerprint(&k.operator_id()).into(),
            );
        }
        Value::Object(out)
    }

    #[test]
    fn profile_names_parse_and_unknown_is_refused() {
        for p in RoutingProfile::ALL {
            assert_eq!(p.as_str().parse::<RoutingProfile>(), Ok(p));
        }
        assert_eq!("EU-Restricted".parse(), Ok(RoutingProfile::EuRestricted));
        let err = crate::Error::from("paranoid".parse::<RoutingProfile>().unwrap_err());
        assert_eq!(err.code(), &iicp_proto::error::ErrorCode::InvalidConfig);
        assert!(err.to_string().contains("paranoid"));
    }

    #[test]
    fn regions_match_by_prefix_and_eea_admits_eu() {
        let eu = vec!["eu".to_owned(), "eea".to_owned()];
        assert!(region_allowed("eu-central", &eu));
        assert!(region_allowed("EU", &eu));
        assert!(!region_allowed("europe-west", &eu));
        assert!(!region_allowed("us-east", &eu));
        assert!(!region_allowed("", &eu));
        assert!(region_allowed("eu-west", &["eea".to_owned()]));
        assert!(!region_allowed("eu-central", &["eu-west".to_owned()]));
    }

    #[test]
    fn sensitive_admits_only_this_machine() {
        let p = RoutingPolicy::new(RoutingProfile::Sensitive);
        let n = node("eu", None);
        assert_eq!(
            evaluate(&p, &n, "http://127.0.0.1:9484", false, NOW),
            Ok(())
        );
        assert_eq!(evaluate(&p, &n, "iicp://[::1]:9484", false, NOW), Ok(()));
        assert_eq!(
            evaluate(&p, &n, "http://localhost:9484", false, NOW),
            Ok(())
        );
        assert_eq!(
            evaluate(&p, &n, "https://node.example.com", true, NOW),
            Err(Exclusion::RemoteExecutor)
        );
        assert_eq!(
            evaluate(&p, &n, "http://192.0.2.7:9484", true, NOW),
            Err(Exclusion::RemoteExecutor)
        );
    }

    #[test]
    fn strict_policy_checks_the_signature_itself() {
        let key = OperatorKey::from_seed(&[9; 32]);
        let p = RoutingPolicy::new(RoutingProfile::StrictPolicy);
        let ep = "https://n.example.com";
        let signed = manifest::sign(declaration("none", "DE"), &key, NOW - 10);
        assert_eq!(
            evaluate(
                &p,
                &node("eu", Some(served(&signed, "signed_valid", None))),
                ep,
                true,
                NOW
            ),
            Ok(())
        );
        // keyless
        assert_eq!(
            evaluate(
                &p,
                &node("eu", Some(served(&signed, "signed_valid", None))),
                ep,
                false,
                NOW
            ),
            Err(Exclusion::MissingEncryptionKey)
        );
        // a directory that says signed_valid about a tampered manifest is not believed
        let mut tampered = signed.clone();
        tampered["jurisdiction"] = "XX".into();
        let mut lie = served(&tampered, "signed_valid", None);
        lie["verification"]["status"] = "signed_valid".into();
        assert_eq!(
            evaluate(&p, &node("eu", Some(lie)), ep, true, NOW),
            Err(Exclusion::PolicyManifestNotSigned)
        );
        // unsigned, retention, missing
        let unsigned = declaration("none", "DE");
        assert_eq!(
            evaluate(
                &p,
                &node("eu", Some(served(&unsigned, "self_attested", None))),
                ep,
                true,
                NOW
            ),
            Err(Exclusion::PolicyManifestNotSigned)
        );
        let keeps = manifest::sign(declaration("transient", "DE"), &key, NOW - 10);
        assert_eq!(
            evaluate(
                &p,
                &node("eu", Some(served(&keeps, "signed_valid", None))),
                ep,
                true,
                NOW
            ),
            Err(Exclusion::PayloadRetentionNotNone)
        );
        assert_eq!(
            evaluate(&p, &node("eu", None), ep, true, NOW),
            Err(Exclusion::MissingPolicyManifest)
        );
        // a hash that disagrees with the manifest
        let mut other_hash = served(&signed, "signed_valid", None);
        other_hash["verification"]["canonical_sha256"] = "0".repeat(64).into();
        assert_eq!(
            evaluate(&p, &node("eu", Some(other_hash)), ep, true, NOW),
            Err(Exclusion::PolicyManifestEvidenceMismatch)
        );
        // expired by now, whatever the directory says
        assert_eq!(
            evaluate(
                &p,
                &node("eu", Some(served(&signed, "signed_valid", None))),
                ep,
                true,
                NOW + manifest::MANIFEST_TTL_SECS
            ),
            Err(Exclusion::PolicyManifestNotSigned)
        );
        // revoked by the directory
        let mut revoked = served(&signed, "revoked", None);
        revoked["verification"]["status"] = "signed_revoked".into();
        assert_eq!(
            evaluate(&p, &node("eu", Some(revoked)), ep, true, NOW),
            Err(Exclusion::PolicyKeyRevokedOrRotated)
        );
    }

    #[test]
    fn operator_bound_needs_the_signers_fingerprint() {
        let key = OperatorKey::from_seed(&[9; 32]);
        let other = OperatorKey::from_seed(&[10; 32]);
        let p = RoutingPolicy::new(RoutingProfile::OperatorBoundPolicy);
        let ep = "https://n.example.com";
        let signed = manifest::sign(declaration("provider_defined", "US"), &key, NOW - 10);
        let ok = served(&signed, "operator_bound", Some(&key));
        assert_eq!(evaluate(&p, &node("us", Some(ok)), ep, true, NOW), Ok(()));
        let wrong = served(&signed, "operator_bound", Some(&other));
        assert_eq!(
            evaluate(&p, &node("us", Some(wrong)), ep, true, NOW),
            Err(Exclusion::PolicyManifestEvidenceMismatch)
        );
        let plain = served(&signed, "signed_valid", None);
        assert_eq!(
            evaluate(&p, &node("us", Some(plain)), ep, true, NOW),
            Err(Exclusion::ManifestIdentityLevelTooLow)
        );
        let rotated = served(&signed, "rotated", Some(&key));
        assert_eq!(
            evaluate(&p, &node("us", Some(rotated)), ep, true, NOW),
            Err(Exclusion::PolicyKeyRevokedOrRotated)
        );
    }

    #[test]
    fn allowed_regions_strict_with_jurisdictions() {
        let key = OperatorKey::from_seed(&[9; 32]);
        let p = RoutingPolicy::new(RoutingProfile::AllowedRegionsStrict)
            .allowed_regions(["eu-central"])
            .require_signed_policy_manifest(["de"]);
        assert!(p.validate().is_ok());
        let ep = "https://n.example.com";
        let de = served(
            &manifest::sign(declaration("provider_defined", "DE"), &key, NOW - 1),
            "signed_valid",
            None,
        );
        let fr = served(
            &manifest::sign(declaration("provider_defined", "FR"), &key, NOW - 1),
            "signed_valid",
            None,
        );
        assert_eq!(
            evaluate(&p, &node("eu-central", Some(de.clone())), ep, true, NOW),
            Ok(())
        );
        assert_eq!(
            evaluate(&p, &node("eu-central", Some(fr)), ep, true, NOW),
            Err(Exclusion::JurisdictionNotAllowed)
        );
        assert_eq!(
            evaluate(&p, &node("eu-west", Some(de)), ep, true, NOW),
            Err(Exclusion::RegionNotAllowed)
        );
        assert!(RoutingPolicy::new(RoutingProfile::StrictPolicy)
            .allowed_regions(["eu"])
            .validate()
            .is_err());
    }

    #[test]
    fn eu_restricted_defaults_and_standard_is_region_blind() {
        let p = RoutingPolicy::new(RoutingProfile::EuRestricted);
        let ep = "https://n.example.com";
        assert_eq!(evaluate(&p, &node("eu-north", None), ep, true, NOW), Ok(()));
        assert_eq!(
            evaluate(&p, &node("us-east", None), ep, true, NOW),
            Err(Exclusion::RegionNotAllowed)
        );
        assert_eq!(
            evaluate(&p, &node("eu-north", None), ep, false, NOW),
            Err(Exclusion::MissingEncryptionKey)
        );
        let s = RoutingPolicy::default();
        assert_eq!(evaluate(&s, &node("us-east", None), ep, false, NOW), Ok(()));
    }
}
